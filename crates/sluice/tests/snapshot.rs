//! Initial snapshots: the rows already in the tables arrive as `op = "read"` records before
//! the stream, consistent with the slot, and the sink ends identical to the tables while
//! they are written to throughout.

mod support;

use serde_json::{json, Value};
use support::recovery::*;
use support::workload::*;
use support::*;

#[test]
fn a_table_written_during_its_initial_snapshot_ends_identical() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.t (id bigint PRIMARY KEY, v text, n int);
         INSERT INTO t SELECT g, 'row' || g, g FROM generate_series(1, 60000) g;
         CREATE TABLE public.empty (id int PRIMARY KEY);",
    )
    .unwrap();
    let writer = Writer::start(&pg, "t", 70_000, "snapshot-writes");
    let mut p = Pipeline::new(
        &pg,
        "snap",
        &["public.t", "public.empty"],
        "chunk_rows = 5000\nsnapshot_workers = 2",
    );
    p.start();
    if wait_until(WAIT, "the snapshot to complete", || {
        p.log_contains("snapshot: complete").then_some(())
    })
    .is_err()
    {
        panic!("no snapshot completion\n{}", p.logs());
    }
    p.wait_streaming(&pg);
    let writes = writer.finish();
    assert!(writes > 0);
    wait_identical(&p, &pg, "t");
    p.stop();

    let recs = p.records();
    let reads: Vec<&Value> = recs.iter().filter(|r| r["op"] == "read").collect();
    assert!(reads.len() >= 50_000, "{} read records", reads.len());
    // Every read precedes every streamed change, and shares the consistent point.
    let first_change = recs
        .iter()
        .position(|r| r["op"] != "read")
        .unwrap_or(recs.len());
    assert!(recs[first_change..].iter().all(|r| r["op"] != "read"));
    let point = reads[0]["commit_lsn"].clone();
    assert!(reads
        .iter()
        .all(|r| r["commit_lsn"] == point && r["xid"] == 0));
    assert!(recs[first_change..]
        .iter()
        .all(|r| lsn(r["commit_lsn"].as_str().unwrap()) > lsn(point.as_str().unwrap())));
    // Ids are unique.
    let ids: std::collections::HashSet<&str> =
        recs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), recs.len());
    assert_eq!(reads[0]["key"], json!({"id": reads[0]["after"]["id"]}));
    assert!(!recs.iter().any(|r| r["table"] == "empty"));
}

#[test]
fn snapshot_rows_carry_exactly_the_values_the_stream_would() {
    let pg = PgServer::start().unwrap();
    pg.psql(&format!(
        "{}{}
         -- Timestamps at the edges of the binary path.
         INSERT INTO vals (id, ts, tstz, d) VALUES
           (5, '0044-03-15 12:00:00.5 BC', '0001-01-01 00:00:00+00 BC', '9999-12-31'),
           (6, '294276-12-31 23:59:59.999999', '-infinity', '-infinity'),
           (7, '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00.000001+00', '1970-01-01');",
        vals::SCHEMA,
        vals::WRITES
    ))
    .unwrap();
    let mut p = Pipeline::new(&pg, "snapvals", &["public.vals"], "");
    p.start();
    p.wait_streaming(&pg);
    // The same rows again, through the stream.
    pg.psql(
        "INSERT INTO vals SELECT (jsonb_populate_record(v, jsonb_build_object('id', v.id + 100))).* FROM vals v;",
    )
    .unwrap();
    let recs = p.wait_records(12);
    p.stop();
    let reads: Vec<&Value> = recs.iter().filter(|r| r["op"] == "read").collect();
    let inserts: Vec<&Value> = recs.iter().filter(|r| r["op"] == "insert").collect();
    assert_eq!((reads.len(), inserts.len()), (6, 6));
    for r in &reads {
        let id = r["after"]["id"].as_i64().unwrap();
        let twin = inserts
            .iter()
            .find(|i| i["after"]["id"] == id + 100)
            .unwrap_or_else(|| panic!("no streamed twin of row {id}"));
        let strip = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("id");
            v
        };
        let (a, b) = (strip(&r["after"]), strip(&twin["after"]));
        for (col, val) in a.as_object().unwrap() {
            assert_eq!(val, &b[col], "row {id}, column {col}");
        }
        assert_eq!(a, b);
    }
}

