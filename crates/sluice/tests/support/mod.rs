//! Shared end-to-end test support: a pipeline = a private PostgreSQL, a config file, the
//! real `sluice` binary running it into a file sink, and helpers that wait (bounded) for
//! the sink to hold what a test expects.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub mod recovery;
pub mod server;
pub mod vals;
pub mod workload;
pub use sluice_testkit::{wait_until, PgServer};

/// A default bound for waits in these tests; generous for slow shared machines.
pub const WAIT: Duration = Duration::from_secs(60);

/// A test pipeline: its config, output file and (while running) its process.
pub struct Pipeline {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub out_path: PathBuf,
    child: Option<Child>,
}

impl Pipeline {
    /// Writes a config for `tables` of `pg`'s database `db` (as superuser `postgres`);
    /// `extra_source` is appended to the `[source]` section.
    pub fn new(pg: &PgServer, name: &str, tables: &[&str], extra_source: &str) -> Pipeline {
        Self::with_url(&pg.url("postgres", "postgres"), name, tables, extra_source)
    }

    pub fn with_url(url: &str, name: &str, tables: &[&str], extra_source: &str) -> Pipeline {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("sluice.toml");
        let out_path = dir.path().join("changes.jsonl");
        let tables = tables
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config_path,
            format!(
                "[pipeline]\nname = {name:?}\ndata_dir = \"data\"\n[source]\nurl = {url:?}\n\
                 tables = [{tables}]\nstatus_interval_secs = 1\n{extra_source}\n\
                 [[sinks]]\nname = \"out\"\ntype = \"file\"\npath = \"changes.jsonl\"\n"
            ),
        )
        .expect("write config");
        Pipeline {
            name: name.into(),
            dir,
            config_path,
            out_path,
            child: None,
        }
    }

    /// Appends to the config file (more `[[sinks]]`, `[log]`, `[server]`).
    pub fn add_config(&self, text: &str) {
        let mut c = std::fs::read_to_string(&self.config_path).expect("read config");
        c.push('\n');
        c.push_str(text);
        std::fs::write(&self.config_path, c).expect("write config");
    }

    /// The HTTP server's address, from the log line of the running instance.
    pub fn server_addr(&self) -> String {
        wait_until(WAIT, "the server to listen", || {
            let dir = std::fs::read_dir(self.dir.path()).ok()?;
            let mut found = None;
            for e in dir.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    for line in text.lines().filter(|l| l.contains("server: listening")) {
                        let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
                        found = Some(addr.to_owned());
                    }
                }
            }
            found
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Runs a `sluice` subcommand on this pipeline's config to completion, bounded: a hang
    /// is a test failure, not a stuck test run.
    pub fn command(&self, sub: &str) -> std::process::Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([sub, "-c"])
            .arg(&self.config_path)
            .env("SLUICE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if child.try_wait().expect("wait for sluice").is_some() {
                return child.wait_with_output().expect("sluice output");
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("sluice output");
                panic!(
                    "`sluice {sub}` did not finish within 90 s\n{}",
                    output_text(&out)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `sluice run` in the background; its log goes to `sluice-N.log`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.child = Some(self.spawn());
    }

    /// Starts another `sluice run` of the same config (a standby).
    pub fn spawn(&self) -> Child {
        self.spawn_with(&[])
    }

    /// Starts one `sluice run` of this config and `others` (one pipeline each, one
    /// process); its log goes to this pipeline's `sluice-N.log`.
    pub fn spawn_with(&self, others: &[&Pipeline]) -> Child {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("sluice-"))
                })
                .count()
            })
            .unwrap_or(0);
        let log = std::fs::File::create(self.dir.path().join(format!("sluice-{n}.log")))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["run", "-c"]).arg(&self.config_path);
        for o in others {
            cmd.arg("-c").arg(&o.config_path);
        }
        cmd.env("SLUICE_LOG", "info,sluice_pg=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice")
    }

    /// Waits until the pipeline's slot is being streamed from.
    pub fn wait_streaming(&self, pg: &PgServer) {
        // The slot is also active while it is being created (and would vanish if the
        // process died then), so wait for the log to say streaming started as well.
        let sql = format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'sluice_{}'",
            self.name
        );
        wait_until(
            WAIT,
            "the slot to become active and streaming to start",
            || {
                let started = self.log_contains("source: streaming");
                (started && pg.psql(&sql).ok()?.trim() == "t").then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// SIGKILL: no chance to flush or confirm anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Every record in the sink so far.
    pub fn records(&self) -> Vec<Value> {
        read_records(&self.out_path)
    }

    /// Every change id in the stopped pipeline's log, in log order, as (commit LSN,
    /// ordinal). Opens the log files directly: the pipeline must not be running.
    /// Keeps the pipeline's log in a JetStream stream on `url` (with `replicas`).
    pub fn use_jetstream_log(&self, url: &str, replicas: usize) {
        self.add_config(&format!(
            "[log]\nbackend = \"jetstream\"\n[log.jetstream]\nurl = {url:?}\nreplicas = {replicas}\n"
        ));
    }

    /// The ids in the pipeline's JetStream log, in log order (read with the log's own
    /// reader, as the sinks read it).
    pub fn jetstream_log_ids(&self, url: &str) -> Vec<(u64, u64)> {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let state = tempfile::tempdir().expect("tempdir");
        rt.block_on(async {
            use sluice_log::LogBackend;
            let client = async_nats::connect(url).await.expect("connect to NATS");
            let opened = sluice_jetstream::open(
                client,
                sluice_jetstream::Settings {
                    stream: format!("SLUICE_LOG_{}", self.name),
                    subject_prefix: format!("sluice.log.{}", self.name),
                    partitions: 16,
                    replicas: 1,
                    file_storage: true,
                    max_bytes: 0,
                    retention: Duration::from_secs(3600),
                    state_dir: state.path().to_owned(),
                },
            )
            .await
            .expect("open the JetStream log");
            let log = opened.log;
            let end = log.durable_end();
            let mut reader = log.reader(log.first()).expect("read the log");
            let mut batch = sluice_log::RecordBatch::default();
            let mut ids = Vec::new();
            while reader.position() < end {
                tokio::time::timeout(WAIT, reader.wait())
                    .await
                    .expect("the log's records within the wait")
                    .expect("read the log");
                batch.clear();
                reader
                    .read(&mut batch, 10_000, 64 << 20, &mut |_, _, _| true)
                    .expect("read the log");
                ids.extend(batch.iter().map(|r| (r.id.commit_lsn.0, r.id.ordinal)));
            }
            ids
        })
    }

    pub fn log_ids(&self) -> Vec<(u64, u64)> {
        assert!(
            self.child.is_none(),
            "stop the pipeline before reading its log"
        );
        let (log, _writer, _) = sluice_log::Log::open(sluice_log::LogConfig {
            dir: self.dir.path().join("data").join("log"),
            segment_bytes: 64 << 20,
            max_bytes: None,
            on_full: sluice_log::FullPolicy::PauseSource,
            retention: Duration::from_secs(3600),
            shed_after: Duration::from_secs(60),
        })
        .expect("open the pipeline's log");
        let end = log.next_offset();
        let mut reader = sluice_log::Reader::new(&log, log.first()).expect("read the log");
        let mut batch = sluice_log::RecordBatch::default();
        let mut ids = Vec::new();
        while reader.position() < end {
            batch.clear();
            reader
                .read(&mut batch, 10_000, 64 << 20, &mut |_, _, _| true)
                .expect("read the log");
            ids.extend(batch.iter().map(|r| (r.id.commit_lsn.0, r.id.ordinal)));
        }
        ids
    }

    /// Waits until the sink holds at least `n` records; returns them all.
    pub fn wait_records(&self, n: usize) -> Vec<Value> {
        self.wait_records_for(n, WAIT)
    }

    pub fn wait_records_for(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_until(timeout, &format!("{n} records in the sink"), || {
            let r = self.records();
            (r.len() >= n).then_some(r)
        })
        .unwrap_or_else(|e| panic!("{e}; have {}\n{}", self.records().len(), self.logs()))
    }

    /// Whether any `sluice` log of this pipeline contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_dir(self.dir.path())
            .map(|dir| {
                dir.flatten().any(|e| {
                    let p = e.path();
                    p.extension().is_some_and(|x| x == "log")
                        && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(needle))
                })
            })
            .unwrap_or(false)
    }

    /// All `sluice` logs of this pipeline, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(dir) = std::fs::read_dir(self.dir.path()) {
            let mut names: Vec<_> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            names.sort();
            for p in names {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                // Status updates (DEBUG, every second) would crowd out what happened.
                let tail: Vec<&str> = text
                    .lines()
                    .rev()
                    .filter(|l| !l.contains(" DEBUG "))
                    .take(40)
                    .collect();
                out.push_str(&format!("--- {} (last lines above DEBUG)\n", p.display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// SIGTERM a child and wait (bounded) for it; SIGKILL if it does not exit.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("sluice did not exit within 30 s of SIGTERM");
}

/// A command's exit code, stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Parses the whole lines of a JSON-lines file; a missing file is empty. A last line
/// without its newline is being written right now and is left for the next read (tests
/// that check for torn lines read the file themselves after the writer stopped).
pub fn read_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    whole
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The records' `op`s in order.
pub fn ops(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["op"].as_str().unwrap_or("?"))
        .collect()
}

/// Applies records (in order, deduplicated by id) to a map from key to row: the state a
/// cache following the stream ends in.
pub fn replay(records: &[Value]) -> std::collections::BTreeMap<String, Value> {
    let mut seen = std::collections::HashSet::new();
    let mut state = std::collections::BTreeMap::new();
    for r in records {
        if !seen.insert(r["id"].as_str().unwrap_or_default().to_owned()) {
            continue;
        }
        let table = format!(
            "{}.{}",
            r["schema"].as_str().unwrap_or(""),
            r["table"].as_str().unwrap_or("")
        );
        match r["op"].as_str() {
            Some("insert") | Some("update") | Some("read") => {
                // A changed key: the row under the old key is gone.
                if let (Some(before), Some(key)) = (r["before"].as_object(), r["key"].as_object()) {
                    let old: serde_json::Map<String, Value> = key
                        .keys()
                        .map(|k| (k.clone(), before.get(k).cloned().unwrap_or(Value::Null)))
                        .collect();
                    state.remove(&format!("{table}:{}", Value::Object(old)));
                }
                state.insert(format!("{table}:{}", r["key"]), r["after"].clone());
            }
            Some("delete") => {
                state.remove(&format!("{table}:{}", r["key"]));
            }
            Some("truncate") => state.retain(|k, _| !k.starts_with(&format!("{table}:"))),
            _ => {}
        }
    }
    state
}

/// Inserts ids 1..=`rows` into `public.t (id, v)` of each of `urls`, 100 rows per
/// transaction, on a thread of its own (each batch by psql, so a server restart between
/// batches is no error of the writer's).
pub fn insert_batches(urls: Vec<String>, rows: i64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for from in (1..=rows).step_by(100) {
            for url in &urls {
                let out = Command::new(sluice_testkit::pg_bin("psql"))
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c"])
                    .arg(format!(
                        "INSERT INTO t SELECT g, 'r' || g FROM generate_series({from}, {}) g",
                        (from + 99).min(rows)
                    ))
                    .output()
                    .expect("run psql");
                assert!(out.status.success(), "{out:?}");
            }
            // Spread over a moment, so that what the test does meanwhile lands mid-stream.
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}
