//! A private cluster of `nats-server`s with JetStream for tests: `n` processes on
//! `127.0.0.1` that route to each other and share one JetStream (meta group, replicated
//! streams), so a test can kill a node and see the others carry on.
//!
//! The program is the same as [`crate::NatsServer`]'s: the tools virtualenv's
//! `nats-server` when it is there, else the one on `PATH`.
//!
//! Invariants:
//! - Node `i` is named `n{i}` (its `server_name`, which JetStream reports as the meta
//!   leader) and has its own directory, with its config (`nats.conf`, JSON like
//!   [`crate::NatsServer`]'s), its log (`server.log`) and its JetStream store
//!   (`jetstream/`).
//! - Each node has three ports, all different and all below 32768 (see
//!   [`crate::free_port`]: a node is restarted on its ports, which the kernel must not
//!   have handed to an outgoing connection meanwhile): clients, routes to the other
//!   nodes, and HTTP monitoring. Every node's config lists every node's route port, so a
//!   node started again finds the others and they find it.
//! - Ports are chosen before any node starts (each config names the others' routes); when
//!   one was taken by another process in between, the whole cluster is made again on new
//!   ports.
//! - [`NatsCluster::start`] returns when every node answers clients, not when JetStream is
//!   usable: electing a meta leader takes seconds, and tests that only need the nodes up
//!   should not wait for it. [`NatsCluster::wait_ready`] waits for that, by polling each
//!   node's `/jsz`, never by sleeping a fixed time.
//! - [`NatsCluster::start_again`] keeps a node's ports, name and store, so JetStream takes
//!   it back as the same peer.
//! - Dropping the cluster kills every node and removes their directories; drop never
//!   panics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;

use crate::daemon::{Daemon, Spec};
use crate::nats::{configured, nats_program, sends_info};
use crate::{free_port, wait_until};

/// The cluster's name, in every node's `cluster` block.
const CLUSTER: &str = "sluice";

/// How many times the cluster is made again on new ports when a port was taken.
const ATTEMPTS: usize = 5;

/// One node of the cluster.
struct Node {
    index: usize,
    /// Every node's route port, this one's at `index`.
    routes: Vec<u16>,
    /// The HTTP monitoring port (`/jsz`, `/healthz`).
    http: u16,
}

impl Node {
    fn config(&self, port: u16, dir: &Path) -> serde_json::Value {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        json!({
            "server_name": name(self.index),
            "listen": format!("127.0.0.1:{port}"),
            "http": format!("127.0.0.1:{}", self.http),
            "jetstream": { "store_dir": dir.join("jetstream") },
            "cluster": {
                "name": CLUSTER,
                "listen": format!("127.0.0.1:{}", self.routes[self.index]),
                // Its own route too: the server recognises itself and skips it, and one
                // list for all keeps the configs alike.
                "routes": routes,
            },
        })
    }
}

impl Spec for Node {
    fn name(&self) -> &'static str {
        "nats-node"
    }

    fn program(&self) -> PathBuf {
        nats_program()
    }

    fn command(&self, port: u16, dir: &Path) -> Result<Command> {
        configured(&self.program(), &self.config(port, dir), dir)
    }

    fn answers(&self, port: u16) -> bool {
        sends_info(port)
    }
}

/// Node `i`'s `server_name`.
fn name(i: usize) -> String {
    format!("n{i}")
}

/// `n` different ports that were free a moment ago, all below 32768.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

/// Whether a failed start was another process holding one of the ports.
fn port_taken(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("address already in use")
}

/// The body of `GET path` on `127.0.0.1:port`, which must answer 200.
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    // HTTP/1.0: the server closes the connection after its answer and sends the body
    // as is, so reading to the end is the whole of it.
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: an answer without a body: {answer:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    ensure!(
        status.split(' ').nth(1) == Some("200"),
        "GET {path}: {status}"
    );
    Ok(body.to_owned())
}

