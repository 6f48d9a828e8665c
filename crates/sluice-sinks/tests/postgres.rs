//! The PostgreSQL sink against a real target server: values of every kind through both
//! paths (binary COPY of snapshot rows, upserts of changes), replays skipped by position,
//! unchanged TOAST values kept, key changes, truncates, a failed batch that applies
//! nothing, and columns that follow the source's catalog.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use sluice_core::{Catalog, ColumnInfo, Columns, Lsn, Op, RecordHead, ValueKind};
use sluice_log::RecordBatch;
use sluice_pgwire::ConnInfo;
use sluice_sinks::postgres::{PostgresOptions, PostgresSink, TableMap};
use sluice_sinks::Sink;
use sluice_testkit::PgServer;

fn col(name: &str, ty: &str, key: Option<u16>) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        kind: ValueKind::Text,
        pg_type: ty.into(),
        is_enum: ty == "mood",
        not_null: key.is_some(),
        key,
    }
}

/// The source's catalog as a test sets it.
#[derive(Default, Clone)]
struct FakeCatalog(Arc<Mutex<Columns>>);

impl FakeCatalog {
    fn set(&self, table: &str, cols: Vec<ColumnInfo>) {
        self.0.lock().unwrap().insert(table.into(), cols);
    }
}

impl Catalog for FakeCatalog {
    fn columns<'a>(
        &'a self,
        tables: &'a [String],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Columns, sluice_core::Fault>> + Send + 'a>,
    > {
        let all = self.0.lock().unwrap().clone();
        Box::pin(async move {
            Ok(all
                .into_iter()
                .filter(|(t, _)| tables.contains(t))
                .collect())
        })
    }
}

fn options(
    pg: &PgServer,
    table: &str,
    columns: Vec<ColumnInfo>,
    catalog: &FakeCatalog,
) -> PostgresOptions {
    let mut all = Columns::new();
    all.insert(format!("public.{table}"), columns.clone());
    catalog.set(&format!("public.{table}"), columns);
    let catalog: Arc<dyn Catalog> = Arc::new(catalog.clone());
    PostgresOptions {
        conninfo: ConnInfo::parse_with_env(&pg.url("postgres", "postgres"), |_| None).unwrap(),
        pipeline: "p".into(),
        sink: "replica".into(),
        tables: vec![TableMap {
            source: ("public".into(), table.into()),
            target: ("public".into(), table.into()),
        }],
        positions_schema: "public".into(),
        create_tables: true,
        columns: all,
        catalog: Some(catalog),
        reset: false,
    }
}

fn sink(
    pg: &PgServer,
    table: &str,
    columns: Vec<ColumnInfo>,
    catalog: &FakeCatalog,
) -> PostgresSink {
    PostgresSink::new(options(pg, table, columns, catalog))
}

/// One change: (commit LSN, ordinal, log offset, op, envelope fields).
struct Rec {
    lsn: u64,
    ord: u64,
    offset: u64,
    op: Op,
    env: Value,
}

fn rec(lsn: u64, offset: u64, op: Op, env: Value) -> Rec {
    Rec {
        lsn,
        ord: offset + 1,
        offset,
        op,
        env,
    }
}

