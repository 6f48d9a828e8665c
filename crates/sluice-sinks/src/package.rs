//! Packages: the records of one table in one protobuf message, for the broker sinks'
//! `encoding = "package"`. The message layout is `proto/sluice/v1/package.proto`, which
//! ships with the project for consumers. The prost structs here carry the same field
//! numbers and types, for Rust consumers and the tests; Sluice itself writes packages
//! with [`EventWriter`], straight from each record's JSON envelope into protobuf's wire
//! format, with no message built in between (the tests decode what it writes with these
//! structs, and the README's Python decoder with code generated from the `.proto`).
//!
//! Invariants:
//! - A package holds records of one table only, in log order.
//! - Each event's columns are the record's JSON image, typed: by the column's kind in the
//!   source's catalog where it is known and the value has that form, else by the JSON
//!   value itself. Nothing is dropped: a value that fits no typed field is text or JSON.
//! - Encoding never fails on a record the log holds; a record whose envelope is not the
//!   documented JSON (which the log never holds) is an [`EncodeError`], not a panic.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_core::time::parse_rfc3339_micros;
use sluice_core::{ColumnInfo, Op, ValueKind};
use sluice_log::Record;

/// One broker message: the records of one table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Package {
    #[prost(string, tag = "1")]
    pub pipeline: String,
    #[prost(string, tag = "2")]
    pub schema: String,
    #[prost(string, tag = "3")]
    pub table: String,
    #[prost(message, repeated, tag = "4")]
    pub events: Vec<Event>,
}

/// `sluice.v1.Op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PackageOp {
    Unspecified = 0,
    Insert = 1,
    Update = 2,
    Delete = 3,
    Truncate = 4,
    Read = 5,
    Message = 6,
}

impl From<Op> for PackageOp {
    fn from(op: Op) -> PackageOp {
        match op {
            Op::Insert => PackageOp::Insert,
            Op::Update => PackageOp::Update,
            Op::Delete => PackageOp::Delete,
            Op::Truncate => PackageOp::Truncate,
            Op::Read => PackageOp::Read,
            Op::Message => PackageOp::Message,
        }
    }
}

/// One change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(enumeration = "PackageOp", tag = "2")]
    pub op: i32,
    #[prost(string, tag = "3")]
    pub lsn: String,
    #[prost(string, tag = "4")]
    pub commit_lsn: String,
    #[prost(int64, tag = "5")]
    pub commit_ts_micros: i64,
    #[prost(uint32, tag = "6")]
    pub xid: u32,
    #[prost(message, repeated, tag = "7")]
    pub key: Vec<Column>,
    #[prost(message, repeated, tag = "8")]
    pub before: Vec<Column>,
    #[prost(message, repeated, tag = "9")]
    pub after: Vec<Column>,
    #[prost(string, repeated, tag = "10")]
    pub unchanged_toast: Vec<String>,
    #[prost(string, tag = "11")]
    pub message_json: String,
}

/// A column's name and value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Column {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Value>,
}

/// A typed value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub kind: Option<Kind>,
}

/// `sluice.v1.Value.kind`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(int64, tag = "1")]
    Int(i64),
    #[prost(double, tag = "2")]
    Float(f64),
    #[prost(string, tag = "3")]
    Decimal(String),
    #[prost(string, tag = "4")]
    Text(String),
    #[prost(bool, tag = "5")]
    Bool(bool),
    #[prost(bytes = "vec", tag = "6")]
    Bytes(Vec<u8>),
    #[prost(int64, tag = "7")]
    TimestampMicros(i64),
    #[prost(string, tag = "8")]
    Json(String),
    #[prost(bool, tag = "9")]
    Null(bool),
}

/// A record whose envelope is not the documented JSON.
#[derive(Debug, thiserror::Error)]
#[error("record {id}: its JSON envelope cannot be read ({source})")]
pub struct EncodeError {
    pub id: String,
    #[source]
    pub source: serde_json::Error,
}

/// A text from the envelope: borrowed unless it had escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The parts of an envelope an event is made of (the rest is in the record's head). The
/// images are split into columns in the same pass that reads the envelope.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<Text<'a>>,
    #[serde(borrow)]
    key: Option<Row<'a>>,
    #[serde(borrow)]
    before: Option<Row<'a>>,
    #[serde(borrow)]
    after: Option<Row<'a>>,
    #[serde(borrow, default)]
    unchanged_toast: Vec<Text<'a>>,
    #[serde(borrow)]
    lsn: Option<Text<'a>>,
    #[serde(borrow)]
    commit_lsn: Option<Text<'a>>,
    #[serde(default)]
    xid: u32,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

