//! Certificates for TLS tests, made by `openssl`: a private CA and a server certificate
//! it signed for `127.0.0.1` and `localhost`, as a real deployment would have them
//! (rustls refuses a CA certificate used as the server's own).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// The PEM files of one CA and one server certificate.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("could not run openssl (scripts/install-deps.sh installs it)")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CA named `name` and a server certificate it signed, written into `dir` as
/// `<name>-ca.crt`, `<name>.crt` and `<name>.key`.
pub fn make_certs(dir: &Path, name: &str) -> Result<Certs> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let (ca, ca_key) = (format!("{name}-ca.crt"), format!("{name}-ca.key"));
    let (cert, key, csr) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    let subj_ca = format!("/CN={name} test CA");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-days", "2", "-subj", &subj_ca, "-keyout", &ca_key, "-out", &ca,
    ]);
    openssl(&args, dir)?;
    let subj = format!("/CN={name}");
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
    openssl(&args, dir)?;
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    let ext = format!("{name}.ext");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
        dir,
    )?;
    Ok(Certs {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    })
}
