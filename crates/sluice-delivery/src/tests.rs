//! The engine against a real log on disk and its redb store, with a target whose answers
//! the test decides, and Tokio's clock paused where time matters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{ChangeId, ChangeRecord, LogicalMessage, Lsn, Op, SinkStats};
use sluice_log::{frame, Append, Consumer, FullPolicy, Log, LogConfig, SharedLog, Until};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::*;

/// What the test target answers for a record.
type Decide = dyn Fn(&Item, u32) -> Result<(), Failure> + Send + Sync;

/// Records every attempt; answers with `decide(item, attempt)`.
struct Recorder {
    decide: Mutex<Arc<Decide>>,
    attempts: Mutex<HashMap<ChangeId, u32>>,
    /// Accepted deliveries in the order they were answered, with Tokio's time.
    accepted: Mutex<Vec<(Item, tokio::time::Instant)>>,
    /// Keys with a delivery in flight: two at once for one key is a bug.
    busy: Mutex<HashMap<Box<str>, ()>>,
    overlap: Mutex<bool>,
    delay: Duration,
}

impl Recorder {
    fn new(decide: Arc<Decide>, delay: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            decide: Mutex::new(decide),
            attempts: Mutex::default(),
            accepted: Mutex::default(),
            busy: Mutex::default(),
            overlap: Mutex::new(false),
            delay,
        })
    }

    fn set(&self, decide: Arc<Decide>) {
        *self.decide.lock().unwrap() = decide;
    }

    fn accepted_ids(&self, key: &str) -> Vec<u64> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| &*i.key == key)
            .map(|(i, _)| i.id.ordinal)
            .collect()
    }
}

struct Shared(Arc<Recorder>);

impl Target for Shared {
    fn deliver(&self, items: Vec<Arc<Item>>) -> Delivery {
        let r = self.0.clone();
        Box::pin(async move {
            for i in &items {
                if r.busy.lock().unwrap().insert(i.key.clone(), ()).is_some() {
                    *r.overlap.lock().unwrap() = true;
                }
            }
            tokio::time::sleep(r.delay).await;
            let decide = r.decide.lock().unwrap().clone();
            let mut result = Ok(());
            for i in &items {
                let n = {
                    let mut a = r.attempts.lock().unwrap();
                    let n = a.entry(i.id).or_default();
                    *n += 1;
                    *n
                };
                if let Err(e) = decide(i, n) {
                    result = Err(e);
                }
            }
            for i in &items {
                r.busy.lock().unwrap().remove(&i.key);
            }
            if result.is_ok() {
                let now = tokio::time::Instant::now();
                let mut acc = r.accepted.lock().unwrap();
                for i in &items {
                    acc.push(((**i).clone(), now));
                }
            }
            result
        })
    }
}

fn row(lsn: u64, ordinal: u64, key: u64) -> ChangeRecord {
    ChangeRecord {
        id: ChangeId {
            commit_lsn: Lsn(lsn),
            ordinal,
        },
        op: Op::Insert,
        schema: "public".into(),
        table: "t".into(),
        key: Some(format!("{{\"id\":{key}}}")),
        before: None,
        after: Some(format!("{{\"id\":{key},\"v\":{ordinal}}}")),
        unchanged_toast: vec![],
        lsn: Lsn(lsn),
        commit_lsn: Lsn(lsn),
        commit_ts_micros: now_micros(),
        xid: 1,
        message: None,
        old_key: None,
    }
}