fn batch(table: &str, recs: &[Rec]) -> RecordBatch {
    let mut b = RecordBatch::default();
    for r in recs {
        let mut env = json!({"id": "x", "op": r.op.as_str(), "schema": "public", "table": table,
            "key": null, "before": null, "after": null, "unchanged_toast": []});
        for (k, v) in r.env.as_object().unwrap() {
            env[k] = v.clone();
        }
        b.push(
            r.offset,
            &RecordHead {
                commit_lsn: Lsn(r.lsn),
                ordinal: r.ord,
                commit_ts_micros: 0,
                op: r.op,
                schema: "public",
                table,
            },
            env.to_string().as_bytes(),
        );
    }
    b
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const TYPED: &[(&str, &str)] = &[
    ("id", "bigint"),
    ("i2", "smallint"),
    ("i4", "integer"),
    ("n", "numeric(12,2)"),
    ("nn", "numeric"),
    ("f4", "real"),
    ("f8", "double precision"),
    ("t", "text"),
    ("vc", "character varying(20)"),
    ("b", "boolean"),
    ("by", "bytea"),
    ("j", "json"),
    ("jb", "jsonb"),
    ("u", "uuid"),
    ("d", "date"),
    ("ts", "timestamp without time zone"),
    ("tstz", "timestamp with time zone"),
    ("iv", "interval"),
    ("ia", "integer[]"),
    ("ta", "text[]"),
    ("ba", "bytea[]"),
    ("jba", "jsonb[]"),
    ("m", "mood"),
];

fn typed_rows() -> Vec<Value> {
    vec![
        json!({"id": 1, "i2": -2, "i4": 2147483647, "n": "12.50", "nn": "NaN", "f4": "Infinity",
            "f8": "NaN", "t": "a \"q\" \\ ,{} é\n", "vc": "vé", "b": true, "by": "AAEC/w==",
            "j": {"a": [1, "x"]}, "jb": {"k": null, "n": 1.5},
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "d": "2024-02-29",
            "ts": "2026-11-22T01:02:03.456789", "tstz": "infinity", "iv": "1 day 02:00:00",
            "ia": [[1, 2], [3, null]], "ta": ["a,b", "q\"u", null, "NULL", "", "{x}"],
            "ba": ["AAE=", null], "jba": [{"a": 1}, "s", null], "m": "happy"}),
        json!({"id": 2, "i2": null, "i4": 0, "n": "-0.01", "nn": "-Infinity", "f4": 0.1,
            "f8": 1.5e100, "t": "", "vc": null, "b": false, "by": "", "j": "just a string",
            "jb": [1, 2], "u": null, "d": "0044-03-15 BC", "ts": "-infinity",
            "tstz": "2026-11-22T01:02:03.456789Z", "iv": "-00:00:01", "ia": [], "ta": null,
            "ba": null, "jba": [], "m": null}),
    ]
}

#[test]
fn values_of_every_kind_arrive_through_copy_and_through_upserts_alike() {
    let pg = PgServer::start().unwrap();
    let catalog = FakeCatalog::default();
    let cols: Vec<ColumnInfo> = TYPED
        .iter()
        .map(|(n, t)| col(n, t, (*n == "id").then_some(1)))
        .collect();
    let mut s = sink(&pg, "typed", cols, &catalog);
    let rows = typed_rows();
    // Snapshot rows (binary COPY), then the same values as inserts under other ids.
    let mut recs: Vec<Rec> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            rec(
                10,
                i as u64,
                Op::Read,
                json!({"key": {"id": r["id"]}, "after": r}),
            )
        })
        .collect();
    for (i, r) in rows.iter().enumerate() {
        let mut r = r.clone();
        r["id"] = json!(r["id"].as_i64().unwrap() + 100);
        recs.push(rec(
            20,
            2 + i as u64,
            Op::Insert,
            json!({"key": {"id": r["id"]}, "after": r}),
        ));
    }
    let rt = rt();
    rt.block_on(s.deliver(&batch("typed", &recs))).unwrap();
    let all: Vec<&str> = TYPED.iter().skip(1).map(|(n, _)| *n).collect();
    let select = |id: i64| {
        pg.psql(&format!(
            "SELECT {} FROM public.typed WHERE id = {id}",
            all.join(", ")
        ))
        .unwrap()
    };
    for id in [1, 2] {
        let copied = select(id);
        assert!(!copied.is_empty(), "row {id} was copied");
        assert_eq!(
            copied,
            select(id + 100),
            "row {id}: both paths give the same values"
        );
    }
    assert_eq!(
        pg.psql("SELECT i4, n, nn, f4, f8, t = E'a \"q\" \\\\ ,{} é\\n', encode(by, 'hex'), j::text, jb::text, \
                 d, ts, tstz, iv, ia, ta, ba, jba, m, pg_typeof(m) FROM public.typed WHERE id = 1")
            .unwrap(),
        "2147483647|12.50|NaN|Infinity|NaN|t|000102ff|{\"a\":[1,\"x\"]}|{\"k\": null, \"n\": 1.5}|\
         2024-02-29|2026-11-22 01:02:03.456789|infinity|1 day 02:00:00|{{1,2},{3,NULL}}|\
         {\"a,b\",\"q\\\"u\",NULL,\"NULL\",\"\",\"{x}\"}|{\"\\\\x0001\",NULL}|{\"{\\\"a\\\": 1}\",\"\\\"s\\\"\",NULL}|happy|text"
    );
    assert_eq!(
        pg.psql("SELECT i2 IS NULL, nn, f4, f8, t = '', encode(by, 'hex') = '', j::text, jb::text, d, ts, \
                 tstz AT TIME ZONE 'UTC', iv, ia, ta IS NULL, jba FROM public.typed WHERE id = 2")
            .unwrap(),
        "t|-Infinity|0.1|1.5e+100|t|t|\"just a string\"|[1, 2]|0044-03-15 BC|-infinity|\
         2026-11-22 01:02:03.456789|-00:00:01|{}|t|{}"
    );
    // A key copied twice in one batch keeps its last row.
    let twice = [
        rec(
            30,
            4,
            Op::Read,
            json!({"key": {"id": 5}, "after": {"id": 5, "t": "first"}}),
        ),
        rec(
            30,
            5,
            Op::Read,
            json!({"key": {"id": 5}, "after": {"id": 5, "t": "second"}}),
        ),
    ];
    rt.block_on(s.deliver(&batch("typed", &twice))).unwrap();
    assert_eq!(
        pg.psql("SELECT t FROM public.typed WHERE id = 5").unwrap(),
        "second"
    );
}

