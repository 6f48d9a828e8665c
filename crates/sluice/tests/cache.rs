//! The Redis cache sink end to end: real PostgreSQL, real redis-server, the real binary.
//!
//! 1. Redis ends identical to the table after a mixed workload (key changes, unchanged
//!    TOAST values) with kill -9 of Sluice in a loop and a Redis restart in the middle.
//! 2. A sink whose Redis is down does not slow the other sink or hold the slot back, and
//!    catches up exactly when Redis returns.
//! 3. Tables without a primary key are refused, with the reason.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use sluice_testkit::RedisServer;
use support::recovery::{current_wal_lsn, lsn, table_json, Rng};
use support::workload::Writer;
use support::{wait_until, PgServer, Pipeline, WAIT};

const TOAST_TABLE: &str = "CREATE FUNCTION big() RETURNS text LANGUAGE sql VOLATILE AS
     $$ SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 200) $$;";

fn create_table(pg: &PgServer, table: &str) {
    pg.psql(&format!(
        "CREATE TABLE public.{table} (id bigint PRIMARY KEY, v text, n int, big text DEFAULT big());"
    ))
    .unwrap();
}

fn redis_sink(p: &Pipeline, redis: &RedisServer, tables: &str) {
    p.add_config(&format!(
        "[[sinks]]\nname = \"cache\"\ntype = \"redis\"\nurl = {:?}\nprefix = \"t:\"\ntables = [{tables}]\n",
        redis.url()
    ));
}

/// The table as id → row JSON.
fn table_rows(pg: &PgServer, table: &str) -> BTreeMap<i64, Value> {
    table_json(pg, table)
        .into_iter()
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect()
}

/// What Redis holds for the table, as id → row JSON (None if Redis is not answering).
fn cached_rows(redis: &RedisServer, table: &str) -> Option<BTreeMap<i64, Value>> {
    let prefix = format!("t:postgres.public.{table}.");
    let keys = redis.cli(&["KEYS", &format!("{prefix}*")]).ok()?;
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    if keys.is_empty() {
        return Some(BTreeMap::new());
    }
    let mut args = vec!["MGET"];
    args.extend(keys.iter().copied());
    let values = redis.cli(&args).ok()?;
    let mut out = BTreeMap::new();
    for (k, v) in keys.iter().zip(values.lines()) {
        let id: i64 = k.strip_prefix(&prefix)?.parse().ok()?;
        out.insert(id, serde_json::from_str(v).ok()?);
    }
    Some(out)
}

fn wait_cache_identical(p: &Pipeline, pg: &PgServer, redis: &RedisServer, table: &str) {
    let want = table_rows(pg, table);
    let mut have = BTreeMap::new();
    let ok = wait_until(WAIT, "Redis to match the table", || {
        have = cached_rows(redis, table)?;
        (have == want).then_some(())
    });
    if ok.is_err() {
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !have.contains_key(k))
            .take(5)
            .collect();
        let extra: Vec<_> = have
            .keys()
            .filter(|k| !want.contains_key(k))
            .take(5)
            .collect();
        let differ: Vec<_> = want
            .iter()
            .filter(|(k, v)| have.get(k).is_some_and(|h| h != *v))
            .map(|(k, _)| k)
            .take(5)
            .collect();
        panic!(
            "Redis differs from {table}: {} keys vs {} rows; missing {missing:?}, extra {extra:?}, differ {differ:?}\n{}",
            have.len(),
            want.len(),
            p.logs()
        );
    }
}

#[test]
fn redis_matches_the_table_through_kill9_and_a_redis_restart() {
    redis_through_kill9("cache", None);
}

/// The same with the pipeline's log in JetStream, and the NATS server restarted too.
#[test]
fn redis_matches_the_table_through_kill9_with_the_jetstream_log() {
    let mut nats = sluice_testkit::NatsServer::start().unwrap();
    let url = nats.url();
    redis_through_kill9("cachejs", Some((&url, &mut nats)));
}

