//! A concurrent write workload and the check that a sink ends identical to its table.

use std::time::Duration;

use super::recovery::{table_state, PsqlSession, Rng};
use super::{replay, wait_until, PgServer, Pipeline, WAIT};

/// Random inserts, updates and deletes on `public.{table}` (id bigint, v text, n int) from
/// a background psql session until `finish`.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    pub fn start(pg: &PgServer, table: &str, max: u64, seed: &str) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let mut session = PsqlSession::start(pg);
        let mut rng = Rng::from_env(seed);
        let table = table.to_owned();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let id = rng.range(1, max);
                let sql = match rng.below(5) {
                    0 => format!(
                        "INSERT INTO {table} VALUES ({id}, 'ins{n}', {n}) ON CONFLICT (id) DO UPDATE SET v = 'ups{n}';"
                    ),
                    1 => format!("DELETE FROM {table} WHERE id = {id};"),
                    // A key change: the row moves to another id.
                    2 => format!(
                        "UPDATE {table} SET id = {} WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM {table} WHERE id = {});",
                        id + max,
                        id + max
                    ),
                    _ => format!("UPDATE {table} SET v = 'upd{n}', n = {n} WHERE id = {id};"),
                };
                session.send(&sql);
                n += 1;
                if n.is_multiple_of(20) {
                    std::thread::sleep(Duration::from_millis(2));
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

    pub fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits until replaying the sink's records of `table` gives exactly the table's rows.
pub fn wait_identical(p: &Pipeline, pg: &PgServer, table: &str) {
    let want = table_state(pg, table);
    let prefix = format!("public.{table}:");
    let mut last = Default::default();
    let ok = wait_until(WAIT, "the sink to match the table", || {
        last = replay(&p.records());
        last.retain(|k, _| k.starts_with(&prefix));
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
            "sink differs from {table}: {} rows vs {}; missing {missing:?}, extra {extra:?}, differ {differ:?}\n{}",
            last.len(),
            want.len(),
            p.logs()
        );
    }
}