/// A private cluster of `nats-server`s sharing one JetStream.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use std::time::Duration;
/// let mut nats = sluice_testkit::NatsCluster::start(3)?;
/// nats.wait_ready(Duration::from_secs(20))?; // a stream with 3 replicas can be made now
/// let urls = nats.urls(); // nats://127.0.0.1:P0,nats://127.0.0.1:P1,nats://127.0.0.1:P2
/// nats.kill(0);
/// nats.wait_ready(Duration::from_secs(20))?; // n1 and n2 have elected a leader
/// nats.start_again(0)?;
/// # Ok(()) }
/// ```
///
/// Methods taking a node's index panic when it is not below [`NatsCluster::len`]: a test
/// doing that has a bug.
pub struct NatsCluster {
    /// Dropping each kills its process and removes its directory.
    nodes: Vec<Daemon<Node>>,
}

impl NatsCluster {
    /// Starts `nodes` servers forming one cluster and returns when each answers clients
    /// (see [`NatsCluster::wait_ready`] for JetStream).
    pub fn start(nodes: usize) -> Result<NatsCluster> {
        ensure!(nodes > 0, "a NATS cluster needs at least one node");
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match NatsCluster::try_start(nodes) {
                Ok(c) => return Ok(c),
                Err(e) if port_taken(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        let e = last.unwrap_or_else(|| anyhow::anyhow!("the cluster did not start"));
        Err(e.context(format!("{ATTEMPTS} attempts found a port taken")))
    }

    fn try_start(n: usize) -> Result<NatsCluster> {
        let ports = free_ports(3 * n);
        let (clients, rest) = ports.split_at(n);
        let (routes, https) = rest.split_at(n);
        let mut nodes = Vec::with_capacity(n);
        for (i, (&client, &http)) in clients.iter().zip(https).enumerate() {
            let spec = Node {
                index: i,
                routes: routes.to_vec(),
                http,
            };
            let mut d = Daemon::new(spec)?;
            d.port = client;
            nodes.push(d);
        }
        // One at a time: spawn waits until the node answers, which does not need the
        // others (it answers clients before JetStream has a leader).
        for (i, d) in nodes.iter_mut().enumerate() {
            d.spawn()
                .with_context(|| format!("node {} of the cluster", name(i)))?;
        }
        // On an error, the nodes started so far are killed as `nodes` is dropped.
        Ok(NatsCluster { nodes })
    }

    /// How many nodes the cluster has, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s `server_name`, `n{i}`: what `/jsz` and stream infos call it.
    pub fn name(&self, i: usize) -> String {
        assert!(
            i < self.nodes.len(),
            "no node {i} in a cluster of {}",
            self.len()
        );
        name(i)
    }

    /// Node `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Node `i`'s route port, which the other nodes connect to.
    pub fn route_port(&self, i: usize) -> u16 {
        let d = &self.nodes[i];
        d.spec.routes[d.spec.index]
    }

    /// Node `i`'s HTTP monitoring port (`/varz`, `/jsz`, `/healthz`...).
    pub fn http_port(&self, i: usize) -> u16 {
        self.nodes[i].spec.http
    }

    /// `nats://127.0.0.1:PORT` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.port(i))
    }

    /// Every node's [`NatsCluster::url`], comma separated, as NATS clients take a list of
    /// servers to fail over between.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = (0..self.len()).map(|i| self.url(i)).collect();
        urls.join(",")
    }

