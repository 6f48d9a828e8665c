//! End to end: the Kafka sink against a real Kafka-protocol broker (tansu, from the tools
//! virtualenv). Records of one key share a partition and keep their order there; a
//! kill -9 of Sluice in the middle of the load loses nothing (repeats carry the ids
//! already seen); packages decode to the same records.
#![cfg(feature = "kafka")]

#[path = "support/broker.rs"]
mod broker;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use sluice_testkit::KafkaServer;
use support::*;

const PARTITIONS: i32 = 3;

fn kafka_sink(name: &str, brokers: &str, topic: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = {name:?}\ntype = \"kafka\"\nbrokers = {brokers:?}\ntopic = {topic:?}\n\
         create_topics = true\npartitions = {PARTITIONS}\n{extra}\n"
    )
}

/// One consumed message: partition, key, headers (lower-case names, as the sink writes
/// them), value.
struct Consumed {
    partition: i32,
    key: Vec<u8>,
    stored: broker::Stored,
}

/// Every message of `topic` from the start, once one carries `last_id`, bounded.
fn consume(brokers: &str, topic: &str, last_id: &str) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign partitions");
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut seen_last = None;
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        // Back to the names the NATS sink uses, for the shared decoder.
                        let name = h
                            .key
                            .split('-')
                            .map(capitalised)
                            .collect::<Vec<_>>()
                            .join("-");
                        headers.insert(
                            name,
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                if headers
                    .get("Sluice-Id")
                    .is_some_and(|id| id.ends_with(last_id))
                {
                    seen_last = Some(Instant::now());
                }
                out.push(Consumed {
                    partition: m.partition(),
                    key: m.key().unwrap_or_default().to_vec(),
                    stored: broker::Stored {
                        subject: m.topic().to_owned(),
                        headers,
                        payload: m.payload().unwrap_or_default().to_vec(),
                    },
                });
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            // Quiet for a moment after the last record was seen: every partition is read.
            None if seen_last.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) => return out,
            None => assert!(
                Instant::now() < deadline,
                "{topic}: {last_id} not seen; {} messages",
                out.len()
            ),
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

#[test]
fn one_keys_records_keep_their_order_in_a_partition_and_a_kill9_loses_nothing() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id bigint PRIMARY KEY, v text, n int);")
        .unwrap();
    let kafka = KafkaServer::start().unwrap();
    let brokers = kafka.bootstrap();
    let mut p = Pipeline::new(&pg, "kfk", &["public.t"], "");
    p.add_config(&kafka_sink("k", &brokers, "k.{table}", ""));
    p.add_config(&kafka_sink(
        "kp",
        &brokers,
        "kp.{table}",
        "encoding = \"package\"\ncompression = \"zstd\"",
    ));
    let check = p.command("check");
    assert!(check.status.success(), "{}", output_text(&check));
    p.start();
    p.wait_streaming(&pg);
    pg.psql("INSERT INTO t SELECT g, 'v', 0 FROM generate_series(1, 200) g;")
        .unwrap();
    let rounds = 40;
    let url = pg.url("postgres", "postgres");
    let writer = std::thread::spawn(move || {
        for round in 1..=rounds {
            let out = std::process::Command::new(sluice_testkit::pg_bin("psql"))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c"])
                .arg(format!("UPDATE t SET n = {round}, v = 'r{round}' WHERE id % 4 = {} OR {round} % 3 = 0;", round % 4))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
    });
    wait_until(WAIT, "some updates in the file sink", || {
        (p.records().iter().filter(|r| r["op"] == "update").count() > 500).then_some(())
    })
    .unwrap();
    p.kill9();
    p.start();
    writer.join().unwrap();
    pg.psql("INSERT INTO t VALUES (999999, 'last', 0);")
        .unwrap();
    let records = wait_until(WAIT, "the last insert in the file sink", || {
        let r = p.records();
        r.iter().any(|r| r["key"]["id"] == 999999).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    let last = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .max()
        .unwrap();
    let mut file: BTreeMap<String, Value> = BTreeMap::new();
    for r in &records {
        file.insert(r["id"].as_str().unwrap().to_owned(), r.clone());
    }

    let msgs = consume(&brokers, "k.t", &last);
    let mut partition_of: HashMap<Vec<u8>, i32> = HashMap::new();
    let mut per_key: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for m in &msgs {
        let r = &m.stored.records()[0];
        let id = r["id"].as_str().unwrap().to_owned();
        assert_eq!(m.stored.header("Sluice-Id"), id);
        assert_eq!(m.stored.header("Sluice-Op"), r["op"].as_str().unwrap());
        assert_eq!(
            m.key,
            serde_json::to_vec(&r["key"]).unwrap(),
            "the key is the record's key"
        );
        assert_eq!(&file[&id], r, "the message is the file sink's record");
        let p = *partition_of.entry(m.key.clone()).or_insert(m.partition);
        assert_eq!(p, m.partition, "one key, one partition");
        per_key.entry(m.key.clone()).or_default().push(id);
    }
    let mut delivered = BTreeSet::new();
    for (key, ids) in &per_key {
        // Per key, in partition order: increasing, but for runs sent again after the kill.
        let mut high: Option<&String> = None;
        for id in ids {
            if high.is_none_or(|h| id > h) {
                high = Some(id);
            } else {
                assert!(
                    delivered.contains(id),
                    "key {}: {id} after {high:?} and never before",
                    String::from_utf8_lossy(key)
                );
            }
            delivered.insert(id.clone());
        }
    }
    assert_eq!(
        delivered,
        file.keys().cloned().collect::<BTreeSet<_>>(),
        "nothing lost"
    );

    let packages = consume(&brokers, "kp.t", &last);
    let mut in_packages = BTreeSet::new();
    for m in &packages {
        assert_eq!(m.key, b"public.t");
        for e in m.stored.records() {
            let id = e["id"].as_str().unwrap().to_owned();
            broker::same_record(&e, &file[&id]).unwrap();
            in_packages.insert(id);
        }
    }
    assert_eq!(in_packages, delivered);
    p.stop();
}

#[test]
fn a_refused_login_stops_the_sink_at_once_with_its_fix() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id bigint PRIMARY KEY, v text);")
        .unwrap();
    let kafka = KafkaServer::start_refusing_logins().unwrap();
    let p = Pipeline::new(&pg, "kauth", &["public.t"], "");
    p.add_config(&kafka_sink(
        "k",
        &kafka.bootstrap(),
        "k.{table}",
        "sasl_password = \"n0t-the-passw0rd\"\n\
         options = { \"security.protocol\" = \"SASL_PLAINTEXT\", \"sasl.mechanisms\" = \"SCRAM-SHA-512\", \"sasl.username\" = \"alice\" }",
    ));
    let out = p.command("check");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    let line = text
        .lines()
        .position(|l| l.starts_with("FAIL") && l.contains("refused the credentials"))
        .unwrap_or_else(|| panic!("no refusal:\n{text}"));
    let fix = text.lines().nth(line + 1).unwrap_or_default();
    assert!(
        fix.contains("fix:") && fix.contains("sasl_password"),
        "{text}"
    );
    // A run refuses to start the same way, and says so without the password.
    let started = Instant::now();
    let out = p.command("run");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(
        !text.contains("n0t-the-passw0rd"),
        "the password is in the output: {text}"
    );
}
