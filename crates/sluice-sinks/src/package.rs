//! Packages: the records of one table in one protobuf message, for the broker sinks'
//! `encoding = "package"`. The message layout is `proto/sluice/v1/package.proto`, which
//! ships with the project for consumers; the structs here carry the same field numbers
//! and types (the README's Python decoder, run by the tests, reads what these write with
//! code generated from the `.proto`).
//!
//! Invariants:
//! - A package holds records of one table only, in log order.
//! - Each event's columns are the record's JSON image, typed: by the column's kind in the
//!   source's catalog where it is known and the value has that form, else by the JSON
//!   value itself. Nothing is dropped: a value that fits no typed field is text or JSON.
//! - Encoding never fails on a record the log holds; a record whose envelope is not the
//!   documented JSON (which the log never holds) is an [`EncodeError`], not a panic.

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};
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

/// The parts of an envelope an event is made of (the rest is in the record's head).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    key: Option<&'a RawValue>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    #[serde(default)]
    unchanged_toast: Vec<String>,
    #[serde(default)]
    lsn: String,
    #[serde(default)]
    commit_lsn: String,
    #[serde(default)]
    xid: u32,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

/// Column kinds of one table, by column name.
pub type Kinds = HashMap<String, ValueKind>;

/// The kinds of a table's columns, from the catalog's list.
pub fn kinds_of(columns: &[ColumnInfo]) -> Kinds {
    columns.iter().map(|c| (c.name.clone(), c.kind)).collect()
}

/// The event for `record`, its columns typed by `kinds` where known.
pub fn event(record: &Record<'_>, kinds: Option<&Kinds>) -> Result<Event, EncodeError> {
    let error = |source| EncodeError {
        id: record.id.to_string(),
        source,
    };
    let env: Envelope<'_> = serde_json::from_slice(record.json).map_err(error)?;
    let image = |raw: Option<&RawValue>| -> Result<Vec<Column>, EncodeError> {
        match raw {
            None => Ok(Vec::new()),
            Some(raw) if raw.get() == "null" => Ok(Vec::new()),
            Some(raw) => {
                let row: Map<String, Json> = serde_json::from_str(raw.get()).map_err(error)?;
                Ok(columns(row, kinds))
            }
        }
    };
    Ok(Event {
        id: record.id.to_string(),
        op: PackageOp::from(record.op) as i32,
        lsn: env.lsn,
        commit_lsn: env.commit_lsn,
        commit_ts_micros: record.commit_ts_micros,
        xid: env.xid,
        key: image(env.key)?,
        before: image(env.before)?,
        after: image(env.after)?,
        unchanged_toast: env.unchanged_toast,
        message_json: env.message.map(|m| m.get().to_owned()).unwrap_or_default(),
    })
}

fn columns(row: Map<String, Json>, kinds: Option<&Kinds>) -> Vec<Column> {
    row.into_iter()
        .map(|(name, v)| {
            let kind = kinds.and_then(|k| k.get(&name)).copied();
            Column {
                value: Some(Value {
                    kind: Some(typed(v, kind)),
                }),
                name,
            }
        })
        .collect()
}

/// A JSON value as the typed value its column's kind says, where it has that form.
fn typed(v: Json, kind: Option<ValueKind>) -> Kind {
    match (kind, v) {
        (_, Json::Null) => Kind::Null(true),
        (Some(ValueKind::Float), Json::Number(n)) => match n.as_f64() {
            Some(f) => Kind::Float(f),
            None => Kind::Decimal(n.to_string()),
        },
        (Some(ValueKind::Float), Json::String(s)) => match s.parse::<f64>() {
            // NaN and the infinities, which JSON has no number for.
            Ok(f) => Kind::Float(f),
            Err(_) => Kind::Text(s),
        },
        (Some(ValueKind::Decimal), Json::String(s)) => Kind::Decimal(s),
        (Some(ValueKind::Decimal), Json::Number(n)) => Kind::Decimal(n.to_string()),
        (Some(ValueKind::Bytes), Json::String(s)) => {
            match base64::engine::general_purpose::STANDARD.decode(&s) {
                Ok(b) => Kind::Bytes(b),
                Err(_) => Kind::Text(s),
            }
        }
        (Some(ValueKind::Timestamp), Json::String(s)) => match timestamp_micros(&s) {
            Some(us) => Kind::TimestampMicros(us),
            None => Kind::Text(s),
        },
        (Some(ValueKind::Json), v) => Kind::Json(v.to_string()),
        (_, v) => inferred(v),
    }
}

