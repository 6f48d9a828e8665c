//! End to end: the record semantics docs/GUARANTEES.md promises beyond plain DML — unchanged TOAST
//! values, schema changes while streaming, excluded columns, logical messages, large
//! transactions streamed before their commit (protocol 2) or not (protocol 1), and
//! multi-table truncates.

mod support;

use serde_json::{json, Value};
use sluice_core::ChangeId;
use support::*;

fn id(r: &Value) -> ChangeId {
    r["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("record without a valid id: {r}"))
}

/// Waits until some record satisfies `pred`; returns all records so far.
fn wait_for(p: &Pipeline, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    wait_until(WAIT, what, || {
        let r = p.records();
        r.iter().any(&pred).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}; have {} records\n{}", p.records().len(), p.logs()))
}

/// Ids increase strictly in arrival order.
fn assert_ids_increase(recs: &[Value]) {
    for w in recs.windows(2) {
        assert!(
            id(&w[0]) < id(&w[1]),
            "ids out of order: {} then {}",
            w[0]["id"],
            w[1]["id"]
        );
    }
}

/// No row image of the record holds `column`.
fn lacks(r: &Value, column: &str) -> bool {
    ["key", "before", "after"]
        .iter()
        .all(|f| r[f].as_object().is_none_or(|o| !o.contains_key(column)))
}

/// Everything the pipeline's `sluice` processes logged.
fn full_log(p: &Pipeline) -> String {
    walk(p.dir.path())
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

/// The record's `after.id` (or `before.id`), for row-numbered tables.
fn row_id(r: &Value) -> i64 {
    r["after"]["id"]
        .as_i64()
        .or_else(|| r["before"]["id"].as_i64())
        .unwrap_or_else(|| panic!("no id in {r}"))
}

// ---------------------------------------------------------------------------------------
// TOAST

#[test]
fn unchanged_toast_is_named_never_null_and_filled_under_replica_identity_full() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.docs (id int PRIMARY KEY, n int, big text);
         ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL;",
    )
    .unwrap();
    let mut p = Pipeline::new(&pg, "toast", &["public.docs"], "");
    p.start();
    p.wait_streaming(&pg);
    // ~100 kB of hex digits, stored out of line and uncompressed (STORAGE EXTERNAL).
    let big_sql = "SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3200) i";
    pg.psql(&format!(
        "INSERT INTO docs SELECT 1, 0, ({big_sql});
         UPDATE docs SET n = 1 WHERE id = 1;
         ALTER TABLE docs REPLICA IDENTITY FULL;
         UPDATE docs SET n = 2 WHERE id = 1;
         UPDATE docs SET n = 3, big = 'small now' WHERE id = 1;
         INSERT INTO docs SELECT 2, 0, ({big_sql});
         UPDATE docs SET n = 4 WHERE id = 2;
         DELETE FROM docs WHERE id = 2;"
    ))
    .unwrap();
    let big = pg.psql(big_sql).unwrap();
    assert_eq!(big.len(), 3200 * 32);
    let recs = p.wait_records(7);
    p.stop();
    assert_eq!(
        ops(&recs),
        ["insert", "update", "update", "update", "insert", "update", "delete"],
        "{recs:#?}"
    );
    let big = Value::String(big);

    // The insert carries the whole value.
    assert_eq!(recs[0]["after"], json!({"id": 1, "n": 0, "big": big}));
    assert_eq!(recs[0]["unchanged_toast"], json!([]));

    // Default replica identity: the unchanged value is left out and named, never null.
    let r = &recs[1];
    assert_eq!(r["after"], json!({"id": 1, "n": 1}), "{r}");
    assert_eq!(r["unchanged_toast"], json!(["big"]));
    assert_eq!(r["before"], Value::Null);
    assert_eq!(r["key"], json!({"id": 1}));

    // REPLICA IDENTITY FULL: the old row is whole, and fills in the unchanged value.
    let r = &recs[2];
    assert_eq!(r["before"], json!({"id": 1, "n": 1, "big": big}), "{r}");
    assert_eq!(r["after"], json!({"id": 1, "n": 2, "big": big}));
    assert_eq!(r["unchanged_toast"], json!([]));
    assert_eq!(r["key"], json!({"id": 1}), "the key is the primary key");

    // A changed TOAST value arrives as such.
    let r = &recs[3];
    assert_eq!(r["before"]["big"], big);
    assert_eq!(r["after"], json!({"id": 1, "n": 3, "big": "small now"}));
    assert_eq!(r["unchanged_toast"], json!([]));

    // Under FULL, a second row: update filled, delete with the whole old row.
    assert_eq!(recs[5]["after"], json!({"id": 2, "n": 4, "big": big}));
    assert_eq!(recs[5]["unchanged_toast"], json!([]));
    assert_eq!(recs[6]["before"], json!({"id": 2, "n": 4, "big": big}));
    assert_eq!(recs[6]["after"], Value::Null);

    // Nowhere a null stands in for a value.
    for r in &recs {
        for image in ["before", "after"] {
            if let Some(o) = r[image].as_object() {
                assert!(o.get("big").is_none_or(|v| !v.is_null()), "{r}");
            }
        }
    }
}

/// The same inside a transaction big enough to be streamed before its commit, where the
/// records wait on disk until the commit.
#[test]
fn unchanged_toast_inside_a_streamed_transaction() {
    let pg = PgServer::builder()
        .setting("logical_decoding_work_mem", "64kB")
        .start()
        .unwrap();
    pg.psql(
        "CREATE TABLE public.docs (id int PRIMARY KEY, n int, big text);
         ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE public.filler (id int PRIMARY KEY, pad text);
         INSERT INTO docs SELECT i, 0, repeat(md5(i::text), 3200) FROM generate_series(1, 2) i;",
    )
    .unwrap();
    let mut p = Pipeline::new(
        &pg,
        "toast_streamed",
        &["public.docs", "public.filler"],
        "snapshot = \"never\"",
    );
    p.start();
    p.wait_streaming(&pg);
    let filler = |from: i64, to: i64| {
        format!(
            "INSERT INTO filler SELECT g, repeat('x', 100) FROM generate_series({from}, {to}) g;"
        )
    };
    pg.psql(&format!(
        "BEGIN; {}
         UPDATE docs SET n = 1 WHERE id = 1;
         {}
         ALTER TABLE docs REPLICA IDENTITY FULL;
         UPDATE docs SET n = 2 WHERE id = 2;
         {} COMMIT;",
        filler(1, 5000),
        filler(5001, 10_000),
        filler(10_001, 15_000),
    ))
    .unwrap();
    let recs = p.wait_records(15_002);
    p.stop();
    assert_eq!(recs.len(), 15_002);
    assert_one_transaction(&recs);
    let docs: Vec<&Value> = recs.iter().filter(|r| r["table"] == "docs").collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(id(docs[0]).ordinal, 5001);
    assert_eq!(docs[0]["after"], json!({"id": 1, "n": 1}));
    assert_eq!(docs[0]["unchanged_toast"], json!(["big"]));
    let big2 = pg
        .psql("SELECT repeat(md5(2::text), 3200)")
        .map(Value::String)
        .unwrap();
    assert_eq!(docs[1]["before"], json!({"id": 2, "n": 0, "big": big2}));
    assert_eq!(docs[1]["after"], json!({"id": 2, "n": 2, "big": big2}));
    assert_eq!(docs[1]["unchanged_toast"], json!([]));
    wait_until(WAIT, "the slot to report a streamed transaction", || {
        (slot_stats(&pg, "sluice_toast_streamed").0 > 0).then_some(())
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// Schema changes

#[test]
fn alter_table_mid_stream_is_reflected_without_a_restart() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE public.shape (id int PRIMARY KEY, a text);",
    )
    .unwrap();
    let mut p = Pipeline::new(&pg, "alter", &["public.shape"], "");
    p.start();
    p.wait_streaming(&pg);
    let pid = p.pid();
    let steps: &[(&str, Value)] = &[
        (
            "INSERT INTO shape VALUES (1, 'x')",
            json!({"id": 1, "a": "x"}),
        ),
        (
            "ALTER TABLE shape ADD COLUMN b int; INSERT INTO shape VALUES (2, 'y', 20)",
            json!({"id": 2, "a": "y", "b": 20}),
        ),
        (
            "ALTER TABLE shape DROP COLUMN a; INSERT INTO shape VALUES (3, 30)",
            json!({"id": 3, "b": 30}),
        ),
        (
            "ALTER TABLE shape ALTER COLUMN b TYPE text USING b::text;
             INSERT INTO shape VALUES (4, '40')",
            json!({"id": 4, "b": "40"}),
        ),
        (
            "UPDATE shape SET b = b || '!' WHERE id = 3",
            json!({"id": 3, "b": "30!"}),
        ),
        (
            "ALTER TABLE shape RENAME COLUMN b TO c; INSERT INTO shape VALUES (5, 'renamed')",
            json!({"id": 5, "c": "renamed"}),
        ),
        // A type the decoder has to look up in the catalog mid-stream.
        (
            "ALTER TABLE shape ADD COLUMN m mood; INSERT INTO shape VALUES (6, 'e', 'happy')",
            json!({"id": 6, "c": "e", "m": "happy"}),
        ),
        // DDL inside a transaction, between two of its changes.
        (
            "BEGIN; INSERT INTO shape VALUES (7, 'before', 'sad');
             ALTER TABLE shape ADD COLUMN z bool DEFAULT true;
             INSERT INTO shape VALUES (8, 'after', NULL, false); COMMIT",
            json!({"id": 8, "c": "after", "m": null, "z": false}),
        ),
    ];
    // One step at a time, each awaited, so each shape is seen live.
    let mut want = Vec::new();
    for (sql, after) in steps {
        pg.psql(sql).unwrap();
        if after["id"] == 8 {
            want.push(json!({"id": 7, "c": "before", "m": "sad"}));
        }
        want.push(after.clone());
        p.wait_records(want.len());
    }
    let recs = p.records();
    // The same process, on the same connection throughout.
    let pid = pid.unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let log = full_log(&p);
    assert!(!log.contains("reconnecting"), "{log}");
    p.stop();
    let afters: Vec<&Value> = recs.iter().map(|r| &r["after"]).collect();
    assert_eq!(afters, want.iter().collect::<Vec<_>>(), "{recs:#?}");
    assert_ids_increase(&recs);
    assert_eq!(recs[7]["commit_lsn"], recs[8]["commit_lsn"]);
}

// ---------------------------------------------------------------------------------------
// Column exclusions

const EXCLUDE: &str = r#"exclude_columns = { "public.customers" = ["password_hash"] }"#;

fn exclusion_tables(pg: &PgServer) {
    pg.psql(
        "CREATE TABLE public.customers (id int PRIMARY KEY, email text, password_hash text);
         CREATE TABLE public.staff (id int PRIMARY KEY, password_hash text);",
    )
    .unwrap();
}

/// Writes under the default replica identity, then under FULL, and checks that the
/// excluded column appears in no record while the other table keeps its column.
fn check_exclusions(pg: &PgServer, p: &mut Pipeline) {
    p.start();
    p.wait_streaming(pg);
    let writes = "INSERT INTO customers VALUES (1, 'a@x', 'SECRET-1');
         UPDATE customers SET password_hash = 'SECRET-2' WHERE id = 1;
         UPDATE customers SET email = 'b@x' WHERE id = 1;
         DELETE FROM customers WHERE id = 1;
         ALTER TABLE customers REPLICA IDENTITY FULL;
         INSERT INTO customers VALUES (2, 'c@x', 'SECRET-3');
         UPDATE customers SET password_hash = 'SECRET-4' WHERE id = 2;
         UPDATE customers SET email = 'd@x' WHERE id = 2;
         DELETE FROM customers WHERE id = 2;
         INSERT INTO staff VALUES (1, 'staff-hash');";
    if let Err(e) = pg.psql(writes) {
        panic!(
            "the application's own writes failed while Sluice captures the table: {e}\n\
             (a publication column list that leaves out an excluded column cannot cover \
             REPLICA IDENTITY FULL, so PostgreSQL refuses UPDATE and DELETE on the table)"
        );
    }
    let recs = wait_for(p, "the staff insert", |r| r["table"] == "staff");
    p.stop();
    assert_eq!(recs.len(), 9, "{recs:#?}");
    let customers = &recs[..8];
    assert!(customers.iter().all(|r| r["table"] == "customers"));
    for r in customers {
        assert!(lacks(r, "password_hash"), "{r}");
    }
    let text = std::fs::read_to_string(&p.out_path).unwrap();
    assert!(
        !text.contains("SECRET"),
        "an excluded value reached the sink"
    );

    assert_eq!(
        ops(customers),
        ["insert", "update", "update", "delete", "insert", "update", "update", "delete"]
    );
    assert_eq!(customers[0]["after"], json!({"id": 1, "email": "a@x"}));
    assert_eq!(customers[1]["after"], json!({"id": 1, "email": "a@x"}));
    assert_eq!(customers[3]["before"], json!({"id": 1}));
    // REPLICA IDENTITY FULL: old rows are whole except for the excluded column.
    assert_eq!(customers[5]["before"], json!({"id": 2, "email": "c@x"}));
    assert_eq!(customers[5]["after"], json!({"id": 2, "email": "c@x"}));
    assert_eq!(customers[6]["before"], json!({"id": 2, "email": "c@x"}));
    assert_eq!(customers[6]["after"], json!({"id": 2, "email": "d@x"}));
    assert_eq!(customers[7]["before"], json!({"id": 2, "email": "d@x"}));
    assert!(customers[4..].iter().all(|r| r["key"] == json!({"id": 2})));
    // Exclusions are per table.
    assert_eq!(
        recs[8]["after"],
        json!({"id": 1, "password_hash": "staff-hash"})
    );
}

#[test]
fn excluded_columns_appear_in_no_record() {
    let pg = PgServer::start().unwrap();
    exclusion_tables(&pg);
    let mut p = Pipeline::new(
        &pg,
        "exclude",
        &["public.customers", "public.staff"],
        EXCLUDE,
    );
    check_exclusions(&pg, &mut p);
}

/// The same with a publication the operator created (no column list): only Sluice's own
/// filtering keeps the column out.
#[test]
fn excluded_columns_appear_in_no_record_with_an_operator_publication() {
    let pg = PgServer::start().unwrap();
    exclusion_tables(&pg);
    pg.psql("CREATE PUBLICATION dba_pub FOR TABLE customers, staff")
        .unwrap();
    let mut p = Pipeline::new(
        &pg,
        "exclude_dba",
        &["public.customers", "public.staff"],
        &format!("publication = \"dba_pub\"\n{EXCLUDE}"),
    );
    check_exclusions(&pg, &mut p);
}

// ---------------------------------------------------------------------------------------
// Logical messages

#[test]
fn logical_messages_arrive_in_order_and_only_when_committed() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE public.events (id int PRIMARY KEY)")
        .unwrap();
    let mut p = Pipeline::new(&pg, "messages", &["public.events"], "messages = true");
    p.start();
    p.wait_streaming(&pg);
    pg.psql(
        r#"BEGIN;
           INSERT INTO events VALUES (1);
           SELECT 'x' FROM pg_logical_emit_message(true, 'app', '{"a":1}');
           INSERT INTO events VALUES (2);
           COMMIT;
           BEGIN;
           INSERT INTO events VALUES (3);
           SELECT 'x' FROM pg_logical_emit_message(true, 'app', '{"rolled":"back"}');
           ROLLBACK;
           BEGIN;
           SAVEPOINT s;
           SELECT 'x' FROM pg_logical_emit_message(true, 'app', '{"rolled":"back too"}');
           ROLLBACK TO SAVEPOINT s;
           COMMIT;
           SELECT 'x' FROM pg_logical_emit_message(false, 'app', '{"b":2}');
           INSERT INTO events VALUES (4);"#,
    )
    .unwrap();
    let recs = wait_for(&p, "the marker insert", |r| r["after"]["id"] == 4);
    p.stop();
    assert_eq!(
        ops(&recs),
        ["insert", "message", "insert", "message", "insert"],
        "{recs:#?}"
    );
    assert!(!std::fs::read_to_string(&p.out_path)
        .unwrap()
        .contains("rolled"));

    // The transactional message sits between the transaction's inserts.
    let txn = &recs[..3];
    assert!(txn.iter().all(|r| r["commit_lsn"] == txn[0]["commit_lsn"]));
    assert!(txn.iter().all(|r| r["xid"] == txn[0]["xid"]));
    assert_eq!(
        txn.iter().map(|r| id(r).ordinal).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let m = &recs[1];
    assert_eq!(m["schema"], Value::Null);
    assert_eq!(m["table"], Value::Null);
    assert_eq!(m["key"], Value::Null);
    assert_eq!(m["after"], Value::Null);
    assert_eq!(
        m["message"],
        json!({"prefix": "app", "transactional": true, "content": {"a": 1}})
    );

    // Non-transactional: delivered although no transaction commits it.
    let m = &recs[3];
    assert_eq!(
        m["message"],
        json!({"prefix": "app", "transactional": false, "content": {"b": 2}})
    );
    assert!(m["commit_ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(recs[4]["after"], json!({"id": 4}));
    assert_ids_increase(&recs);
}

// ---------------------------------------------------------------------------------------
// Large transactions

const ROWS: i64 = 20_000;

fn big_table(pg: &PgServer) {
    pg.psql("CREATE TABLE public.big (id int PRIMARY KEY, payload text)")
        .unwrap();
}

fn insert_range_sql(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO big SELECT g, 'payload of row ' || g || repeat('.', 40) \
         FROM generate_series({from}, {to}) g;"
    )
}

/// Records of one transaction: one commit LSN and xid, ordinals 1..=n in order.
fn assert_one_transaction(txn: &[Value]) {
    let first = &txn[0];
    for (i, r) in txn.iter().enumerate() {
        assert_eq!(id(r).ordinal as usize, i + 1, "{r}");
        assert_eq!(r["commit_lsn"], first["commit_lsn"], "{r}");
        assert_eq!(r["xid"], first["xid"], "{r}");
    }
}

/// The slot's counters from pg_stat_replication_slots: (stream_txns, spill_txns).
fn slot_stats(pg: &PgServer, slot: &str) -> (u64, u64) {
    let out = pg
        .psql(&format!(
            "SELECT stream_txns, spill_txns FROM pg_stat_replication_slots \
             WHERE slot_name = '{slot}'"
        ))
        .unwrap();
    let (a, b) = out.split_once('|').unwrap_or(("0", "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

#[test]
fn large_transactions_are_streamed_and_arrive_whole_only_when_committed() {
    large_transactions(None);
}

/// The same with the log in JetStream (a transaction's hand-offs as groups of many
/// messages).
#[test]
fn large_transactions_arrive_whole_with_the_jetstream_log() {
    let nats = sluice_testkit::NatsServer::start().unwrap();
    large_transactions(Some(&nats.url()));
}

fn large_transactions(jetstream: Option<&str>) {
    let pg = PgServer::builder()
        .setting("logical_decoding_work_mem", "64kB")
        .start()
        .unwrap();
    big_table(&pg);
    let mut p = Pipeline::new(&pg, "streamed", &["public.big"], "");
    if let Some(url) = jetstream {
        p.use_jetstream_log(url, 1);
    }
    p.start();
    p.wait_streaming(&pg);
    let half = ROWS / 2;

    // 1. Committed (a logical message in the middle is not delivered: messages are off by
    // default, and only with them off are transactions streamed).
    pg.psql(&format!(
        "BEGIN; {} SELECT 'x' FROM pg_logical_emit_message(true, 'app', '{{\"mid\":true}}'); {} COMMIT;",
        insert_range_sql(1, half),
        insert_range_sql(half + 1, ROWS),
    ))
    .unwrap();
    let n = ROWS as usize;
    let recs = p.wait_records(n);
    assert_eq!(recs.len(), n);
    assert_one_transaction(&recs);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["op"], "insert");
        assert_eq!(row_id(r), i as i64 + 1, "{r}");
    }
    let first_txn = recs[0]["commit_lsn"].clone();
    // PostgreSQL did stream it before the commit (64 kB of decoding memory).
    wait_until(WAIT, "the slot to report a streamed transaction", || {
        (slot_stats(&pg, "sluice_streamed").0 > 0).then_some(())
    })
    .unwrap();

    // 2. Aborted: nothing arrives; a later small transaction proves the stream moved on.
    pg.psql(&format!(
        "BEGIN; {} ROLLBACK; INSERT INTO big VALUES (-1, 'marker 1');",
        insert_range_sql(ROWS + 1, 2 * ROWS)
    ))
    .unwrap();
    let recs = wait_for(&p, "marker 1", |r| r["after"]["id"] == -1);
    assert_eq!(recs.len(), n + 1, "the aborted transaction leaked records");
    assert_eq!(row_id(&recs[n]), -1);
    assert_eq!(id(&recs[n]).ordinal, 1);

    // 3. Savepoints rolled back in the middle of a streamed transaction (one with a
    // released child), and one released: exactly the surviving rows arrive.
    let base = 100_000;
    let q = ROWS / 4;
    let (a, b, c, d, e) = (
        (base + 1, base + q),
        (base + q + 1, base + 2 * q),
        (base + 2 * q + 1, base + 3 * q),
        (base + 3 * q + 1, base + 4 * q),
        (base + 4 * q + 1, base + 5 * q),
    );
    pg.psql(&format!(
        "BEGIN;
         {}
         SAVEPOINT s1; {} SAVEPOINT s2; {} RELEASE SAVEPOINT s2; ROLLBACK TO SAVEPOINT s1;
         {}
         SAVEPOINT s3; {} RELEASE SAVEPOINT s3;
         SAVEPOINT s4; INSERT INTO big VALUES (-3, 'small, rolled back'); ROLLBACK TO SAVEPOINT s4;
         COMMIT;
         INSERT INTO big VALUES (-2, 'marker 2');",
        insert_range_sql(a.0, a.1),
        insert_range_sql(b.0, b.1),
        insert_range_sql(c.0, c.1),
        insert_range_sql(d.0, d.1),
        insert_range_sql(e.0, e.1),
    ))
    .unwrap();
    let recs = wait_for(&p, "marker 2", |r| r["after"]["id"] == -2);

    // 4. A streamed transaction that changes the table's shape, then aborts: later
    // changes have the old shape again.
    pg.psql(&format!(
        "BEGIN; ALTER TABLE big ADD COLUMN extra int DEFAULT 7; {} ROLLBACK;
         INSERT INTO big VALUES (-4, 'marker 3');",
        insert_range_sql(200_001, 200_000 + ROWS)
    ))
    .unwrap();
    let after_abort = wait_for(&p, "marker 3", |r| r["after"]["id"] == -4);
    p.stop();
    assert_eq!(after_abort.len(), recs.len() + 1);
    assert_eq!(
        after_abort.last().unwrap()["after"],
        json!({"id": -4, "payload": "marker 3"})
    );
    let txn = &recs[n + 1..recs.len() - 1];
    let want: Vec<i64> = (a.0..=a.1).chain(d.0..=d.1).chain(e.0..=e.1).collect();
    let got: Vec<i64> = txn.iter().map(row_id).collect();
    assert_eq!(got.len(), want.len(), "rows of the savepoint transaction");
    assert!(got == want, "the savepoint transaction's rows differ");
    assert_one_transaction(txn);
    assert_eq!(row_id(recs.last().unwrap()), -2);
    assert_ids_increase(&recs);
    assert_ne!(recs[n + 1]["commit_lsn"], first_txn);
    // No spill file outlives its transaction.
    let spills: Vec<_> = walk(p.dir.path())
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "spill"))
        .collect();
    assert!(spills.is_empty(), "{spills:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn large_transaction_with_protocol_version_1_arrives_whole() {
    let pg = PgServer::builder()
        .setting("logical_decoding_work_mem", "64kB")
        .start()
        .unwrap();
    big_table(&pg);
    let mut p = Pipeline::new(&pg, "proto1", &["public.big"], "protocol_version = 1");
    p.start();
    p.wait_streaming(&pg);
    pg.psql(&format!(
        "BEGIN; {} COMMIT; INSERT INTO big VALUES (-1, 'marker');",
        insert_range_sql(1, ROWS)
    ))
    .unwrap();
    let recs = wait_for(&p, "the marker", |r| r["after"]["id"] == -1);
    p.stop();
    assert_eq!(recs.len(), ROWS as usize + 1);
    let txn = &recs[..ROWS as usize];
    assert_one_transaction(txn);
    assert!(txn.iter().map(row_id).eq(1..=ROWS));
    assert_ids_increase(&recs);
    // Not streamed: PostgreSQL spilled it to disk and sent it at its commit.
    let (streamed, spilled) = slot_stats(&pg, "sluice_proto1");
    assert_eq!(streamed, 0);
    assert!(spilled > 0, "expected PostgreSQL to spill the transaction");
}

// ---------------------------------------------------------------------------------------
// Truncate

#[test]
fn truncate_of_two_tables_gives_one_record_per_table() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.ta (id int PRIMARY KEY);
         CREATE TABLE public.tb (id int PRIMARY KEY);
         CREATE TABLE public.untracked (id int PRIMARY KEY);",
    )
    .unwrap();
    let mut p = Pipeline::new(&pg, "truncate", &["public.ta", "public.tb"], "");
    p.start();
    p.wait_streaming(&pg);
    pg.psql(
        "INSERT INTO ta VALUES (1); INSERT INTO tb VALUES (1); INSERT INTO untracked VALUES (1);
         TRUNCATE ta, tb;
         TRUNCATE ta, untracked;
         INSERT INTO tb VALUES (2);",
    )
    .unwrap();
    let recs = wait_for(&p, "the last insert", |r| r["after"]["id"] == 2);
    p.stop();
    assert_eq!(
        ops(&recs),
        ["insert", "insert", "truncate", "truncate", "truncate", "insert"],
        "{recs:#?}"
    );
    let (t1, t2, t3) = (&recs[2], &recs[3], &recs[4]);
    assert_eq!(t1["table"], "ta");
    assert_eq!(t2["table"], "tb");
    assert_eq!(t1["commit_lsn"], t2["commit_lsn"]);
    assert_eq!((id(t1).ordinal, id(t2).ordinal), (1, 2));
    // A table outside the pipeline is left out of a truncate that names it.
    assert_eq!(t3["table"], "ta");
    assert_ne!(t3["commit_lsn"], t1["commit_lsn"]);
    for t in [t1, t2, t3] {
        assert_eq!(t["schema"], "public");
        assert_eq!(t["key"], Value::Null);
        assert_eq!(t["before"], Value::Null);
        assert_eq!(t["after"], Value::Null);
    }
    let state = replay(&recs);
    assert_eq!(state.len(), 1, "{state:?}");
    assert_ids_increase(&recs);
}

/// A transactional message emitted in a savepoint that is rolled back is not delivered,
/// also in a transaction big enough to exceed logical_decoding_work_mem. (Streamed,
/// pgoutput tags a message with the top-level xid, so the savepoint's abort could not be
/// matched to it: that is why `messages = true` turns streaming off.)
#[test]
fn message_in_a_rolled_back_savepoint_of_a_large_transaction_is_not_delivered() {
    let pg = PgServer::builder()
        .setting("logical_decoding_work_mem", "64kB")
        .start()
        .unwrap();
    big_table(&pg);
    let mut p = Pipeline::new(&pg, "savepoint_message", &["public.big"], "messages = true");
    p.start();
    p.wait_streaming(&pg);
    // The rows after the message push it out in a stream block before the rollback.
    pg.psql(&format!(
        "BEGIN; {}
         SAVEPOINT s; {}
         SELECT 'x' FROM pg_logical_emit_message(true, 'app', '{{\"rolled\":\"back\"}}');
         {} ROLLBACK TO SAVEPOINT s;
         COMMIT;
         INSERT INTO big VALUES (-1, 'marker');",
        insert_range_sql(1, 10_000),
        insert_range_sql(10_001, 15_000),
        insert_range_sql(15_001, 20_000),
    ))
    .unwrap();
    let recs = wait_for(&p, "the marker", |r| r["after"]["id"] == -1);
    p.stop();
    let leaked: Vec<&Value> = recs.iter().filter(|r| r["op"] == "message").collect();
    assert!(leaked.is_empty(), "{leaked:#?}");
    assert_eq!(
        recs.len(),
        10_001,
        "exactly the rows outside the savepoint, then the marker"
    );
}
