//! The benchmark's SSE receiver for many clients: CLIENTS connections to
//! `GET /v1/sinks/SINK/events` on ADDR (auth "none"), each until it has COUNT events or
//! TIMEOUT seconds passed; then one line: commit-to-read latency p50, p90, p99 and max
//! over every event (when the bytes were read minus the record's `commit_ts`). Says
//! `ready` on stderr once every client is connected.
//!
//! `sluice-sse-probe ADDR SINK COUNT TIMEOUT CLIENTS`
//!
//! All clients share one thread going round its sockets with epoll (a single-threaded
//! tokio runtime), as cheap as a receiver on the same machine can be: 1,000 clients on
//! other hosts cost the server's cores nothing, and a thread per client here spent as
//! much CPU waking up as the server spent sending (until 2026-12-05 it was a thread per
//! client, before that the Python receiver, which measured mostly itself).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_testkit::rfc3339_micros;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Connects and reads the response's head.
async fn connect(addr: &str, sink: &str) -> anyhow::Result<BufReader<TcpStream>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET /v1/sinks/{sink}/events HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        anyhow::ensure!(
            r.read_line(&mut line).await? > 0,
            "closed before the head ended"
        );
        if line.trim().is_empty() {
            return Ok(r);
        }
    }
}

/// Pushes the latency of every complete event line in `rest` onto `lat` and drops the
/// complete lines.
fn take_events(rest: &mut Vec<u8>, seen: i64, lat: &mut Vec<i64>) {
    let key = b"\"commit_ts\":\"";
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

/// Reads events from `r` until it has `want`, the stream ends or the deadline; returns each event's
/// latency in µs.
async fn client(
    mut r: BufReader<TcpStream>,
    want: usize,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Vec<i64>> {
    let (mut lat, mut buf) = (Vec::new(), vec![0u8; 64 << 10]);
    // What the head's reader already buffered comes first.
    let mut rest = r.buffer().to_vec();
    r.consume(rest.len());
    take_events(&mut rest, now_micros(), &mut lat);
    while lat.len() < want {
        let Ok(n) = tokio::time::timeout_at(deadline, r.get_mut().read(&mut buf)).await else {
            break;
        };
        let n = n?;
        if n == 0 {
            break;
        }
        let seen = now_micros();
        rest.extend_from_slice(&buf[..n]);
        take_events(&mut rest, seen, &mut lat);
    }
    Ok(lat)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, sink, count, timeout, clients] = &args[..] else {
        anyhow::bail!("usage: sluice-sse-probe ADDR SINK COUNT TIMEOUT CLIENTS");
    };
    let (count, clients): (usize, usize) = (count.parse()?, clients.parse()?);
    let timeout = Duration::from_secs(timeout.parse()?);
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut lat = rt.block_on(async {
        // Connected one after another: a burst of 1,000 connects overflows the listen queue.
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            conns.push(connect(addr, sink).await?);
        }
        eprintln!("ready");
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let mut tasks = tokio::task::JoinSet::new();
        for conn in conns {
            tasks.spawn(client(conn, count, deadline));
        }
        let mut lat = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(l)) => lat.extend(l),
                Ok(Err(e)) => eprintln!("client: {e}"),
                Err(e) => eprintln!("client: {e}"),
            }
        }
        anyhow::Ok(lat)
    })?;
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