fn event(lsn: u64, key: &str, deliver_at_ms: Option<i64>, ttl_ms: Option<i64>) -> ChangeRecord {
    let mut r = row(lsn, 1, 0);
    r.op = Op::Message;
    r.schema = OUTBOX_PREFIX.into();
    r.table = "jobs".into();
    r.key = None;
    r.after = None;
    let content = serde_json::json!({
        "topic": "jobs", "key": key, "payload": {}, "headers": {},
        "deliver_at_ms": deliver_at_ms, "ttl_ms": ttl_ms, "ordered": true,
    });
    r.message = Some(LogicalMessage {
        prefix: OUTBOX_PREFIX.into(),
        content: content.to_string().into_bytes(),
        transactional: true,
    });
    r
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn key_of(k: u64) -> String {
    format!("public.t:{{\"id\":{k}}}")
}

/// A log with a writer thread, and one engine over it that can be stopped and started.
struct Bench {
    _dir: tempfile::TempDir,
    log: Log,
    tx: mpsc::Sender<Append>,
    lsn: u64,
}

struct Running {
    drain: CancellationToken,
    abort: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DeliveryError>>,
    control: Control,
    cursor: Arc<sluice_log::Cursor>,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer, _) = Log::open(LogConfig {
            dir: dir.path().join("log"),
            segment_bytes: 1 << 20,
            max_bytes: None,
            on_full: FullPolicy::PauseSource,
            retention: Duration::ZERO,
            shed_after: Duration::ZERO,
        })
        .unwrap();
        let (tx, rx) = mpsc::channel(64);
        let (spare, _keep) = mpsc::channel(64);
        std::thread::spawn(move || {
            let _keep = _keep;
            writer.run(rx, spare)
        });
        Bench {
            _dir: dir,
            log,
            tx,
            lsn: 0x1000,
        }
    }

    async fn append(&mut self, records: Vec<ChangeRecord>) {
        let mut bytes = Vec::new();
        for mut r in records {
            self.lsn += 1;
            r.id.commit_lsn = Lsn(self.lsn);
            r.commit_lsn = Lsn(self.lsn);
            frame::encode_record(&mut bytes, &r);
        }
        let n = bytes.len();
        let count = {
            let mut c = 0;
            let mut at = 0;
            while at < n {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                at += 8 + len;
                c += 1;
            }
            c
        };
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx
            .send(Append {
                bytes,
                records: count,
                commit: Some(Lsn(self.lsn)),
                ack: Some(ack),
            })
            .await
            .unwrap();
        done.await.unwrap();
    }

    fn start(&self, target: Arc<Recorder>, policy: Policy) -> Running {
        let (cursor, _) = self.log.cursors().register("hook", 0).unwrap();
        let store = RedbState::open(self.log.cursors().clone())
            .unwrap()
            .waiting_room("hook")
            .unwrap();
        let (control, commands) = control(store.clone());
        let until = Until::default();
        let (drain, abort) = (until.drain.clone(), until.abort.clone());
        let shared: SharedLog = self.log.clone().into();
        let consumer = Consumer::open(&shared, cursor.clone(), Box::new(|_, _, _| true)).unwrap();
        let task = tokio::spawn(run(
            EngineConfig {
                pipeline: "p".into(),
                name: "hook".into(),
                policy,
                items: ItemOptions::default(),
                topics: Topics::default(),
            },
            EngineIo {
                target: Arc::new(Shared(target)),
                consumer,
                store,
                stats: Arc::new(SinkStats::default()),
                commands,
                until,
            },
        ));
        Running {
            drain,
            abort,
            task,
            control,
            cursor,
        }
    }
}

