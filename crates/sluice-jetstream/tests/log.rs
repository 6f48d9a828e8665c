//! The JetStream log against a real nats-server: what the writer appends, readers return
//! in order at dense positions; a record larger than a message travels in parts; a group
//! cut short by a crash is never returned and its records are written again.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{ChangeId, ChangeRecord, Lsn, Op};
use sluice_jetstream::{open, Opened, Settings};
use sluice_log::{Append, LogBackend, LogWriter, RecordBatch};
use sluice_testkit::NatsServer;
use tokio::sync::mpsc;

fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        stream: "SLUICE_LOG_t".into(),
        subject_prefix: "sluice.log.t".into(),
        partitions: 4,
        replicas: 1,
        file_storage: true,
        max_bytes: 0,
        retention: Duration::from_secs(3600),
        state_dir: dir.to_owned(),
    }
}

fn record(lsn: u64, ordinal: u64, key: u64, pad: usize) -> ChangeRecord {
    ChangeRecord {
        id: ChangeId {
            commit_lsn: Lsn(lsn),
            ordinal,
        },
        op: Op::Insert,
        schema: Arc::from("public"),
        table: Arc::from("t"),
        key: Some(format!("{{\"id\":{key}}}")),
        before: None,
        after: Some(format!("{{\"id\":{key},\"pad\":\"{}\"}}", "x".repeat(pad))),
        unchanged_toast: vec![],
        lsn: Lsn(lsn - 1),
        commit_lsn: Lsn(lsn),
        commit_ts_micros: 1,
        xid: 7,
        message: None,
        old_key: None,
    }
}

/// One transaction per hand-off: `n` records (one of `large` bytes when given).
fn append(lsn: u64, n: u64, large: Option<usize>) -> Append {
    let mut bytes = Vec::new();
    for i in 0..n {
        let pad = if i == 1 { large.unwrap_or(10) } else { 10 };
        sluice_log::frame::encode_record(&mut bytes, &record(lsn, i, lsn * 100 + i, pad));
    }
    Append {
        bytes,
        records: n,
        commit: Some(Lsn(lsn + 1)),
        ack: None,
    }
}

/// Runs the writer over `appends` and waits for it to finish.
async fn write(opened: Opened, appends: Vec<Append>) -> sluice_jetstream::JetStreamLog {
    let (tx, rx) = mpsc::channel(8);
    let (spare, _spare_rx) = mpsc::channel(64);
    let writer = opened.writer;
    let thread = std::thread::spawn(move || Box::new(writer).run(rx, spare));
    for a in appends {
        tx.send(a).await.unwrap();
    }
    drop(tx);
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    opened.log
}

