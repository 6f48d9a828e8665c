//! Private server processes for tests, the same way as [`crate::PgServer`]: a fresh
//! temporary directory, a free `127.0.0.1` port (chosen again if another process takes it
//! first), a bounded wait until the server answers, and removal on drop. This module holds
//! the common part ([`Daemon`], driven by a [`Spec`]) and `redis-server`; `nats.rs`,
//! `kafka.rs` and `clickhouse.rs` hold the other servers' specs.
//!
//! Invariants:
//! - A server is ready when `start` returns: it has answered its spec's probe
//!   ([`Spec::answers`]).
//! - `restart` keeps the port and the directory, so a server that persists there (Redis
//!   through an append-only file synced on every write, NATS through its JetStream store)
//!   loses nothing acknowledged.
//! - Dropping a server kills it and removes its directory; drop never panics.
//! - Programs come from the test tools' virtualenv when it has them (see [`tools_venv`]),
//!   else from `PATH`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{free_port, wait_until};

/// How long a server may take to answer after it was started.
const READY: Duration = Duration::from_secs(30);

/// How long a server asked to stop may take before it is killed.
const STOP: Duration = Duration::from_secs(10);

/// The virtualenv `scripts/install-deps.sh --tests` fills with pinned test tools:
/// `$SLUICE_TOOLS/venv`, by default `~/.cache/sluice-tools/venv`.
pub fn tools_venv() -> Option<PathBuf> {
    let tools = match std::env::var_os("SLUICE_TOOLS") {
        Some(t) => PathBuf::from(t),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/sluice-tools"),
    };
    Some(tools.join("venv"))
}

/// What differs between servers: how to run one and how to tell it is ready.
pub(crate) trait Spec {
    /// A short name for messages and the directory's prefix.
    fn name(&self) -> &'static str;

    /// The executable, a path or a name looked up on `PATH`.
    fn program(&self) -> PathBuf;

    /// Runs once, when the directory exists, before the first start (certificates).
    fn prepare(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Runs before each attempt on a new port, to choose any other port the server needs.
    fn pick_ports(&mut self) {}

    /// The command that runs the server on `port` with its files in `dir`.
    fn command(&self, port: u16, dir: &Path) -> Result<Command>;

    /// Whether the server on `port` answers as it should when ready.
    fn answers(&self, port: u16) -> bool;

    /// Log files the server writes itself in its directory, besides its output
    /// (`server.log`): a failed start reports their tails too, since a server that logs
    /// to files says why it stopped there (ClickHouse's `err.log`).
    fn logs(&self) -> &'static [&'static str] {
        &[]
    }
}

/// A running server with its directory and log.
pub(crate) struct Daemon<S: Spec> {
    pub(crate) spec: S,
    pub(crate) port: u16,
    pub(crate) dir: tempfile::TempDir,
    child: Option<Child>,
}

impl<S: Spec> Daemon<S> {
    pub(crate) fn start(spec: S) -> Result<Daemon<S>> {
        let mut d = Daemon::new(spec)?;
        let mut last = None;
        // A port taken between free_port() and the server's bind: try another.
        for _ in 0..5 {
            d.port = free_port();
            d.spec.pick_ports();
            match d.spawn() {
                Ok(()) => return Ok(d),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("{} did not start", d.spec.name())))
    }

    /// A server with its directory made and prepared but not started, nor its port
    /// chosen: for a caller that chooses ports itself (the nodes of a cluster must all
    /// know each other's) and then calls [`Daemon::spawn`].
    pub(crate) fn new(mut spec: S) -> Result<Daemon<S>> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-{}-", spec.name()))
            .tempdir()
            .context("cannot create a temporary directory")?;
        spec.prepare(dir.path())?;
        Ok(Daemon {
            spec,
            port: 0,
            dir,
            child: None,
        })
    }

    /// Whether the server was started and not killed or stopped since (it may have
    /// exited on its own).
    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub(crate) fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let program = self.spec.program();
        let child = self
            .spec
            .command(self.port, self.dir.path())?
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "could not start {} (is it installed? scripts/install-deps.sh --tests \
                     installs it)",
                    program.display()
                )
            })?;
        self.child = Some(child);
        let (name, port) = (self.spec.name(), self.port);
        let mut exited = None;
        let ready = wait_until(READY, &format!("{name} on port {port}"), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    exited = Some(status);
                    return Some(false);
                }
            }
            self.spec.answers(port).then_some(true)
        });
        match ready {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => {
                self.kill();
                let mut logs = tail(&self.log_path());
                for name in self.spec.logs() {
                    let text = tail(&self.dir.path().join(name));
                    if !text.is_empty() {
                        logs.push_str(&format!("\n{name} ends:\n{text}"));
                    }
                }
                bail!(
                    "{} on port {port} {}; its log ends:\n{logs}",
                    program.display(),
                    match exited {
                        Some(s) => format!("exited ({s})"),
                        None => "did not answer in time".into(),
                    },
                )
            }
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks the server to shut down (SIGTERM, through `kill(1)`: std has no other
    /// signal than SIGKILL) and waits for it a bounded time, then kills it.
    pub(crate) fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let asked = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let ended = asked
            && wait_until(STOP, "the server to stop", || {
                c.try_wait().ok().flatten().map(|_| ())
            })
            .is_ok();
        if !ended {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

/// The last 10 lines of the file at `path`, empty if there is none.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(10).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

impl<S: Spec> Drop for Daemon<S> {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TLS port besides the plain one.
struct Tls {
    port: u16,
    cert: PathBuf,
    key: PathBuf,
}

/// `redis-server` with an append-only file synced on every write.
struct Redis {
    tls: Option<Tls>,
}

impl Spec for Redis {
    fn name(&self) -> &'static str {
        "redis-server"
    }

    fn program(&self) -> PathBuf {
        "redis-server".into()
    }

    fn pick_ports(&mut self) {
        if let Some(t) = self.tls.as_mut() {
            t.port = free_port();
        }
    }

    fn command(&self, port: u16, dir: &Path) -> Result<Command> {
        let mut cmd = Command::new(self.program());
        if let Some(t) = &self.tls {
            // Both ports: the plain one answers the readiness probe and redis-cli.
            cmd.args(["--tls-port", &t.port.to_string()])
                .args(["--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(&t.cert)
                .arg("--tls-key-file")
                .arg(&t.key);
        }
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir);
        Ok(cmd)
    }

    fn answers(&self, port: u16) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

/// A private `redis-server` with an append-only file synced on every write.
pub struct RedisServer(Daemon<Redis>);

impl RedisServer {
    pub fn start() -> Result<RedisServer> {
        Daemon::start(Redis { tls: None }).map(RedisServer)
    }

    /// A server that also takes TLS connections with the PEM certificate and key given
    /// ([`RedisServer::tls_url`]); its plain port stays open for inspection.
    pub fn start_tls(cert: &Path, key: &Path) -> Result<RedisServer> {
        let tls = Tls {
            port: 0,
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        Daemon::start(Redis { tls: Some(tls) }).map(RedisServer)
    }

    /// `rediss://127.0.0.1:TLS_PORT/` of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        let t = self.0.spec.tls.as_ref()?;
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