/// A row image: its columns in order, each value still JSON text; names are borrowed
/// from the record unless they had escapes. Shared with the ClickHouse sink.
pub(crate) struct Row<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl Row<'_> {
    /// The value of column `name`.
    #[cfg_attr(not(feature = "clickhouse"), allow(dead_code))]
    pub(crate) fn get(&self, name: &str) -> Option<&RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Row<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Columns<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Columns<'a> {
            type Value = Row<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a row as a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Row<'a>, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some((Text(name), value)) = m.next_entry::<Text<'a>, &'a RawValue>()? {
                    out.push((name, value));
                }
                Ok(Row(out))
            }
        }
        d.deserialize_map(Columns(std::marker::PhantomData))
    }
}

/// The kinds of one table's columns: in column order (a record's columns usually come in
/// that order, so most look-ups are one comparison) and by name.
#[derive(Debug, Clone, Default)]
pub struct Kinds {
    order: Vec<(String, ValueKind)>,
    by_name: HashMap<String, ValueKind>,
}

impl Kinds {
    fn get(&self, at: usize, name: &str) -> Option<ValueKind> {
        match self.order.get(at) {
            Some((n, k)) if n == name => Some(*k),
            _ => self.by_name.get(name).copied(),
        }
    }
}

/// The kinds of a table's columns, from the catalog's list.
pub fn kinds_of(columns: &[ColumnInfo]) -> Kinds {
    Kinds {
        order: columns.iter().map(|c| (c.name.clone(), c.kind)).collect(),
        by_name: columns.iter().map(|c| (c.name.clone(), c.kind)).collect(),
    }
}

/// A value ready to be written, borrowed from the envelope where it can be.
#[derive(Debug, PartialEq)]
enum Typed<'a> {
    Int(i64),
    Float(f64),
    Decimal(Cow<'a, str>),
    Text(Cow<'a, str>),
    Bool(bool),
    Bytes(Vec<u8>),
    Timestamp(i64),
    Json(&'a str),
    Null,
}

/// A JSON value (its text) as the typed value its column's kind says, where it has that
/// form; else typed by its JSON form. Nothing is dropped: what fits no typed field is
/// text or JSON.
fn typed(raw: &str, kind: Option<ValueKind>) -> Typed<'_> {
    use ValueKind as K;
    match raw.as_bytes().first() {
        None | Some(b'n') => Typed::Null,
        Some(b't') => Typed::Bool(true),
        Some(b'f') => Typed::Bool(false),
        Some(b'{' | b'[') => Typed::Json(raw),
        Some(b'"') => {
            let s = unquote(raw);
            match kind {
                // NaN and the infinities, which JSON has no number for.
                Some(K::Float) => s.parse::<f64>().map(Typed::Float).unwrap_or(Typed::Text(s)),
                Some(K::Decimal) => Typed::Decimal(s),
                Some(K::Bytes) => {
                    match base64::engine::general_purpose::STANDARD.decode(s.as_bytes()) {
                        Ok(b) => Typed::Bytes(b),
                        Err(_) => Typed::Text(s),
                    }
                }
                Some(K::Timestamp) => parse_rfc3339_micros(&s)
                    .map(Typed::Timestamp)
                    .unwrap_or(Typed::Text(s)),
                Some(K::Json) => Typed::Json(raw),
                _ => Typed::Text(s),
            }
        }
        Some(_) => match kind {
            Some(K::Float) => raw
                .parse()
                .map(Typed::Float)
                .unwrap_or(Typed::Decimal(raw.into())),
            Some(K::Decimal) => Typed::Decimal(raw.into()),
            Some(K::Json) => Typed::Json(raw),
            _ => match raw.parse::<i64>() {
                Ok(i) => Typed::Int(i),
                Err(_) if raw.contains(['.', 'e', 'E']) => raw
                    .parse()
                    .map(Typed::Float)
                    .unwrap_or(Typed::Decimal(raw.into())),
                // An integer beyond i64 (a u64): exact as decimal text.
                Err(_) => Typed::Decimal(raw.into()),
            },
        },
    }
}

/// The text of a JSON string, unescaped only when it has escapes.
fn unquote(raw: &str) -> Cow<'_, str> {
    let inner = &raw[1..raw.len().saturating_sub(1).max(1)];
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    serde_json::from_str::<String>(raw)
        .map(Cow::Owned)
        .unwrap_or(Cow::Borrowed(inner))
}