fn redis_through_kill9(name: &str, mut jetstream: Option<(&str, &mut sluice_testkit::NatsServer)>) {
    let pg = PgServer::start().unwrap();
    let mut redis = RedisServer::start().unwrap();
    pg.psql(TOAST_TABLE).unwrap();
    create_table(&pg, "c");
    // Rows from before the pipeline arrive through the initial snapshot.
    pg.psql("INSERT INTO public.c (id, v, n) SELECT g, 'seed', g FROM generate_series(1, 100) g")
        .unwrap();
    let mut p = Pipeline::new(&pg, name, &["public.c"], "");
    redis_sink(&p, &redis, "\"public.c\"");
    if let Some((url, _)) = &jetstream {
        p.use_jetstream_log(url, 1);
    }
    p.start();
    p.wait_streaming(&pg);
    let writer = Writer::start(&pg, "public.c", 150, "cache-kill9");
    let mut rng = Rng::from_env("cache-kill9");
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.range(300, 1500)));
        p.kill9();
        if round == 2 {
            redis.restart().unwrap();
        }
        if round == 3 {
            if let Some((_, nats)) = jetstream.as_mut() {
                nats.restart().unwrap();
            }
        }
        p.start();
        p.wait_streaming(&pg);
    }
    let writes = writer.finish();
    assert!(writes > 100, "the workload ran: {writes} statements");
    // Updates that left the TOASTed column alone were merged, not nulled: every cached
    // row has it, as the table does.
    wait_cache_identical(&p, &pg, &redis, "c");
    let cached = cached_rows(&redis, "c").unwrap();
    assert!(cached
        .values()
        .all(|r| r["big"].as_str().is_some_and(|b| b.len() == 6400)));
    p.stop();
}

#[test]
fn a_sink_whose_server_is_down_holds_back_neither_the_other_sink_nor_the_slot() {
    let pg = PgServer::start().unwrap();
    let mut redis = RedisServer::start().unwrap();
    pg.psql(TOAST_TABLE).unwrap();
    create_table(&pg, "d");
    let mut p = Pipeline::new(&pg, "twosinks", &["public.d"], "");
    redis_sink(&p, &redis, "");
    p.start();
    p.wait_streaming(&pg);
    pg.psql("INSERT INTO public.d (id, v) VALUES (1, 'before')")
        .unwrap();
    p.wait_records(1);
    wait_cache_identical(&p, &pg, &redis, "d");

    redis.kill();
    let mut expected = 1;
    for round in 0..5 {
        let start = std::time::Instant::now();
        pg.psql(&format!(
            "INSERT INTO public.d (id, v) SELECT g, 'down' FROM generate_series({}, {}) g",
            round * 100 + 2,
            round * 100 + 101
        ))
        .unwrap();
        expected += 100;
        let wal = current_wal_lsn(&pg);
        // The file sink keeps up while the cache is down.
        p.wait_records_for(expected, Duration::from_secs(10));
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "the file sink lagged: {took:?}"
        );
        // And the slot is confirmed past these changes: the WAL does not pile up.
        wait_until(Duration::from_secs(15), "the slot to confirm past the inserts", || {
            let c = pg
                .psql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'sluice_twosinks'")
                .ok()?;
            (lsn(&c) >= wal).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    }
    assert!(
        p.log_contains("delivery failed; retrying the batch"),
        "{}",
        p.logs()
    );
    redis.start_again().unwrap();
    // It catches up exactly.
    wait_cache_identical(&p, &pg, &redis, "d");
    p.stop();
}

#[test]
fn tables_without_a_primary_key_are_refused_for_a_cache() {
    let pg = PgServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.nokey (a int, b text); ALTER TABLE public.nokey REPLICA IDENTITY FULL;",
    )
    .unwrap();
    let p = Pipeline::new(&pg, "nokey", &["public.nokey"], "");
    redis_sink(&p, &redis, "");
    for sub in ["check", "run"] {
        let out = p.command(sub);
        let text = support::output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            text.contains("public.nokey without a primary key"),
            "{sub}: {text}"
        );
        assert!(text.contains("ADD PRIMARY KEY"), "{sub}: {text}");
    }
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0",
        "nothing was started"
    );
}

#[test]
fn a_wrong_redis_password_stops_check_and_run_at_once_with_the_fix() {
    let pg = PgServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    pg.psql("CREATE TABLE public.pw (id int PRIMARY KEY)")
        .unwrap();
    redis
        .cli(&["CONFIG", "SET", "requirepass", "the-right-one"])
        .unwrap();
    let p = Pipeline::new(&pg, "pw", &["public.pw"], "");
    p.add_config(&format!(
        "[[sinks]]\nname = \"cache\"\ntype = \"redis\"\nurl = \"redis://:not-the-password@127.0.0.1:{}/\"\n",
        redis.port()
    ));
    for sub in ["check", "run"] {
        let started = std::time::Instant::now();
        let out = p.command(sub);
        let text = support::output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{sub}: {text}");
        assert!(text.contains("authentication failed"), "{sub}: {text}");
        assert!(
            text.contains("fix: put the right credentials in the sink's url"),
            "{sub}: {text}"
        );
        assert!(
            !text.contains("not-the-password"),
            "{sub}: the password leaked: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{sub} took {:?}: a wrong password is not retried",
            started.elapsed()
        );
    }
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0",
        "nothing was started"
    );
}

