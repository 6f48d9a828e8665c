//! The Redis sink against a real redis-server: its high-water mark, formats, TOAST merges,
//! deletes, truncates, and a server restart in the middle of delivery.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{ChangeId, ChangeRecord, Lsn, Op};
use sluice_log::{frame, Append, FullPolicy, Log, LogConfig, Reader, RecordBatch};
use sluice_sinks::redis::{Format, RedisOptions, RedisSink, DEFAULT_KEY_TEMPLATE};
use sluice_sinks::Sink;
use sluice_testkit::RedisServer;

struct Change<'a> {
    lsn: u64,
    op: Op,
    id: i64,
    after: Option<&'a str>,
    toast: &'a [&'a str],
}

fn record(c: &Change) -> ChangeRecord {
    ChangeRecord {
        id: ChangeId {
            commit_lsn: Lsn(c.lsn),
            ordinal: 1,
        },
        op: c.op,
        schema: "public".into(),
        table: "t".into(),
        key: (c.op != Op::Truncate).then(|| format!("{{\"id\":{}}}", c.id)),
        before: None,
        after: c.after.map(str::to_owned),
        unchanged_toast: c.toast.iter().map(|&s| Arc::from(s)).collect(),
        lsn: Lsn(c.lsn),
        commit_lsn: Lsn(c.lsn),
        commit_ts_micros: 1,
        xid: 1,
        message: None,
        old_key: None,
    }
}

/// Frames `changes` through a real log and reads them back as one batch.
fn batch(changes: &[Change]) -> RecordBatch {
    let dir = tempfile::tempdir().unwrap();
    let (log, writer, _) = Log::open(LogConfig {
        dir: dir.path().to_owned(),
        segment_bytes: 1 << 20,
        max_bytes: None,
        on_full: FullPolicy::PauseSource,
        retention: Duration::from_secs(60),
        shed_after: Duration::ZERO,
    })
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (spare, _keep) = tokio::sync::mpsc::channel(4);
    let t = std::thread::spawn(move || writer.run(rx, spare));
    let mut bytes = Vec::new();
    for c in changes {
        frame::encode_record(&mut bytes, &record(c));
    }
    tx.try_send(Append {
        bytes,
        records: changes.len() as u64,
        commit: None,
        ack: None,
    })
    .unwrap();
    drop(tx);
    t.join().unwrap().unwrap();
    let mut r = Reader::new(&log, 0).unwrap();
    let mut b = RecordBatch::default();
    r.read(&mut b, 10_000, 1 << 30, &mut |_, _, _| true)
        .unwrap();
    assert_eq!(b.len(), changes.len());
    b
}

fn sink(redis: &RedisServer, format: Format) -> RedisSink {
    sink_at(redis.url(), format)
}

fn sink_at(url: String, format: Format) -> RedisSink {
    RedisSink::new(options(url, format))
}

fn options(url: String, format: Format) -> RedisOptions {
    RedisOptions {
        url,
        ca_file: None,
        prefix: "c:".into(),
        key_template: DEFAULT_KEY_TEMPLATE.into(),
        format,
        ttl_secs: 0,
        db: "shop".into(),
        pipeline: "p".into(),
        sink: "cache".into(),
        tables: vec![("public".into(), "t".into())],
        reset: false,
    }
}

fn get(redis: &RedisServer, key: &str) -> String {
    redis.cli(&["GET", key]).unwrap().trim().to_owned()
}

