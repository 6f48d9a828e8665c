//! End to end: recovery. Sluice killed with SIGKILL in a loop under a write workload, the
//! server restarting or crashing under a running Sluice, a standby taking over from a killed
//! instance, a 5,000,000-row transaction in bounded memory, and a clean stop that confirms
//! everything it delivered. Each test checks the sink against the table exactly: nothing
//! lost, duplicates only as re-sent runs with identical content, whole JSON lines.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read, Seek, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// xorshift64*: no extra dependency, and a printed seed reproduces a run.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("SLUICE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: SLUICE_TEST_SEED={seed}");
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// `X/Y` as a number.
fn lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A record id as `(commit_lsn, ordinal)`: ids compare numerically (ordinals above a
/// million widen the text form).
fn parse_id(id: &str) -> (u64, u32) {
    let (l, o) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("bad id {id:?}"));
    (u64::from_str_radix(l, 16).unwrap(), o.parse().unwrap())
}

fn id_of(r: &Value) -> (u64, u32) {
    parse_id(r["id"].as_str().expect("record without id"))
}

/// The pipeline's slot: (active, active_pid, confirmed_flush_lsn).
fn slot(pg: &PgServer, pipeline: &str) -> (bool, Option<u32>, u64) {
    let row = pg
        .psql(&format!(
            "SELECT active, coalesce(active_pid::text, ''), coalesce(confirmed_flush_lsn::text, '0/0') \
             FROM pg_replication_slots WHERE slot_name = 'sluice_{pipeline}'"
        ))
        .unwrap();
    let cols: Vec<&str> = row.split('|').collect();
    assert_eq!(cols.len(), 3, "no slot for pipeline {pipeline}: {row:?}");
    (cols[0] == "t", cols[1].parse().ok(), lsn(cols[2]))
}

fn current_wal_lsn(pg: &PgServer) -> u64 {
    lsn(&pg.psql("SELECT pg_current_wal_lsn()").unwrap())
}

/// Waits (bounded) until no walsender holds the slot any more, e.g. after Sluice exited.
fn wait_slot_inactive(pg: &PgServer, pipeline: &str) {
    wait_until(WAIT, "the slot to become inactive", || {
        (!slot(pg, pipeline).0).then_some(())
    })
    .unwrap();
}

/// A table as the final per-key state `replay` produces: `public.T:{"id":N}` → row.
fn table_state(pg: &PgServer, table: &str) -> BTreeMap<String, Value> {
    let text = pg
        .psql(&format!(
            "SELECT coalesce(json_agg(x ORDER BY x.id), '[]') FROM public.{table} x"
        ))
        .unwrap();
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter()
        .map(|r| (format!("public.{table}:{}", json!({"id": r["id"]})), r))
        .collect()
}

/// (d): the sink file holds only whole JSON lines.
fn assert_whole_lines(p: &Pipeline) {
    let bytes = std::fs::read(&p.out_path).unwrap_or_default();
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "the sink file ends in a partial line"
    );
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "line {} is not JSON ({e}): {}",
                i + 1,
                String::from_utf8_lossy(line)
            )
        });
        assert!(v.is_object(), "line {} is not an object", i + 1);
    }
}

/// (c): every record either has a new id, greater than every id before it, or repeats an
/// earlier record exactly (same id, identical content) as part of a re-sent run: a run
/// starts at the first record of a transaction and follows the original order. Returns the
/// distinct records in order.
fn check_ids(records: &[Value]) -> Vec<&Value> {
    let mut distinct: Vec<&Value> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut max: Option<(u64, u32)> = None;
    // Position (in `distinct`) of the previous record, if it was a repeat.
    let mut run: Option<usize> = None;
    let mut dups = 0usize;
    for (line, r) in records.iter().enumerate() {
        let id_text = r["id"].as_str().expect("record without id");
        let id = parse_id(id_text);
        match index.get(id_text) {
            Some(&pos) => {
                dups += 1;
                assert_eq!(
                    distinct[pos],
                    r,
                    "line {}: a duplicate of id {id_text} with different content",
                    line + 1
                );
                let continues = run.is_some_and(|prev| prev + 1 == pos);
                assert!(
                    continues || id.1 == 1,
                    "line {}: re-sent record {id_text} neither continues a re-sent run nor starts \
                     at a transaction's first record",
                    line + 1
                );
                run = Some(pos);
            }
            None => {
                assert!(
                    max < Some(id),
                    "line {}: new id {id_text} is not greater than every earlier id",
                    line + 1
                );
                max = Some(id);
                index.insert(id_text, distinct.len());
                distinct.push(r);
                run = None;
            }
        }
    }
    eprintln!(
        "{} records, {} distinct, {dups} re-sent",
        records.len(),
        distinct.len()
    );
    distinct
}

