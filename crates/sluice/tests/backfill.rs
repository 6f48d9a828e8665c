//! Live backfills and resumption: a table copied while the stream runs (watermarks, no
//! held snapshot) ends identical under concurrent writes; a table added to the config of a
//! running pipeline is backfilled while the others stream; a kill -9 in the middle of a
//! snapshot or a backfill resumes from the chunks not yet done.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::recovery::*;
use support::workload::*;
use support::*;

fn wait_log(p: &Pipeline, needle: &str) {
    if wait_until(Duration::from_secs(120), needle, || {
        p.log_contains(needle).then_some(())
    })
    .is_err()
    {
        let log = log_of(p, 0);
        let info: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
        panic!("log never said {needle:?}\n{}", info.join("\n"));
    }
}

/// `(table, range)` of every log line containing `what` in `log`.
fn ranges_in(log: &str, what: &str) -> BTreeSet<(String, u64)> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let table = l
                .split("table=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_owned();
            let range = l
                .split("range=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((table, range))
        })
        .collect()
}

fn backfill(p: &Pipeline, table: &str, filter: Option<&str>) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["backfill", "-c"])
        .arg(&p.config_path)
        .args(["--table", table]);
    if let Some(f) = filter {
        cmd.args(["--where", f]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

const T: &str = "CREATE TABLE public.t (id bigint PRIMARY KEY, v text, n int);";

/// Creates `public.t` with `rows` rows (`id` 1..=rows) and statistics, so chunks plan to size.
fn seed_t(pg: &PgServer, rows: u64) {
    pg.psql(&format!(
        "{T} INSERT INTO t SELECT g, 'row' || g, g FROM generate_series(1, {rows}) g; ANALYZE t;"
    ))
    .unwrap();
}

#[test]
fn a_live_backfill_under_concurrent_writes_ends_identical() {
    let pg = PgServer::start().unwrap();
    seed_t(&pg, 40000);
    let mut p = Pipeline::new(
        &pg,
        "live",
        &["public.t"],
        "chunk_rows = 2000\n[source.table.\"public.t\"]\nsnapshot = \"never\"",
    );
    p.start();
    p.wait_streaming(&pg);
    let writer = Writer::start(&pg, "t", 40_000, "live-backfill");
    backfill(&p, "public.t", None);
    wait_log(&p, "backfill: table copied");
    let writes = writer.finish();
    assert!(writes > 100, "{writes} writes");
    wait_identical(&p, &pg, "t");
    p.stop();
    let recs = p.records();
    let reads = recs.iter().filter(|r| r["op"] == "read").count();
    assert!(reads > 30_000, "{reads} reads");
    // Read records sit inside the stream, with ids that keep increasing in file order.
    let ids: Vec<(u64, u32)> = recs.iter().map(id_of).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids go backwards");
}

#[test]
fn a_backfill_with_a_filter_copies_only_matching_rows() {
    let pg = PgServer::start().unwrap();
    seed_t(&pg, 1000);
    pg.psql(
        "-- No primary key: the whole row is its identity.
         CREATE TABLE public.nopk (a int, b text); ALTER TABLE nopk REPLICA IDENTITY FULL;
         INSERT INTO nopk SELECT g, 'b' || g FROM generate_series(1, 500) g;",
    )
    .unwrap();
    let mut p = Pipeline::new(
        &pg,
        "filtered",
        &["public.t", "public.nopk"],
        "snapshot = \"never\"",
    );
    p.start();
    p.wait_streaming(&pg);
    backfill(&p, "public.t", Some("n % 10 = 0"));
    wait_log(&p, "backfill: table copied");
    let reads: Vec<Value> = p
        .records()
        .into_iter()
        .filter(|r| r["op"] == "read")
        .collect();
    assert_eq!(reads.len(), 100);
    assert!(reads
        .iter()
        .all(|r| r["after"]["n"].as_i64().unwrap() % 10 == 0));

    // A table without a primary key is backfilled by its whole-row identity, while it
    // changes: the sink ends with the table's rows.
    let mut session = PsqlSession::start(&pg);
    backfill(&p, "public.nopk", None);
    for i in 1..=200 {
        session.send(&format!("UPDATE nopk SET b = 'c{i}' WHERE a = {i};"));
    }
    session.finish();
    wait_until(WAIT, "the nopk backfill", || {
        (log_of(&p, 0).matches("backfill: table copied").count() >= 2).then_some(())
    })
    .unwrap();
    let want: BTreeSet<String> = pg
        .psql("SELECT a || ':' || b FROM nopk ORDER BY a")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let got = wait_until(WAIT, "nopk rows in the sink", || {
        let mut rows = std::collections::BTreeMap::<String, i64>::new();
        for r in p.records().iter().filter(|r| r["table"] == "nopk") {
            let row = |v: &Value| format!("{}:{}", v["a"], v["b"].as_str().unwrap_or(""));
            match r["op"].as_str() {
                Some("read") | Some("insert") => *rows.entry(row(&r["after"])).or_default() += 1,
                Some("update") => {
                    *rows.entry(row(&r["before"])).or_default() -= 1;
                    *rows.entry(row(&r["after"])).or_default() += 1;
                }
                _ => {}
            }
        }
        let have: BTreeSet<String> = rows
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, _)| k)
            .collect();
        (have == want).then_some(have)
    });
    assert!(got.is_ok(), "{}", p.logs());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["backfill", "-c"])
        .arg(&p.config_path)
        .args(["--table", "public.other"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("add it to source.tables"));
    p.stop();
}

