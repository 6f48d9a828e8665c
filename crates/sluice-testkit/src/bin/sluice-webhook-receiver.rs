//! The benchmark's webhook receiver: the testkit's [`WebhookReceiver`] on a given port,
//! failing `FAIL_RATE` of requests, until `EXPECT` records were accepted; then one line of
//! figures: accepted records/s between the first and last accepted request, and the
//! commit-to-receipt latency p50/p99 of accepted records.
//!
//! `sluice-webhook-receiver PORT_FILE EXPECT FAIL_RATE` (writes its URL to PORT_FILE).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_testkit::{rfc3339_micros, Behaviour, WebhookReceiver};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (port_file, expect, fail_rate) =
        (&args[1], args[2].parse::<usize>()?, args[3].parse::<f64>()?);
    let wall0 = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
    let inst0 = Instant::now();
    let rx = WebhookReceiver::start(0x5eed)?;
    rx.set(Behaviour {
        fail_rate,
        ..Behaviour::default()
    });
    std::fs::write(port_file, rx.url())?;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if rx.accepted_count() >= expect {
            break;
        }
    }
    let log = rx.log();
    let failed = log.iter().filter(|r| !r.accepted()).count();
    let acc: Vec<_> = log.into_iter().filter(|r| r.accepted()).collect();
    let first = acc.first().map(|r| r.at).unwrap_or(inst0);
    let last = acc.last().map(|r| r.at).unwrap_or(inst0);
    let mut records = 0usize;
    let mut lat = Vec::new();
    for r in &acc {
        let v: serde_json::Value = serde_json::from_slice(&r.body)?;
        let items = match v {
            serde_json::Value::Array(a) => a,
            one => vec![one],
        };
        let at = wall0 + r.at.duration_since(inst0).as_micros() as i64;
        for i in items {
            records += 1;
            if let Some(ts) = i["commit_ts"].as_str().and_then(rfc3339_micros) {
                lat.push((at - ts) as f64 / 1000.0);
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "requests_accepted={} requests_failed={} records={records} records_per_s={:.0} latency_ms_p50={:.1} latency_ms_p99={:.1}",
        acc.len(),
        failed,
        records as f64 / last.duration_since(first).as_secs_f64().max(1e-9),
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