/// Waits until the sink holds a record of `table` with key `{"id": id}`; returns all.
fn wait_for_key(p: &Pipeline, table: &str, id: i64, timeout: Duration) -> Vec<Value> {
    wait_until(timeout, &format!("the record of {table} id {id}"), || {
        let recs = p.records();
        recs.iter()
            .any(|r| r["table"] == table && r["key"]["id"] == id)
            .then_some(recs)
    })
    .unwrap_or_else(|e| panic!("{e}; have {}\n{}", p.records().len(), p.logs()))
}

/// Peak resident set size of a process, in kB.
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn log_of(p: &Pipeline, n: usize) -> String {
    std::fs::read_to_string(p.dir.path().join(format!("sluice-{n}.log"))).unwrap_or_default()
}

/// A `psql` session (as `postgres`) kept open across steps, e.g. to hold a transaction open.
struct PsqlSession {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl PsqlSession {
    fn start(pg: &PgServer) -> PsqlSession {
        let mut child = Command::new(sluice_testkit::pg_bin("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.host()])
            .args([
                "-p",
                &pg.port().to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn psql");
        let stdin = child.stdin.take();
        PsqlSession { child, stdin }
    }

    fn send(&mut self, sql: &str) {
        let stdin = self.stdin.as_mut().expect("session finished");
        writeln!(stdin, "{sql}")
            .and_then(|_| stdin.flush())
            .unwrap();
    }

    /// Ends the session and checks every statement succeeded.
    fn finish(&mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "psql failed: {status}");
    }
}

impl Drop for PsqlSession {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second `sluice run` of a pipeline, killed if a test fails before stopping it.
struct Instance(Option<Child>);

impl Instance {
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            terminate(&mut c);
        }
    }
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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
        let mut psql = Command::new(sluice_testkit::pg_bin("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.host()])
            .args([
                "-p",
                &pg.port().to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
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
    let mut p = Pipeline::new(&pg, "kill", &["public.t"], "");
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
        .psql("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'sluice_kill'")
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

fn survives_server_restart(crash: bool) {
    let started = Instant::now();
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE public.r (id int PRIMARY KEY, v int NOT NULL)")
        .unwrap();
    let mut p = Pipeline::new(&pg, "restart", &["public.r"], "");
    p.start();
    p.wait_streaming(&pg);
    let pid = p.pid().unwrap();

    // Some writes arrive ...
    pg.psql("INSERT INTO r SELECT g, 0 FROM generate_series(1, 200) g")
        .unwrap();
    p.wait_records(200);
    // ... more are in flight when the server goes away (70 changes).
    pg.psql("BEGIN; UPDATE r SET v = 1 WHERE id <= 50; DELETE FROM r WHERE id > 180; COMMIT;")
        .unwrap();
    if crash {
        pg.kill9().unwrap();
        pg.start_again().unwrap();
    } else {
        pg.restart().unwrap();
    }
    // Writes after the restart: 60 updates, 100 inserts, 10 deletes, then a marker.
    pg.psql(
        "UPDATE r SET v = v + 10 WHERE id % 3 = 0;
         BEGIN; INSERT INTO r SELECT g, 5 FROM generate_series(1000, 1099) g;
                DELETE FROM r WHERE id BETWEEN 10 AND 19; COMMIT;
         INSERT INTO r VALUES (-1, 0);",
    )
    .unwrap();
    let t0 = Instant::now();
    wait_for_key(&p, "r", -1, WAIT);
    eprintln!(
        "after the {}: caught up {:.1} s after the last write",
        if crash { "crash" } else { "restart" },
        t0.elapsed().as_secs_f64()
    );

    // The same process did it: it reconnected rather than being restarted.
    assert!(alive(pid), "sluice exited:\n{}", p.logs());
    assert_eq!(p.pid(), Some(pid));
    assert!(
        log_of(&p, 0).contains("reconnecting"),
        "no reconnect in the log:\n{}",
        p.logs()
    );
    p.stop();

    assert_whole_lines(&p);
    let records = p.records();
    let distinct = check_ids(&records);
    assert_eq!(distinct.len(), 200 + 70 + 60 + 100 + 10 + 1);
    assert_eq!(replay(&records), table_state(&pg, "r"));
    eprintln!(
        "survives_server_{}: {:.1} s",
        if crash { "crash" } else { "restart" },
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn reconnects_after_the_server_restarts() {
    survives_server_restart(false);
}

#[test]
fn reconnects_after_the_server_crashes() {
    survives_server_restart(true);
}

// ---------------------------------------------------------------------------------------
// 3. A standby takes over from a killed instance
// ---------------------------------------------------------------------------------------

#[test]
fn a_standby_takes_over_when_the_active_instance_is_killed() {
    let started = Instant::now();
    // Small enough that the 5,000-row transaction below is streamed before it commits.
    let pg = PgServer::builder()
        .setting("logical_decoding_work_mem", "64kB")
        .start()
        .unwrap();
    pg.psql("CREATE TABLE public.s (id int PRIMARY KEY, v int NOT NULL)")
        .unwrap();
    let mut p = Pipeline::new(&pg, "standby", &["public.s"], "");
    p.start(); // A: sluice-0.log
    p.wait_streaming(&pg);
    let a_walsender = slot(&pg, "standby").1.expect("A's walsender");
    pg.psql("INSERT INTO s SELECT g, 0 FROM generate_series(1, 100) g")
        .unwrap();
    p.wait_records(100);

    // B starts while A holds part of a streamed, uncommitted transaction on disk.
    let mut open = PsqlSession::start(&pg);
    open.send("BEGIN; INSERT INTO s SELECT g, 0 FROM generate_series(100001, 105000) g;");
    let spill_dir = p.dir.path().join("data").join("spill");
    wait_until(WAIT, "A to spill the streamed transaction", || {
        std::fs::read_dir(&spill_dir)
            .ok()?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".spill"))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    let mut b = Instance(Some(p.spawn())); // B: sluice-1.log
    wait_until(WAIT, "B to wait as a standby", || {
        log_of(&p, 1).contains("waiting as a standby").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    open.send("COMMIT;");
    open.finish();
    p.wait_records(5100);
    // While B waits, A keeps streaming, undisturbed, and B does not touch the slot.
    pg.psql("UPDATE s SET v = 1 WHERE id <= 10").unwrap();
    let before_kill = p.wait_records(5110);
    assert!(
        !log_of(&p, 0).contains("reconnecting"),
        "A was disturbed by B's start:\n{}",
        p.logs()
    );
    assert_eq!(
        slot(&pg, "standby").1,
        Some(a_walsender),
        "the slot changed hands"
    );
    assert!(
        !log_of(&p, 1).contains("source: streaming"),
        "B streams too"
    );
    assert!(alive(b.pid()));

    // Everything A wrote is confirmed, so nothing is in flight at the switch ...
    let last_commit = before_kill
        .iter()
        .map(|r| lsn(r["commit_lsn"].as_str().unwrap()))
        .max()
        .unwrap();
    wait_until(WAIT, "A to confirm what it delivered", || {
        (slot(&pg, "standby").2 > last_commit).then_some(())
    })
    .unwrap();
    // ... but a streamed transaction, half on A's disk ...
    let mut open = PsqlSession::start(&pg);
    open.send("BEGIN; INSERT INTO s SELECT g, 0 FROM generate_series(200001, 205000) g;");
    wait_until(WAIT, "A to spill the second streamed transaction", || {
        std::fs::read_dir(&spill_dir)
            .ok()?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".spill"))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    p.kill9();
    // ... and a line A was writing when it died: SIGKILL can cut a write() short. Made
    // deterministic here by appending what such a cut leaves, before B writes anything.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p.out_path)
        .unwrap()
        .write_all(br#"{"id":"00000000DEADBEEF-000001","op":"ins"#)
        .unwrap();
    open.send("COMMIT;");
    open.finish();

    let killed = Instant::now();
    pg.psql(
        "UPDATE s SET v = 2 WHERE id > 90 AND id <= 100;
         BEGIN; DELETE FROM s WHERE id BETWEEN 20 AND 29; INSERT INTO s VALUES (1000, 7); COMMIT;",
    )
    .unwrap();
    wait_until(WAIT, "B to deliver the writes after the kill", || {
        let text = std::fs::read_to_string(&p.out_path).unwrap_or_default();
        text.contains(r#""key":{"id":1000}"#).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    let takeover = killed.elapsed();
    eprintln!(
        "B took over and delivered in {:.2} s",
        takeover.as_secs_f64()
    );
    assert!(
        takeover < Duration::from_secs(30),
        "takeover took {takeover:?}"
    );
    assert!(log_of(&p, 1).contains("took over"), "{}", p.logs());
    let b_walsender = slot(&pg, "standby").1;
    assert!(b_walsender.is_some() && b_walsender != Some(a_walsender));

    b.stop();
    assert_whole_lines(&p);
    let records = p.records();
    let distinct = check_ids(&records);
    assert_eq!(distinct.len(), 100 + 5000 + 10 + 5000 + 10 + 10 + 1);
    assert_eq!(replay(&records), table_state(&pg, "s"));
    eprintln!("standby_takeover: {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 4. A 5,000,000-row transaction in bounded memory
// ---------------------------------------------------------------------------------------

const BIG_ROWS: u64 = 5_000_000;
const RSS_LIMIT_KB: u64 = 200 * 1024;

#[derive(serde::Deserialize)]
struct BigRecord<'a> {
    id: &'a str,
    op: &'a str,
    table: &'a str,
    key: BigKey,
    after: BigAfter<'a>,
    commit_lsn: &'a str,
}

#[derive(serde::Deserialize)]
struct BigKey {
    id: u64,
}

#[derive(serde::Deserialize)]
struct BigAfter<'a> {
    id: u64,
    md5: &'a str,
}

/// Checks the sink holds exactly the big transaction: one commit, ordinals 1..=BIG_ROWS,
/// rows 1..=BIG_ROWS in order. Streams the file (it is over a gigabyte).
fn check_big_file(p: &Pipeline) {
    let mut reader =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&p.out_path).unwrap());
    let mut line = String::new();
    let mut n = 0u64;
    let mut commit = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        assert!(line.ends_with('\n'), "partial last line");
        n += 1;
        let r: BigRecord = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("line {n}: {e}: {}", line.trim_end()));
        let (_, ordinal) = parse_id(r.id);
        if n == 1 {
            commit = r.commit_lsn.to_owned();
        }
        assert!(
            ordinal as u64 == n
                && r.key.id == n
                && r.after.id == n
                && r.op == "insert"
                && r.table == "big"
                && r.after.md5.len() == 32
                && r.commit_lsn == commit,
            "line {n} is not row {n} of the transaction: {}",
            line.trim_end()
        );
    }
    assert_eq!(n, BIG_ROWS, "records in the sink");
    eprintln!("{} records, ids 1..={n}, one commit at {commit}", n);
}

/// Runs `p` until its slot has confirmed `target`, then reports its peak RSS and stops it.
fn catch_up_and_measure(pg: &PgServer, p: &mut Pipeline, target: u64, what: &str) -> u64 {
    let t0 = Instant::now();
    wait_until(
        Duration::from_secs(900),
        &format!("{what}: the slot to confirm the big transaction"),
        || (slot(pg, &p.name).2 >= target).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    let hwm = vm_hwm_kb(p.pid().unwrap());
    eprintln!(
        "{what}: confirmed after {:.1} s; peak RSS (VmHWM) {} kB = {:.1} MB",
        t0.elapsed().as_secs_f64(),
        hwm,
        hwm as f64 / 1024.0
    );
    p.stop();
    hwm
}

#[test]
fn a_five_million_row_transaction_arrives_whole_in_bounded_memory() {
    let started = Instant::now();
    // Durability is not under test here: skip fsync to keep this test's run time down.
    let pg = PgServer::builder()
        .setting("fsync", "off")
        .setting("synchronous_commit", "off")
        .setting("full_page_writes", "off")
        .setting("max_wal_size", "8GB")
        .setting("logical_decoding_work_mem", "64MB")
        .start()
        .unwrap();
    pg.psql("CREATE TABLE public.big (id int PRIMARY KEY, md5 text NOT NULL)")
        .unwrap();
    // Two pipelines over the same transaction: protocol 2 (streamed while it runs) and
    // protocol 1 (sent whole after the commit). The second one's slot exists before the
    // insert, then it waits, stopped, while the first runs.
    let mut v2 = Pipeline::new(&pg, "big_v2", &["public.big"], "");
    let mut v1 = Pipeline::new(&pg, "big_v1", &["public.big"], "protocol_version = 1");
    v1.start();
    v1.wait_streaming(&pg);
    v1.stop();
    v2.start();
    v2.wait_streaming(&pg);

    let t0 = Instant::now();
    pg.psql(&format!(
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {BIG_ROWS}) g"
    ))
    .unwrap();
    let target = current_wal_lsn(&pg);
    eprintln!("insert committed in {:.1} s", t0.elapsed().as_secs_f64());

    let hwm2 = catch_up_and_measure(&pg, &mut v2, target, "protocol 2");
    check_big_file(&v2);
    drop(v2); // frees its gigabyte of output

    v1.start();
    let hwm1 = catch_up_and_measure(&pg, &mut v1, target, "protocol 1");
    check_big_file(&v1);

    assert!(
        hwm2 < RSS_LIMIT_KB,
        "protocol 2: peak RSS {hwm2} kB over {RSS_LIMIT_KB} kB"
    );
    assert!(
        hwm1 < RSS_LIMIT_KB,
        "protocol 1: peak RSS {hwm1} kB over {RSS_LIMIT_KB} kB"
    );
    eprintln!("big_transaction: {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 5. A clean stop confirms what was delivered
// ---------------------------------------------------------------------------------------

#[test]
fn a_clean_stop_confirms_everything_delivered() {
    let started = Instant::now();
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE public.c (id int PRIMARY KEY, v int NOT NULL)")
        .unwrap();
    let mut p = Pipeline::new(&pg, "clean", &["public.c"], "");
    p.start();
    p.wait_streaming(&pg);
    pg.psql(
        "INSERT INTO c SELECT g, 0 FROM generate_series(1, 50) g;
         BEGIN; UPDATE c SET v = 1 WHERE id <= 5; DELETE FROM c WHERE id > 45; COMMIT;
         INSERT INTO c VALUES (100, 1);",
    )
    .unwrap();
    let delivered = p.wait_records(61);
    p.stop();
    wait_slot_inactive(&pg, "clean");

    // The slot confirmed past the commit of the last delivered transaction, not beyond the
    // server's WAL, and the server has nothing left to send from it.
    let last_commit = lsn(delivered.last().unwrap()["commit_lsn"].as_str().unwrap());
    let (_, _, confirmed) = slot(&pg, "clean");
    assert!(
        confirmed > last_commit,
        "confirmed {confirmed:X} does not cover the last commit at {last_commit:X}\n{}",
        p.logs()
    );
    assert!(confirmed <= current_wal_lsn(&pg));
    let pending = pg
        .psql(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('sluice_clean', NULL, NULL, \
             'proto_version', '1', 'publication_names', 'sluice_clean')",
        )
        .unwrap();
    assert_eq!(
        pending, "0",
        "the slot would send changes again after a clean stop"
    );

    // A restart with no new writes re-sends nothing: the first record after it is the one
    // written after it.
    p.start();
    p.wait_streaming(&pg);
    pg.psql("INSERT INTO c VALUES (-1, 0)").unwrap();
    let after = wait_for_key(&p, "c", -1, WAIT);
    p.stop();
    assert_eq!(after.len(), delivered.len() + 1, "records were sent again");
    assert_eq!(after[..delivered.len()], delivered[..]);
    assert_whole_lines(&p);
    check_ids(&after);
    assert_eq!(replay(&after), table_state(&pg, "c"));
    eprintln!("clean_stop: {:.1} s", started.elapsed().as_secs_f64());
}

/// The `id` of every line of a (large) sink file, without holding the records.
fn read_ids(p: &Pipeline) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        id: &'a str,
    }
    let file = std::fs::File::open(&p.out_path).unwrap();
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.unwrap();
        let r: IdOnly = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        out.push(r.id.to_owned());
    }
    out
}

#[test]
fn a_clean_stop_during_a_transaction_leaves_nothing_to_send_again() {
    let started = Instant::now();
    let pg = PgServer::builder()
        .setting("fsync", "off")
        .setting("synchronous_commit", "off")
        .start()
        .unwrap();
    pg.psql("CREATE TABLE public.m (id int PRIMARY KEY)")
        .unwrap();
    // Protocol 1: the transaction arrives whole after its commit, and Sluice takes about
    // a second to write it, so the stop below lands while it is being received.
    let mut p = Pipeline::new(&pg, "midtxn", &["public.m"], "protocol_version = 1");
    p.start();
    p.wait_streaming(&pg);
    const ROWS: usize = 300_000;
    pg.psql(&format!(
        "INSERT INTO m SELECT g FROM generate_series(1, {ROWS}) g"
    ))
    .unwrap();
    wait_until(WAIT, "the first records of the transaction", || {
        (std::fs::metadata(&p.out_path).ok()?.len() > 0).then_some(())
    })
    .unwrap();
    p.stop();
    wait_slot_inactive(&pg, "midtxn");
    assert_whole_lines(&p);
    let before = read_ids(&p);
    eprintln!(
        "stopped with {} of the transaction's {ROWS} records in the sink (the stop came {} it)",
        before.len(),
        if log_of(&p, 0).contains("stopping after the transaction in flight") {
            "in the middle of"
        } else {
            "after"
        }
    );

    // Whatever the stop left in the sink is not sent again: the restart delivers the rest
    // of the transaction, if any, and then the marker, with no id twice.
    p.start();
    p.wait_streaming(&pg);
    pg.psql("INSERT INTO m VALUES (-1)").unwrap();
    wait_until(WAIT, "the marker", || {
        let text = std::fs::read(&p.out_path).ok()?;
        let tail = &text[text.len().saturating_sub(4096)..];
        String::from_utf8_lossy(tail)
            .contains(r#""key":{"id":-1}"#)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    p.stop();
    assert_whole_lines(&p);
    let ids = read_ids(&p);
    assert_eq!(ids[..before.len()], before[..]);
    let mut seen = std::collections::HashSet::new();
    let dups = ids.iter().filter(|id| !seen.insert(id.as_str())).count();
    assert_eq!(
        dups,
        0,
        "{dups} records were sent again after a clean stop (stopped with {} in the sink)",
        before.len()
    );
    assert_eq!(ids.len(), ROWS + 1);
    let parsed: Vec<(u64, u32)> = ids.iter().map(|i| parse_id(i)).collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "ids out of order");
    eprintln!(
        "clean_stop_mid_transaction: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
