//! Throw-away TLS material for a test server, made with the `openssl` command line: a CA
//! and a server certificate it signs, valid for `localhost` and `127.0.0.1`, so clients can
//! verify the server fully (`sslmode=verify-full`, rustls with the CA as the only root).
//!
//! Keys are P-256 (fast to generate, accepted by libpq and rustls). The CA carries
//! `CA:TRUE` + `keyCertSign`; the leaf carries `CA:FALSE`, `serverAuth` and the SANs, which
//! is what webpki insists on. Our own config file is used so the system's openssl.cnf
//! cannot add or clash with extensions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{run_ok, ServerUser};

/// The server certificate's names unless told otherwise.
pub(crate) const LOCAL_NAMES: &str = "DNS:localhost,IP:127.0.0.1";

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = placeholder

[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {names}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
";

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Writes a CA and a server certificate into `dir/tls`, readable by the server user.
pub(crate) fn generate(dir: &Path, user: &ServerUser, names: &str) -> Result<TlsFiles> {
    let tls = dir.join("tls");
    std::fs::create_dir(&tls).with_context(|| format!("could not create {}", tls.display()))?;
    let cnf = tls.join("openssl.cnf");
    std::fs::write(&cnf, OPENSSL_CNF.replace("{names}", names))?;

    let ca_key = tls.join("ca.key");
    let ca_cert = tls.join("ca.crt");
    let server_key = tls.join("server.key");
    let server_csr = tls.join("server.csr");
    let server_cert = tls.join("server.crt");
    let timeout = Duration::from_secs(60);

    openssl(&tls, timeout, |c| {
        c.args(["req", "-x509", "-new", "-nodes", "-days", "3650"])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-subj", "/CN=Sluice testkit CA"])
            .arg("-config")
            .arg(&cnf)
            .args(["-extensions", "v3_ca", "-keyout"])
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_cert);
    })?;
    openssl(&tls, timeout, |c| {
        c.args(["req", "-new", "-nodes"])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-subj", "/CN=localhost"])
            .arg("-config")
            .arg(&cnf)
            .arg("-keyout")
            .arg(&server_key)
            .arg("-out")
            .arg(&server_csr);
    })?;
    openssl(&tls, timeout, |c| {
        c.args(["x509", "-req", "-days", "3650", "-in"])
            .arg(&server_csr)
            .arg("-CA")
            .arg(&ca_cert)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-CAcreateserial", "-extfile"])
            .arg(&cnf)
            .args(["-extensions", "v3_server", "-out"])
            .arg(&server_cert);
    })?;

    // PostgreSQL refuses a key that others can read; it must belong to the server user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600))?;
    user.own(&tls)?;
    for f in [&server_key, &server_cert, &ca_cert] {
        user.own(f)?;
    }
    Ok(TlsFiles {
        ca_cert,
        server_cert,
        server_key,
    })
}

fn openssl(cwd: &Path, timeout: Duration, args: impl FnOnce(&mut Command)) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(cwd);
    args(&mut cmd);
    run_ok(&mut cmd, timeout)
        .context("generating TLS certificates with the `openssl` command failed (is it installed? apt-get install openssl)")?;
    Ok(())
}
