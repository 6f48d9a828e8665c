//! Helpers of the recovery tests: ids and LSNs, the slot's state, exact checks of a sink
//! file against a table, and processes kept alive across test steps.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// xorshift64*: no extra dependency, and a printed seed reproduces a run.
pub struct Rng(pub u64);

impl Rng {
    pub fn from_env(test: &str) -> Rng {
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
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// `X/Y` as a number.
pub fn lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A record id as `(commit_lsn, ordinal)`: ids compare numerically (ordinals above a
/// million widen the text form).
pub fn parse_id(id: &str) -> (u64, u32) {
    let (l, o) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("bad id {id:?}"));
    (u64::from_str_radix(l, 16).unwrap(), o.parse().unwrap())
}

pub fn id_of(r: &Value) -> (u64, u32) {
    parse_id(r["id"].as_str().expect("record without id"))
}

/// The pipeline's slot: (active, active_pid, confirmed_flush_lsn).
pub fn slot(pg: &PgServer, pipeline: &str) -> (bool, Option<u32>, u64) {
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

pub fn current_wal_lsn(pg: &PgServer) -> u64 {
    lsn(&pg.psql("SELECT pg_current_wal_lsn()").unwrap())
}

/// Waits (bounded) until no walsender holds the slot any more, e.g. after Sluice exited.
pub fn wait_slot_inactive(pg: &PgServer, pipeline: &str) {
    wait_until(WAIT, "the slot to become inactive", || {
        (!slot(pg, pipeline).0).then_some(())
    })
    .unwrap();
}

/// The rows of `public.{table}` as JSON objects, by `id`.
pub fn table_json(pg: &PgServer, table: &str) -> Vec<Value> {
    let text = pg
        .psql(&format!(
            "SELECT coalesce(json_agg(x ORDER BY x.id), '[]') FROM public.{table} x"
        ))
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A table as the final per-key state `replay` produces: `public.T:{"id":N}` → row.
pub fn table_state(pg: &PgServer, table: &str) -> BTreeMap<String, Value> {
    table_json(pg, table)
        .into_iter()
        .map(|r| (format!("public.{table}:{}", json!({"id": r["id"]})), r))
        .collect()
}

/// (d): the sink file holds only whole JSON lines.
pub fn assert_whole_lines(p: &Pipeline) {
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
/// earlier record exactly (same id, identical content) as part of a re-sent run. A run
/// follows the original order without skipping and reaches the last record sent before
/// any new record follows, so no key ends on an older value. It may start mid-transaction
/// (a sink's cursor moves over each acknowledged record, docs/GUARANTEES.md rule 1, and a batch can
/// end inside a transaction) and start over further back (a crash during the run).
/// Returns the distinct records in order.
pub fn check_ids(records: &[Value]) -> Vec<&Value> {
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
                // A run may start over further back (a crash during the run: the sink
                // resumes from its cursor) but never skip ahead.
                if let Some(prev) = run {
                    assert!(
                        pos <= prev + 1,
                        "line {}: re-sent record {id_text} skips ahead of its re-sent run",
                        line + 1
                    );
                }
                run = Some(pos);
            }
            None => {
                if let Some(prev) = run {
                    assert!(
                        prev + 1 == distinct.len(),
                        "line {}: new id {id_text} follows a re-sent run that stopped short of \
                         the last record sent",
                        line + 1
                    );
                }
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
pub fn wait_for_key(p: &Pipeline, table: &str, id: i64, timeout: Duration) -> Vec<Value> {
    wait_until(timeout, &format!("the record of {table} id {id}"), || {
        let recs = p.records();
        recs.iter()
            .any(|r| r["table"] == table && r["key"]["id"] == id)
            .then_some(recs)
    })
    .unwrap_or_else(|e| panic!("{e}; have {}\n{}", p.records().len(), p.logs()))
}

/// Peak resident set size of a process, in kB.
pub fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn log_of(p: &Pipeline, n: usize) -> String {
    std::fs::read_to_string(p.dir.path().join(format!("sluice-{n}.log"))).unwrap_or_default()
}

/// `psql` as `postgres` reading statements from a piped stdin, output discarded.
pub fn psql_command(pg: &PgServer) -> Command {
    let mut cmd = Command::new(sluice_testkit::pg_bin("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.host()])
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
        .stdout(Stdio::null());
    cmd
}

/// A `psql` session (as `postgres`) kept open across steps, e.g. to hold a transaction open.
pub struct PsqlSession {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl PsqlSession {
    pub fn start(pg: &PgServer) -> PsqlSession {
        let mut child = psql_command(pg)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn psql");
        let stdin = child.stdin.take();
        PsqlSession { child, stdin }
    }

    pub fn send(&mut self, sql: &str) {
        let stdin = self.stdin.as_mut().expect("session finished");
        writeln!(stdin, "{sql}")
            .and_then(|_| stdin.flush())
            .unwrap();
    }

    /// Ends the session and checks every statement succeeded.
    pub fn finish(&mut self) {
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
pub struct Instance(pub Option<Child>);

impl Instance {
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            terminate(&mut c);
        }
    }
    pub fn pid(&self) -> u32 {
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