/// Protobuf's wire format, as prost's derives read it.
mod wire {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    pub fn key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
        varint(out, u64::from(field << 3 | wire_type));
    }
    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(out, field, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    /// A proto3 string: not written when empty (the default).
    pub fn text(out: &mut Vec<u8>, field: u32, s: &str) {
        if !s.is_empty() {
            bytes(out, field, s.as_bytes());
        }
    }
    /// A proto3 integer: not written when 0 (the default).
    pub fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
        if v != 0 {
            key(out, field, 0);
            varint(out, v);
        }
    }
}

/// The fields of a package before its events: pipeline, schema and table.
pub fn write_head(out: &mut Vec<u8>, pipeline: &str, schema: &str, table: &str) {
    wire::text(out, 1, pipeline);
    wire::text(out, 2, schema);
    wire::text(out, 3, table);
}

/// Writes events (`Package.events` entries) straight from records' envelopes, with no
/// intermediate message: the scratch buffers are reused from record to record.
#[derive(Default)]
pub struct EventWriter {
    event: Vec<u8>,
    column: Vec<u8>,
    value: Vec<u8>,
    id: String,
}

impl EventWriter {
    /// Appends `record` as one `Package.events` entry (field 4) to `out`.
    pub fn write(
        &mut self,
        record: &Record<'_>,
        kinds: Option<&Kinds>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        use std::fmt::Write as _;
        let error = |source| EncodeError {
            id: record.id.to_string(),
            source,
        };
        // One check of the whole text, so the parser does not check each string again.
        let text =
            std::str::from_utf8(record.json).map_err(|e| error(serde::de::Error::custom(e)))?;
        let env: Envelope<'_> = serde_json::from_str(text).map_err(error)?;
        self.event.clear();
        let id = match &env.id {
            Some(id) => &id.0,
            None => {
                self.id.clear();
                let _ = write!(self.id, "{}", record.id);
                self.id.as_str()
            }
        };
        wire::text(&mut self.event, 1, id);
        wire::uint(&mut self.event, 2, PackageOp::from(record.op) as u64);
        wire::text(&mut self.event, 3, env.lsn.as_ref().map_or("", |t| &t.0));
        wire::text(
            &mut self.event,
            4,
            env.commit_lsn.as_ref().map_or("", |t| &t.0),
        );
        wire::uint(&mut self.event, 5, record.commit_ts_micros as u64);
        wire::uint(&mut self.event, 6, u64::from(env.xid));
        for (field, image) in [(7, env.key), (8, env.before), (9, env.after)] {
            let Some(row) = image else {
                continue;
            };
            for (at, (name, value)) in row.0.iter().enumerate() {
                let kind = kinds.and_then(|k| k.get(at, name));
                self.column(field, name, typed(value.get(), kind));
            }
        }
        for t in &env.unchanged_toast {
            wire::bytes(&mut self.event, 10, t.0.as_bytes());
        }
        if let Some(m) = env.message {
            wire::text(&mut self.event, 11, m.get());
        }
        wire::bytes(out, 4, &self.event);
        Ok(())
    }