/// A pipeline with a file sink and a Redis sink over `public.{table}` and a log of at
/// most 64 KiB in 4 KiB segments, with `policy` at the budget.
fn budget_pipeline(pg: &PgServer, redis: &RedisServer, name: &str, policy: &str) -> Pipeline {
    pg.psql(&format!(
        "CREATE TABLE public.{name} (id bigint PRIMARY KEY, v text, n int)"
    ))
    .unwrap();
    let p = Pipeline::new(pg, name, &[&format!("public.{name}")], "");
    redis_sink(&p, redis, "");
    p.add_config(&format!(
        "[log]\nsegment_bytes = 4096\nmax_bytes = 65536\non_full = {policy:?}\nretention_secs = 0\nshed_after_secs = 2\n"
    ));
    p
}

fn insert_rows(pg: &PgServer, table: &str, from: u64, to: u64) {
    for start in (from..=to).step_by(100) {
        pg.psql(&format!(
            "INSERT INTO public.{table} SELECT g, repeat('v', 100), g FROM generate_series({start}, {}) g",
            (start + 99).min(to)
        ))
        .unwrap();
    }
}

#[test]
fn at_the_disk_budget_pause_source_holds_the_slot_until_the_sink_returns() {
    let pg = PgServer::start().unwrap();
    let mut redis = RedisServer::start().unwrap();
    let mut p = budget_pipeline(&pg, &redis, "pause", "pause_source");
    p.start();
    p.wait_streaming(&pg);
    insert_rows(&pg, "pause", 1, 10);
    p.wait_records(10);
    wait_cache_identical(&p, &pg, &redis, "pause");
    redis.kill();
    insert_rows(&pg, "pause", 11, 2000);
    wait_until(WAIT, "the source to pause", || {
        p.log_contains("disk budget reached; pausing the source")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    let wal = current_wal_lsn(&pg);
    let confirmed = lsn(&pg
        .psql(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'sluice_pause'",
        )
        .unwrap());
    assert!(
        confirmed < wal,
        "paused: the slot holds what the log cannot take"
    );
    assert!(
        p.records().len() < 2000,
        "the file sink waits with the source"
    );
    redis.start_again().unwrap();
    p.wait_records(2000);
    wait_cache_identical(&p, &pg, &redis, "pause");
    assert!(p.log_contains("resuming the source"), "{}", p.logs());
    p.stop();
}

#[test]
fn at_the_disk_budget_shed_sink_detaches_the_slow_sink_and_backfills_it_later() {
    let pg = PgServer::start().unwrap();
    let mut redis = RedisServer::start().unwrap();
    let mut p = budget_pipeline(&pg, &redis, "shed", "shed_sink");
    p.start();
    p.wait_streaming(&pg);
    insert_rows(&pg, "shed", 1, 10);
    p.wait_records(10);
    wait_cache_identical(&p, &pg, &redis, "shed");
    redis.kill();
    insert_rows(&pg, "shed", 11, 2000);
    // The other sink and the slot keep going.
    p.wait_records(2000);
    wait_until(WAIT, "the slot to confirm everything", || {
        let c = pg
            .psql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'sluice_shed'")
            .ok()?;
        (lsn(&c) >= current_wal_lsn(&pg).saturating_sub(1 << 16)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert!(p.log_contains("sink shed"), "{}", p.logs());
    // Back with Redis: the shed sink is backfilled and ends identical.
    redis.start_again().unwrap();
    pg.psql(
        "UPDATE public.shed SET v = 'after' WHERE id <= 5; DELETE FROM public.shed WHERE id = 6",
    )
    .unwrap();
    p.stop();
    p.start();
    p.wait_streaming(&pg);
    wait_cache_identical(&p, &pg, &redis, "shed");
    assert!(
        p.log_contains("backfill requested for a sink that was shed"),
        "{}",
        p.logs()
    );
    p.stop();
}

/// `MGET` over a plain connection: the values (None where a key is absent).
fn mget(
    conn: &mut std::io::BufReader<std::net::TcpStream>,
    keys: &[String],
) -> Vec<Option<String>> {
    use std::io::{BufRead, Read, Write};
    let mut cmd = format!("*{}\r\n$4\r\nMGET\r\n", keys.len() + 1);
    for k in keys {
        cmd.push_str(&format!("${}\r\n{k}\r\n", k.len()));
    }
    conn.get_mut().write_all(cmd.as_bytes()).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    let n: usize = line.trim().strip_prefix('*').unwrap().parse().unwrap();
    (0..n)
        .map(|_| {
            line.clear();
            conn.read_line(&mut line).unwrap();
            let len: i64 = line.trim().strip_prefix('$').unwrap().parse().unwrap();
            if len < 0 {
                return None;
            }
            let mut buf = vec![0; len as usize + 2];
            conn.read_exact(&mut buf).unwrap();
            buf.truncate(len as usize);
            Some(String::from_utf8(buf).unwrap())
        })
        .collect()
}

#[test]
fn a_replay_after_kill9_never_moves_a_cached_row_back_even_for_a_moment() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let pg = PgServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    pg.psql("CREATE TABLE public.h (id bigint PRIMARY KEY, n bigint NOT NULL)")
        .unwrap();
    let mut p = Pipeline::new(&pg, "fence", &["public.h"], "snapshot = \"never\"");
    // Small batches: a replay spans many of them, so an older value written by one would
    // be visible until the next.
    p.add_config(&format!(
        "[[sinks]]\nname = \"cache\"\ntype = \"redis\"\nurl = {:?}\nprefix = \"t:\"\nbatch = 20\n",
        redis.url()
    ));
    p.start();
    p.wait_streaming(&pg);
    pg.psql("INSERT INTO public.h SELECT g, 0 FROM generate_series(1, 10) g")
        .unwrap();
    // A reader polls every key as fast as it can and remembers any step back.
    let keys: Vec<String> = (1..=10)
        .map(|k| format!("t:postgres.public.h.{k}"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let back: Arc<Mutex<Vec<String>>> = Arc::default();
    let poller = {
        let (stop, back, port) = (stop.clone(), back.clone(), redis.port());
        std::thread::spawn(move || {
            let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut conn = std::io::BufReader::new(stream);
            let mut last = [0i64; 10];
            let mut polls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (i, v) in mget(&mut conn, &keys).into_iter().enumerate() {
                    let Some(v) = v else { continue };
                    let n = serde_json::from_str::<Value>(&v).unwrap()["n"]
                        .as_i64()
                        .unwrap();
                    if n < last[i] {
                        back.lock().unwrap().push(format!(
                            "key {}: {} after {}",
                            i + 1,
                            n,
                            last[i]
                        ));
                    }
                    last[i] = last[i].max(n);
                }
                polls += 1;
            }
            polls
        })
    };
    // Bursts of one-row-per-key updates, each its own transaction, with kill -9 among
    // them: each restart replays what the cursor had not saved, already in Redis.
    let rounds = 4;
    let per_round = 1500;
    let mut rng = Rng::from_env("cache-fence");
    let updates: String = "UPDATE public.h SET n = n + 1;\n".repeat(per_round);
    for _ in 0..rounds {
        let (url, sql) = (pg.url("postgres", "postgres"), updates.clone());
        let burst = std::thread::spawn(move || {
            let out = std::process::Command::new("psql")
                .args([&url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", &sql])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
        std::thread::sleep(Duration::from_millis(rng.range(200, 900)));
        p.kill9();
        p.start();
        burst.join().unwrap();
        p.wait_streaming(&pg);
    }
    let want = (rounds * per_round) as i64;
    wait_until(WAIT, "every key at its last value", || {
        let cached = cached_rows(&redis, "h")?;
        (cached.len() == 10 && cached.values().all(|r| r["n"] == want)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    stop.store(true, Ordering::Relaxed);
    let polls = poller.join().unwrap();
    assert!(polls > 100, "the reader polled {polls} times");
    let back = back.lock().unwrap();
    assert!(
        back.is_empty(),
        "a cached row moved back: {:?}",
        &back[..back.len().min(5)]
    );
    p.stop();
}