/// Rows of `table` as `replay` keys them, from PostgreSQL's own JSON of each row (these
/// tests use only int and text columns, whose JSON is the same on both sides).
fn rows_by_key(
    pg: &PgServer,
    table: &str,
    key: &[&str],
) -> std::collections::BTreeMap<String, Value> {
    let text = pg
        .psql(&format!(
            "SELECT coalesce(json_agg(x), '[]') FROM public.{table} x"
        ))
        .unwrap();
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter()
        .map(|r| {
            let k: serde_json::Map<String, Value> =
                key.iter().map(|c| (c.to_string(), r[*c].clone())).collect();
            (format!("public.{table}:{}", Value::Object(k)), r)
        })
        .collect()
}

#[test]
fn text_and_composite_keys_and_toasted_values_survive_snapshot_and_backfill() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.tpk (k text PRIMARY KEY, v text);
         CREATE TABLE public.cpk (a int, b text, v text, PRIMARY KEY (a, b));
         CREATE TABLE public.toasty (id int PRIMARY KEY, n int, big text);
         ALTER TABLE toasty ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO tpk SELECT 'key ' || g || E' \"q\" ü', 'v' || g FROM generate_series(1, 3000) g;
         INSERT INTO cpk SELECT g % 50, 'b' || g, 'v' || g FROM generate_series(1, 3000) g;
         INSERT INTO toasty SELECT g, 0, (SELECT string_agg(md5(g::text || s::text), '') FROM generate_series(1, 400) s)
           FROM generate_series(1, 200) g;",
    )
    .unwrap();
    let mut p = Pipeline::new(
        &pg,
        "keys",
        &["public.tpk", "public.cpk", "public.toasty"],
        "chunk_rows = 500",
    );
    p.start();
    p.wait_streaming(&pg);
    let mut session = PsqlSession::start(&pg);
    for i in 1..=100 {
        session.send(&format!(
            "UPDATE tpk SET v = 'u{i}' WHERE k = 'key {i} \"q\" ü';
             UPDATE cpk SET v = 'u{i}' WHERE a = {} AND b = 'b{i}';
             UPDATE toasty SET n = {i} WHERE id = {i};",
            i % 50
        ));
    }
    session.finish();
    // Backfill two of them again while they change.
    for t in ["public.cpk", "public.toasty"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["backfill", "-c"])
            .arg(&p.config_path)
            .args(["--table", t])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let mut session = PsqlSession::start(&pg);
    for i in 101..=200 {
        session.send(&format!(
            "UPDATE cpk SET b = 'moved{i}' WHERE a = {} AND b = 'b{i}';
             UPDATE toasty SET n = {i} WHERE id = {i};",
            i % 50
        ));
    }
    session.finish();
    let copied = wait_until(WAIT, "both backfills", || {
        (log_of(&p, 0).matches("backfill: table copied").count() >= 2).then_some(())
    });
    assert!(copied.is_ok(), "{}", p.logs());
    for (table, key) in [
        ("tpk", &["k"][..]),
        ("cpk", &["a", "b"]),
        ("toasty", &["id"]),
    ] {
        let want = rows_by_key(&pg, table, key);
        let prefix = format!("public.{table}:");
        let mut got = Default::default();
        let same = wait_until(WAIT, "the sink to match", || {
            got = replay(&p.records());
            got.retain(|k, _| k.starts_with(&prefix));
            // Updates that left the TOASTed column alone name it instead of repeating
            // it: merge like a sink would.
            (got.len() == want.len()
                && want.iter().all(|(k, w)| {
                    got.get(k)
                        .is_some_and(|g| g.as_object().unwrap().iter().all(|(c, v)| w[c] == *v))
                }))
            .then_some(())
        });
        assert!(
            same.is_ok(),
            "{table} differs: {} vs {} rows",
            got.len(),
            want.len()
        );
    }
    p.stop();
    let recs = p.records();
    // Every TOASTed value arrived whole in the copies.
    let big: Vec<&Value> = recs
        .iter()
        .filter(|r| r["table"] == "toasty" && r["op"] == "read")
        .collect();
    // 200 from the snapshot, up to 200 from the backfill (rows changed during a chunk are
    // left to the stream).
    assert!(big.len() > 300, "{} toasty reads", big.len());
    assert!(big
        .iter()
        .all(|r| r["after"]["big"].as_str().unwrap().len() == 12_800));
    // Updates of toasty name the unchanged TOAST column rather than sending it as null.
    assert!(recs
        .iter()
        .filter(|r| r["table"] == "toasty" && r["op"] == "update")
        .all(|r| r["unchanged_toast"] == serde_json::json!(["big"])
            && r["after"].get("big").is_none()));
}
