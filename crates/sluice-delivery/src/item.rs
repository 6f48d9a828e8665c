//! A record as the engine sees it: its ordering key, its route (table or outbox topic)
//! and its delivery options, read once from the envelope.
//!
//! Keys:
//! - a table row: `schema.table` and its key columns as JSON, e.g. `public.orders:{"id":42}`
//!   (a record without key columns, such as a truncate, orders with its whole table);
//! - an outbox event: `topic:key` (`sluice.publish` or a Debezium-layout outbox table);
//! - `ordered = false`: the record's own id, so it waits behind nothing.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_core::{ChangeId, Op};
use sluice_log::Record;

pub use sluice_core::OUTBOX_PREFIX;

/// One record in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Position in the log (kept when the record moves to the waiting room).
    pub offset: u64,
    pub id: ChangeId,
    pub op: Op,
    /// Records of one key are delivered one at a time, in order.
    pub key: Box<str>,
    /// `schema.table`, or the outbox topic: what per-route settings (URLs) go by.
    pub route: Box<str>,
    /// µs since the Unix epoch (0: not known).
    pub commit_ts_micros: i64,
    /// Not delivered before this time (µs since the epoch).
    pub deliver_at_micros: Option<i64>,
    /// Dead-lettered as `expired` if not delivered by then (µs since the epoch).
    pub expires_at_micros: Option<i64>,
    /// The JSON envelope.
    pub json: Box<[u8]>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<MessageHead<'a>>,
}

#[derive(Deserialize)]
struct MessageHead<'a> {
    #[serde(borrow)]
    prefix: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// What `sluice.publish` writes (the message's content).
#[derive(Deserialize)]
struct OutboxEvent<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(default)]
    deliver_at_ms: Option<i64>,
    #[serde(default)]
    ttl_ms: Option<i64>,
    #[serde(default = "yes")]
    ordered: bool,
}

fn yes() -> bool {
    true
}

/// A Debezium-layout outbox row.
#[derive(Deserialize)]
struct OutboxRow<'a> {
    #[serde(borrow)]
    aggregatetype: Cow<'a, str>,
    #[serde(borrow)]
    aggregateid: &'a RawValue,
}

/// The text of a JSON scalar: a string unquoted, anything else as written.
fn scalar_text(v: &RawValue) -> String {
    serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| v.get().to_owned())
}

/// How a record is read.
#[derive(Debug, Clone, Default)]
pub struct ItemOptions {
    /// Debezium-layout outbox tables (`schema.table`): their inserts become events routed
    /// by `aggregatetype` and keyed by `aggregateid`.
    pub outbox_tables: Vec<String>,
}

/// What reading a record gave.
#[derive(Debug)]
pub enum Parsed {
    Item(Item),
    /// A row of an outbox table that is not an insert (deleting delivered rows, say):
    /// nothing to deliver.
    Ignore,
    /// The record cannot be delivered as configured: it goes to the dead letters with
    /// this reason (never dropped).
    Bad(Item, String),
}

impl Item {
    /// Reads the key, route and delivery options of `r`.
    pub fn parse(r: &Record<'_>, options: &ItemOptions) -> Parsed {
        let mut item = Item {
            offset: r.offset,
            id: r.id,
            op: r.op,
            key: Box::from(""),
            route: Box::from(""),
            commit_ts_micros: r.commit_ts_micros,
            deliver_at_micros: None,
            expires_at_micros: None,
            json: Box::from(r.json),
        };
        let env: Envelope<'_> = match serde_json::from_slice(r.json) {
            Ok(e) => e,
            Err(e) => {
                item.key = item.id.to_string().into();
                return Parsed::Bad(item, format!("the record is not a change envelope: {e}"));
            }
        };
        let table = format!("{}.{}", r.schema, r.table);
        if r.op == Op::Message {
            let outbox = env.message.as_ref().filter(|m| m.prefix == OUTBOX_PREFIX);
            let Some(m) = outbox else {
                // Other logical messages: ordered with each other by prefix.
                let prefix = env
                    .message
                    .map(|m| m.prefix.into_owned())
                    .unwrap_or_default();
                item.key = format!("message:{prefix}").into();
                item.route = prefix.into();
                return Parsed::Item(item);
            };
            let event = m
                .content
                .ok_or_else(|| "an outbox message without JSON content".to_owned())
                .and_then(|c| {
                    serde_json::from_str::<OutboxEvent<'_>>(c.get())
                        .map_err(|e| format!("an outbox message that is not an event: {e}"))
                });
            let event = match event {
                Ok(ev) => ev,
                Err(why) => {
                    item.key = item.id.to_string().into();
                    return Parsed::Bad(item, why);
                }
            };
            item.route = event.topic.as_ref().into();
            item.key = if event.ordered {
                format!("{}:{}", event.topic, event.key.as_deref().unwrap_or("")).into()
            } else {
                item.id.to_string().into()
            };
            item.deliver_at_micros = event.deliver_at_ms.map(|ms| ms.saturating_mul(1000));
            item.expires_at_micros = event
                .ttl_ms
                .map(|ms| r.commit_ts_micros.saturating_add(ms.saturating_mul(1000)));
            return Parsed::Item(item);
        }
        if options.outbox_tables.contains(&table) {
            if !matches!(r.op, Op::Insert | Op::Read) {
                return Parsed::Ignore;
            }
            let row = env
                .after
                .ok_or_else(|| "an outbox row without values".to_owned())
                .and_then(|a| {
                    serde_json::from_str::<OutboxRow<'_>>(a.get()).map_err(|e| {
                        format!("an outbox row without text aggregatetype and aggregateid: {e}")
                    })
                });
            return match row {
                Ok(row) => {
                    item.route = row.aggregatetype.as_ref().into();
                    item.key =
                        format!("{}:{}", row.aggregatetype, scalar_text(row.aggregateid)).into();
                    Parsed::Item(item)
                }
                Err(why) => {
                    item.key = item.id.to_string().into();
                    item.route = table.into();
                    Parsed::Bad(item, why)
                }
            };
        }
        item.key = match env.key {
            Some(k) => format!("{table}:{}", k.get()).into(),
            None => table.as_str().into(),
        };
        item.route = table.into();
        Parsed::Item(item)
    }
}

