//! The benchmark's SSE receiver for many clients: CLIENTS connections to
//! `GET /v1/sinks/SINK/events` on ADDR (auth "none"), a thread each, each until it has
//! COUNT events or TIMEOUT seconds passed; then one line: commit-to-read latency p50,
//! p90, p99 and max over every event (when the bytes were read minus the record's
//! `commit_ts`). Says `ready` on stderr once every client is connected.
//!
//! `sluice-sse-probe ADDR SINK COUNT TIMEOUT CLIENTS`
//!
//! Lighter than the Python receiver: with 1,000 clients that one spends most of the time
//! going round its sockets, and measures itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_testkit::rfc3339_micros;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Connects and reads the response's head.
fn connect(addr: &str, sink: &str) -> anyhow::Result<BufReader<TcpStream>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    write!(
        s,
        "GET /v1/sinks/{sink}/events HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            return Ok(r);
        }
    }
}

/// Reads events from `r` until it has `want` or the deadline; returns each event's
/// latency in µs.
fn client(mut r: BufReader<TcpStream>, want: usize, deadline: Instant) -> anyhow::Result<Vec<i64>> {
    let key = b"\"commit_ts\":\"";
    let (mut lat, mut buf, mut rest) = (Vec::new(), vec![0u8; 1 << 20], Vec::new());
    while lat.len() < want && Instant::now() < deadline {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        let seen = now_micros();
        rest.extend_from_slice(&buf[..n]);
        let cut = rest.iter().rposition(|&b| b == b'\n').map_or(0, |c| c + 1);
        for l in rest[..cut].split(|&b| b == b'\n') {
            if !l.starts_with(b"data:") {
                continue;
            }
            let Some(i) = l.windows(key.len()).position(|w| w == key) else {
                continue;
            };
            let ts = &l[i + key.len()..];
            let end = ts.iter().position(|&b| b == b'"').unwrap_or(ts.len());
            if let Some(t) = std::str::from_utf8(&ts[..end])
                .ok()
                .and_then(rfc3339_micros)
            {
                lat.push(seen - t);
            }
        }
        rest.drain(..cut);
    }
    Ok(lat)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, sink, count, timeout, clients] = &args[..] else {
        anyhow::bail!("usage: sluice-sse-probe ADDR SINK COUNT TIMEOUT CLIENTS");
    };
    let (count, clients): (usize, usize) = (count.parse()?, clients.parse()?);
    let deadline = Instant::now() + Duration::from_secs(timeout.parse()?);
    // Connected one after another: a burst of 1,000 connects overflows the listen queue.
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(connect(addr, sink)?);
    }
    eprintln!("ready");
    let all = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let all = all.clone();
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || match client(conn, count, deadline) {
                    Ok(lat) => all.lock().expect("lock").extend(lat),
                    Err(e) => eprintln!("client: {e}"),
                })
                .expect("spawn a client thread")
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut lat = std::mem::take(&mut *all.lock().expect("lock"));
    anyhow::ensure!(!lat.is_empty(), "no events");
    lat.sort_unstable();
    let pct = |p: f64| lat[((p * lat.len() as f64) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "events={} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} clients={clients}",
        lat.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        *lat.last().unwrap_or(&0) as f64 / 1000.0
    );
    Ok(())
}
