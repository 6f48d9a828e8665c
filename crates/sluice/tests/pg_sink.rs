//! The PostgreSQL sink end to end: a source PostgreSQL, a second (target) PostgreSQL, the
//! real binary.
//!
//! 1. A table of many types arrives through the initial copy, then a concurrent mixed
//!    workload (inserts, updates with a key change, deletes, a TOASTed column left
//!    unchanged by updates, a TRUNCATE) runs while Sluice is killed with SIGKILL and
//!    restarted; at the end the target table equals the source row by row.
//! 2. ADD COLUMN and DROP COLUMN mid-stream appear on the target.
//! 3. A wrong target password (or a missing database) stops `sluice check` and `sluice
//!    run` at once, with the fix, without the password.
//! 4. A table without a primary key is refused by `sluice check`, with the reason.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::recovery::{PsqlSession, Rng};
use support::{output_text, wait_until, PgServer, Pipeline, WAIT};

/// The postgres sink's entry for `target`, with `extra` settings.
fn pg_sink(p: &Pipeline, url: &str, extra: &str) {
    p.add_config(&format!(
        "[[sinks]]\nname = \"replica\"\ntype = \"postgres\"\nurl = {url:?}\n{extra}\n"
    ));
}

/// The table's rows as `psql` prints them, in key order.
fn rows(pg: &PgServer, table: &str) -> Option<String> {
    pg.psql(&format!("SELECT * FROM public.{table} ORDER BY id"))
        .ok()
}

/// A digest of the table's rows in key order (the row's text form), and their number.
fn digest(pg: &PgServer, table: &str) -> Option<String> {
    pg.psql(&format!(
        "SELECT count(*) || ' ' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x.id)), '') \
         FROM public.{table} x"
    ))
    .ok()
}

/// Waits until the target's table equals the source's, row by row.
fn wait_equal(p: &Pipeline, source: &PgServer, target: &PgServer, table: &str, timeout: Duration) {
    let ok = wait_until(
        timeout,
        &format!("the target's {table} to equal the source's"),
        || {
            let want = digest(source, table)?;
            (digest(target, table)? == want).then_some(())
        },
    );
    let (want, have) = (
        rows(source, table).unwrap_or_default(),
        rows(target, table).unwrap_or_default(),
    );
    if ok.is_err() || want != have {
        let (w, h): (Vec<&str>, Vec<&str>) = (want.lines().collect(), have.lines().collect());
        let first = w.iter().zip(&h).position(|(a, b)| a != b);
        let show = |v: &[&str], i: Option<usize>| {
            i.and_then(|i| v.get(i))
                .map(|l| l.chars().take(400).collect::<String>())
        };
        panic!(
            "the target's {table} differs: {} rows vs {} in the source; first difference at line {first:?}:\n source: {:?}\n target: {:?}\n{}",
            h.len(),
            w.len(),
            show(&w, first),
            show(&h, first),
            p.logs()
        );
    }
}

/// The workload's statement that truncates the table (and fills it again).
const TRUNCATE_AT: u64 = 400;

const TYPED: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE FUNCTION big() RETURNS text LANGUAGE sql VOLATILE AS
  $$ SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 200) $$;
CREATE TABLE public.typed (
  id bigint PRIMARY KEY,
  i2 smallint, i4 integer NOT NULL, n numeric(12,2), nn numeric, f4 real, f8 double precision,
  t text, vc varchar(20), b boolean, by bytea, j json, jb jsonb, u uuid, d date,
  ts timestamp, tstz timestamptz, ia integer[], ta text[], m mood, big text);
