//! End to end: inserts, updates, deletes and truncates come out as change records, in
//! commit order, with the documented envelope.

mod support;

use support::*;

#[test]
fn dml_arrives_in_commit_order_with_the_documented_envelope() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.orders (id int PRIMARY KEY, status text, total numeric(10,2));
         CREATE TABLE public.lines (order_id int, line int, sku text, PRIMARY KEY (order_id, line));",
    )
    .unwrap();
    let mut p = Pipeline::new(&pg, "dml", &["public.orders", "public.lines"], "");
    p.start();
    p.wait_streaming(&pg);
    pg.psql(
        "INSERT INTO orders VALUES (42, 'new', 19.90);
         BEGIN; UPDATE orders SET status = 'paid' WHERE id = 42;
                INSERT INTO lines VALUES (42, 1, 'A-1'), (42, 2, 'B-2'); COMMIT;
         UPDATE lines SET line = 3 WHERE order_id = 42 AND line = 2;
         DELETE FROM orders WHERE id = 42;
         TRUNCATE lines;",
    )
    .unwrap();
    let recs = p.wait_records(7);
    p.stop();
    assert_eq!(
        ops(&recs),
        ["insert", "update", "insert", "insert", "update", "delete", "truncate"]
    );

    let first = &recs[0];
    assert_eq!(first["schema"], "public");
    assert_eq!(first["table"], "orders");
    assert_eq!(first["key"], serde_json::json!({"id": 42}));
    assert_eq!(
        first["after"],
        serde_json::json!({"id": 42, "status": "new", "total": "19.90"})
    );
    assert_eq!(first["before"], serde_json::Value::Null);
    assert_eq!(first["unchanged_toast"], serde_json::json!([]));
    let id = first["id"].as_str().unwrap();
    assert_eq!(id.len(), 23, "{id}");
    assert!(id.ends_with("-000001"));
    assert!(first["commit_ts"].as_str().unwrap().ends_with('Z'));
    assert!(first["xid"].as_u64().unwrap() > 0);

    // One transaction: one commit LSN, ordinals 1..3, one xid.
    let txn = &recs[1..4];
    assert!(txn
        .iter()
        .all(|r| r["commit_lsn"] == recs[1]["commit_lsn"] && r["xid"] == recs[1]["xid"]));
    assert_eq!(
        txn.iter()
            .map(|r| r["id"].as_str().unwrap()[17..].to_owned())
            .collect::<Vec<_>>(),
        ["000001", "000002", "000003"]
    );

    // Ids increase strictly in the order records arrive.
    let ids: Vec<sluice_core_id::Id> = recs
        .iter()
        .map(|r| sluice_core_id::parse(r["id"].as_str().unwrap()))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // A changed composite key: the key is the new one, before holds the old key.
    assert_eq!(
        recs[4]["key"],
        serde_json::json!({"order_id": 42, "line": 3})
    );
    assert_eq!(
        recs[4]["before"],
        serde_json::json!({"order_id": 42, "line": 2})
    );
    // A delete carries the key in before.
    assert_eq!(recs[5]["before"], serde_json::json!({"id": 42}));
    assert_eq!(recs[5]["after"], serde_json::Value::Null);
    assert_eq!(recs[6]["table"], "lines");
}

mod sluice_core_id {
    pub type Id = (u64, u32);
    pub fn parse(s: &str) -> Id {
        let (l, o) = s.split_once('-').unwrap();
        (u64::from_str_radix(l, 16).unwrap(), o.parse().unwrap())
    }
}