async fn read_all(log: &dyn LogBackend, from: u64) -> Vec<(u64, ChangeId, usize)> {
    let end = log.durable_end();
    let mut reader = log.reader(from).unwrap();
    let mut batch = RecordBatch::default();
    let mut out = Vec::new();
    while reader.position() < end {
        tokio::time::timeout(Duration::from_secs(20), reader.wait())
            .await
            .expect("records within the wait")
            .unwrap();
        batch.clear();
        reader
            .read(&mut batch, 1000, 1 << 30, &mut |_, _, _| true)
            .unwrap();
        out.extend(batch.iter().map(|r| (r.offset, r.id, r.json.len())));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_back_in_order_at_dense_positions_large_ones_in_parts() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let opened = open(client, settings(dir.path())).await.unwrap();
    assert_eq!(opened.last, Lsn::ZERO);
    // 3 MiB: three times the server's default max_payload.
    let appends = vec![
        append(100, 50, None),
        append(200, 3, Some(3 << 20)),
        append(300, 0, None),
        append(400, 20, None),
    ];
    let log = write(opened, appends).await;
    assert_eq!(log.durable_end(), 73);
    assert_eq!(log.end().borrow().durable_lsn, Lsn(401));
    let all = read_all(&log, 0).await;
    let offsets: Vec<u64> = all.iter().map(|r| r.0).collect();
    assert_eq!(offsets, (0..73).collect::<Vec<_>>());
    let ids: Vec<ChangeId> = all.iter().map(|r| r.1).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "in the order handed over");
    assert!(all[51].2 > 3 << 20, "the large record whole");
    // From the middle of a group.
    let tail = read_all(&log, 60).await;
    assert_eq!(tail.first().map(|r| r.0), Some(60));
    assert_eq!(tail.len(), 13);
    drop(log);

    // Opened again: the log goes on where it ended.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let again = open(client, settings(dir.path())).await.unwrap();
    assert_eq!(again.last, Lsn(400));
    assert_eq!(
        again.last_change,
        Some(ChangeId {
            commit_lsn: Lsn(400),
            ordinal: 19
        })
    );
    assert_eq!(again.log.durable_end(), 73);
    assert_eq!(again.log.end().borrow().durable_lsn, Lsn(401));
    let log = write(again, vec![append(500, 5, None)]).await;
    let all = read_all(&log, 70).await;
    assert_eq!(
        all.iter().map(|r| r.0).collect::<Vec<_>>(),
        (70..78).collect::<Vec<_>>()
    );
    // From the start and from inside an early group: positions this process never
    // wrote, found by searching the stream.
    let all = read_all(&log, 0).await;
    assert_eq!(
        all.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..78).collect::<Vec<_>>()
    );
    assert!(all[51].2 > 3 << 20);
    let from_large = read_all(&log, 51).await;
    assert_eq!(from_large.first().map(|r| r.0), Some(51));
    assert_eq!(from_large.len(), 27);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_cut_short_is_never_read_and_its_records_are_written_again() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let opened = open(client.clone(), settings(dir.path())).await.unwrap();
    let log = write(opened, vec![append(100, 10, None)]).await;
    assert_eq!(log.durable_end(), 10);
    drop(log);
    // A writer that died mid-group: the first of a group's messages, as it would have
    // published it (the group says 40 records, this message holds fewer).
    let js = async_nats::jetstream::new(client.clone());
    let mut st = js.get_stream("SLUICE_LOG_t").await.unwrap();
    let last = st.info().await.unwrap().state.last_sequence;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Sluice-Group",
        format!("1 {} 10 40 201 200 200 39", last + 1).as_str(),
    );
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    sluice_log::frame::encode_record(&mut body, &record(200, 0, 1, 10));
    js.publish_with_headers("sluice.log.t.0", headers, body.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // And a second writer that died in its first group too: two short groups in a row.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Sluice-Group",
        format!("1 {} 10 40 201 200 200 39", last + 2).as_str(),
    );
    js.publish_with_headers("sluice.log.t.1", headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();

    let again = open(client, settings(dir.path())).await.unwrap();
    assert_eq!(again.last, Lsn(100), "the short groups do not count");
    assert_eq!(again.log.durable_end(), 10);
    assert_eq!(again.log.end().borrow().durable_lsn, Lsn(101));
    let log = write(again, vec![append(200, 40, None)]).await;
    let all = read_all(&log, 0).await;
    assert_eq!(
        all.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    let lsns: Vec<u64> = all.iter().map(|r| r.1.commit_lsn.0).collect();
    assert_eq!(lsns.iter().filter(|&&l| l == 200).count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_write_is_waited_out_with_nothing_lost_or_repeated() {
    let mut nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let opened = open(client, settings(dir.path())).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    let (spare, _spare_rx) = mpsc::channel(64);
    let writer = opened.writer;
    let thread = std::thread::spawn(move || Box::new(writer).run(rx, spare));
    let mut end = opened.log.end();
    for i in 1..=20 {
        tx.send(append(i * 100, 50, None)).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), end.wait_for(|e| e.next >= 1000))
        .await
        .expect("the first records stored")
        .unwrap();
    nats.kill();
    // Hand-offs while the server is down, longer than an acknowledgement is waited for:
    // the writer gives those publishes up, asks the stream how far it got once it is
    // back, and publishes the rest again.
    for i in 21..=40 {
        tx.send(append(i * 100, 50, None)).await.unwrap();
    }
    std::thread::sleep(Duration::from_secs(7));
    nats.start_again().unwrap();
    drop(tx);
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opened.log.durable_end(), 2000);
    assert_eq!(opened.log.end().borrow().durable_lsn, Lsn(4001));
    let all = read_all(&opened.log, 0).await;
    assert_eq!(
        all.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..2000).collect::<Vec<_>>()
    );
    let ids: Vec<ChangeId> = all.iter().map(|r| r.1).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in order, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_on_the_stream_stops_with_the_reason() {
    let nats = NatsServer::start().unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(
        async_nats::connect(nats.url()).await.unwrap(),
        settings(a_dir.path()),
    )
    .await
    .unwrap();
    let b = open(
        async_nats::connect(nats.url()).await.unwrap(),
        settings(b_dir.path()),
    )
    .await
    .unwrap();
    let a_log = write(a, vec![append(100, 10, None)]).await;
    // B opened before A wrote: it expects the sequences A has taken.
    let (tx, rx) = mpsc::channel(4);
    let (spare, _spare_rx) = mpsc::channel(64);
    let writer = b.writer;
    let thread = std::thread::spawn(move || Box::new(writer).run(rx, spare));
    tx.send(append(200, 10, None)).await.unwrap();
    drop(tx);
    let result = tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    let e = result.expect_err("the second writer stops").to_string();
    assert!(e.contains("another writer"), "{e}");
    assert_eq!(b.log.durable_end(), 0, "nothing counted as stored");
    let all = read_all(&a_log, 0).await;
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|r| r.1.commit_lsn == Lsn(100)));
}
