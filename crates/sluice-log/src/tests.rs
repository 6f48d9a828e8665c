//! The log end to end on a real directory: append, sync, read, roll, repair, delete.

use std::time::Duration;

use sluice_core::{ChangeId, ChangeRecord, Lsn, Op};
use tokio::sync::mpsc;

use crate::*;

fn rec(lsn: u64, ordinal: u64, table: &str) -> ChangeRecord {
    ChangeRecord {
        id: ChangeId {
            commit_lsn: Lsn(lsn),
            ordinal,
        },
        op: Op::Insert,
        schema: "public".into(),
        table: table.into(),
        key: Some(format!("{{\"id\":{ordinal}}}")),
        before: None,
        after: Some(format!(
            "{{\"id\":{ordinal},\"pad\":\"{}\"}}",
            "x".repeat(100)
        )),
        unchanged_toast: vec![],
        lsn: Lsn(lsn),
        commit_lsn: Lsn(lsn),
        commit_ts_micros: 1,
        xid: 1,
        message: None,
        old_key: None,
    }
}

fn config(dir: &std::path::Path) -> LogConfig {
    LogConfig {
        dir: dir.to_owned(),
        segment_bytes: 4096,
        max_bytes: None,
        on_full: FullPolicy::PauseSource,
        retention: Duration::ZERO,
        shed_after: Duration::ZERO,
    }
}

struct Running {
    log: Log,
    tx: Option<mpsc::Sender<Append>>,
    thread: Option<std::thread::JoinHandle<Result<(), LogError>>>,
}

impl Running {
    fn open(config: LogConfig) -> (Running, Lsn) {
        let (log, writer, last) = Log::open(config).unwrap();
        let (tx, rx) = mpsc::channel(8);
        let (spare, _spare_rx) = mpsc::channel(8);
        let thread = std::thread::spawn(move || writer.run(rx, spare));
        (
            Running {
                log,
                tx: Some(tx),
                thread: Some(thread),
            },
            last,
        )
    }

    fn append(&self, records: &[ChangeRecord]) {
        let mut bytes = Vec::new();
        for r in records {
            frame::encode_record(&mut bytes, r);
        }
        self.tx
            .as_ref()
            .unwrap()
            .blocking_send(Append {
                bytes,
                records: records.len() as u64,
                commit: Some(records.last().unwrap().commit_lsn),
                ack: None,
            })
            .unwrap();
    }

    /// Appends `n` one-record transactions from a thread of its own (it blocks while the
    /// writer waits on the budget).
    fn feed(&self, n: u64) -> std::thread::JoinHandle<()> {
        let tx = self.tx.clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..n {
                let mut bytes = Vec::new();
                frame::encode_record(&mut bytes, &rec(100 + i, i, "a"));
                let a = Append {
                    bytes,
                    records: 1,
                    commit: Some(Lsn(100 + i)),
                    ack: None,
                };
                tx.blocking_send(a).unwrap();
            }
        })
    }

    /// Waits until the writer holds back on the disk budget.
    fn wait_paused(&self, deadline: std::time::Instant) {
        while !self.log.paused() {
            assert!(
                std::time::Instant::now() < deadline,
                "never paused: {} bytes, next {}, first {}",
                self.log.bytes(),
                self.log.next_offset(),
                self.log.first()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn close(mut self) {
        drop(self.tx.take());
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

fn read_all(log: &Log, from: u64, until: u64) -> Vec<(u64, u64, String)> {
    let mut r = Reader::new(log, from).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while r.position() < until {
        assert!(
            std::time::Instant::now() < deadline,
            "log did not reach {until}"
        );
        let mut b = RecordBatch::default();
        r.read(&mut b, 1000, 1 << 20, &mut |_, _, _| true).unwrap();
        out.extend(
            b.iter()
                .map(|x| (x.offset, x.id.ordinal, x.table.to_owned())),
        );
    }
    out
}

#[test]
fn records_come_back_in_order_across_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = Running::open(config(dir.path()));
    // A cursor at the start holds every segment.
    let (_held, _) = run.log.cursors().register("all", 0).unwrap();
    for i in 0..50u64 {
        run.append(&[rec(100 + i, i, "a")]);
    }
    let log = run.log.clone();
    run.close();
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() > 3,
        "small segments roll"
    );
    let got = read_all(&log, 0, 50);
    assert_eq!(got.len(), 50);
    for (i, (offset, ordinal, _)) in got.iter().enumerate() {
        assert_eq!((*offset, *ordinal), (i as u64, i as u64));
    }
    // Reopened, the log continues where it was, and knows its last commit.
    drop((log, _held));
    let (run, last) = Running::open(config(dir.path()));
    assert_eq!(last, Lsn(149));
    let (_held, _) = run.log.cursors().register("all", 0).unwrap();
    assert_eq!(
        _held.position(),
        0,
        "a cursor keeps its place across restarts"
    );
    run.append(&[rec(200, 50, "b")]);
    let log = run.log.clone();
    run.close();
    let got = read_all(&log, 48, 51);
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![48, 49, 50]
    );
    assert_eq!(got[2].2, "b");
}

#[test]
fn a_torn_tail_is_cut_and_the_rest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_bytes = 1 << 30;
    let (run, _) = Running::open(c.clone());
    run.append(&[rec(1, 1, "a"), rec(1, 2, "a")]);
    run.close();
    let seg = dir.path().join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    let whole = bytes.len();
    let mut partial = Vec::new();
    frame::encode_record(&mut partial, &rec(2, 1, "a"));
    bytes.extend_from_slice(&partial[..partial.len() / 2]);
    std::fs::write(&seg, &bytes).unwrap();
    let (run, last) = Running::open(c);
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, whole);
    assert_eq!(last, Lsn(1));
    assert_eq!(run.log.next_offset(), 2);
    run.close();
}

