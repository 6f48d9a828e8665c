//! End to end: Sluice killed with SIGKILL at random moments, again and again, under a
//! random write workload whose every commit the test models; afterwards the sink matches
//! the table exactly: nothing lost, duplicates only as re-sent runs with identical
//! content, whole JSON lines.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::recovery::*;
use support::*;

// ---------------------------------------------------------------------------------------
// The write workload and its model
// ---------------------------------------------------------------------------------------

/// What one record (or one change the writer made) did to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Insert {
        v: i64,
        txn: i64,
    },
    Update {
        v: i64,
        txn: i64,
    },
    Delete,
    /// The key was changed away from this id.
    MovedOut,
    /// The key was changed to this id.
    MovedIn {
        v: i64,
        txn: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    v: i64,
    txn: i64,
    pad: (char, u32),
}

/// The table as the writer believes it is, with O(1) random picks.
#[derive(Clone, Default)]
struct Rows {
    rows: HashMap<i64, Row>,
    keys: Vec<i64>,
    pos: HashMap<i64, usize>,
}

impl Rows {
    fn insert(&mut self, id: i64, row: Row) {
        assert!(self.rows.insert(id, row).is_none());
        self.pos.insert(id, self.keys.len());
        self.keys.push(id);
    }
    fn remove(&mut self, id: i64) -> Row {
        let i = self.pos.remove(&id).unwrap();
        self.keys.swap_remove(i);
        if i < self.keys.len() {
            self.pos.insert(self.keys[i], i);
        }
        self.rows.remove(&id).unwrap()
    }
    /// Up to `n` distinct existing keys.
    fn pick(&self, rng: &mut Rng, n: u64) -> Vec<i64> {
        let mut out: Vec<i64> = Vec::new();
        if self.keys.is_empty() {
            return out;
        }
        for _ in 0..n {
            let k = self.keys[rng.below(self.keys.len() as u64) as usize];
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }
}

/// Everything the writer committed.
struct Model {
    rows: Rows,
    /// Per key, every change in commit order.
    events: BTreeMap<i64, Vec<Ev>>,
    /// Committed transactions in commit order: (txn number, number of row changes).
    txns: Vec<(i64, usize)>,
    /// The id of the final marker row.
    marker: i64,
}

/// Builds one transaction's SQL against `work`, recording its changes.
struct TxnBuilder<'a> {
    rng: &'a mut Rng,
    next_id: &'a mut i64,
    txn: i64,
    sql: String,
    evs: Vec<(i64, Ev)>,
}

impl TxnBuilder<'_> {
    fn fresh(&mut self) -> i64 {
        *self.next_id += 1;
        *self.next_id
    }

    fn insert(&mut self, work: &mut Rows, n: u64) {
        let mut values = Vec::new();
        for _ in 0..n {
            let id = self.fresh();
            let len = self.rng.range(0, 40) as u32;
            values.push(format!("({id}, 0, {}, repeat('p', {len}))", self.txn));
            work.insert(
                id,
                Row {
                    v: 0,
                    txn: self.txn,
                    pad: ('p', len),
                },
            );
            self.evs.push((
                id,
                Ev::Insert {
                    v: 0,
                    txn: self.txn,
                },
            ));
        }
        self.sql.push_str(&format!(
            "INSERT INTO t (id, v, txn, pad) VALUES {};\n",
            values.join(", ")
        ));
    }

    /// Enough rows in one statement that the transaction exceeds a small
    /// logical_decoding_work_mem and is streamed (protocol 2) before it commits.
    fn big_insert(&mut self, work: &mut Rows) {
        let first = *self.next_id + 1;
        *self.next_id += 300;
        let last = *self.next_id;
        self.sql.push_str(&format!(
            "INSERT INTO t (id, v, txn, pad) SELECT g, 0, {}, repeat('q', 250) \
             FROM generate_series({first}, {last}) g;\n",
            self.txn
        ));
        for id in first..=last {
            work.insert(
                id,
                Row {
                    v: 0,
                    txn: self.txn,
                    pad: ('q', 250),
                },
            );
            self.evs.push((
                id,
                Ev::Insert {
                    v: 0,
                    txn: self.txn,
                },
            ));
        }
    }

    fn update(&mut self, work: &mut Rows, n: u64) {
        let keys = work.pick(self.rng, n);
        if keys.is_empty() {
            return;
        }
        for &k in &keys {
            let row = work.rows.get_mut(&k).unwrap();
            row.v += 1;
            row.txn = self.txn;
            let v = row.v;
            self.evs.push((k, Ev::Update { v, txn: self.txn }));
        }
        self.sql.push_str(&format!(
            "UPDATE t SET v = v + 1, txn = {} WHERE id IN ({});\n",
            self.txn,
            join(&keys)
        ));
    }

    fn delete(&mut self, work: &mut Rows, n: u64) {
        let keys = work.pick(self.rng, n);
        if keys.is_empty() {
            return;
        }
        for &k in &keys {
            work.remove(k);
            self.evs.push((k, Ev::Delete));
        }
        self.sql
            .push_str(&format!("DELETE FROM t WHERE id IN ({});\n", join(&keys)));
    }

    /// Changes a primary key: the record's `before` holds the old key.
    fn move_key(&mut self, work: &mut Rows) {
        let Some(&old) = work.pick(self.rng, 1).first() else {
            return;
        };
        let new = self.fresh();
        let mut row = work.remove(old);
        row.v += 1;
        row.txn = self.txn;
        let v = row.v;
        work.insert(new, row);
        self.evs.push((old, Ev::MovedOut));
        self.evs.push((new, Ev::MovedIn { v, txn: self.txn }));
        self.sql.push_str(&format!(
            "UPDATE t SET id = {new}, v = v + 1, txn = {} WHERE id = {old};\n",
            self.txn
        ));
    }
}

