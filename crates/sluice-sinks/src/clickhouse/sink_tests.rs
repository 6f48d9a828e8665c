//! The statements and rows the sink sends, run on a current ClickHouse engine (chdb,
//! in-process, from the test tools): the test server is an older release.
use super::*;
use serde_json::{json, Value};

fn info(name: &str, pg_type: &str, key: Option<u16>) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        pg_type: pg_type.into(),
        key,
        ..Default::default()
    }
}

fn item<'a>(op: Op, ordinal: u64, json: &'a [u8]) -> Item<'a> {
    Item {
        op,
        schema: "public",
        table: "t",
        id: ChangeId {
            commit_lsn: sluice_core::Lsn(0x100 + ordinal / 10),
            ordinal,
        },
        json,
    }
}

/// Runs the steps in chdb; the last step's answer as JSON lines.
fn chdb(dir: &std::path::Path, steps: &[Value]) -> Vec<Value> {
    let venv =
        sluice_testkit::tools_venv().expect("the test tools (scripts/install-deps.sh --tests)");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sluice/tests/support/chdb_run.py");
    let file = dir.join("steps.json");
    std::fs::write(&file, serde_json::to_vec(steps).unwrap()).unwrap();
    let out = std::process::Command::new(venv.join("bin/python"))
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn statements_and_rows_hold_on_a_current_engine() {
    let cols = vec![
        info("id", "bigint", Some(1)),
        info("i2", "smallint", None),
        info("n", "numeric(12,2)", None),
        info("w", "numeric(50,4)", None),
        info("t", "text", None),
        info("j", "jsonb", None),
        info("ts", "timestamp without time zone", None),
        info("tz", "timestamp with time zone", None),
        info("d", "date", None),
        info("u", "uuid", None),
        info("b", "boolean", None),
        info("arr", "integer[]", None),
        info("raw", "bytea", None),
        info("iv", "interval", None),
        info("f", "double precision", None),
    ];
    let profile = Profile::CURRENT;
    let columns: Vec<Column> = cols
        .iter()
        .map(|c| Column {
            name: c.name.clone(),
            ty: types::map_column(c, profile, false).ty,
        })
        .collect();
    let mut table = Table {
        target: "`default`.`t`".into(),
        columns: Vec::new(),
        index: HashMap::new(),
        key: vec!["id".into()],
        parked: None,
        pending: Vec::new(),
        rows: 0,
        known: HashMap::new(),
        toast_cols: BTreeSet::new(),
    };
    table.set_columns(columns.clone());
    let row = |id: i64, t: &str| {
        json!({"id": id, "i2": 7, "n": "-12.50", "w": "12345678901234567890123456789012345678901.5",
        "t": t, "j": {"a": [1, null]}, "ts": "2026-01-02T03:04:05.123456", "tz": "2026-01-02T03:04:05.5Z",
        "d": "2026-01-02", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "b": true, "arr": [1, null, 3],
        "raw": "aGk=", "iv": "1 day 02:00:00", "f": "NaN"})
    };
    let envelopes: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&json!({"op": "insert", "key": {"id": 1}, "after": row(1, "one")}))
            .unwrap(),
        serde_json::to_vec(&json!({"op": "insert", "key": {"id": 2}, "after": row(2, "two")}))
            .unwrap(),
        serde_json::to_vec(
            &json!({"op": "update", "key": {"id": 1}, "after": row(1, "one, again")}),
        )
        .unwrap(),
        serde_json::to_vec(&json!({"op": "delete", "key": {"id": 2}, "before": {"id": 2}}))
            .unwrap(),
        serde_json::to_vec(&json!({"op": "insert", "key": {"id": 3}, "after": {"id": 3}})).unwrap(),
    ];
    let ops = [Op::Insert, Op::Insert, Op::Update, Op::Delete, Op::Insert];
    for (i, (op, env)) in ops.iter().zip(&envelopes).enumerate() {
        assert!(
            encode_change(&mut table, &item(*op, i as u64, env)).is_ok(),
            "row {i}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rows.bin"), &table.pending).unwrap();
    let added = Column {
        name: "extra".into(),
        ty: ChType::Int32.nullable(),
    };
    let widened = Column {
        name: "i2".into(),
        ty: ChType::Int64.nullable(),
    };
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    let [parked, resumed] = super::super::schema::park_tables("`default`");
    let steps = vec![
        json!({"sql": types::create_table("`default`.`t`", &columns, &table.key)}),
        json!({"sql": parked}),
        json!({"sql": resumed}),
        json!({"sql": types::insert("`default`.`t`", &columns), "data": "rows.bin"}),
        json!({"sql": types::add_column("`default`.`t`", &added)}),
        json!({"sql": types::modify_column("`default`.`t`", &widened)}),
        json!({"sql": types::lookup("`default`.`t`", &["id".into()], &["t"], &[vec!["1".into()], vec!["3".into()]])}),
        json!({"sql": format!("{} ORDER BY id FORMAT JSONEachRow", types::current_state("`default`.`t`", &names))}),
    ];
    let rows = chdb(dir.path(), &steps);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let one = &rows[0];
    assert_eq!(one["t"], "one, again");
    assert_eq!(one["i2"], 7);
    assert_eq!(one["n"], -12.5);
    assert_eq!(one["j"], "{\"a\":[1,null]}");
    assert_eq!(one["ts"], "2026-01-02 03:04:05.123456");
    assert_eq!(one["tz"], "2026-01-02 03:04:05.500000");
    assert_eq!(one["d"], "2026-01-02");
    assert_eq!(one["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(one["b"], true);
    assert_eq!(one["arr"], json!([1, null, 3]));
    assert_eq!(one["raw"], "hi");
    assert_eq!(one["iv"], "1 day 02:00:00");
    assert_eq!(one["id"], 1);
    let three = &rows[1];
    assert_eq!(three["id"], 3);
    assert_eq!(three["t"], Value::Null);
    // The lookup's answer: the key, then `t`, per key found.
    let lookup = vec![
        steps[0].clone(),
        steps[3].clone(),
        json!({"sql": types::lookup("`default`.`t`", &["id".into()], &["t"], &[vec!["1".into()], vec!["3".into()]]).replace("FORMAT RowBinary", "FORMAT JSONEachRow")}),
    ];
    assert_eq!(
        chdb(dir.path(), &lookup),
        vec![
            json!({"id": 1, "t": "one, again"}),
            json!({"id": 3, "t": null})
        ]
    );
}
