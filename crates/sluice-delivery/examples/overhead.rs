//! The engine's own cost: records/s through `sluice_delivery::run` into a target that
//! acknowledges at once, against a plain read of the same log (what a sink without the
//! engine does), in the same run.
//!
//! `cargo run --release -p sluice-delivery --example overhead -- [records] [batch]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{ChangeId, ChangeRecord, Lsn, Op, SinkStats};
use sluice_delivery::{
    Delivery, EngineConfig, Item, ItemOptions, Policy, RedbState, Target, Topics,
};
use sluice_log::{
    frame, Append, Consumer, FullPolicy, Log, LogConfig, Reader, RecordBatch, SharedLog, Until,
};

struct Instant_(Arc<AtomicU64>);

impl Target for Instant_ {
    fn deliver(&self, items: Vec<Arc<Item>>) -> Delivery {
        self.0.fetch_add(items.len() as u64, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let batch: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer, _) = Log::open(LogConfig {
            dir: dir.path().join("log"),
            segment_bytes: 64 << 20,
            max_bytes: None,
            on_full: FullPolicy::PauseSource,
            retention: Duration::from_secs(3600),
            shed_after: Duration::ZERO,
        })
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (spare, _keep) = tokio::sync::mpsc::channel(64);
        std::thread::spawn(move || writer.run(rx, spare));
        // 10,000 keys, 1,000-record transactions, ~200-byte rows.
        let mut next = 0u64;
        while next < n {
            let mut bytes = Vec::new();
            let count = 1000.min(n - next);
            for i in 0..count {
                let k = (next + i) % 10_000;
                let r = ChangeRecord {
                    id: ChangeId { commit_lsn: Lsn(0x1000 + next), ordinal: i + 1 },
                    op: Op::Update,
                    schema: "public".into(),
                    table: "t".into(),
                    key: Some(format!("{{\"id\":{k}}}")),
                    before: None,
                    after: Some(format!("{{\"id\":{k},\"v\":{},\"pad\":\"{}\"}}", next + i, "x".repeat(150))),
                    unchanged_toast: vec![],
                    lsn: Lsn(0x1000 + next),
                    commit_lsn: Lsn(0x1000 + next),
                    commit_ts_micros: 1,
                    xid: 1,
                    message: None,
                    old_key: None,
                };
                frame::encode_record(&mut bytes, &r);
            }
            next += count;
            tx.send(Append { bytes, records: count, commit: Some(Lsn(0x1000 + next)), ack: None })
                .await
                .unwrap();
        }
        let mut end = log.end();
        end.wait_for(|e| e.next >= n).await.unwrap();

        // A plain read of the log, as the file sink's loop does.
        let t = Instant::now();
        let mut reader = Reader::new(&log, 0).unwrap();
        let mut b = RecordBatch::default();
        let mut seen = 0u64;
        while reader.position() < n {
            b.clear();
            reader.read(&mut b, 1000, 4 << 20, &mut |_, _, _| true).unwrap();
            seen += b.iter().map(|r| r.json.len() as u64 & 1).sum::<u64>() + b.len() as u64;
        }
        let plain = t.elapsed();
        assert!(seen >= n);

        // The engine into a target that acknowledges at once.
        let (cursor, _) = log.cursors().register("bench", 0).unwrap();
        let store = RedbState::open(log.cursors().clone())
            .unwrap()
            .waiting_room("bench")
            .unwrap();
        let (_control, commands) = sluice_delivery::control(store.clone());
        let done = Arc::new(AtomicU64::new(0));
        let until = Until::default();
        let shared: SharedLog = log.clone().into();
        let consumer = Consumer::open(&shared, cursor.clone(), Box::new(|_, _, _| true)).unwrap();
        let t = Instant::now();
        let engine = tokio::spawn(sluice_delivery::run(
            EngineConfig {
                pipeline: "p".into(),
                name: "bench".into(),
                policy: Policy { concurrency: 256, batch, ..Policy::default() },
                items: ItemOptions::default(),
                topics: Topics::default(),
            },
            sluice_delivery::EngineIo {
                target: Arc::new(Instant_(done.clone())),
                consumer,
                store,
                stats: Arc::new(SinkStats::default()),
                commands,
                until: until.clone(),
            },
        ));
        while cursor.position() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let through = t.elapsed();
        until.abort.cancel();
        engine.await.unwrap().unwrap();
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "records={n} batch={batch} plain_read={:.0}/s engine={:.0}/s ratio={:.3} per_record_overhead_us={:.2}",
            rate(plain),
            rate(through),
            rate(through) / rate(plain),
            (through.as_secs_f64() - plain.as_secs_f64()) * 1e6 / n as f64
        );
    });
}