fn table_text(pg: &PgServer, table: &str) -> String {
    pg.psql(&format!("SELECT * FROM public.{table} ORDER BY 1"))
        .unwrap()
}

#[test]
fn replays_are_skipped_by_position_and_unchanged_toast_values_are_kept() {
    let pg = PgServer::start().unwrap();
    let catalog = FakeCatalog::default();
    let cols = vec![
        col("id", "integer", Some(1)),
        col("v", "text", None),
        col("big", "text", None),
    ];
    let mut s = sink(&pg, "r", cols.clone(), &catalog);
    let first = batch(
        "r",
        &[
            rec(
                10,
                0,
                Op::Insert,
                json!({"key": {"id": 1}, "after": {"id": 1, "v": "a", "big": "BIG1"}}),
            ),
            rec(
                10,
                1,
                Op::Insert,
                json!({"key": {"id": 2}, "after": {"id": 2, "v": "a", "big": "BIG2"}}),
            ),
            rec(
                10,
                2,
                Op::Insert,
                json!({"key": {"id": 4}, "after": {"id": 4, "v": "a", "big": "BIG4"}}),
            ),
        ],
    );
    let second = batch(
        "r",
        &[
            // Updates that leave the TOASTed column out: it keeps its value.
            rec(
                20,
                3,
                Op::Update,
                json!({"key": {"id": 1}, "after": {"id": 1, "v": "b"}, "unchanged_toast": ["big"]}),
            ),
            // A key change without it: the row moves, with its value.
            rec(
                20,
                4,
                Op::Update,
                json!({"key": {"id": 3}, "before": {"id": 2}, "after": {"id": 3, "v": "c"}, "unchanged_toast": ["big"]}),
            ),
            // A key change with every column: the old key goes.
            rec(
                20,
                5,
                Op::Update,
                json!({"key": {"id": 5}, "before": {"id": 4}, "after": {"id": 5, "v": "d", "big": "BIG5"}}),
            ),
            rec(
                20,
                6,
                Op::Insert,
                json!({"key": {"id": 6}, "after": {"id": 6, "v": "e", "big": "x"}}),
            ),
            rec(
                20,
                7,
                Op::Delete,
                json!({"key": {"id": 6}, "before": {"id": 6}}),
            ),
        ],
    );
    let rt = rt();
    rt.block_on(s.deliver(&first)).unwrap();
    rt.block_on(s.deliver(&second)).unwrap();
    let want = "1|b|BIG1\n3|c|BIG2\n5|d|BIG5";
    assert_eq!(table_text(&pg, "r"), want);
    // Replays, older and the same, in this session and in a new one: nothing moves back.
    rt.block_on(s.deliver(&first)).unwrap();
    rt.block_on(s.deliver(&second)).unwrap();
    assert_eq!(table_text(&pg, "r"), want);
    let mut fresh = sink(&pg, "r", cols, &catalog);
    rt.block_on(fresh.deliver(&first)).unwrap();
    assert_eq!(table_text(&pg, "r"), want);
    assert_eq!(
        pg.psql("SELECT source_schema, source_table, commit_lsn, ordinal, log_offset, source_columns FROM public.sluice_positions")
            .unwrap(),
        "public|r|0/14|8|7|{big,id,v}"
    );
    // A truncate empties the table; a later insert lands.
    let third = batch(
        "r",
        &[
            rec(30, 8, Op::Truncate, json!({})),
            rec(
                31,
                9,
                Op::Insert,
                json!({"key": {"id": 9}, "after": {"id": 9, "v": "z", "big": null}}),
            ),
        ],
    );
    rt.block_on(fresh.deliver(&third)).unwrap();
    assert_eq!(table_text(&pg, "r"), "9|z|");
}