fn join(keys: &[i64]) -> String {
    keys.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A writer thread feeding random transactions to one `psql` session (as `postgres`) until
/// stopped; it then commits a marker row and returns what it committed.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Model>,
}

impl Writer {
    fn start(pg: &PgServer, mut rng: Rng) -> Writer {
        let stderr = tempfile::tempfile().unwrap();
        let mut psql = psql_command(pg)
            .stderr(stderr.try_clone().unwrap())
            .spawn()
            .expect("spawn psql");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut stdin = std::io::BufWriter::new(psql.stdin.take().unwrap());
            let mut rows = Rows::default();
            let mut events: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
            let mut txns = Vec::new();
            let mut next_id = 0i64;
            let mut txn = 0i64;
            let mut rolled_back = 0;
            while !stopping.load(Ordering::Relaxed) {
                txn += 1;
                let mut work = rows.clone();
                let mut b = TxnBuilder {
                    rng: &mut rng,
                    next_id: &mut next_id,
                    txn,
                    sql: String::from("BEGIN;\n"),
                    evs: Vec::new(),
                };
                // Every transaction starts with an insert, so its records name its number.
                let n = b.rng.range(1, 3);
                b.insert(&mut work, n);
                if b.rng.below(80) == 0 {
                    b.big_insert(&mut work);
                }
                for _ in 0..b.rng.range(1, 6) {
                    match b.rng.below(100) {
                        0..=24 => {
                            let n = b.rng.range(1, 4);
                            b.insert(&mut work, n)
                        }
                        25..=54 => {
                            let n = b.rng.range(1, 4);
                            b.update(&mut work, n)
                        }
                        55..=74 => {
                            let n = b.rng.range(1, 4);
                            b.delete(&mut work, n)
                        }
                        75..=86 => b.move_key(&mut work),
                        _ => {
                            // A rolled-back subtransaction, sometimes big enough to have
                            // been streamed before it was aborted: none of it may arrive.
                            let mut scratch = work.clone();
                            let evs = std::mem::take(&mut b.evs);
                            let outer = std::mem::replace(&mut b.sql, "SAVEPOINT s;\n".into());
                            if b.rng.below(10) == 0 {
                                b.big_insert(&mut scratch);
                            } else {
                                b.insert(&mut scratch, 2);
                            }
                            b.update(&mut scratch, 3);
                            b.delete(&mut scratch, 1);
                            let inner = std::mem::replace(&mut b.sql, outer);
                            b.sql.push_str(&inner);
                            b.sql.push_str("ROLLBACK TO SAVEPOINT s;\n");
                            b.evs = evs;
                        }
                    }
                }
                let abort = b.rng.below(40) == 0;
                b.sql
                    .push_str(if abort { "ROLLBACK;\n" } else { "COMMIT;\n" });
                let (sql, evs) = (std::mem::take(&mut b.sql), std::mem::take(&mut b.evs));
                if stdin
                    .write_all(sql.as_bytes())
                    .and_then(|_| stdin.flush())
                    .is_err()
                {
                    break; // psql died: its exit status and stderr say why
                }
                if abort {
                    rolled_back += 1;
                    continue;
                }
                rows = work;
                // A key change is one record but two events (old key, new key).
                let records = evs.iter().filter(|(_, e)| *e != Ev::MovedOut).count();
                txns.push((txn, records));
                for (k, e) in evs {
                    events.entry(k).or_default().push(e);
                }
                // Pacing: a steady stream rather than a flood the restarts never catch up with.
                if txn % 4 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            // The marker: the last transaction; once it arrives, everything before it has.
            txn += 1;
            next_id += 1;
            let marker = next_id;
            let _ = writeln!(
                stdin,
                "INSERT INTO t (id, v, txn, pad) VALUES ({marker}, 0, {txn}, 'marker');"
            );
            rows.insert(
                marker,
                Row {
                    v: 0,
                    txn,
                    pad: ('m', 0),
                },
            );
            events
                .entry(marker)
                .or_default()
                .push(Ev::Insert { v: 0, txn });
            txns.push((txn, 1));
            drop(stdin);
            let status = psql.wait().unwrap();
            let mut err = String::new();
            let mut f = stderr;
            f.rewind().unwrap();
            f.read_to_string(&mut err).unwrap();
            assert!(
                status.success(),
                "the writer's psql failed: {status}: {err}"
            );
            eprintln!(
                "writer: {} transactions committed, {rolled_back} rolled back, {} rows now",
                txns.len(),
                rows.rows.len()
            );
            Model {
                rows,
                events,
                txns,
                marker,
            }
        });
        Writer { stop, handle }
    }

    fn finish(self) -> Model {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread panicked")
    }
}

