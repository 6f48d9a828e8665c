//! Reading back what the broker sinks published, and turning packages back into the
//! JSON records the file sink holds, to compare the two.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use prost::Message as _;
use serde_json::{json, Value};
use sluice_sinks::package::{Column, Event, Kind, Package, PackageOp};

/// One message as it is stored: subject (or topic), headers, payload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

impl Stored {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("header {name} missing: {:?}", self.headers))
    }

    /// The payload, decompressed when the headers say so.
    pub fn bytes(&self) -> Vec<u8> {
        match self.headers.get("Sluice-Compression").map(String::as_str) {
            Some("zstd") => zstd::bulk::decompress(&self.payload, 64 << 20).expect("a zstd frame"),
            None => self.payload.clone(),
            Some(other) => panic!("unknown compression {other}"),
        }
    }

    /// The records in the message, as JSON records.
    pub fn records(&self) -> Vec<Value> {
        match self.header("Sluice-Encoding") {
            "json" => vec![serde_json::from_slice(&self.bytes()).expect("a JSON record")],
            "package" => {
                let p = Package::decode(self.bytes().as_slice()).expect("a package");
                p.events.iter().map(|e| event_json(&p, e)).collect()
            }
            other => panic!("unknown encoding {other}"),
        }
    }
}

/// Every message of JetStream stream `stream`, in order, once the stream's last message
/// carries `last_id` (its `Sluice-Id` ends with it), bounded by `timeout`.
pub fn read_stream(url: &str, stream: &str, last_id: &str, timeout: Duration) -> Vec<Stored> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + timeout;
        loop {
            let all = read_all(&js, stream).await;
            if all
                .last()
                .is_some_and(|m| m.headers.get("Sluice-Id").is_some_and(|id| id.ends_with(last_id)))
            {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream} did not reach {last_id} within {timeout:?}: {} messages, last {:?}",
                all.len(),
                all.last().map(|m| m.headers.get("Sluice-Id"))
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn read_all(js: &async_nats::jetstream::Context, stream: &str) -> Vec<Stored> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    let mut s = js.get_stream(stream).await.expect("the stream exists");
    let count = s.info().await.expect("stream info").state.messages as usize;
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return out;
    }
    let consumer = s
        .create_consumer(OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    while out.len() < count {
        let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("a message within 30 s")
            .expect("the stream goes on")
            .expect("a message");
        let headers = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.first().map(|v| v.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        out.push(Stored {
            subject: m.subject.to_string(),
            headers,
            payload: m.payload.to_vec(),
        });
    }
    out
}

/// A package's event as the JSON record the file sink holds (types as the JSON rules
/// have them; timestamps back to text only for comparison through [`same_record`]).
pub fn event_json(p: &Package, e: &Event) -> Value {
    let image = |cols: &[Column], present: bool| -> Value {
        if !present {
            return Value::Null;
        }
        let mut m = serde_json::Map::new();
        for c in cols {
            m.insert(
                c.name.clone(),
                value_json(c.value.as_ref().and_then(|v| v.kind.as_ref())),
            );
        }
        Value::Object(m)
    };
    let op = match PackageOp::try_from(e.op).expect("a known op") {
        PackageOp::Insert => "insert",
        PackageOp::Update => "update",
        PackageOp::Delete => "delete",
        PackageOp::Truncate => "truncate",
        PackageOp::Read => "read",
        PackageOp::Message => "message",
        PackageOp::Unspecified => panic!("op unspecified in {e:?}"),
    };
    json!({
        "id": e.id,
        "op": op,
        "schema": p.schema,
        "table": p.table,
        "key": image(&e.key, !e.key.is_empty()),
        "before": image(&e.before, !e.before.is_empty()),
        "after": image(&e.after, !e.after.is_empty()),
        "unchanged_toast": e.unchanged_toast,
        "lsn": e.lsn,
        "commit_lsn": e.commit_lsn,
        "xid": e.xid,
    })
}

fn value_json(k: Option<&Kind>) -> Value {
    match k {
        None | Some(Kind::Null(_)) => Value::Null,
        Some(Kind::Int(i)) => json!(i),
        // JSON has no number for these: the record spells them as PostgreSQL does.
        Some(Kind::Float(f)) if f.is_nan() => json!("NaN"),
        Some(Kind::Float(f)) if f.is_infinite() => {
            json!(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Some(Kind::Float(f)) => json!(f),
        Some(Kind::Decimal(s) | Kind::Text(s)) => json!(s),
        Some(Kind::Bool(b)) => json!(b),
        Some(Kind::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Some(Kind::TimestampMicros(us)) => json!({ "timestamp_micros": us }),
        Some(Kind::Json(s)) => serde_json::from_str(s).expect("json text"),
    }
}

/// Whether `decoded` (from [`event_json`]) is the file sink's `record`: every field the
/// package carries equal, a timestamp equal as an instant.
pub fn same_record(decoded: &Value, record: &Value) -> Result<(), String> {
    for field in [
        "id",
        "op",
        "schema",
        "table",
        "lsn",
        "commit_lsn",
        "xid",
        "unchanged_toast",
    ] {
        if decoded[field] != record[field] {
            return Err(format!("{field}: {} != {}", decoded[field], record[field]));
        }
    }
    for image in ["key", "before", "after"] {
        same_value(&decoded[image], &record[image]).map_err(|e| format!("{image}: {e}"))?;
    }
    Ok(())
}

fn same_value(d: &Value, r: &Value) -> Result<(), String> {
    match (d, r) {
        (Value::Object(dm), Value::String(s)) if dm.contains_key("timestamp_micros") => {
            let want = sluice_core::time::parse_rfc3339_micros(s);
            (dm["timestamp_micros"].as_i64() == want)
                .then_some(())
                .ok_or_else(|| format!("timestamp {dm:?} != {s}"))
        }
        (Value::Object(dm), Value::Object(rm)) => {
            if dm.len() != rm.len() {
                return Err(format!("columns {:?} != {:?}", dm.keys(), rm.keys()));
            }
            for (k, v) in rm {
                same_value(dm.get(k).unwrap_or(&Value::Null), v)
                    .map_err(|e| format!("{k}: {e}"))?;
            }
            Ok(())
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        _ if d == r => Ok(()),
        _ => Err(format!("{d} != {r}")),
    }
}