    /// Appends one `Column` (name and `Value`) to the event as field `field`.
    fn column(&mut self, field: u32, name: &str, v: Typed<'_>) {
        let val = &mut self.value;
        val.clear();
        // A oneof member is written even when it holds its type's default.
        match v {
            Typed::Int(i) => {
                wire::key(val, 1, 0);
                wire::varint(val, i as u64);
            }
            Typed::Float(f) => {
                wire::key(val, 2, 1);
                val.extend_from_slice(&f.to_le_bytes());
            }
            Typed::Decimal(s) => wire::bytes(val, 3, s.as_bytes()),
            Typed::Text(s) => wire::bytes(val, 4, s.as_bytes()),
            Typed::Bool(b) => {
                wire::key(val, 5, 0);
                wire::varint(val, u64::from(b));
            }
            Typed::Bytes(b) => wire::bytes(val, 6, &b),
            Typed::Timestamp(us) => {
                wire::key(val, 7, 0);
                wire::varint(val, us as u64);
            }
            Typed::Json(s) => wire::bytes(val, 8, s.as_bytes()),
            Typed::Null => {
                wire::key(val, 9, 0);
                wire::varint(val, 1);
            }
        }
        self.column.clear();
        wire::bytes(&mut self.column, 1, name.as_bytes());
        wire::bytes(&mut self.column, 2, &self.value);
        wire::bytes(&mut self.event, field, &self.column);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_typed_by_kind_or_by_form() {
        use ValueKind as K;
        assert_eq!(typed("5", Some(K::Int)), Typed::Int(5));
        assert_eq!(
            typed("\"19.90\"", Some(K::Decimal)),
            Typed::Decimal("19.90".into())
        );
        assert!(matches!(typed("\"NaN\"", Some(K::Float)), Typed::Float(f) if f.is_nan()));
        assert_eq!(
            typed("\"aGk=\"", Some(K::Bytes)),
            Typed::Bytes(b"hi".to_vec())
        );
        assert_eq!(
            typed("\"infinity\"", Some(K::Timestamp)),
            Typed::Text("infinity".into())
        );
        assert_eq!(typed("[1,2]", Some(K::Json)), Typed::Json("[1,2]"));
        assert_eq!(
            typed("\"a\\\"b\"", Some(K::Json)),
            Typed::Json("\"a\\\"b\"")
        );
        assert_eq!(typed("null", Some(K::Int)), Typed::Null);
        // A column the catalog did not list: typed by its JSON form.
        assert_eq!(typed("1.5", None), Typed::Float(1.5));
        assert_eq!(
            typed("18446744073709551615", None),
            Typed::Decimal("18446744073709551615".into())
        );
        assert_eq!(typed("{\"a\":1}", None), Typed::Json("{\"a\":1}"));
        assert_eq!(
            typed("\"tab\\there\"", None),
            Typed::Text("tab\there".into())
        );
        // A value whose form is not its kind's (a domain, a changed type): not lost.
        assert_eq!(typed("\"abc\"", Some(K::Int)), Typed::Text("abc".into()));
    }

    #[test]
    fn written_events_decode_with_the_messages_of_the_proto() {
        use prost::Message as _;
        let json = br#"{"id":"0000000000000020-000001","op":"update","schema":"public","table":"t","key":{"id":0},"before":null,"after":{"id":0,"n":"1.5","at":"1970-01-01T00:00:01Z","b":"aGk=","f":2.5,"z":null,"ok":false,"j":{"a":[1]},"esc\"name":"x"},"unchanged_toast":["big"],"lsn":"0/10","commit_lsn":"0/20","commit_ts":"x","xid":7}"#;
        let record = Record {
            offset: 0,
            id: sluice_core::ChangeId {
                commit_lsn: sluice_core::Lsn(32),
                ordinal: 1,
            },
            commit_ts_micros: 5,
            op: Op::Update,
            schema: "public",
            table: "t",
            json,
        };
        let kinds = kinds_of(&[
            ColumnInfo {
                name: "id".into(),
                kind: ValueKind::Int,
                ..Default::default()
            },
            ColumnInfo {
                name: "n".into(),
                kind: ValueKind::Decimal,
                ..Default::default()
            },
            ColumnInfo {
                name: "at".into(),
                kind: ValueKind::Timestamp,
                ..Default::default()
            },
            ColumnInfo {
                name: "b".into(),
                kind: ValueKind::Bytes,
                ..Default::default()
            },
        ]);
        let mut out = Vec::new();
        write_head(&mut out, "p", "public", "t");
        EventWriter::default()
            .write(&record, Some(&kinds), &mut out)
            .unwrap();
        let p = Package::decode(out.as_slice()).unwrap();
        assert_eq!(
            (p.pipeline.as_str(), p.schema.as_str(), p.table.as_str()),
            ("p", "public", "t")
        );
        let e = &p.events[0];
        assert_eq!(e.id, record.id.to_string());
        assert_eq!(e.op, PackageOp::Update as i32);
        assert_eq!(
            (
                e.lsn.as_str(),
                e.commit_lsn.as_str(),
                e.commit_ts_micros,
                e.xid
            ),
            ("0/10", "0/20", 5, 7)
        );
        assert!(e.before.is_empty());
        assert_eq!(e.unchanged_toast, ["big"]);
        let kinds: Vec<(&str, Option<Kind>)> = e
            .after
            .iter()
            .map(|c| (c.name.as_str(), c.value.clone().and_then(|v| v.kind)))
            .collect();
        assert_eq!(
            kinds,
            [
                ("id", Some(Kind::Int(0))),
                ("n", Some(Kind::Decimal("1.5".into()))),
                ("at", Some(Kind::TimestampMicros(1_000_000))),
                ("b", Some(Kind::Bytes(b"hi".to_vec()))),
                ("f", Some(Kind::Float(2.5))),
                ("z", Some(Kind::Null(true))),
                ("ok", Some(Kind::Bool(false))),
                ("j", Some(Kind::Json("{\"a\":[1]}".into()))),
                ("esc\"name", Some(Kind::Text("x".into()))),
            ]
        );
        assert_eq!(e.key[0].value.clone().unwrap().kind, Some(Kind::Int(0)));
        // Not an envelope: an error, not a panic.
        let bad = Record {
            json: b"{\"after\":[",
            ..record
        };
        assert!(EventWriter::default().write(&bad, None, &mut out).is_err());
    }
}