impl Running {
    async fn stop(self) {
        self.abort.cancel();
        self.task.await.unwrap().unwrap();
        let _ = self.drain;
    }
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn policy() -> Policy {
    Policy {
        concurrency: 32,
        retry: Retry {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: 0,
            max_age: None,
        },
        ..Policy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn per_key_order_holds_under_random_failures() {
    let mut b = Bench::new();
    // 30% of attempts fail, some with Retry-After; every key is retried until it goes.
    let target = Recorder::new(
        Arc::new(|_, _| {
            if fastrand::u8(..10) < 3 {
                Err(Failure::Retry {
                    error: "503".into(),
                    after: fastrand::bool().then(|| Duration::from_millis(20)),
                })
            } else {
                Ok(())
            }
        }),
        Duration::from_millis(5),
    );
    let run = b.start(
        target.clone(),
        Policy {
            batch: 4,
            ..policy()
        },
    );
    let keys = 300u64;
    let per_key = 8u64;
    for round in 0..per_key {
        let recs = (0..keys).map(|k| row(0, round * keys + k + 1, k)).collect();
        b.append(recs).await;
    }
    let total = (keys * per_key) as usize;
    until("all delivered", || {
        target.accepted.lock().unwrap().len() >= total
    })
    .await;
    until("cursor at the end", || {
        run.cursor.position() == b.log.next_offset()
    })
    .await;
    assert!(
        !*target.overlap.lock().unwrap(),
        "two deliveries of one key at once"
    );
    for k in 0..keys {
        let got = target.accepted_ids(&key_of(k));
        let want: Vec<u64> = (0..per_key).map(|r| r * keys + k + 1).collect();
        assert_eq!(got, want, "key {k}");
    }
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_key_waits_while_others_flow_then_parks_without_holding_the_cursor() {
    let mut b = Bench::new();
    let target = Recorder::new(
        Arc::new(|i, _| {
            if i.key.contains("\"id\":7}") {
                Err(Failure::Retry {
                    error: "HTTP 500".into(),
                    after: None,
                })
            } else {
                Ok(())
            }
        }),
        Duration::from_millis(1),
    );
    let mut p = policy();
    p.retry.max_attempts = 4;
    let run = b.start(target.clone(), p);
    b.append((0..20).map(|k| row(0, k + 1, k % 10)).collect())
        .await;
    // Key 7's first record fails 4 times; the key parks with both its records.
    until("others delivered", || {
        target.accepted.lock().unwrap().len() == 18
    })
    .await;
    until("cursor past the parked key", || {
        run.cursor.position() == b.log.next_offset()
    })
    .await;
    let rows = run.control.store.keys().unwrap();
    let (k7, parked) = rows.iter().find(|(k, _)| *k == key_of(7)).expect("parked");
    assert_eq!(parked.state, KeyState::Parked);
    assert_eq!(parked.attempts, 4);
    assert_eq!(parked.last_error, "HTTP 500");
    assert_eq!(run.control.store.waiting_len(k7).unwrap(), 2);
    // Newer records of the parked key join it; others keep flowing.
    b.append(vec![row(0, 100, 7), row(0, 101, 3)]).await;
    until("key 3 flows", || {
        target.accepted_ids(&key_of(3)).contains(&101)
    })
    .await;
    until("parked key holds 3", || {
        run.control.store.waiting_len(&key_of(7)).unwrap() == 3
    })
    .await;
    until("cursor at the end", || {
        run.cursor.position() == b.log.next_offset()
    })
    .await;
    assert!(target.accepted_ids(&key_of(7)).is_empty());

    // Redrive once the receiver is fixed: the parked records go in order, before a
    // record of the key written after the redrive.
    target.set(Arc::new(|_, _| Ok(())));
    let n = run
        .control
        .ask(|tx| Command::Redrive(Selection::Keys(vec![key_of(7)]), tx))
        .await
        .unwrap();
    assert_eq!(n, 1);
    b.append(vec![row(0, 200, 7)]).await;
    until("redriven", || target.accepted_ids(&key_of(7)).len() == 4).await;
    assert_eq!(target.accepted_ids(&key_of(7)), vec![8, 18, 100, 200]);
    until("waiting room empty", || {
        run.control.store.waiting_len(&key_of(7)).unwrap() == 0
    })
    .await;
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn skip_moves_parked_records_to_the_dead_letters_and_the_key_goes_on() {
    let mut b = Bench::new();
    let target = Recorder::new(
        Arc::new(|i, _| {
            if i.id.ordinal < 10 {
                Err(Failure::Retry {
                    error: "timeout".into(),
                    after: None,
                })
            } else {
                Ok(())
            }
        }),
        Duration::ZERO,
    );
    let mut p = policy();
    p.retry.max_attempts = 2;
    let run = b.start(target.clone(), p);
    b.append(vec![row(0, 1, 1), row(0, 2, 1)]).await;
    until("parked", || {
        run.control.store.waiting_len(&key_of(1)).unwrap() == 2
    })
    .await;
    let n = run
        .control
        .ask(|tx| Command::Skip(Selection::All, tx))
        .await
        .unwrap();
    assert_eq!(n, 2);
    let dead = run.control.store.dead(0, 10).unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d.reason == "skipped"));
    b.append(vec![row(0, 10, 1)]).await;
    until("key goes on", || {
        target.accepted_ids(&key_of(1)) == vec![10]
    })
    .await;

    // A dead letter redriven is delivered again (the receiver takes it now).
    target.set(Arc::new(|_, _| Ok(())));
    let n = run
        .control
        .ask(|tx| Command::RedriveDead(None, tx))
        .await
        .unwrap();
    assert_eq!(n, 2);
    until("dead letters delivered", || {
        target.accepted_ids(&key_of(1)) == vec![10, 1, 2]
    })
    .await;
    until("dead letters gone", || {
        run.control.store.dead(0, 10).unwrap().is_empty()
    })
    .await;
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rejected_and_exhausted_records_go_to_the_dead_letters_with_their_reason() {
    let mut b = Bench::new();
    let target = Recorder::new(
        Arc::new(|i, _| match i.id.ordinal {
            1 => Err(Failure::Reject("HTTP 400: bad payload".into())),
            2 => Err(Failure::Retry {
                error: "HTTP 503".into(),
                after: None,
            }),
            _ => Ok(()),
        }),
        Duration::ZERO,
    );
    let mut p = policy();
    p.retry.max_attempts = 3;
    p.on_exhausted = OnExhausted::DeadLetter;
    let run = b.start(target.clone(), p);
    b.append(vec![row(0, 1, 1), row(0, 2, 1), row(0, 3, 1)])
        .await;
    until("key goes on", || target.accepted_ids(&key_of(1)) == vec![3]).await;
    let dead = run.control.store.dead(0, 10).unwrap();
    let reasons: Vec<(&str, u32, &str)> = dead
        .iter()
        .map(|d| (d.reason.as_str(), d.attempts, d.last_error.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("rejected", 1, "HTTP 400: bad payload"),
            ("exhausted", 3, "HTTP 503")
        ]
    );
    assert!(run.control.store.keys().unwrap().is_empty());
    run.stop().await;
}

// Time is paused only once the records are in the log: while a test waits for the
// writer's real fsync, paused time would race ahead to the engine's next timer.
#[tokio::test]
async fn delayed_events_wait_for_their_time_without_holding_the_cursor() {
    let mut b = Bench::new();
    let target = Recorder::new(Arc::new(|_, _| Ok(())), Duration::ZERO);
    let run = b.start(target.clone(), policy());
    let start = tokio::time::Instant::now();
    let in_five_minutes = now_micros() / 1000 + 300_000;
    b.append(vec![
        event(0, "a", Some(in_five_minutes), None),
        event(0, "a", None, None),
        event(0, "b", None, None),
    ])
    .await;
    tokio::time::pause();
    until("b delivered", || target.accepted_ids("jobs:b").len() == 1).await;
    until("cursor past the delayed key", || {
        run.cursor.position() == b.log.next_offset()
    })
    .await;
    assert!(target.accepted_ids("jobs:a").is_empty());
    until("a delivered", || target.accepted_ids("jobs:a").len() == 2).await;
    let first_a = {
        let acc = target.accepted.lock().unwrap();
        acc.iter().find(|(i, _)| &*i.key == "jobs:a").unwrap().1
    };
    assert!(
        first_a.duration_since(start) >= Duration::from_secs(299),
        "delivered after {:?}",
        first_a.duration_since(start)
    );
    run.stop().await;
}

#[tokio::test]
async fn an_event_past_its_ttl_expires_into_the_dead_letters() {
    let mut b = Bench::new();
    let target = Recorder::new(
        Arc::new(|_, _| {
            Err(Failure::Retry {
                error: "down".into(),
                after: None,
            })
        }),
        Duration::ZERO,
    );
    let mut p = policy();
    p.retry.max_attempts = 0;
    let run = b.start(target.clone(), p);
    b.append(vec![event(0, "t", None, Some(5_000))]).await;
    tokio::time::pause();
    until("expired", || {
        !run.control.store.dead(0, 10).unwrap().is_empty()
    })
    .await;
    let dead = run.control.store.dead(0, 10).unwrap();
    assert_eq!(dead[0].reason, "expired");
    assert!(dead[0].attempts >= 1);
    until("cursor at the end", || {
        run.cursor.position() == b.log.next_offset()
    })
    .await;
    run.stop().await;
}

/// A target that retries every record of key 1 and takes the others.
fn retrying_key_1() -> Arc<Recorder> {
    Recorder::new(
        Arc::new(|i, _| {
            if i.key.contains("\"id\":1}") {
                Err(Failure::Retry {
                    error: "no".into(),
                    after: None,
                })
            } else {
                Ok(())
            }
        }),
        Duration::ZERO,
    )
}

#[tokio::test(start_paused = true)]
async fn the_waiting_room_survives_a_restart_and_replays_are_not_repeated() {
    let mut b = Bench::new();
    let target = retrying_key_1();
    let mut p = policy();
    p.retry.max_attempts = 2;
    let run = b.start(target.clone(), p.clone());
    b.append(vec![row(0, 1, 1), row(0, 2, 2), row(0, 3, 1)])
        .await;
    until("parked", || {
        run.control.store.waiting_len(&key_of(1)).unwrap() == 2
    })
    .await;
    until("2 delivered", || target.accepted_ids(&key_of(2)) == vec![2]).await;
    // Stop before the cursor is persisted: the restart replays everything.
    run.stop().await;
    target.set(Arc::new(|_, _| Ok(())));
    let cursor_before = b.log.cursors().all()[0].persisted();
    assert_eq!(cursor_before, 0);
    let run = b.start(target.clone(), p);
    // The replay read everything (key 2 again, unless its finish was saved first).
    until("replayed", || run.cursor.position() == 3).await;
    assert!(!target.accepted_ids(&key_of(2)).is_empty());
    // Key 1 is still parked: the replay did not deliver its records past the park.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(target.accepted_ids(&key_of(1)).is_empty());
    assert_eq!(run.control.store.waiting_len(&key_of(1)).unwrap(), 2);
    run.control
        .ask(|tx| Command::Redrive(Selection::All, tx))
        .await
        .unwrap();
    until("redriven once", || {
        target.accepted_ids(&key_of(1)) == vec![1, 3]
    })
    .await;
    run.stop().await;
}

#[tokio::test]
async fn concurrency_and_rate_limits_hold() {
    let mut b = Bench::new();
    let target = Recorder::new(Arc::new(|_, _| Ok(())), Duration::from_millis(100));
    let seen = Arc::new(Mutex::new(BTreeMap::<u64, usize>::new()));
    let run = b.start(
        target.clone(),
        Policy {
            concurrency: 4,
            rate_limit: Some(20.0),
            ..policy()
        },
    );
    let start = tokio::time::Instant::now();
    b.append((0..100).map(|k| row(0, k + 1, k)).collect()).await;
    tokio::time::pause();
    until("all", || target.accepted.lock().unwrap().len() == 100).await;
    let elapsed = start.elapsed();
    // 100 records at 20/s: about 4 s after the first second's burst; 4 at a time of
    // 100 ms each would allow 40/s, so the rate is what limits.
    assert!(elapsed >= Duration::from_secs(4), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    for (_, t) in target.accepted.lock().unwrap().iter() {
        *seen
            .lock()
            .unwrap()
            .entry(t.duration_since(start).as_millis() as u64 / 100)
            .or_default() += 1;
    }
    assert!(seen.lock().unwrap().values().all(|&n| n <= 4));
    run.stop().await;
}

/// Stands in for the source's DELETEs: records the keys, or fails while `fail` is set.
struct Deletes {
    fail: Arc<std::sync::atomic::AtomicBool>,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
    deleted: Arc<Mutex<Vec<String>>>,
}

impl RowDeleter for Deletes {
    fn delete<'a>(
        &'a mut self,
        schema: &'a str,
        table: &'a str,
        keys: &'a [String],
    ) -> Deletion<'a> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            self.attempts.fetch_add(1, SeqCst);
            if self.fail.load(SeqCst) {
                return Err(sluice_core::Fault::transient("connection refused"));
            }
            assert_eq!((schema, table), ("public", "t"));
            self.deleted.lock().unwrap().extend(keys.iter().cloned());
            Ok(keys.len() as u64)
        })
    }
}

#[tokio::test]
async fn outbox_rows_go_after_every_sink_and_a_failing_delete_does_not_hold_the_log() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut b = Bench::new();
    b.append((1..=5).map(|k| row(0, k, k)).collect()).await;
    tokio::time::pause();
    let end = b.log.next_offset();
    let (sink, _) = b.log.cursors().register("cache", 0).unwrap();
    let (cleaner_cursor, _) = b.log.cursors().register(CLEANER_CURSOR, 0).unwrap();
    let deletes = Deletes {
        fail: Arc::new(true.into()),
        attempts: Arc::default(),
        deleted: Arc::default(),
    };
    let (fail, attempts, deleted) = (
        deletes.fail.clone(),
        deletes.attempts.clone(),
        deletes.deleted.clone(),
    );
    let stop = CancellationToken::new();
    let tables = vec![("public".to_string(), "t".to_string())];
    let shared: SharedLog = b.log.clone().into();
    let consumer = Consumer::open(&shared, cleaner_cursor.clone(), outbox_rows(&tables)).unwrap();
    let state = RedbState::open(b.log.cursors().clone()).unwrap();
    let task = tokio::spawn(clean(
        Cleaner {
            pipeline: "p".into(),
            tables,
            watches: vec![Watch {
                cursor: sink.clone(),
                accepts: Box::new(|_, _, t| t == "t"),
                waiting: None,
            }],
        },
        consumer,
        state,
        deletes,
        stop.clone(),
    ));
    // The sink has not finished them: nothing is tried, however long.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(attempts.load(SeqCst), 0);
    assert_eq!(cleaner_cursor.position(), 0);
    // Finished, but the source refuses: retried for a while, then set aside, and the
    // cleaner's cursor moves on.
    sink.ack(end);
    let since = tokio::time::Instant::now();
    until("rows set aside", || cleaner_cursor.position() == end).await;
    assert!(since.elapsed() >= Duration::from_secs(30));
    assert!(attempts.load(SeqCst) > 3);
    assert!(deleted.lock().unwrap().is_empty());
    // Once the source takes DELETEs again, the set-aside rows go.
    fail.store(false, SeqCst);
    until("rows deleted", || deleted.lock().unwrap().len() == 5).await;
    let keys: Vec<String> = (1..=5).map(|k| format!("{{\"id\":{k}}}")).collect();
    assert_eq!(*deleted.lock().unwrap(), keys);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn records_finished_past_a_held_cursor_are_not_repeated_after_a_crash() {
    let mut b = Bench::new();
    // Key 1 is retried and holds the cursor at its first record; the others go through.
    let target = retrying_key_1();
    let run = b.start(target.clone(), policy());
    b.append((1..=50).map(|k| row(0, k, k)).collect()).await;
    until("keys 2-50 delivered", || {
        target.accepted.lock().unwrap().len() == 49
    })
    .await;
    assert_eq!(run.cursor.position(), 0, "key 1 holds the cursor");
    // Past one save of the finished records, then a crash: the cursor is not persisted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.stop().await;
    assert_eq!(b.log.cursors().all()[0].persisted(), 0);
    target.set(Arc::new(|_, _| Ok(())));
    let run = b.start(target.clone(), policy());
    until("key 1 delivered", || {
        !target.accepted_ids(&key_of(1)).is_empty()
    })
    .await;
    until("the cursor past everything", || run.cursor.position() == 50).await;
    for k in 2..=50 {
        assert_eq!(
            target.accepted_ids(&key_of(k)),
            vec![k],
            "key {k} was delivered again"
        );
    }
    run.stop().await;
}