#[test]
fn segments_go_only_when_every_cursor_has_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = Running::open(config(dir.path()));
    let (slow, _) = run.log.cursors().register("slow", 0).unwrap();
    let (fast, _) = run.log.cursors().register("fast", 0).unwrap();
    for i in 0..60u64 {
        run.append(&[rec(100 + i, i, "a")]);
    }
    let wait_end = |n: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while run.log.next_offset() < n {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_end(60);
    fast.ack(60);
    run.log.cursors().commit().unwrap();
    run.append(&[rec(300, 1, "a")]);
    wait_end(61);
    assert_eq!(
        run.log.first(),
        0,
        "the slow cursor holds the first segment"
    );
    slow.ack(40);
    run.log.cursors().commit().unwrap();
    run.append(&[rec(301, 1, "a")]);
    wait_end(62);
    let first = run.log.first();
    assert!(
        first > 0 && first <= 40,
        "deleted up to the slow cursor: {first}"
    );
    assert!(matches!(
        Reader::new(&run.log, 0),
        Err(LogError::Expired { .. })
    ));
    run.close();
}

#[test]
fn shed_policy_detaches_the_slowest_cursor_at_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_bytes = Some(20_000);
    c.on_full = FullPolicy::ShedSink;
    let (run, _) = Running::open(c.clone());
    let (stuck, _) = run.log.cursors().register("stuck", 0).unwrap();
    // A follower trails the others: it is never the one shed.
    let (follower, _) = run.log.cursors().register("follower", 0).unwrap();
    follower.set_follower();
    for i in 0..200u64 {
        run.append(&[rec(100 + i, i, "a")]);
    }
    // Shed only once it alone holds the oldest segment.
    let log = run.log.clone();
    run.close();
    assert!(stuck.is_shed());
    assert!(follower.is_shed());
    assert!(log.bytes() < 30_000, "{}", log.bytes());
    // The mark survives restarts until it is cleared (once the re-backfill is requested):
    // the sink comes back at the log's start, to be backfilled.
    drop(log);
    for _ in 0..2 {
        let (run, _) = Running::open(c.clone());
        let first = run.log.first();
        let (again, shed_at) = run.log.cursors().register("stuck", first).unwrap();
        assert_eq!(shed_at, Some(0));
        assert_eq!(again.position(), first);
        assert!(first > 0);
        assert!(!again.is_shed());
        run.close();
    }
    let (run, _) = Running::open(c);
    run.log.cursors().clear_shed("stuck").unwrap();
    let (_, shed_at) = run.log.cursors().register("stuck", 0).unwrap();
    assert_eq!(shed_at, None);
    run.close();
}