CREATE FUNCTION typed_row(i bigint) RETURNS public.typed LANGUAGE sql VOLATILE AS $$
  SELECT i,
    (i % 300 - 150)::smallint,
    (i * 7)::int,
    CASE WHEN i % 11 = 0 THEN 'NaN'::numeric ELSE round(i * 1.37, 2) END,
    CASE i % 5 WHEN 0 THEN 'NaN'::numeric WHEN 1 THEN 'Infinity' WHEN 2 THEN '-Infinity'
      ELSE i::numeric / 7 END,
    CASE i % 4 WHEN 0 THEN 'NaN'::real WHEN 1 THEN 'Infinity' ELSE (i / 3.0)::real END,
    CASE i % 4 WHEN 0 THEN '-Infinity'::float8 WHEN 1 THEN 'NaN' ELSE i * 1.1e-3 END,
    CASE WHEN i % 9 = 0 THEN NULL ELSE 'text ' || i || E' "q" \\ ,{} é\n' END,
    ('v' || i)::varchar(20),
    CASE WHEN i % 7 = 0 THEN NULL ELSE i % 2 = 0 END,
    CASE WHEN i % 6 = 0 THEN NULL ELSE decode(md5(i::text) || '00ff', 'hex') END,
    ('{"i":' || i || ',"a":[1,"x"],"s":"q\"u"}')::json,
    jsonb_build_object('i', i, 'nested', jsonb_build_array(i, 'y', NULL)),
    md5(i::text)::uuid,
    CASE WHEN i % 19 = 0 THEN DATE '0044-03-15 BC' ELSE DATE '2024-01-01' + (i % 400)::int END,
    CASE WHEN i % 13 = 0 THEN '-infinity'::timestamp
      ELSE TIMESTAMP '2026-01-01 00:00:00.123456' + i * INTERVAL '1 minute' END,
    CASE WHEN i % 17 = 0 THEN 'infinity'::timestamptz
      ELSE TIMESTAMPTZ '2026-01-01 00:00:00.5+02' + i * INTERVAL '1 second' END,
    CASE WHEN i % 3 = 0 THEN ARRAY[[i, 1], [NULL, 3]]::int[] ELSE ARRAY[i, NULL, -i]::int[] END,
    ARRAY['a,b', 'q"u', NULL, 'x' || i, ''],
    (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::mood,
    CASE WHEN i % 3 = 0 THEN big() ELSE 'small' || i END
$$;
"#;

#[test]
fn the_target_equals_the_source_after_a_copy_a_workload_a_truncate_and_kill9() {
    let source = PgServer::start().unwrap();
    let target = PgServer::start().unwrap();
    source.psql(TYPED).unwrap();
    // Rows from before the pipeline arrive through the initial copy (binary COPY).
    source
        .psql(
            "INSERT INTO typed SELECT r.* FROM generate_series(1, 3000) g, LATERAL typed_row(g) r",
        )
        .unwrap();
    let mut p = Pipeline::new(&source, "pgsink", &["public.typed"], "");
    pg_sink(&p, &target.url("postgres", "postgres"), "max_records = 500");
    p.start();
    p.wait_streaming(&source);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let mut session = PsqlSession::start(&source);
        let mut rng = Rng::from_env("pg-sink-workload");
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sql = if n == TRUNCATE_AT {
                    // A TRUNCATE, and the table filled again in the same transaction.
                    "BEGIN; TRUNCATE typed; INSERT INTO typed SELECT r.* \
                     FROM generate_series(1, 1500) g, LATERAL typed_row(g) r; COMMIT;"
                        .to_owned()
                } else {
                    workload_sql(&mut rng, n)
                };
                session.send(&sql);
                sent.store(n, Ordering::Relaxed);
                if n.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_millis(3));
                }
            }
            // Waits until psql has run every statement, each successfully.
            session.finish();
            n
        })
    };
    let mut rng = Rng::from_env("pg-sink-kills");
    for round in 0..3 {
        // The first kill comes early: the copy may still be on its way into the target.
        let pause = if round == 0 {
            rng.range(50, 400)
        } else {
            rng.range(400, 1500)
        };
        std::thread::sleep(Duration::from_millis(pause));
        p.kill9();
        p.start();
        p.wait_streaming(&source);
    }
    // The workload goes on past its TRUNCATE before it stops.
    wait_until(WAIT, "the workload to pass its TRUNCATE", || {
        (sent.load(Ordering::Relaxed) > TRUNCATE_AT + 100).then_some(())
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let statements = writer.join().unwrap();
    assert!(
        statements > TRUNCATE_AT,
        "the workload ran: {statements} statements"
    );

    wait_equal(&p, &source, &target, "typed", Duration::from_secs(180));
    // What the target went through: the copy, TOAST values left out of updates, key
    // changes, the truncate (the file sink beside it holds every record).
    let records = p.records();
    let has = |what: &str, f: &dyn Fn(&Value) -> bool| {
        assert!(records.iter().any(f), "no {what} among the records");
    };
    has("snapshot row", &|r| r["op"] == "read");
    has("truncate", &|r| r["op"] == "truncate");
    has("update without its TOAST value", &|r| {
        r["unchanged_toast"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    has("key change", &|r| {
        r["op"] == "update" && !r["before"].is_null()
    });
    let n: u64 = target
        .psql("SELECT count(*) FROM typed")
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 1000, "{n} rows");
    // The types are the source's; the enum (which the target lacks) is text.
    let types = "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || \
                 CASE WHEN attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY attnum) \
                 FROM pg_attribute WHERE attrelid = 'public.typed'::regclass AND attnum > 0 \
                 AND NOT attisdropped";
    assert_eq!(
        target.psql(types).unwrap(),
        source.psql(types).unwrap().replace("m mood", "m text")
    );
    assert_eq!(
        target
            .psql("SELECT pipeline, sink, source_schema, source_table FROM public.sluice_positions")
            .unwrap(),
        "pgsink|replica|public|typed"
    );
    // Unchanged TOAST values were kept: every big value is whole on the target.
    assert_eq!(
        target
            .psql("SELECT count(*) FROM typed WHERE big IS NULL OR (id % 3 = 0 AND length(big) <> 6400 AND big NOT LIKE 'small%')")
            .unwrap(),
        "0"
    );
    p.stop();
}

/// One random statement (or transaction) on `public.typed`: none can fail or wait on
/// another session.
fn workload_sql(rng: &mut Rng, n: u64) -> String {
    let id = rng.range(1, 3000);
    match rng.below(20) {
        0..=4 => format!(
            "INSERT INTO typed SELECT r.* FROM typed_row({}) r ON CONFLICT (id) DO NOTHING;",
            100_000 + n
        ),
        5..=9 => format!(
            "UPDATE typed SET i4 = i4 + 1, t = 'upd {n}', nn = nn + 1, ta = ta || 'z'::text, \
             jb = jb || '{{\"u\": {n}}}' WHERE id = {id};"
        ),
        10 | 11 => format!("UPDATE typed SET big = big() WHERE id = {id};"),
        12 | 13 => format!(
            "UPDATE typed SET id = id + 1000000, vc = 'moved' WHERE id = {id} \
             AND NOT EXISTS (SELECT 1 FROM typed WHERE id = {id} + 1000000);"
        ),
        14 | 15 => format!("DELETE FROM typed WHERE id = {id};"),
        16 | 17 => format!(
            "BEGIN; UPDATE typed SET i2 = 1 WHERE id = {id}; DELETE FROM typed WHERE id = {}; \
             UPDATE typed SET i2 = 2, b = NULL WHERE id = {id}; INSERT INTO typed SELECT r.* \
             FROM typed_row({}) r ON CONFLICT (id) DO UPDATE SET t = 'again'; COMMIT;",
            rng.range(1, 3000),
            200_000 + n
        ),
        _ => {
            format!("UPDATE typed SET d = d + 1, tstz = tstz + INTERVAL '1 hour' WHERE id = {id};")
        }
    }
}

/// The target's columns of `public.{table}` with their types.
fn columns(pg: &PgServer, table: &str) -> String {
    pg.psql(&format!(
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
         FROM pg_attribute WHERE attrelid = 'public.{table}'::regclass AND attnum > 0 AND NOT attisdropped"
    ))
    .unwrap_or_default()
}

#[test]
fn columns_added_and_dropped_mid_stream_appear_on_the_target() {
    let source = PgServer::start().unwrap();
    let target = PgServer::start().unwrap();
    source
        .psql(
            "CREATE TABLE public.evolve (id int PRIMARY KEY, a text, b int); \
               INSERT INTO evolve SELECT g, 'a' || g, g FROM generate_series(1, 50) g;",
        )
        .unwrap();
    let mut p = Pipeline::new(&source, "evolve", &["public.evolve"], "");
    pg_sink(&p, &target.url("postgres", "postgres"), "");
    p.start();
    p.wait_streaming(&source);
    source
        .psql("UPDATE evolve SET b = b + 1 WHERE id <= 10")
        .unwrap();
    wait_equal(&p, &source, &target, "evolve", WAIT);
    assert_eq!(columns(&target, "evolve"), "id integer, a text, b integer");

    source
        .psql(
            "ALTER TABLE evolve ADD COLUMN c numeric(8,2); UPDATE evolve SET c = id * 1.5; \
               INSERT INTO evolve VALUES (100, 'x', 1, 2.25);",
        )
        .unwrap();
    wait_until(WAIT, "the target to add c", || {
        (columns(&target, "evolve") == "id integer, a text, b integer, c numeric(8,2)")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", columns(&target, "evolve"), p.logs()));
    wait_equal(&p, &source, &target, "evolve", WAIT);

    source
        .psql(
            "ALTER TABLE evolve DROP COLUMN a; INSERT INTO evolve (id, b, c) VALUES (101, 2, 3); \
               UPDATE evolve SET b = 0 WHERE id = 5;",
        )
        .unwrap();
    wait_until(WAIT, "the target to drop a", || {
        (columns(&target, "evolve") == "id integer, b integer, c numeric(8,2)").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", columns(&target, "evolve"), p.logs()));
    wait_equal(&p, &source, &target, "evolve", WAIT);
    assert!(
        p.log_contains("postgres: adding a column the source added"),
        "{}",
        p.logs()
    );
    assert!(
        p.log_contains("postgres: dropping a column the source dropped"),
        "{}",
        p.logs()
    );
    p.stop();
}

#[test]
fn a_wrong_target_password_or_database_stops_check_and_run_with_the_fix() {
    let source = PgServer::start().unwrap();
    let target = PgServer::builder()
        .hba("host all alice 127.0.0.1/32 scram-sha-256")
        .start()
        .unwrap();
    target
        .psql("CREATE ROLE alice LOGIN PASSWORD 'the-right-one'; GRANT CREATE ON SCHEMA public TO alice;")
        .unwrap();
    source
        .psql("CREATE TABLE public.pw (id int PRIMARY KEY)")
        .unwrap();
    let p = Pipeline::new(&source, "pw", &["public.pw"], "");
    pg_sink(
        &p,
        &target.url("alice", "postgres"),
        "password = \"not-the-password\"",
    );
    for sub in ["check", "run"] {
        let started = std::time::Instant::now();
        let out = p.command(sub);
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{sub}: {text}");
        assert!(text.contains("authentication failed"), "{sub}: {text}");
        assert!(
            text.contains("fix: set the sink's password to the target user's password"),
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
        source
            .psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0",
        "nothing was started"
    );

    // The right password, a database that does not exist.
    let p = Pipeline::new(&source, "nodb", &["public.pw"], "");
    pg_sink(
        &p,
        &target.url("alice", "nope"),
        "password = \"the-right-one\"",
    );
    let out = p.command("check");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("database \"nope\" does not exist"), "{text}");
    assert!(text.contains("fix: create the database"), "{text}");

    // And both right: the check passes.
    let p = Pipeline::new(&source, "ok", &["public.pw"], "");
    pg_sink(
        &p,
        &target.url("alice", "postgres"),
        "password = \"the-right-one\"",
    );
    let out = p.command("check");
    let text = output_text(&out);
    assert!(
        text.contains("authenticated; 0 of 1 target tables exist"),
        "{text}"
    );
    assert!(
        !text.contains("the-right-one"),
        "the password leaked: {text}"
    );

    // A target schema that does not exist yet (the start creates it): the check passes.
    let p = Pipeline::new(&source, "newschema", &["public.pw"], "");
    pg_sink(
        &p,
        &target.url("postgres", "postgres"),
        "schema = \"reporting\"",
    );
    let out = p.command("check");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
}

#[test]
fn a_table_without_a_primary_key_is_refused_with_the_reason() {
    let source = PgServer::start().unwrap();
    let target = PgServer::start().unwrap();
    source
        .psql("CREATE TABLE public.nokey (a int, b text); ALTER TABLE public.nokey REPLICA IDENTITY FULL;")
        .unwrap();
    let p = Pipeline::new(&source, "nokey", &["public.nokey"], "");
    pg_sink(&p, &target.url("postgres", "postgres"), "");
    let out = p.command("check");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("public.nokey without a primary key: the postgres sink upserts and deletes target rows by it"),
        "{text}"
    );
    assert!(text.contains("ADD PRIMARY KEY"), "{text}");
}