/// What the distinct records did to each key of `table`.
fn record_events(distinct: &[&Value], table: &str) -> BTreeMap<i64, Vec<Ev>> {
    let mut out: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    for r in distinct.iter().filter(|r| r["table"] == table) {
        let key = r["key"]["id"].as_i64().expect("key id");
        let (v, txn) = (r["after"]["v"].as_i64(), r["after"]["txn"].as_i64());
        match r["op"].as_str().unwrap() {
            "insert" => out.entry(key).or_default().push(Ev::Insert {
                v: v.unwrap(),
                txn: txn.unwrap(),
            }),
            "update" => match r["before"]["id"].as_i64() {
                Some(old) if old != key => {
                    out.entry(old).or_default().push(Ev::MovedOut);
                    out.entry(key).or_default().push(Ev::MovedIn {
                        v: v.unwrap(),
                        txn: txn.unwrap(),
                    });
                }
                _ => out.entry(key).or_default().push(Ev::Update {
                    v: v.unwrap(),
                    txn: txn.unwrap(),
                }),
            },
            "delete" => out.entry(key).or_default().push(Ev::Delete),
            op => panic!("unexpected op {op} in {r}"),
        }
    }
    out
}

/// The transactions of the distinct records, in order: (txn number, records), checking
/// that each has one xid, one commit LSN and ordinals 1..=n.
fn record_txns(distinct: &[&Value]) -> Vec<(i64, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < distinct.len() {
        let first = distinct[i];
        let mut j = i;
        while j < distinct.len() && distinct[j]["commit_lsn"] == first["commit_lsn"] {
            j += 1;
        }
        let group = &distinct[i..j];
        let mut txn = None;
        for (n, r) in group.iter().enumerate() {
            assert_eq!(id_of(r).1 as usize, n + 1, "ordinals of a transaction: {r}");
            assert_eq!(r["xid"], first["xid"], "one xid per transaction: {r}");
            if let Some(t) = r["after"]["txn"].as_i64() {
                assert!(
                    txn.is_none() || txn == Some(t),
                    "records of two writer transactions share commit {}",
                    first["commit_lsn"]
                );
                txn = Some(t);
            }
        }
        out.push((
            txn.unwrap_or_else(|| panic!("transaction without an insert: {first}")),
            group.len(),
        ));
        i = j;
    }
    out
}

/// The model's table in the shape `table_state` returns.
fn model_state(model: &Model) -> BTreeMap<String, Value> {
    model
        .rows
        .rows
        .iter()
        .map(|(id, r)| {
            let pad = if r.pad.0 == 'm' {
                "marker".to_owned()
            } else {
                r.pad.0.to_string().repeat(r.pad.1 as usize)
            };
            (
                format!("public.t:{}", json!({"id": id})),
                json!({"id": id, "v": r.v, "txn": r.txn, "pad": pad}),
            )
        })
        .collect()
}