    /// Whether node `i` was started and not killed or stopped since.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].running()
    }

    /// Node `i`'s `/jsz` (its JetStream state: `meta_cluster.leader`, and on the leader
    /// `meta_cluster.replicas`).
    pub fn jsz(&self, i: usize) -> Result<serde_json::Value> {
        let body = http_get(self.http_port(i), "/jsz")?;
        serde_json::from_str(&body).with_context(|| format!("/jsz of {}: {body}", name(i)))
    }

    /// Kills node `i` (SIGKILL, as a crash would); [`NatsCluster::start_again`] brings it
    /// back.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Shuts node `i` down cleanly (SIGTERM), killing it if it takes more than 10 s.
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on its ports and store after [`NatsCluster::kill`] or
    /// [`NatsCluster::stop`], and returns when it answers clients.
    pub fn start_again(&mut self, i: usize) -> Result<()> {
        // Spawning over a running node would leave the old process behind, unkilled.
        ensure!(!self.is_running(i), "{} is running", name(i));
        self.nodes[i].spawn()
    }

    /// Waits up to `timeout` until the running nodes agree on a JetStream meta leader,
    /// one of them, which sees every other running node as a current peer; returns its
    /// index. With every node running, a stream with as many replicas as nodes can then
    /// be made.
    ///
    /// The leader alone is not enough: just after it is killed the others still name it
    /// for a few seconds, and a node just started again is not yet a peer the leader would
    /// place a replica on.
    pub fn wait_ready(&self, timeout: Duration) -> Result<usize> {
        let live: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        ensure!(!live.is_empty(), "no node of the cluster is running");
        let mut why = String::new();
        let ready = wait_until(
            timeout,
            "a JetStream meta leader in the NATS cluster",
            || match self.leader_of(&live) {
                Ok(i) => Some(i),
                Err(e) => {
                    why = format!("{e:#}");
                    None
                }
            },
        );
        ready.with_context(|| format!("last seen: {why}"))
    }

    /// The index of the meta leader all of `live` agree on and which has them all as
    /// current peers, or why there is none yet.
    fn leader_of(&self, live: &[usize]) -> Result<usize> {
        let mut leader: Option<(String, usize)> = None;
        for &i in live {
            let jsz = self.jsz(i).with_context(|| name(i))?;
            let said = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            if said.is_empty() {
                return Err(anyhow::anyhow!("{} knows no meta leader", name(i)));
            }
            match &leader {
                None => leader = Some((said.to_owned(), i)),
                Some((l, j)) if l != said => {
                    return Err(anyhow::anyhow!(
                        "{} says {l} leads, {} says {said}",
                        name(*j),
                        name(i)
                    ))
                }
                Some(_) => {}
            }
        }
        let Some((l, _)) = leader else {
            return Err(anyhow::anyhow!("no node is running"));
        };
        let Some(&at) = live.iter().find(|&&i| name(i) == l) else {
            return Err(anyhow::anyhow!("the meta leader, {l}, is not running"));
        };
        // Only the leader lists the peers, with whether each is up to date.
        let jsz = self.jsz(at).with_context(|| l.clone())?;
        if jsz["meta_cluster"]["leader"] != l.as_str() {
            return Err(anyhow::anyhow!("{l} no longer leads"));
        }
        let replicas = jsz["meta_cluster"]["replicas"].as_array();
        for &i in live.iter().filter(|&&i| i != at) {
            let peer = replicas
                .into_iter()
                .flatten()
                .find(|r| r["name"] == name(i).as_str());
            let current = peer.is_some_and(|r| r["current"] == true && r["offline"] != true);
            if !current {
                return Err(anyhow::anyhow!(
                    "{l} leads but {} is not a current peer",
                    name(i)
                ));
            }
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::*;

    const READY: Duration = Duration::from_secs(20);

    /// Sends a JetStream API request to the node on `port` and returns its answer;
    /// `None` when none came within 10 s (a node just back may not answer yet).
    fn js_request(port: u16, subject: &str, body: &serde_json::Value) -> Option<serde_json::Value> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("INFO {"), "{line}");
        let body = body.to_string();
        write!(
            s,
            "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.t 1\r\nPUB {subject} _INBOX.t {}\r\n{body}\r\n",
            body.len()
        )
        .unwrap();
        loop {
            line.clear();
            if let Err(e) = r.read_line(&mut line) {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{subject}: {e}"
                );
                return None;
            }
            assert!(!line.starts_with("-ERR"), "{subject}: {line}");
            if line.starts_with("PING") {
                s.write_all(b"PONG\r\n").unwrap();
            } else if let Some(msg) = line.strip_prefix("MSG ") {
                let len: usize = msg.split_whitespace().last().unwrap().parse().unwrap();
                let mut payload = vec![0; len + 2];
                r.read_exact(&mut payload).unwrap();
                return Some(serde_json::from_slice(&payload[..len]).unwrap());
            }
        }
    }

    /// Makes stream `name` with 3 replicas through node `i` and checks it has them.
    fn create_r3(nats: &NatsCluster, i: usize, name: &str) {
        let config = json!({
            "name": name,
            "subjects": [format!("{name}.>")],
            "num_replicas": 3,
            "storage": "file",
        });
        let subject = format!("$JS.API.STREAM.CREATE.{name}");
        // A node that was just started again may time the first request out while it
        // catches up: asked again, within a bound.
        let info = (0..3)
            .find_map(|_| js_request(nats.port(i), &subject, &config))
            .unwrap_or_else(|| panic!("{subject}: no answer from node {i} in 30 s"));
        assert!(info.get("error").is_none(), "{info}");
        assert_eq!(info["config"]["num_replicas"], 3, "{info}");
        let replicas = info["cluster"]["replicas"].as_array();
        assert_eq!(replicas.map(Vec::len), Some(2), "{info}");
    }

    #[test]
    fn nats_cluster_keeps_a_leader_when_a_node_dies_and_takes_it_back() {
        let t = Instant::now();
        let mut nats = NatsCluster::start(3).unwrap();
        assert_eq!(nats.len(), 3);
        let mut ports: Vec<u16> = (0..3)
            .flat_map(|i| [nats.port(i), nats.route_port(i), nats.http_port(i)])
            .collect();
        assert!(ports.iter().all(|&p| p < 32768), "{ports:?}");
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 9, "nine different ports");
        let urls = nats.urls();
        assert_eq!(urls.split(',').count(), 3);
        assert!(urls.starts_with(&format!("nats://127.0.0.1:{},", nats.port(0))));
        let dirs: Vec<_> = nats.nodes.iter().map(|d| d.dir.path().to_owned()).collect();

        let leader = nats.wait_ready(READY).unwrap();
        eprintln!("{:?}: {} leads", t.elapsed(), nats.name(leader));
        create_r3(&nats, 1, "A");
        eprintln!("{:?}: stream A made", t.elapsed());

        nats.kill(0);
        assert!(!nats.is_running(0));
        let leader = nats.wait_ready(READY).unwrap();
        assert_ne!(leader, 0);
        eprintln!("{:?}: n0 killed, {} leads", t.elapsed(), nats.name(leader));

        let port = nats.port(0);
        nats.start_again(0).unwrap();
        assert_eq!(nats.port(0), port);
        assert!(nats.start_again(0).is_err(), "n0 is already running");
        let leader = nats.wait_ready(READY).unwrap();
        eprintln!("{:?}: n0 back, {} leads", t.elapsed(), nats.name(leader));
        // Through the node that came back: it is a peer again and knows stream A.
        create_r3(&nats, 0, "B");
        let info = js_request(nats.port(0), "$JS.API.STREAM.INFO.A", &json!({}))
            .expect("n0 answers once it made stream B");
        assert_eq!(info["config"]["name"], "A", "{info}");
        eprintln!("{:?}: stream B made through n0", t.elapsed());

        // The leader itself this time, shut down cleanly: the others must elect another
        // while they still remember the old one.
        nats.stop(leader);
        let next = nats.wait_ready(READY).unwrap();
        assert_ne!(next, leader);
        eprintln!(
            "{:?}: {} stopped, {} leads",
            t.elapsed(),
            nats.name(leader),
            nats.name(next)
        );
        nats.start_again(leader).unwrap();
        nats.wait_ready(READY).unwrap();
        create_r3(&nats, leader, "C");
        eprintln!(
            "{:?}: {} back, stream C made",
            t.elapsed(),
            nats.name(leader)
        );

        let client = nats.port(2);
        drop(nats);
        assert!(TcpStream::connect(("127.0.0.1", client)).is_err());
        assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    }
}