#[test]
fn a_table_added_to_a_running_pipeline_is_backfilled_while_others_stream() {
    let pg = PgServer::start().unwrap();
    pg.psql(&format!(
        "{T}
         CREATE TABLE public.added (id bigint PRIMARY KEY, v text, n int);
         INSERT INTO added SELECT g, 'old' || g, g FROM generate_series(1, 20000) g;"
    ))
    .unwrap();
    let mut p = Pipeline::new(&pg, "adding", &["public.t"], "chunk_rows = 3000");
    p.start();
    p.wait_streaming(&pg);
    let writer_t = Writer::start(&pg, "t", 5_000, "adding-t");
    let writer_added = Writer::start(&pg, "added", 20_000, "adding-added");
    // The operator edits the config of the running pipeline.
    let config = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(
        &p.config_path,
        config.replace(
            "tables = [\"public.t\"]",
            "tables = [\"public.t\", \"public.added\"]",
        ),
    )
    .unwrap();
    wait_log(&p, "backfill: table copied");
    writer_t.finish();
    writer_added.finish();
    wait_identical(&p, &pg, "t");
    wait_identical(&p, &pg, "added");
    p.stop();
    assert!(p.log_contains("new table; backfilling it while streaming"));
}

/// Kills the pipeline as soon as `needle` has been logged at least `n` times.
fn kill_after(p: &mut Pipeline, needle: &str, n: usize) {
    let ok = wait_until(Duration::from_secs(120), needle, || {
        (log_of(p, 0).matches(needle).count() >= n).then_some(())
    });
    if ok.is_err() {
        panic!("log never said {needle:?} {n} times\n{}", p.logs());
    }
    p.kill9();
}