/// Like `assert_eq!` on long sequences, but reports only the first difference.
fn assert_same_seq<T: PartialEq + std::fmt::Debug>(got: &[T], want: &[T], what: &str) {
    if got == want {
        return;
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    let lo = i.saturating_sub(3);
    panic!(
        "{what}: first difference at index {i} (got {} items, want {}):\n  got:  {:?}\n  want: {:?}",
        got.len(),
        want.len(),
        &got[lo..(i + 4).min(got.len())],
        &want[lo..(i + 4).min(want.len())]
    );
}

/// Like `assert_eq!` on maps of sequences, reporting only the first differing key.
fn assert_same_map<T: PartialEq + std::fmt::Debug>(
    got: &BTreeMap<i64, Vec<T>>,
    want: &BTreeMap<i64, Vec<T>>,
    what: &str,
) {
    if got == want {
        return;
    }
    for k in got.keys().chain(want.keys()) {
        let (g, w) = (got.get(k), want.get(k));
        if g != w {
            panic!(
                "{what}: key {k} differs ({} keys vs {}):\n  got:  {g:?}\n  want: {w:?}",
                got.len(),
                want.len()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. SIGKILL in a loop under a write workload
// ---------------------------------------------------------------------------------------

#[test]
fn kill9_in_a_loop_under_writes_loses_nothing() {
    kill9_loop("kill", None);
}

/// The same with the log in JetStream: the producer killed mid-group leaves a short group
/// that no reader returns, and the next run writes those records again.
#[test]
fn kill9_in_a_loop_with_the_jetstream_log_loses_nothing() {
    let nats = sluice_testkit::NatsServer::start().unwrap();
    kill9_loop("killjs", Some(&nats.url()));
}

fn kill9_loop(name: &str, jetstream: Option<&str>) {
    let started = Instant::now();
    let mut rng = Rng::from_env("kill9_in_a_loop");
    // A small logical_decoding_work_mem makes the bigger transactions stream (protocol 2)
    // and spill on Sluice's side, so kills also land while a streamed transaction is open.
    let pg = PgServer::builder()
        .setting("logical_decoding_work_mem", "64kB")
        .start()
        .unwrap();
    pg.psql("CREATE TABLE public.t (id bigint PRIMARY KEY, v bigint NOT NULL, txn bigint NOT NULL, pad text NOT NULL)")
        .unwrap();
    let mut p = Pipeline::new(&pg, name, &["public.t"], "");
    if let Some(url) = jetstream {
        p.use_jetstream_log(url, 1);
    }
    // The slot exists before the writer starts, so every transaction is in the stream.
    p.start();
    p.wait_streaming(&pg);
    let writer = Writer::start(&pg, Rng(rng.next() | 1));

    let kills = rng.range(6, 10);
    for i in 0..kills {
        if i > 0 {
            p.start();
        }
        let ms = rng.range(200, 1500);
        std::thread::sleep(Duration::from_millis(ms));
        p.kill9();
        eprintln!(
            "kill {}/{kills} after {ms} ms: {} records in the sink",
            i + 1,
            p.records().len()
        );
    }
    let model = writer.finish();

    // The last run catches up and stops cleanly.
    p.start();
    wait_for_key(&p, "t", model.marker, Duration::from_secs(180));
    p.stop();

    // The log holds every change once: a restart skips what the slot sends again.
    let ids = match jetstream {
        Some(url) => p.jetstream_log_ids(url),
        None => p.log_ids(),
    };
    assert!(ids.len() >= model.txns.len(), "the log holds the changes");
    let mut seen = std::collections::HashSet::new();
    let repeated: Vec<_> = ids.iter().filter(|id| !seen.insert(**id)).collect();
    assert!(
        repeated.is_empty(),
        "{} of {} change ids are in the log twice, the first: {:?}",
        repeated.len(),
        ids.len(),
        &repeated[..repeated.len().min(5)]
    );
    // (d) whole lines.
    assert_whole_lines(&p);
    let records = p.records();
    // (c) duplicates are identical re-sent runs; new ids only increase.
    let distinct = check_ids(&records);
    // The test's own model agrees with the table ...
    let table = table_state(&pg, "t");
    assert_eq!(model_state(&model), table, "the writer's model is wrong");
    // (a) ... and so does the replayed stream.
    assert_eq!(replay(&records), table, "replay differs from the table");
    // (b) every committed transaction arrived whole and in commit order, and every change
    // of every key (insert, each update's version, key changes, delete) is there.
    assert_same_map(
        &record_events(&distinct, "t"),
        &model.events,
        "per-key changes differ",
    );
    assert_same_seq(
        &record_txns(&distinct),
        &model.txns,
        "transactions differ from those committed",
    );
    // The kills also hit streamed transactions (spilled on Sluice's side).
    let streamed = pg
        .psql(&format!(
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'sluice_{name}'"
        ))
        .unwrap();
    eprintln!("transactions the server streamed: {streamed}");
    assert!(streamed.parse::<u64>().unwrap() > 0, "nothing was streamed");
    eprintln!(
        "kill9_in_a_loop: {kills} kills, {} transactions, {:.1} s",
        model.txns.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 2. The server restarts (cleanly or after a crash) under a running Sluice
// ---------------------------------------------------------------------------------------
