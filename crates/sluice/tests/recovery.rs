//! End to end: recovery. The server restarting or crashing under a running Sluice, a
//! standby taking over from a killed instance, a 5,000,000-row transaction in bounded
//! memory, and a clean stop that confirms everything it delivered. (SIGKILL in a loop under
//! writes is in kill9.rs.)

mod support;

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use support::recovery::*;
use support::*;

fn survives_server_restart(crash: bool, jetstream: Option<&str>) {
    let started = Instant::now();
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE public.r (id int PRIMARY KEY, v int NOT NULL)")
        .unwrap();
    let mut p = Pipeline::new(&pg, "restart", &["public.r"], "");
    if let Some(url) = jetstream {
        p.use_jetstream_log(url, 1);
    }
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
    if jetstream.is_some() {
        // The run's own hold on the pipeline's lock lost its session and took it again.
        wait_until(WAIT, "the pipeline's lock held again", || {
            log_of(&p, 0)
                .contains("the pipeline's lock: held again")
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
        assert!(alive(pid), "sluice exited:\n{}", p.logs());
    }
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
    survives_server_restart(false, None);
}

#[test]
fn reconnects_after_the_server_crashes() {
    survives_server_restart(true, None);
}

/// With the log in JetStream the run holds the pipeline's lock itself: its session ends
/// with the crash, and the lock is taken again rather than the run stopped.
#[test]
fn reconnects_after_the_server_crashes_with_the_jetstream_log() {
    let nats = sluice_testkit::NatsServer::start().unwrap();
    survives_server_restart(true, Some(&nats.url()));
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