#[tokio::test]
async fn an_older_change_never_overwrites_a_newer_one() {
    let redis = RedisServer::start().unwrap();
    let mut s = sink(&redis, Format::Json);
    let newer = batch(&[Change {
        lsn: 200,
        op: Op::Update,
        id: 1,
        after: Some(r#"{"id":1,"v":"new"}"#),
        toast: &[],
    }]);
    let older = batch(&[
        Change {
            lsn: 100,
            op: Op::Insert,
            id: 1,
            after: Some(r#"{"id":1,"v":"old"}"#),
            toast: &[],
        },
        Change {
            lsn: 150,
            op: Op::Delete,
            id: 1,
            after: None,
            toast: &[],
        },
    ]);
    s.deliver(&newer).await.unwrap();
    // Redelivery of older changes (a crash, a retry, a stale backfill row) is ignored.
    s.deliver(&older).await.unwrap();
    s.deliver(&newer).await.unwrap();
    assert_eq!(get(&redis, "c:shop.public.t.1"), r#"{"id":1,"v":"new"}"#);
    // A newer delete removes the key and its tombstone fences older writes.
    let delete = batch(&[Change {
        lsn: 300,
        op: Op::Delete,
        id: 1,
        after: None,
        toast: &[],
    }]);
    s.deliver(&delete).await.unwrap();
    s.deliver(&newer).await.unwrap();
    assert_eq!(get(&redis, "c:shop.public.t.1"), "");
}

#[tokio::test]
async fn writes_and_deletes_of_one_batch_apply_in_their_order() {
    // Whole-row writes are gathered into MSET runs; a delete between them must still fall
    // between them, and a key written twice in a run ends with its later value.
    let redis = RedisServer::start().unwrap();
    let mut s = sink(&redis, Format::Json);
    let change = |lsn, op, id, after| Change {
        lsn,
        op,
        id,
        after,
        toast: &[],
    };
    s.deliver(&batch(&[
        change(100, Op::Insert, 1, Some(r#"{"id":1,"v":"a"}"#)),
        change(110, Op::Insert, 2, Some(r#"{"id":2,"v":"a"}"#)),
        change(120, Op::Update, 1, Some(r#"{"id":1,"v":"b"}"#)),
        change(130, Op::Delete, 2, None),
        change(140, Op::Insert, 3, Some(r#"{"id":3,"v":"a"}"#)),
        change(150, Op::Delete, 3, None),
        change(160, Op::Insert, 2, Some(r#"{"id":2,"v":"c"}"#)),
        change(170, Op::Update, 1, Some(r#"{"id":1,"v":"d"}"#)),
    ]))
    .await
    .unwrap();
    assert_eq!(get(&redis, "c:shop.public.t.1"), r#"{"id":1,"v":"d"}"#);
    assert_eq!(get(&redis, "c:shop.public.t.2"), r#"{"id":2,"v":"c"}"#);
    assert_eq!(get(&redis, "c:shop.public.t.3"), "");
}

#[tokio::test]
async fn unchanged_toast_columns_are_merged_not_lost() {
    let redis = RedisServer::start().unwrap();
    for format in [Format::Json, Format::Hash] {
        redis.cli(&["FLUSHALL"]).unwrap();
        let mut s = sink(&redis, format);
        s.deliver(&batch(&[
            Change {
                lsn: 100,
                op: Op::Insert,
                id: 1,
                after: Some(r#"{"id":1,"big":"xxxx","n":1,"gone":"y"}"#),
                toast: &[],
            },
            Change {
                lsn: 200,
                op: Op::Update,
                id: 1,
                after: Some(r#"{"id":1,"n":2,"gone":null}"#),
                toast: &["big"],
            },
            // Not cached: nothing to merge with, so the key stays absent.
            Change {
                lsn: 300,
                op: Op::Update,
                id: 2,
                after: Some(r#"{"id":2,"n":5}"#),
                toast: &["big"],
            },
        ]))
        .await
        .unwrap();
        match format {
            Format::Json => {
                let v: serde_json::Value =
                    serde_json::from_str(&get(&redis, "c:shop.public.t.1")).unwrap();
                assert_eq!(
                    v,
                    serde_json::json!({"id": 1, "big": "xxxx", "n": 2, "gone": null})
                );
                assert_eq!(get(&redis, "c:shop.public.t.2"), "");
            }
            Format::Hash => {
                let all = redis.cli(&["HGETALL", "c:shop.public.t.1"]).unwrap();
                let lines: Vec<&str> = all.lines().collect();
                let mut pairs: Vec<(String, String)> = lines
                    .chunks(2)
                    .map(|p| (p[0].to_owned(), p[1].to_owned()))
                    .collect();
                pairs.sort();
                assert_eq!(
                    pairs,
                    vec![
                        ("big".into(), "xxxx".into()),
                        ("id".into(), "1".into()),
                        ("n".into(), "2".into()),
                    ]
                );
                assert_eq!(
                    redis.cli(&["EXISTS", "c:shop.public.t.2"]).unwrap().trim(),
                    "0"
                );
            }
        }
    }
}

#[tokio::test]
async fn truncate_removes_the_tables_keys_and_fences_older_writes() {
    let redis = RedisServer::start().unwrap();
    let mut options = options(redis.url(), Format::Json);
    // `t.x.1` matches table t's pattern too, but is table `t.x`'s key.
    options.tables.push(("public".into(), "t.x".into()));
    let mut s = RedisSink::new(options);
    let inserts: Vec<Change> = (1..=50)
        .map(|i| Change {
            lsn: 100 + i as u64,
            op: Op::Insert,
            id: i,
            after: Some(r#"{"v":1}"#),
            toast: &[],
        })
        .collect();
    let inserts = batch(&inserts);
    s.deliver(&inserts).await.unwrap();
    for key in ["c:shop.public.other.1", "c:shop.public.t.x.1"] {
        redis.cli(&["SET", key, "kept"]).unwrap();
    }
    s.deliver(&batch(&[Change {
        lsn: 1000,
        op: Op::Truncate,
        id: 0,
        after: None,
        toast: &[],
    }]))
    .await
    .unwrap();
    s.deliver(&inserts).await.unwrap();
    let keys = redis.cli(&["KEYS", "c:shop.public.t.*"]).unwrap();
    assert_eq!(
        keys.trim(),
        "c:shop.public.t.x.1",
        "every row key of the table is gone"
    );
    assert_eq!(get(&redis, "c:shop.public.other.1"), "kept");
    assert_eq!(get(&redis, "c:shop.public.t.x.1"), "kept");
}

#[tokio::test]
async fn delivery_fails_while_redis_is_down_and_succeeds_after() {
    let mut redis = RedisServer::start().unwrap();
    let mut s = sink(&redis, Format::Json);
    let one = batch(&[Change {
        lsn: 100,
        op: Op::Insert,
        id: 7,
        after: Some(r#"{"id":7}"#),
        toast: &[],
    }]);
    s.deliver(&one).await.unwrap();
    let two = batch(&[Change {
        lsn: 200,
        op: Op::Update,
        id: 7,
        after: Some(r#"{"id":7,"v":2}"#),
        toast: &[],
    }]);
    redis.kill();
    let err = s.deliver(&two).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    redis.start_again().unwrap();
    // The connection comes back by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = s.deliver(&two).await {
        assert!(
            std::time::Instant::now() < deadline,
            "redis never came back: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&redis, "c:shop.public.t.7"), r#"{"id":7,"v":2}"#);
}

#[tokio::test]
async fn a_wrong_password_is_definite_with_its_fix_and_a_down_server_transient() {
    let mut redis = RedisServer::start().unwrap();
    redis
        .cli(&["CONFIG", "SET", "requirepass", "right"])
        .unwrap();
    let one = batch(&[Change {
        lsn: 100,
        op: Op::Insert,
        id: 1,
        after: Some(r#"{"id":1}"#),
        toast: &[],
    }]);
    for url in [
        format!("redis://:wrong@127.0.0.1:{}/", redis.port()),
        format!("redis://127.0.0.1:{}/", redis.port()),
    ] {
        let mut s = sink_at(url, Format::Json);
        let err = s.deliver(&one).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(
            err.fix
                .as_deref()
                .unwrap_or("")
                .contains("redis://user:password@host:port"),
            "{err}"
        );
        assert!(!err.to_string().contains(":wrong@"), "{err}");
    }
    redis.kill();
    let mut s = sink_at(
        format!("redis://:right@127.0.0.1:{}/", redis.port()),
        Format::Json,
    );
    assert!(s.deliver(&one).await.unwrap_err().is_transient());
}

#[tokio::test]
async fn an_earlier_versions_id_hashes_are_honoured_then_removed() {
    let redis = RedisServer::start().unwrap();
    // As an earlier version left it: per-row ids. Row 2 holds a change of commit 500,
    // newer than the one about to come for it (a replay across the upgrade); row 4 an
    // older change of that same commit.
    let ids = "c:sluice:ids:shop.public.t";
    let fence = |lsn: u64, ordinal: u64| format!("{lsn:016X}{ordinal:016X}");
    redis
        .cli(&[
            "HSET",
            ids,
            "c:shop.public.t.2",
            &fence(500, 1),
            "c:shop.public.t.4",
            &fence(400, 1),
        ])
        .unwrap();
    redis
        .cli(&["SET", "c:shop.public.t.2", r#"{"id":2,"v":"newer"}"#])
        .unwrap();
    let mut s = sink(&redis, Format::Json);
    let change = |lsn, id, v: &'static str| Change {
        lsn,
        op: Op::Update,
        id,
        after: Some(v),
        toast: &[],
    };
    s.deliver(&batch(&[
        change(300, 2, r#"{"id":2,"v":"older"}"#),
        change(500, 4, r#"{"id":4,"v":"same commit, not applied yet"}"#),
    ]))
    .await
    .unwrap();
    assert_eq!(get(&redis, "c:shop.public.t.2"), r#"{"id":2,"v":"newer"}"#);
    assert_eq!(
        get(&redis, "c:shop.public.t.4"),
        r#"{"id":4,"v":"same commit, not applied yet"}"#
    );
    assert_eq!(
        redis.cli(&["EXISTS", ids]).unwrap().trim(),
        "1",
        "kept while the stream is at its newest commit"
    );
    s.deliver(&batch(&[change(600, 3, r#"{"id":3,"v":"new"}"#)]))
        .await
        .unwrap();
    assert_eq!(get(&redis, "c:shop.public.t.3"), r#"{"id":3,"v":"new"}"#);
    assert_eq!(
        redis.cli(&["EXISTS", ids]).unwrap().trim(),
        "0",
        "removed once passed"
    );
    let mark = get(&redis, "c:sluice:applied:shop.p.cache");
    assert!(mark.starts_with("0000000000000258-000001 "), "{mark}");
}

#[tokio::test]
async fn rows_expire_after_the_ttl_and_a_hash_leaves_null_columns_out() {
    let redis = RedisServer::start().unwrap();
    for (format, prefix) in [(Format::Json, "j:"), (Format::Hash, "h:")] {
        let mut s = RedisSink::new(RedisOptions {
            url: redis.url(),
            ca_file: None,
            prefix: prefix.into(),
            key_template: DEFAULT_KEY_TEMPLATE.into(),
            format,
            ttl_secs: 100,
            db: "shop".into(),
            pipeline: "p".into(),
            sink: "cache".into(),
            tables: vec![("public".into(), "t".into())],
            reset: false,
        });
        s.deliver(&batch(&[Change {
            lsn: 100,
            op: Op::Insert,
            id: 1,
            after: Some(r#"{"id":1,"v":"a","gone":null}"#),
            toast: &[],
        }]))
        .await
        .unwrap();
        let key = format!("{prefix}shop.public.t.1");
        let ttl: i64 = redis.cli(&["TTL", &key]).unwrap().trim().parse().unwrap();
        assert!((1..=100).contains(&ttl), "{format:?}: TTL {ttl}");
        match format {
            Format::Json => assert_eq!(get(&redis, &key), r#"{"id":1,"v":"a","gone":null}"#),
            Format::Hash => {
                let fields = redis.cli(&["HGETALL", &key]).unwrap();
                let fields: Vec<&str> = fields.lines().collect();
                assert_eq!(fields, ["id", "1", "v", "a"], "NULL columns are absent");
            }
        }
    }
}

#[tokio::test]
async fn nothing_started_after_a_failed_batch_applies_before_it() {
    let mut redis = RedisServer::start().unwrap();
    let mut s = sink(&redis, Format::Json);
    let insert = |lsn, id, v: &'static str| {
        batch(&[Change {
            lsn,
            op: Op::Insert,
            id,
            after: Some(v),
            toast: &[],
        }])
    };
    let (b, c) = (insert(200, 2, r#"{"id":2}"#), insert(300, 3, r#"{"id":3}"#));
    s.start(&insert(100, 1, r#"{"id":1}"#))
        .await
        .unwrap()
        .await
        .unwrap();
    redis.kill();
    // B is started (the runner holds it in flight) and fails.
    let in_flight = s.start(&b).await.unwrap();
    assert!(in_flight.await.unwrap_err().is_transient());
    redis.start_again().unwrap();
    // The runner may start C before it has seen B fail: C must not apply, or B's records
    // would then count as applied.
    match s.start(&c).await {
        Err(e) => assert!(e.is_transient(), "{e}"),
        Ok(f) => assert!(f.await.is_err(), "C applied after a failed B"),
    }
    // The runner starts again from its cursor: B, then C.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for next in [&b, &c] {
        loop {
            let done = match s.start(next).await {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => break,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    for id in 1..=3 {
        assert_eq!(
            get(&redis, &format!("c:shop.public.t.{id}")),
            format!(r#"{{"id":{id}}}"#)
        );
    }
}

#[tokio::test]
async fn a_merge_reads_the_row_after_the_batch_still_in_flight_wrote_it() {
    let redis = RedisServer::start().unwrap();
    let mut s = sink(&redis, Format::Json);
    // A large batch keeps Redis busy while the next one is started.
    let big = format!(r#"{{"id":0,"big":"{}","n":1}}"#, "x".repeat(2000));
    let rows: Vec<String> = (1..=5000)
        .map(|i| big.replacen(r#""id":0"#, &format!(r#""id":{i}"#), 1))
        .collect();
    let first: Vec<Change> = rows
        .iter()
        .enumerate()
        .map(|(i, after)| Change {
            lsn: 100 + i as u64,
            op: Op::Insert,
            id: i as i64 + 1,
            after: Some(after.as_str()),
            toast: &[],
        })
        .collect();
    let first = batch(&first);
    let update = batch(&[Change {
        lsn: 10_000,
        op: Op::Update,
        id: 5000,
        after: Some(r#"{"id":5000,"n":2}"#),
        toast: &["big"],
    }]);
    let a = s.start(&first).await.unwrap();
    let b = s.start(&update).await.unwrap();
    a.await.unwrap();
    b.await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&get(&redis, "c:shop.public.t.5000")).unwrap();
    assert_eq!(v["n"], 2);
    assert_eq!(
        v["big"].as_str().map(str::len),
        Some(2000),
        "merged, not left absent"
    );
}

#[tokio::test]
async fn rediss_delivers_over_tls_and_an_untrusted_certificate_is_definite() {
    let dir = tempfile::tempdir().unwrap();
    let certs = sluice_testkit::make_certs(dir.path(), "redis").unwrap();
    let redis = RedisServer::start_tls(&certs.cert, &certs.key).unwrap();
    let url = redis.tls_url().unwrap();
    let one = batch(&[Change {
        lsn: 100,
        op: Op::Insert,
        id: 1,
        after: Some(r#"{"id":1,"v":"tls"}"#),
        toast: &[],
    }]);

    // Trusting the server's CA: delivered, read back over the plain port.
    let mut s = RedisSink::new(RedisOptions {
        ca_file: Some(certs.ca.clone()),
        ..options(url.clone(), Format::Json)
    });
    s.deliver(&one).await.unwrap();
    assert_eq!(get(&redis, "c:shop.public.t.1"), r#"{"id":1,"v":"tls"}"#);

    // The system's roots do not hold a private CA: no retry can help.
    let mut s = sink_at(url, Format::Json);
    let err = s.deliver(&one).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.fix.as_deref().unwrap_or("").contains("ca_file"),
        "{err}"
    );
}