#[test]
fn a_failed_batch_applies_nothing_and_its_error_holds_no_value() {
    let pg = PgServer::start().unwrap();
    let catalog = FakeCatalog::default();
    let cols = vec![
        col("id", "integer", Some(1)),
        col("n", "integer", None),
        col("b", "bytea", None),
    ];
    let mut s = sink(&pg, "f", cols, &catalog);
    let rt = rt();
    let bad = batch(
        "f",
        &[
            rec(
                10,
                0,
                Op::Insert,
                json!({"key": {"id": 1}, "after": {"id": 1, "n": 1, "b": null}}),
            ),
            rec(
                10,
                1,
                Op::Insert,
                json!({"key": {"id": 2}, "after": {"id": 2, "n": "s3cr3t-value", "b": null}}),
            ),
        ],
    );
    let err = rt.block_on(s.deliver(&bad)).unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
    assert!(err.to_string().contains("SQLSTATE 22P02"), "{err}");
    assert_eq!(
        table_text(&pg, "f"),
        "",
        "the good row of the batch is not applied either"
    );
    // The same through the COPY path.
    let bad_copy = batch(
        "f",
        &[
            rec(
                10,
                0,
                Op::Read,
                json!({"key": {"id": 1}, "after": {"id": 1, "n": 1, "b": null}}),
            ),
            rec(
                10,
                1,
                Op::Read,
                json!({"key": {"id": 2}, "after": {"id": 2, "n": 2, "b": "s3cr3t%%"}}),
            ),
        ],
    );
    let err = rt.block_on(s.deliver(&bad_copy)).unwrap_err();
    assert!(
        !err.is_transient() && !err.to_string().contains("s3cr3t"),
        "{err}"
    );
    assert!(err.to_string().contains("column \"b\""), "{err}");
    assert_eq!(table_text(&pg, "f"), "");
    assert_eq!(
        pg.psql("SELECT count(*) FROM public.sluice_positions")
            .unwrap(),
        "0"
    );
    // Corrected, it goes through on the same sink.
    let good = batch(
        "f",
        &[rec(
            10,
            0,
            Op::Read,
            json!({"key": {"id": 1}, "after": {"id": 1, "n": 1, "b": "AAE="}}),
        )],
    );
    rt.block_on(s.deliver(&good)).unwrap();
    assert_eq!(table_text(&pg, "f"), "1|1|\\x0001");
}

#[test]
fn columns_follow_the_source_catalog_and_the_targets_own_are_kept() {
    let pg = PgServer::start().unwrap();
    let catalog = FakeCatalog::default();
    let base = vec![col("id", "integer", Some(1)), col("a", "text", None)];
    let mut s = sink(&pg, "e", base.clone(), &catalog);
    let rt = rt();
    rt.block_on(s.deliver(&batch(
        "e",
        &[rec(
            10,
            0,
            Op::Insert,
            json!({"key": {"id": 1}, "after": {"id": 1, "a": "x"}}),
        )],
    )))
    .unwrap();
    // A column of the target's own, which the source never had.
    pg.psql("ALTER TABLE public.e ADD COLUMN own text DEFAULT 'mine'")
        .unwrap();
    // The source adds c: the first record that carries it adds it to the target.
    let mut with_c = base.clone();
    with_c.push(col("c", "numeric(6,1)", None));
    catalog.set("public.e", with_c.clone());
    rt.block_on(s.deliver(&batch(
        "e",
        &[rec(
            20,
            1,
            Op::Insert,
            json!({"key": {"id": 2}, "after": {"id": 2, "a": "y", "c": "1.5"}}),
        )],
    )))
    .unwrap();
    assert_eq!(
        pg.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.e'::regclass AND attname = 'c'")
            .unwrap(),
        "numeric(6,1)"
    );
    // A record without c while the catalog still lists it: nothing is dropped.
    rt.block_on(s.deliver(&batch(
        "e",
        &[rec(
            21,
            2,
            Op::Insert,
            json!({"key": {"id": 3}, "after": {"id": 3, "a": "z"}}),
        )],
    )))
    .unwrap();
    assert_eq!(table_text(&pg, "e"), "1|x|mine|\n2|y|mine|1.5\n3|z|mine|");
    // The source drops a: records stop carrying it, the catalog no longer lists it.
    catalog.set(
        "public.e",
        vec![
            col("id", "integer", Some(1)),
            col("c", "numeric(6,1)", None),
        ],
    );
    rt.block_on(s.deliver(&batch(
        "e",
        &[rec(
            30,
            3,
            Op::Update,
            json!({"key": {"id": 1}, "after": {"id": 1, "c": "2.0"}}),
        )],
    )))
    .unwrap();
    assert_eq!(table_text(&pg, "e"), "1|mine|2.0\n2|mine|1.5\n3|mine|");
    // A column a record carries that the catalog does not list (dropped since): its
    // values are left out, the rest applies.
    rt.block_on(s.deliver(&batch(
        "e",
        &[rec(
            40,
            4,
            Op::Insert,
            json!({"key": {"id": 4}, "after": {"id": 4, "c": "4.0", "gone": 1}}),
        )],
    )))
    .unwrap();
    assert_eq!(
        table_text(&pg, "e"),
        "1|mine|2.0\n2|mine|1.5\n3|mine|\n4|mine|4.0"
    );
}

