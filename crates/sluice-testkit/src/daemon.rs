//! Private `redis-server` and `nats-server -js` instances for tests, the same way as
//! [`crate::PgServer`]: a fresh temporary directory, a free `127.0.0.1` port (chosen again
//! if another process takes it first), a bounded wait until the server answers, and
//! removal on drop.
//!
//! Invariants:
//! - A server is ready when `start` returns: Redis has answered `PING` with `+PONG`, NATS
//!   has sent its `INFO` line.
//! - `restart` keeps the port and the data directory: Redis persists through an
//!   append-only file synced on every write, JetStream through its store directory, so a
//!   restart loses nothing acknowledged.
//! - Dropping a server kills it and removes its directory; drop never panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{free_port, wait_until};

/// How long a server may take to answer after it was started.
const READY: Duration = Duration::from_secs(30);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redis,
    Nats,
}

impl Kind {
    fn program(self) -> &'static str {
        match self {
            Kind::Redis => "redis-server",
            Kind::Nats => "nats-server",
        }
    }

    fn command(self, port: u16, dir: &Path, tls: Option<&Tls>) -> Command {
        let mut cmd = Command::new(self.program());
        if let Some(t) = tls {
            // Both ports: the plain one answers the readiness probe and redis-cli.
            cmd.args([
                "--tls-port",
                &t.port.to_string(),
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(&t.cert)
            .arg("--tls-key-file")
            .arg(&t.key);
        }
        match self {
            Kind::Redis => {
                cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                    ])
                    .args(["--protected-mode", "no", "--daemonize", "no"])
                    .arg("--dir")
                    .arg(dir);
            }
            Kind::Nats => {
                cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
                    .arg("-sd")
                    .arg(dir.join("jetstream"));
            }
        }
        cmd
    }

    /// Whether the server on `port` answers as it should when ready.
    fn answers(self, port: u16) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        match self {
            Kind::Redis => {
                let mut buf = [0u8; 7];
                s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
            }
            Kind::Nats => {
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO {")
            }
        }
    }
}

/// A TLS port besides the plain one (Redis only).
struct Tls {
    port: u16,
    cert: PathBuf,
    key: PathBuf,
}

/// A running server with its directory and log.
struct Daemon {
    kind: Kind,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<Tls>,
}

impl Daemon {
    fn start(kind: Kind, tls: Option<Tls>) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-{}-", kind.program()))
            .tempdir()
            .context("cannot create a temporary directory")?;
        let mut d = Daemon {
            kind,
            port: 0,
            dir,
            child: None,
            tls,
        };
        let mut last = None;
        // A port taken between free_port() and the server's bind: try another.
        for _ in 0..5 {
            d.port = free_port();
            if let Some(t) = d.tls.as_mut() {
                t.port = free_port();
            }
            match d.spawn() {
                Ok(()) => return Ok(d),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("{} did not start", kind.program())))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = self
            .kind
            .command(self.port, self.dir.path(), self.tls.as_ref())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "could not start {} (is it installed? scripts/install-deps.sh installs it)",
                    self.kind.program()
                )
            })?;
        self.child = Some(child);
        let (kind, port) = (self.kind, self.port);
        let mut exited = None;
        let ready = wait_until(READY, &format!("{} on port {port}", kind.program()), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    exited = Some(status);
                    return Some(false);
                }
            }
            kind.answers(port).then_some(true)
        });
        match ready {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => {
                self.kill();
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "{} on port {port} {}; its log ends:\n{}",
                    kind.program(),
                    match exited {
                        Some(s) => format!("exited ({s})"),
                        None => "did not answer in time".into(),
                    },
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private `redis-server` with an append-only file synced on every write.
pub struct RedisServer(Daemon);

impl RedisServer {
    pub fn start() -> Result<RedisServer> {
        Daemon::start(Kind::Redis, None).map(RedisServer)
    }

    /// A server that also takes TLS connections with the PEM certificate and key given
    /// ([`RedisServer::tls_url`]); its plain port stays open for inspection.
    pub fn start_tls(cert: &Path, key: &Path) -> Result<RedisServer> {
        let tls = Tls {
            port: 0,
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        Daemon::start(Kind::Redis, Some(tls)).map(RedisServer)
    }

    /// `rediss://127.0.0.1:TLS_PORT/` of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        let t = self.0.tls.as_ref()?;
        Some(format!("rediss://127.0.0.1:{}/", t.port))
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.0.port)
    }

    /// Runs one command with `redis-cli` and returns its raw output (trimmed).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.0.port.to_string(), "--raw"])
            .args(args)
            .output()
            .context("could not run redis-cli")?;
        if !out.status.success() {
            bail!(
                "redis-cli {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Kills the server (as a crash would) and starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.0.restart()
    }

    /// Kills the server; [`RedisServer::start_again`] brings it back.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    pub fn start_again(&mut self) -> Result<()> {
        self.0.spawn()
    }
}

/// A private `nats-server` with JetStream, storing in its own directory.
pub struct NatsServer(Daemon);

impl NatsServer {
    pub fn start() -> Result<NatsServer> {
        Daemon::start(Kind::Nats, None).map(NatsServer)
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port)
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) -> Result<()> {
        self.0.restart()
    }

    pub fn kill(&mut self) {
        self.0.kill();
    }

    pub fn start_again(&mut self) -> Result<()> {
        self.0.spawn()
    }
}