#[test]
fn pause_policy_waits_for_the_slow_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_bytes = Some(20_000);
    let (run, _) = Running::open(c);
    let (slow, _) = run.log.cursors().register("slow", 0).unwrap();
    let feeder = run.feed(300);
    // Three times the budget, so the budget is crossed well before the last append.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    run.wait_paused(deadline);
    let stalled = run.log.next_offset();
    assert!(stalled < 300);
    // The sink catches up: the writer resumes and everything arrives.
    while run.log.next_offset() < 300 {
        assert!(std::time::Instant::now() < deadline, "never resumed");
        slow.ack(run.log.next_offset());
        run.log.cursors().commit().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!slow.is_shed());
    feeder.join().unwrap();
    run.close();
}

#[test]
fn shed_policy_sheds_none_of_the_sinks_that_catch_up_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_bytes = Some(20_000);
    c.on_full = FullPolicy::ShedSink;
    c.shed_after = Duration::from_secs(30);
    let (run, _) = Running::open(c);
    let (busy, _) = run.log.cursors().register("busy", 0).unwrap();
    let feeder = run.feed(600);
    // A burst past the budget: the source waits instead of shedding the sink at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    run.wait_paused(deadline);
    assert!(!busy.is_shed());
    while run.log.next_offset() < 600 {
        assert!(std::time::Instant::now() < deadline, "never resumed");
        busy.ack(run.log.next_offset());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!busy.is_shed());
    feeder.join().unwrap();
    run.close();
}

#[test]
fn shed_policy_sheds_the_cursor_a_follower_waits_for_not_the_follower() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_bytes = Some(20_000);
    c.on_full = FullPolicy::ShedSink;
    c.shed_after = Duration::from_millis(200);
    let (run, _) = Running::open(c);
    // Registered first, so a tie on position alone would shed it first.
    let (follower, _) = run.log.cursors().register("a-follower", 0).unwrap();
    follower.set_follower();
    let (stuck, _) = run.log.cursors().register("stuck", 0).unwrap();
    let feeder = run.feed(600);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while run.log.next_offset() < 600 {
        assert!(std::time::Instant::now() < deadline, "never resumed");
        // The follower trails the stuck sink, and catches up once that is shed.
        if stuck.is_shed() {
            follower.ack(run.log.next_offset());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(stuck.is_shed());
    assert!(!follower.is_shed());
    feeder.join().unwrap();
    run.close();
}

#[test]
fn a_consumer_reads_what_it_keeps_from_its_cursor_then_idles_drains_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = Running::open(config(dir.path()));
    run.append(&[rec(100, 0, "a"), rec(100, 1, "b"), rec(100, 2, "a")]);
    let (cursor, _) = run.log.cursors().register("c", 0).unwrap();
    let log: SharedLog = run.log.clone().into();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let keep: Keep = Box::new(|_, _, t| t == "a");
        let mut c = Consumer::open(&log, cursor.clone(), keep).unwrap();
        let until = Until::default();
        let mut batch = RecordBatch::default();
        let step = c.next(&mut batch, &until, None).await.unwrap();
        assert_eq!(step, Step::Read);
        let ordinals: Vec<u64> = batch.iter().map(|r| r.id.ordinal).collect();
        assert_eq!(ordinals, [0, 2], "only table a, in order");
        assert_eq!(batch.next, 3);
        assert_eq!(
            cursor.position(),
            0,
            "the consumer acknowledges, not next()"
        );
        c.ack(batch.next);
        assert_eq!(cursor.position(), 3);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.tick().await;
        let idle = tokio::time::timeout(
            Duration::from_secs(10),
            c.next(&mut batch, &until, Some(&mut tick)),
        );
        assert_eq!(idle.await.unwrap().unwrap(), Step::Idle);
        until.drain.cancel();
        assert_eq!(
            c.next(&mut batch, &until, None).await.unwrap(),
            Step::Drained
        );
        // A consumer opened at its cursor resumes there; aborted at the end, it stops.
        let mut again = Consumer::open(&log, cursor.clone(), Box::new(|_, _, _| true)).unwrap();
        assert_eq!(again.position(), 3);
        let stop = Until::default();
        stop.abort.cancel();
        assert_eq!(
            again.next(&mut batch, &stop, None).await.unwrap(),
            Step::Stopped
        );
    });
    drop(log);
    run.close();
}