#[test]
fn a_shed_sinks_tables_are_emptied_before_its_backfill() {
    let pg = PgServer::start().unwrap();
    let catalog = FakeCatalog::default();
    let cols = vec![col("id", "integer", Some(1)), col("v", "text", None)];
    let mut s = sink(&pg, "shed", cols.clone(), &catalog);
    let rt = rt();
    rt.block_on(s.deliver(&batch(
        "shed",
        &[rec(
            10,
            0,
            Op::Insert,
            json!({"key": {"id": 1}, "after": {"id": 1, "v": "a"}}),
        )],
    )))
    .unwrap();
    let mut shed = options(&pg, "shed", cols, &catalog);
    shed.reset = true;
    let mut again = PostgresSink::new(shed);
    // Replayed records the target holds stay skipped; the table starts empty.
    rt.block_on(again.deliver(&batch(
        "shed",
        &[
            rec(
                10,
                0,
                Op::Insert,
                json!({"key": {"id": 1}, "after": {"id": 1, "v": "a"}}),
            ),
            rec(
                20,
                1,
                Op::Read,
                json!({"key": {"id": 2}, "after": {"id": 2, "v": "b"}}),
            ),
        ],
    )))
    .unwrap();
    assert_eq!(table_text(&pg, "shed"), "2|b");
}

#[test]
fn check_names_a_different_key_missing_privileges_and_tables_without_a_key() {
    use sluice_sinks::postgres::PostgresConfig;
    use sluice_sinks::{Context, SinkSpec};
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.k (id int, v text, PRIMARY KEY (v)); \
         CREATE ROLE bob LOGIN; GRANT SELECT ON public.k TO bob;",
    )
    .unwrap();
    let mut columns = Columns::new();
    columns.insert(
        "public.k".into(),
        vec![col("id", "integer", Some(1)), col("v", "text", None)],
    );
    columns.insert("public.nokey".into(), vec![col("a", "integer", None)]);
    let tables = vec!["public.k".to_owned(), "public.nokey".to_owned()];
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context {
        base_dir: dir.path(),
        db: "src",
        pipeline: "p",
        tables: &tables,
        columns: &columns,
        catalog: None,
        reset: None,
    };
    let config: PostgresConfig = serde_json::from_value(json!({
        "name": "replica", "url": pg.url("bob", "postgres"),
    }))
    .unwrap();
    let findings = rt().block_on(config.check(&ctx));
    let text: Vec<String> = findings
        .iter()
        .map(|f| {
            format!(
                "{} {} | {}",
                f.blocking,
                f.what,
                f.fix.as_deref().unwrap_or("")
            )
        })
        .collect();
    let has = |needle: &str| {
        assert!(
            text.iter().any(|t| t.contains(needle)),
            "{needle:?} in {text:#?}"
        )
    };
    has("true sink \"replica\": public.nokey without a primary key");
    has(
        "true sink \"replica\": target table public.k has primary key (v) but the source's is (id)",
    );
    has("true sink \"replica\": user bob lacks INSERT, UPDATE, DELETE, TRUNCATE on public.k | GRANT INSERT, UPDATE, DELETE, TRUNCATE ON public.k TO bob");
    has("false sink \"replica\": user bob does not own public.k");
    has("true sink \"replica\": user bob may not create tables in schema public | GRANT CREATE ON SCHEMA public TO bob");
}