/// Which outbox topics a sink takes: exact names, or a prefix ending in `*`.
#[derive(Debug, Clone, Default)]
pub struct Topics(Vec<String>);

impl Topics {
    pub fn new(patterns: &[String]) -> Topics {
        Topics(patterns.to_vec())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => p == topic,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Lsn;

    fn record<'a>(op: Op, schema: &'a str, table: &'a str, json: &'a str) -> Record<'a> {
        Record {
            offset: 7,
            id: ChangeId {
                commit_lsn: Lsn(0x10),
                ordinal: 2,
            },
            commit_ts_micros: 1_000_000,
            op,
            schema,
            table,
            json: json.as_bytes(),
        }
    }

    fn item(p: Parsed) -> Item {
        match p {
            Parsed::Item(i) => i,
            other => panic!("not an item: {other:?}"),
        }
    }

    #[test]
    fn table_rows_key_by_table_and_key_columns() {
        let r = record(
            Op::Update,
            "public",
            "orders",
            r#"{"id":"x","op":"update","key":{"id":42},"after":{"id":42}}"#,
        );
        let i = item(Item::parse(&r, &ItemOptions::default()));
        assert_eq!(&*i.key, r#"public.orders:{"id":42}"#);
        assert_eq!(&*i.route, "public.orders");
        assert_eq!(i.deliver_at_micros, None);
        let t = record(Op::Truncate, "public", "orders", r#"{"key":null}"#);
        assert_eq!(
            &*item(Item::parse(&t, &ItemOptions::default())).key,
            "public.orders"
        );
    }

    #[test]
    fn outbox_events_carry_their_options() {
        let json = r#"{"op":"message","key":null,"message":{"prefix":"sluice.outbox","transactional":true,
            "content":{"topic":"billing","key":"c-9","payload":{},"headers":{},"deliver_at_ms":5000,"ttl_ms":2000,"ordered":true}}}"#;
        let i = item(Item::parse(
            &record(Op::Message, OUTBOX_PREFIX, "billing", json),
            &ItemOptions::default(),
        ));
        assert_eq!(&*i.key, "billing:c-9");
        assert_eq!(&*i.route, "billing");
        assert_eq!(i.deliver_at_micros, Some(5_000_000));
        assert_eq!(i.expires_at_micros, Some(3_000_000));
        let unordered = json.replace("\"ordered\":true", "\"ordered\":false");
        let i = item(Item::parse(
            &record(Op::Message, OUTBOX_PREFIX, "billing", &unordered),
            &ItemOptions::default(),
        ));
        assert_eq!(&*i.key, "0000000000000010-000002");
    }

    #[test]
    fn malformed_outbox_events_are_dead_lettered_not_dropped() {
        let json = r#"{"op":"message","message":{"prefix":"sluice.outbox","content":{"key":"k"}}}"#;
        match Item::parse(
            &record(Op::Message, OUTBOX_PREFIX, "", json),
            &ItemOptions::default(),
        ) {
            Parsed::Bad(_, why) => assert!(why.contains("topic"), "{why}"),
            other => panic!("{other:?}"),
        }
        match Item::parse(
            &record(Op::Insert, "public", "t", "not json"),
            &ItemOptions::default(),
        ) {
            Parsed::Bad(_, why) => assert!(why.contains("envelope"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debezium_outbox_rows_route_by_aggregate() {
        let options = ItemOptions {
            outbox_tables: vec!["public.outbox".into()],
        };
        let json = r#"{"op":"insert","key":{"id":1},"after":{"id":1,"aggregatetype":"order","aggregateid":"o-1","type":"created","payload":{}}}"#;
        let i = item(Item::parse(
            &record(Op::Insert, "public", "outbox", json),
            &options,
        ));
        assert_eq!(&*i.key, "order:o-1");
        assert_eq!(&*i.route, "order");
        let del = record(Op::Delete, "public", "outbox", r#"{"key":{"id":1}}"#);
        assert!(matches!(Item::parse(&del, &options), Parsed::Ignore));
    }

    #[test]
    fn topic_patterns() {
        let t = Topics::new(&["billing".into(), "orders.*".into()]);
        assert!(t.matches("billing"));
        assert!(!t.matches("billing2"));
        assert!(t.matches("orders.created"));
        assert!(!t.matches("order"));
    }
}
