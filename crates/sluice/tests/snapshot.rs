//! Initial snapshots: the rows already in the tables arrive as `op = "read"` records before
//! the stream, consistent with the slot, and the sink ends identical to the tables while
//! they are written to throughout.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::recovery::*;
use support::*;

/// Writes random inserts, updates and deletes to `public.t` (ids 1..=max) from a
/// background psql session until told to stop.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(pg: &PgServer, table: &str, max: u64, seed: &str) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let mut session = PsqlSession::start(pg);
        let mut rng = Rng::from_env(seed);
        let table = table.to_owned();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let id = rng.range(1, max);
                let sql = match rng.below(4) {
                    0 => format!(
                        "INSERT INTO {table} VALUES ({id}, 'ins{n}', {n}) ON CONFLICT (id) DO UPDATE SET v = 'ups{n}';"
                    ),
                    1 => format!("DELETE FROM {table} WHERE id = {id};"),
                    _ => format!("UPDATE {table} SET v = 'upd{n}', n = {n} WHERE id = {id};"),
                };
                session.send(&sql);
                n += 1;
                if n % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            session.finish();
            n
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Waits until replaying the sink gives exactly the table's rows.
fn wait_identical(p: &Pipeline, pg: &PgServer, table: &str) {
    let want = table_state(pg, table);
    let mut last = Default::default();
    let ok = wait_until(WAIT, "the sink to match the table", || {
        last = replay(&p.records());
        (last == want).then_some(())
    });
    if ok.is_err() {
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !last.contains_key(*k))
            .take(5)
            .collect();
        let extra: Vec<_> = last
            .keys()
            .filter(|k| !want.contains_key(*k))
            .take(5)
            .collect();
        let differ: Vec<_> = want
            .iter()
            .filter(|(k, v)| last.get(*k).is_some_and(|l| l != *v))
            .take(5)
            .collect();
        panic!(
            "sink differs from the table: {} rows vs {}; missing {missing:?}, extra {extra:?}, differ {differ:?}\n{}",
            last.len(),
            want.len(),
            p.logs()
        );
    }
}

#[test]
fn a_table_written_during_its_initial_snapshot_ends_identical() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.t (id bigint PRIMARY KEY, v text, n int);
         INSERT INTO t SELECT g, 'row' || g, g FROM generate_series(1, 60000) g;
         CREATE TABLE public.empty (id int PRIMARY KEY);",
    )
    .unwrap();
    let writer = Writer::start(&pg, "t", 70_000, "snapshot-writes");
    let mut p = Pipeline::new(
        &pg,
        "snap",
        &["public.t", "public.empty"],
        "chunk_rows = 5000\nsnapshot_workers = 2",
    );
    p.start();
    if wait_until(WAIT, "the snapshot to complete", || {
        p.log_contains("snapshot: complete").then_some(())
    })
    .is_err()
    {
        panic!("no snapshot completion\n{}", p.logs());
    }
    p.wait_streaming(&pg);
    let writes = writer.finish();
    assert!(writes > 0);
    wait_identical(&p, &pg, "t");
    p.stop();

    let recs = p.records();
    let reads: Vec<&Value> = recs.iter().filter(|r| r["op"] == "read").collect();
    assert!(reads.len() >= 50_000, "{} read records", reads.len());
    // Every read precedes every streamed change, and shares the consistent point.
    let first_change = recs
        .iter()
        .position(|r| r["op"] != "read")
        .unwrap_or(recs.len());
    assert!(recs[first_change..].iter().all(|r| r["op"] != "read"));
    let point = reads[0]["commit_lsn"].clone();
    assert!(reads
        .iter()
        .all(|r| r["commit_lsn"] == point && r["xid"] == 0));
    assert!(recs[first_change..]
        .iter()
        .all(|r| lsn(r["commit_lsn"].as_str().unwrap()) > lsn(point.as_str().unwrap())));
    // Ids are unique.
    let ids: std::collections::HashSet<&str> =
        recs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), recs.len());
    assert_eq!(reads[0]["key"], json!({"id": reads[0]["after"]["id"]}));
    assert!(!recs.iter().any(|r| r["table"] == "empty"));
}
