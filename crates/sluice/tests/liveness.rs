//! End to end: the source stays alive. An idle database's slot follows the WAL that the
//! server's other databases write (through keepalives, and through heartbeats), a
//! walsender killed under load heals without loss, a PostgreSQL restart (fast, or a
//! crash) puts no change into the log twice, and reconnecting is bounded when asked.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// (confirmed_flush_lsn >= at, restart_lsn >= at) of slot `slot`.
fn slot_past(pg: &PgServer, slot: &str, at: &str) -> (bool, bool) {
    let out = pg
        .psql(&format!(
            "SELECT confirmed_flush_lsn >= '{at}'::pg_lsn, restart_lsn >= '{at}'::pg_lsn \
             FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .unwrap();
    let mut cols = out.trim().split('|');
    (cols.next() == Some("t"), cols.next() == Some("t"))
}

fn metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn an_idle_slot_follows_the_other_databases_writes_with_and_without_heartbeats() {
    let pg = PgServer::start().unwrap();
    pg.create_database("app").unwrap();
    pg.create_database("other").unwrap();
    pg.psql_db("app", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    pg.psql_db("other", "CREATE TABLE x (id int, v text)")
        .unwrap();
    let url = pg.url("postgres", "app");
    let mut plain = Pipeline::with_url(&url, "plain", &["public.t"], "");
    let mut beating = Pipeline::with_url(&url, "beating", &["public.t"], "heartbeat_secs = 1");
    // Where a table write is needed instead of a message.
    pg.psql_db(
        "app",
        "CREATE TABLE sluice_heartbeat (pipeline text PRIMARY KEY, at timestamptz)",
    )
    .unwrap();
    let mut tabled = Pipeline::with_url(
        &url,
        "tabled",
        &["public.t"],
        "heartbeat_secs = 1\nheartbeat_table = \"public.sluice_heartbeat\"",
    );
    tabled.start();
    beating.add_config("[server]\nlisten = \"127.0.0.1:0\"\nauth = \"none\"\n");
    plain.start();
    beating.start();
    plain.wait_streaming(&pg);
    beating.wait_streaming(&pg);

    // Only the other database is written.
    pg.psql_db(
        "other",
        "INSERT INTO x SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g",
    )
    .unwrap();
    let at = pg.psql("SELECT pg_current_wal_lsn()").unwrap();
    let at = at.trim();
    let started = Instant::now();
    for slot in ["sluice_plain", "sluice_beating"] {
        // The confirmed position follows at the next status update; the restart position
        // once the walsender has decoded a running-transactions record past it (the
        // background writer logs one at most every 15 s while WAL is written).
        wait_until(WAIT, &format!("{slot} to pass {at}"), || {
            (slot_past(&pg, slot, at) == (true, true)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", plain.logs(), beating.logs()));
    }
    eprintln!(
        "both slots passed the other database's writes in {:?}",
        started.elapsed()
    );

    // The heartbeat's arrival is measured, and it reaches no sink.
    let addr = beating.server_addr();
    wait_until(WAIT, "the heartbeat's age", || {
        let text = metrics(&addr);
        let line = text
            .lines()
            .find(|l| l.starts_with("sluice_source_heartbeat_age_seconds{pipeline=\"beating\"}"))?;
        let age: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (age < 5.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", metrics(&addr)));
    pg.psql_db("app", "INSERT INTO t VALUES (1, 'row')")
        .unwrap();
    let records = beating.wait_records(1);
    assert!(
        records.iter().all(|r| r["op"] != "message"),
        "a heartbeat reached the sink: {records:?}"
    );
    assert_eq!(plain.wait_records(1).len(), 1);
    // The table's row moves at each beat.
    let at = || {
        pg.psql_db(
            "app",
            "SELECT at FROM sluice_heartbeat WHERE pipeline = 'tabled'",
        )
        .ok()
        .filter(|a| !a.trim().is_empty())
    };
    let first = wait_until(WAIT, "a heartbeat row", at)
        .unwrap_or_else(|e| panic!("{e}\n{}", tabled.logs()));
    wait_until(WAIT, "the next beat", || at().filter(|a| *a != first))
        .unwrap_or_else(|e| panic!("{e}\n{}", tabled.logs()));
    plain.stop();
    beating.stop();
    tabled.stop();
}

#[test]
fn a_walsender_killed_under_load_heals_without_loss() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let mut p = Pipeline::new(&pg, "heal", &["public.t"], "");
    p.start();
    p.wait_streaming(&pg);
    const ROWS: i64 = 4000;
    let url = pg.url("postgres", "postgres");
    let writer = insert_batches(vec![url], ROWS);
    for round in 1..=2 {
        wait_until(WAIT, "rows to flow", || {
            (p.records().len() >= round * 1000).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
        let killed = pg
            .psql(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = 'sluice_heal' AND active_pid IS NOT NULL",
            )
            .unwrap();
        assert_eq!(killed.trim(), "t", "no walsender to kill");
    }
    writer.join().unwrap();
    wait_every_row(&p, ROWS);
    assert!(
        p.log_contains("reconnecting"),
        "each loss is logged:\n{}",
        p.logs()
    );
    p.stop();
}

/// Waits until the sink holds ids 1..=`rows` of `public.t` (repeats allowed).
fn wait_every_row(p: &Pipeline, rows: i64) {
    wait_until(WAIT, "every row", || {
        let ids: std::collections::BTreeSet<i64> = p
            .records()
            .iter()
            .filter_map(|r| r["after"]["id"].as_i64())
            .collect();
        (ids.len() as i64 == rows).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
}

/// Inserts ids 1..=`rows` into `public.t`, 100 rows per transaction, trying a batch
/// again while the server is down (a batch whose commit was not answered may be in
/// already: the repeat skips what is there).
fn insert_through_restarts(url: String, rows: i64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for from in (1..=rows).step_by(100) {
            let sql = format!(
                "INSERT INTO t SELECT g, 'r' || g FROM generate_series({from}, {}) g \
                 ON CONFLICT DO NOTHING",
                (from + 99).min(rows)
            );
            wait_until(WAIT, "a batch to go in", || {
                let out = std::process::Command::new(sluice_testkit::pg_bin("psql"))
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", &sql])
                    .output()
                    .expect("run psql");
                out.status.success().then_some(())
            })
            .unwrap();
        }
    })
}

#[test]
fn a_postgres_restart_or_crash_under_load_puts_no_change_into_the_log_twice() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let mut p = Pipeline::new(&pg, "restarts", &["public.t"], "");
    p.start();
    p.wait_streaming(&pg);
    // The reproduction: ten rows, a fast restart, one row.
    pg.psql("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g")
        .unwrap();
    p.wait_records(10);
    pg.restart().unwrap();
    pg.psql("INSERT INTO t VALUES (11, 'b')").unwrap();
    p.wait_records(11);
    // Then under load: a fast restart and a crash while rows stream.
    const ROWS: i64 = 4000;
    let writer = insert_through_restarts(pg.url("postgres", "postgres"), ROWS);
    for round in 1..=2 {
        wait_until(WAIT, "rows to flow", || {
            (p.records().len() >= round * 1200).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
        if round == 1 {
            pg.restart().unwrap();
        } else {
            pg.kill9().unwrap();
            pg.start_again().unwrap();
        }
    }
    writer.join().unwrap();
    wait_every_row(&p, ROWS);
    let delivered = p.records().len();
    p.stop();
    let ids = p.log_ids();
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(
        ids.len(),
        distinct.len(),
        "changes in the log twice after restarts\n{}",
        p.logs()
    );
    assert_eq!(ids.len() as i64, ROWS, "the log holds every row once");
    // Without a crash of Sluice the file sink gets each change once too.
    assert_eq!(delivered as i64, ROWS, "{}", p.logs());
}

#[test]
fn reconnecting_gives_up_after_reconnect_for_secs_with_the_last_error() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let mut p = Pipeline::new(&pg, "bounded", &["public.t"], "reconnect_for_secs = 2");
    let mut child = p.spawn();
    p.wait_streaming(&pg);
    pg.stop().unwrap();
    let started = Instant::now();
    let status = wait_until(WAIT, "sluice to give up", || child.try_wait().unwrap())
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert!(!status.success(), "it stops with an error");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it kept trying for the time given"
    );
    assert!(
        p.log_contains("gave up after 2 s of reconnecting"),
        "{}",
        p.logs()
    );
    p.stop();
}

/// Runs `sluice run` to its exit (bounded); its output.
fn run_to_exit(p: &Pipeline) -> (Option<i32>, String) {
    let out = p.command("run");
    (out.status.code(), output_text(&out))
}

/// The ids of table t cached in Redis.
fn cached(redis: &sluice_testkit::RedisServer) -> Vec<i64> {
    let keys = redis.cli(&["KEYS", "c:postgres.public.t.*"]).unwrap();
    let mut ids: Vec<i64> = keys
        .lines()
        .filter_map(|k| k.rsplit('.').next()?.parse().ok())
        .collect();
    ids.sort();
    ids
}

fn set_policy(p: &Pipeline, from: &str, to: &str) {
    let c = std::fs::read_to_string(&p.config_path).unwrap();
    assert!(c.contains(from));
    std::fs::write(&p.config_path, c.replace(from, to)).unwrap();
}

#[test]
fn a_lost_slot_stops_by_default_and_a_resnapshot_leaves_the_cache_equal_to_the_table() {
    // A slot more than 16 MB behind is invalidated at the next checkpoint.
    let pg = PgServer::builder()
        .setting("max_slot_wal_keep_size", "16MB")
        .start()
        .unwrap();
    let redis = sluice_testkit::RedisServer::start().unwrap();
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE filler (v text);
         INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g",
    )
    .unwrap();
    let mut p = Pipeline::new(&pg, "lost", &["public.t"], "on_slot_lost = \"stop\"");
    p.add_config(&format!(
        "[[sinks]]\nname = \"cache\"\ntype = \"redis\"\nurl = {:?}\nprefix = \"c:\"\n",
        redis.url()
    ));
    p.start();
    p.wait_streaming(&pg);
    wait_until(WAIT, "the snapshot in Redis", || {
        (cached(&redis) == (1..=10).collect::<Vec<_>>()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    p.stop();

    // Dropped while the pipeline was away: by default it stops and says what to do.
    pg.psql("SELECT pg_drop_replication_slot('sluice_lost')")
        .unwrap();
    let status = p.command("status");
    assert_eq!(status.status.code(), Some(1), "{}", output_text(&status));
    assert!(output_text(&status).contains("slot_exists: false"));
    let (code, text) = run_to_exit(&p);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("was dropped"), "{text}");
    assert!(text.contains("on_slot_lost = \"resnapshot\""), "{text}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0",
        "nothing guessed: no slot made"
    );

    // Resnapshot: rows deleted meanwhile leave the cache too.
    pg.psql("DELETE FROM t WHERE id <= 5; INSERT INTO t VALUES (11, 'new')")
        .unwrap();
    set_policy(
        &p,
        "on_slot_lost = \"stop\"",
        "on_slot_lost = \"resnapshot\"",
    );
    p.start();
    wait_until(WAIT, "the cache to equal the table", || {
        (cached(&redis) == (6..=11).collect::<Vec<_>>()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", cached(&redis), p.logs()));
    p.wait_streaming(&pg);
    p.stop();

    // Invalidated by max_slot_wal_keep_size while the pipeline was away.
    pg.psql("DELETE FROM t WHERE id = 6").unwrap();
    for _ in 0..3 {
        pg.psql("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 10000)")
            .unwrap();
        pg.psql("SELECT pg_switch_wal(); CHECKPOINT").unwrap();
    }
    wait_until(WAIT, "the slot to be invalidated", || {
        (pg.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'sluice_lost'")
            .ok()?
            == "lost")
            .then_some(())
    })
    .unwrap();
    let status = output_text(&p.command("status"));
    assert!(status.contains("wal_status: lost"), "{status}");
    p.start();
    wait_until(WAIT, "the cache to equal the table again", || {
        (cached(&redis) == (7..=11).collect::<Vec<_>>()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", cached(&redis), p.logs()));
    assert!(p.log_contains("was invalidated"), "{}", p.logs());
    pg.psql("INSERT INTO t VALUES (12, 'streamed')").unwrap();
    wait_until(WAIT, "streaming after the resnapshot", || {
        cached(&redis).contains(&12).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    p.stop();
}

#[test]
fn a_second_instance_with_an_empty_data_dir_refuses_a_slot_it_has_no_record_of() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let mut first = Pipeline::new(&pg, "twin", &["public.t"], "");
    first.start();
    first.wait_streaming(&pg);
    pg.psql("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 1000) g")
        .unwrap();
    first.wait_records(1000);
    first.kill9();
    // The same pipeline on another machine: its own, empty data dir.
    let second = Pipeline::new(&pg, "twin", &["public.t"], "");
    let (code, text) = run_to_exit(&second);
    assert_ne!(code, Some(0), "{text}");
    for needle in [
        "has no record of it",
        "run this instance on the data dir",
        "sluice teardown",
        "on_unknown_slot = \"adopt\"",
    ] {
        assert!(text.contains(needle), "{needle:?} missing: {text}");
    }
    assert!(second.records().is_empty(), "nothing was delivered");
    // The first one's data dir takes it back without a word.
    first.start();
    first.wait_streaming(&pg);
    first.stop();
}

#[test]
fn the_point_of_no_return_drops_the_slot_at_the_threshold_and_never_before() {
    let pg = PgServer::start().unwrap();
    let mut redis = sluice_testkit::RedisServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE filler (v text)")
        .unwrap();
    let mut p = Pipeline::new(
        &pg,
        "guard",
        &["public.t"],
        "max_slot_lag_bytes = 40000000\nsnapshot = \"never\"",
    );
    // A cache that is down holds its cursor; the small log fills and the source waits.
    p.add_config(&format!(
        "[[sinks]]\nname = \"cache\"\ntype = \"redis\"\nurl = {:?}\n\
         [log]\nmax_bytes = 2097152\nsegment_bytes = 262144\non_full = \"pause_source\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\nauth = \"none\"\n",
        redis.url()
    ));
    redis.kill();
    p.start();
    p.wait_streaming(&pg);
    let addr = p.server_addr();
    let gauge = |name: &str| -> Option<f64> {
        let text = metrics(&addr);
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{pipeline=\"guard\"}}")))?;
        line.rsplit(' ').next()?.parse().ok()
    };
    pg.psql("INSERT INTO t SELECT g, repeat('v', 500) FROM generate_series(1, 10000) g")
        .unwrap();
    wait_until(WAIT, "the log to fill", || {
        (gauge("sluice_log_paused")? == 1.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));

    // Below the threshold: the slot stays, however long it is watched.
    pg.psql("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 10000)")
        .unwrap();
    let below = pg.psql("SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = 'sluice_guard'").unwrap();
    let below: f64 = below.trim().parse().unwrap();
    assert!(below < 40e6, "{below}");
    wait_until(WAIT, "the retained WAL to be measured", || {
        (gauge("sluice_replication_slot_retained_bytes")? >= below).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sluice_guard'")
            .unwrap(),
        "1"
    );

    // Past it: dropped, and said in the log and the metrics.
    pg.psql("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 40000)")
        .unwrap();
    // The metrics say so first: the pipeline stops soon after (its next session finds
    // the slot lost), and its drain does not wait on the cache that is down.
    wait_until(WAIT, "the metrics to say the slot is lost", || {
        (gauge("sluice_replication_slot_lost")? == 1.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sluice_guard'")
            .unwrap(),
        "0"
    );
    wait_until(WAIT, "the drop to be logged", || {
        p.log_contains("dropped the replication slot to protect the database")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    p.kill9();
    // The next start acts per on_slot_lost: "stop" here.
    redis.start_again().unwrap();
    let (code, text) = run_to_exit(&p);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("was dropped"), "{text}");
}
