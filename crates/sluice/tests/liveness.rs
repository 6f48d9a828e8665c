//! End to end: the source stays alive. An idle database's slot follows the WAL that the
//! server's other databases write (through keepalives, and through heartbeats), a
//! walsender killed under load heals without loss, and reconnecting is bounded when asked.

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
    let mut s = std::net::TcpStream::connect(addr).unwrap();
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
    plain.stop();
    beating.stop();
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
    let writer = std::thread::spawn(move || {
        for from in (1..=ROWS).step_by(100) {
            let out = std::process::Command::new(sluice_testkit::pg_bin("psql"))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c"])
                .arg(format!(
                    "INSERT INTO t SELECT g, 'v' FROM generate_series({from}, {}) g",
                    from + 99
                ))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
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
    wait_until(WAIT, "every row", || {
        let ids: std::collections::BTreeSet<i64> = p
            .records()
            .iter()
            .filter_map(|r| r["after"]["id"].as_i64())
            .collect();
        (ids.len() as i64 == ROWS).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert!(
        p.log_contains("reconnecting"),
        "each loss is logged:\n{}",
        p.logs()
    );
    p.stop();
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