/// A value typed by its JSON form alone.
fn inferred(v: Json) -> Kind {
    match v {
        Json::Null => Kind::Null(true),
        Json::Bool(b) => Kind::Bool(b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Kind::Int(i),
            None => match n.as_f64() {
                Some(f) if n.is_f64() => Kind::Float(f),
                // A u64 above i64's range: exact as decimal text.
                _ => Kind::Decimal(n.to_string()),
            },
        },
        Json::String(s) => Kind::Text(s),
        v @ (Json::Array(_) | Json::Object(_)) => Kind::Json(v.to_string()),
    }
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp as the record's values
/// have them (`2026-11-22T01:02:03.456789`, then `Z`, an offset such as `+05:30`, or
/// nothing for a timestamp without time zone, taken as UTC). `None` for anything else.
pub fn timestamp_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let d = b.get(from..from + len)?;
        d.iter().all(u8::is_ascii_digit).then(|| {
            d.iter()
                .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'))
        })
    };
    let year_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if year_len < 4 {
        return None;
    }
    let year = num(0, year_len)?;
    let t = year_len;
    if b.get(t) != Some(&b'-') || b.get(t + 3) != Some(&b'-') || b.get(t + 6) != Some(&b'T') {
        return None;
    }
    let (month, day) = (num(t + 1, 2)?, num(t + 4, 2)?);
    let h = t + 7;
    if b.get(h + 2) != Some(&b':') || b.get(h + 5) != Some(&b':') {
        return None;
    }
    let (hour, min, sec) = (num(h, 2)?, num(h + 3, 2)?, num(h + 6, 2)?);
    let mut at = h + 8;
    let mut micros = 0i64;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 || digits > 6 {
            return None;
        }
        micros = num(at + 1, digits)? * 10i64.pow(6 - digits as u32);
        at += 1 + digits;
    }
    let offset_secs = match b.get(at) {
        None => 0,
        Some(b'Z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &s[at + 1..];
            let (oh, om, os) = match rest.len() {
                2 => (num(at + 1, 2)?, 0, 0),
                5 => (num(at + 1, 2)?, num(at + 4, 2)?, 0),
                8 => (num(at + 1, 2)?, num(at + 4, 2)?, num(at + 7, 2)?),
                _ => return None,
            };
            let secs = oh * 3600 + om * 60 + os;
            if sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 24 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_as_the_values_have_them() {
        assert_eq!(timestamp_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(timestamp_micros("1970-01-01T00:00:01.5"), Some(1_500_000));
        assert_eq!(
            timestamp_micros("2026-11-22T01:02:03.456789Z"),
            Some(1_795_309_323_456_789)
        );
        assert_eq!(
            timestamp_micros("2026-11-22T06:32:03.456789+05:30"),
            timestamp_micros("2026-11-22T01:02:03.456789Z")
        );
        assert_eq!(timestamp_micros("1969-12-31T23:59:59Z"), Some(-1_000_000));
        for bad in [
            "infinity",
            "2026-11-22",
            "2026-13-01T00:00:00",
            "x",
            "",
            "2026-11-22T01:02:03.1234567",
        ] {
            assert_eq!(timestamp_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_typed_by_kind_or_by_form() {
        use serde_json::json;
        assert_eq!(typed(json!(5), Some(ValueKind::Int)), Kind::Int(5));
        assert_eq!(
            typed(json!("19.90"), Some(ValueKind::Decimal)),
            Kind::Decimal("19.90".into())
        );
        assert!(
            matches!(typed(json!("NaN"), Some(ValueKind::Float)), Kind::Float(f) if f.is_nan())
        );
        assert_eq!(
            typed(json!("aGk="), Some(ValueKind::Bytes)),
            Kind::Bytes(b"hi".to_vec())
        );
        assert_eq!(
            typed(json!("infinity"), Some(ValueKind::Timestamp)),
            Kind::Text("infinity".into())
        );
        assert_eq!(
            typed(json!([1, 2]), Some(ValueKind::Json)),
            Kind::Json("[1,2]".into())
        );
        assert_eq!(typed(json!(null), Some(ValueKind::Int)), Kind::Null(true));
        // A column the catalog did not list: typed by its JSON form.
        assert_eq!(typed(json!(1.5), None), Kind::Float(1.5));
        assert_eq!(
            typed(json!(u64::MAX), None),
            Kind::Decimal(u64::MAX.to_string())
        );
        assert_eq!(typed(json!({"a": 1}), None), Kind::Json("{\"a\":1}".into()));
        // A value whose form is not its kind's (a domain, a changed type): not lost.
        assert_eq!(
            typed(json!("abc"), Some(ValueKind::Int)),
            Kind::Text("abc".into())
        );
    }
}