#[test]
fn kill9_in_the_middle_of_an_initial_snapshot_resumes_it() {
    let pg = PgServer::start().unwrap();
    seed_t(&pg, 400000);
    let mut p = Pipeline::new(
        &pg,
        "snapkill",
        &["public.t"],
        "chunk_rows = 4000\nsnapshot_workers = 1",
    );
    let writer = Writer::start(&pg, "t", 400_000, "snapshot-kill");
    p.start();
    kill_after(&mut p, "snapshot: range done", 3);
    let first = log_of(&p, 0);
    let done_before = ranges_in(&first, "snapshot: range done");
    assert!(
        !first.contains("snapshot: complete"),
        "the snapshot finished before the kill; nothing to resume"
    );
    p.start();
    wait_log(&p, "backfill: table copied");
    writer.finish();
    wait_identical(&p, &pg, "t");
    p.stop();
    let second = log_of(&p, 1);
    let read_again = ranges_in(&second, "backfill: reading range");
    // Ranges made durable before the kill are not read again; the rest are, once.
    let twice: Vec<_> = done_before.intersection(&read_again).collect();
    assert!(twice.is_empty(), "ranges read twice: {twice:?}");
    assert!(!read_again.is_empty(), "{second}");
    assert!(
        second.contains("kind=Initial"),
        "resumed as the initial snapshot's plan"
    );
}

#[test]
fn kill9_in_the_middle_of_a_backfill_resumes_it() {
    let pg = PgServer::start().unwrap();
    seed_t(&pg, 100000);
    let mut p = Pipeline::new(
        &pg,
        "fillkill",
        &["public.t"],
        "chunk_rows = 2000\nsnapshot = \"never\"",
    );
    p.start();
    p.wait_streaming(&pg);
    let writer = Writer::start(&pg, "t", 100_000, "backfill-kill");
    backfill(&p, "public.t", None);
    kill_after(&mut p, "backfill: range done", 3);
    let first = log_of(&p, 0);
    let done_before = ranges_in(&first, "backfill: range done");
    assert!(!first.contains("backfill: table copied"));
    p.start();
    wait_log(&p, "backfill: table copied");
    writer.finish();
    wait_identical(&p, &pg, "t");
    p.stop();
    let second = log_of(&p, 1);
    let read_again = ranges_in(&second, "backfill: reading range");
    let twice: Vec<_> = done_before.intersection(&read_again).collect();
    assert!(twice.is_empty(), "ranges read twice: {twice:?}");
    let total = ranges_in(&(first.clone() + &second), "backfill: reading range").len();
    assert!(read_again.len() < total, "the backfill started over");
}

/// A transaction whose commit is in the WAL (so the stream delivers it before the low
/// watermark) but not yet visible to other sessions (it waits for a synchronous standby)
/// must not let the chunk deliver the row's older version after it.
#[test]
fn a_commit_still_invisible_to_the_chunk_holds_the_chunk_back() {
    let pg = PgServer::builder()
        .setting("synchronous_standby_names", "nobody")
        .setting("synchronous_commit", "local")
        .start()
        .unwrap();
    seed_t(&pg, 1000);
    let mut p = Pipeline::new(&pg, "invisible", &["public.t"], "snapshot = \"never\"");
    p.start();
    p.wait_streaming(&pg);
    // Committed locally, then waits for a standby that never comes: invisible until the
    // wait is cancelled.
    let mut waiting = PsqlSession::start(&pg);
    waiting.send("SET synchronous_commit = on; UPDATE t SET v = 'newer' WHERE id = 5;");
    wait_until(WAIT, "the stream to deliver the waiting commit", || {
        p.records()
            .iter()
            .any(|r| r["op"] == "update" && r["after"]["v"] == "newer")
            .then_some(())
    })
    .unwrap();
    // Invisible to everyone else, though committed.
    assert_eq!(
        pg.psql("SELECT v FROM t WHERE id = 5").unwrap().trim(),
        "row5"
    );
    backfill(&p, "public.t", None);
    wait_log(&p, "committed transactions stay invisible");
    assert!(!p.log_contains("backfill: table copied"));
    pg.psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        .unwrap();
    waiting.finish();
    wait_log(&p, "backfill: table copied");
    wait_identical(&p, &pg, "t");
    p.stop();
    let five = replay(&p.records());
    assert_eq!(five["public.t:{\"id\":5}"]["v"], "newer");
}
