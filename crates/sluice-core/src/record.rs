//! The change record and its JSON envelope (docs/GUARANTEES.md, "The change record").
//!
//! Row images (`key`, `before`, `after`) are held as the text of a JSON object, produced
//! once by the decoder; encoding a record splices them in. Every field of the envelope is
//! always present, with `null` where it does not apply, so consumers need no guessing.

use std::sync::Arc;

use crate::{format_rfc3339_micros, ChangeId, Lsn};

/// The kind of change. The discriminants are the codes stored on disk (log frames,
/// spill files): never renumber them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert = 0,
    Update = 1,
    Delete = 2,
    Truncate = 3,
    /// A row copied by a snapshot.
    Read = 4,
    /// A logical decoding message (`pg_logical_emit_message`).
    Message = 5,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
            Op::Message => "message",
        }
    }

    /// The op named as in the envelope's `op`.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// A compact code (0-5) for binary forms: the log's frames, the spill files.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.get(code as usize).copied()
    }

    /// Every op, in code order.
    pub const ALL: [Op; 6] = [
        Op::Insert,
        Op::Update,
        Op::Delete,
        Op::Truncate,
        Op::Read,
        Op::Message,
    ];
}

/// The prefix `sluice.publish` (the outbox function) writes its logical messages with.
pub const OUTBOX_PREFIX: &str = "sluice.outbox";

/// A logical decoding message carried by an `op = "message"` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub prefix: String,
    pub content: Vec<u8>,
    pub transactional: bool,
}

/// One committed change, ready for any sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub id: ChangeId,
    pub op: Op,
    /// Empty for messages.
    pub schema: Arc<str>,
    /// Empty for messages.
    pub table: Arc<str>,
    /// Replica identity columns as a JSON object.
    pub key: Option<String>,
    /// The old row (REPLICA IDENTITY FULL) or old key, as a JSON object.
    pub before: Option<String>,
    /// The new row as a JSON object, without the columns listed in `unchanged_toast`.
    pub after: Option<String>,
    /// Columns whose TOASTed value did not change and was not sent by PostgreSQL.
    pub unchanged_toast: Vec<Arc<str>>,
    pub lsn: Lsn,
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_ts_micros: i64,
    pub xid: u32,
    pub message: Option<LogicalMessage>,
    /// Not part of the envelope: the key before an update that changed it (or any update
    /// that carried the old row), in the same form as `key`. Backfills use it to tell
    /// which rows the stream changed while a chunk was read.
    pub old_key: Option<String>,
}

impl ChangeRecord {
    /// Appends the record's JSON envelope (one object, no trailing newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Hand-rolled rather than write!(): this runs once per change on the hot path,
        // and core::fmt showed up as a fifth of the CPU time per record.
        out.extend_from_slice(b"{\"id\":\"");
        push_hex_fixed(out, self.id.commit_lsn.0, 16);
        out.push(b'-');
        push_decimal_min(out, self.id.ordinal, 6);
        out.extend_from_slice(b"\",\"op\":\"");
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.push(b'"');
        if self.op == Op::Message {
            out.extend_from_slice(b",\"schema\":null,\"table\":null");
        } else {
            out.extend_from_slice(b",\"schema\":");
            write_json_str(&self.schema, out);
            out.extend_from_slice(b",\"table\":");
            write_json_str(&self.table, out);
        }
        for (name, image) in [
            (&b",\"key\":"[..], &self.key),
            (b",\"before\":", &self.before),
            (b",\"after\":", &self.after),
        ] {
            out.extend_from_slice(name);
            match image {
                Some(json) => out.extend_from_slice(json.as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b",\"unchanged_toast\":[");
        for (i, col) in self.unchanged_toast.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(col, out);
        }
        out.extend_from_slice(b"],\"lsn\":\"");
        push_lsn(out, self.lsn);
        out.extend_from_slice(b"\",\"commit_lsn\":\"");
        push_lsn(out, self.commit_lsn);
        out.extend_from_slice(b"\",\"commit_ts\":\"");
        format_rfc3339_micros(self.commit_ts_micros, out);
        out.extend_from_slice(b"\",\"xid\":");
        push_decimal_min(out, self.xid as u64, 1);
        if let Some(m) = &self.message {
            out.extend_from_slice(b",\"message\":{\"prefix\":");
            write_json_str(&m.prefix, out);
            out.extend_from_slice(if m.transactional {
                b",\"transactional\":true"
            } else {
                b",\"transactional\":false"
            });
            // Message content is opaque bytes: embedded as JSON when it is JSON (the outbox
            // case), otherwise as a UTF-8 string when it is text, else as base64.
            match std::str::from_utf8(&m.content) {
                Ok(text) if is_json(text) => {
                    out.extend_from_slice(b",\"content\":");
                    out.extend_from_slice(text.trim().as_bytes());
                }
                Ok(text) => {
                    out.extend_from_slice(b",\"content_text\":");
                    write_json_str(text, out);
                }
                Err(_) => {
                    out.extend_from_slice(b",\"content_base64\":\"");
                    base64_encode(&m.content, out);
                    out.push(b'"');
                }
            }
            out.push(b'}');
        }
        out.push(b'}');
    }

    /// The record's JSON envelope as a string.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        // write_json only ever writes UTF-8: ASCII framing plus UTF-8 strings.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The envelope of records that differ only in their ordinal, key and row image (the rows
/// of one snapshot table): encoded once around those three, byte for byte what
/// [`ChangeRecord::write_json`] writes, so snapshot workers can encode without building a
/// record per row.
#[derive(Debug, Clone)]
pub struct EnvelopeTemplate {
    /// Up to and including the `-` of the id.
    head: Vec<u8>,
    /// From after the ordinal up to the key.
    before_key: Vec<u8>,
    /// Between the key and the row image.
    before_after: Vec<u8>,
    /// After the row image.
    tail: Vec<u8>,
}

impl EnvelopeTemplate {
    /// A template from a record whose `key` and `after` are present; the ordinal, key and
    /// row image are replaced per row.
    pub fn new(proto: &ChangeRecord) -> EnvelopeTemplate {
        const KEY: &str = "\u{1}SLUICE-KEY\u{1}";
        const AFTER: &str = "\u{1}SLUICE-AFTER\u{1}";
        let mut r = proto.clone();
        r.id.ordinal = 0;
        r.key = Some(KEY.into());
        r.after = Some(AFTER.into());
        let mut out = Vec::new();
        r.write_json(&mut out);
        let find = |needle: &[u8]| {
            out.windows(needle.len())
                .position(|w| w == needle)
                .expect("marker is written verbatim")
        };
        let dash = b"{\"id\":\"".len() + 16;
        let k = find(KEY.as_bytes());
        let a = find(AFTER.as_bytes());
        EnvelopeTemplate {
            head: out[..=dash].to_vec(),
            before_key: out[dash + 1 + 6..k].to_vec(),
            before_after: out[k + KEY.len()..a].to_vec(),
            tail: out[a + AFTER.len()..].to_vec(),
        }
    }

    /// Appends one record's envelope; `key` and `after` are JSON objects.
    pub fn write(&self, ordinal: u64, key: &[u8], after: &[u8], out: &mut Vec<u8>) {
        self.write_head(ordinal, out);
        out.extend_from_slice(key);
        self.write_mid(out);
        out.extend_from_slice(after);
        self.write_tail(out);
    }

    /// The envelope up to the key: then the key object, [`Self::write_mid`], the row
    /// object and [`Self::write_tail`], for callers that encode the objects in place.
    pub fn write_head(&self, ordinal: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        push_decimal_min(out, ordinal, 6);
        out.extend_from_slice(&self.before_key);
    }

    /// Between the key and the row object.
    pub fn write_mid(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.before_after);
    }

    /// After the row object.
    pub fn write_tail(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tail);
    }
}

/// Appends `v` as exactly `width` upper-case hex digits.
fn push_hex_fixed(out: &mut Vec<u8>, v: u64, width: u32) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for i in (0..width).rev() {
        out.push(HEX[((v >> (i * 4)) & 15) as usize]);
    }
}

/// Appends `v` in upper-case hex without leading zeros ("0" for zero).
fn push_hex(out: &mut Vec<u8>, v: u32) {
    let digits = if v == 0 {
        1
    } else {
        (32 - v.leading_zeros()).div_ceil(4)
    };
    push_hex_fixed(out, v as u64, digits);
}

/// Appends an LSN as PostgreSQL prints it.
fn push_lsn(out: &mut Vec<u8>, lsn: Lsn) {
    push_hex(out, (lsn.0 >> 32) as u32);
    out.push(b'/');
    push_hex(out, lsn.0 as u32);
}

/// Appends `v` in decimal, zero-padded to at least `width` digits (at most 20).
pub fn push_decimal_min(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(buf.len() - width.min(20));
    out.extend_from_slice(&buf[start..]);
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Appends `s` as a JSON string literal.
pub(crate) fn write_json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                let hex = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(hex[(b >> 4) as usize]);
                out.push(hex[(b & 15) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn base64_encode(data: &[u8], out: &mut Vec<u8>) {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in data.chunks(3) {
        let n = match chunk.len() {
            3 => (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8 | chunk[2] as u32,
            2 => (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8,
            _ => (chunk[0] as u32) << 16,
        };
        out.push(A[(n >> 18) as usize & 63]);
        out.push(A[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            A[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            A[n as usize & 63]
        } else {
            b'='
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChangeRecord {
        ChangeRecord {
            id: ChangeId {
                commit_lsn: Lsn(0x16B37A0),
                ordinal: 3,
            },
            op: Op::Insert,
            schema: "public".into(),
            table: "orders".into(),
            key: Some(r#"{"id":42}"#.into()),
            before: None,
            after: Some(r#"{"id":42,"status":"paid","total":"19.90"}"#.into()),
            unchanged_toast: vec![],
            lsn: Lsn(0x16B3748),
            commit_lsn: Lsn(0x16B37A0),
            commit_ts_micros: 1_795_309_323_456_789,
            xid: 744,
            message: None,
            old_key: None,
        }
    }

    #[test]
    fn the_template_writes_what_write_json_writes() {
        let mut r = sample();
        r.op = Op::Read;
        r.table = "we\"ird".into();
        let t = EnvelopeTemplate::new(&r);
        for (ordinal, key, after) in [
            (1u64, r#"{"id":1}"#, r#"{"id":1,"s":"x"}"#),
            (999_999, r#"{"a":"b","c":2}"#, r#"{}"#),
            (12_345_678, r#"{}"#, r#"{"x":null}"#),
        ] {
            r.id.ordinal = ordinal;
            r.key = Some(key.into());
            r.after = Some(after.into());
            let mut out = Vec::new();
            t.write(ordinal, key.as_bytes(), after.as_bytes(), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), r.to_json());
        }
    }

    #[test]
    fn op_codes_and_names_round_trip() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.code() as usize, i);
            assert_eq!(Op::from_code(op.code()), Some(op));
            assert_eq!(Op::from_name(op.as_str()), Some(op));
        }
        assert_eq!(Op::from_code(6), None);
        assert_eq!(Op::from_name("upsert"), None);
    }

    #[test]
    fn envelope_matches_the_design_example() {
        let got: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        let want: serde_json::Value = serde_json::json!({
          "id": "00000000016B37A0-000003",
          "op": "insert",
          "schema": "public", "table": "orders",
          "key": {"id": 42},
          "before": null,
          "after": {"id": 42, "status": "paid", "total": "19.90"},
          "unchanged_toast": [],
          "lsn": "0/16B3748", "commit_lsn": "0/16B37A0",
          "commit_ts": "2026-11-22T01:02:03.456789Z", "xid": 744
        });
        assert_eq!(got, want);
    }

    #[test]
    fn hand_rolled_numbers_match_display() {
        let mut r = sample();
        for (lsn, ordinal, xid) in [
            (0u64, 0u64, 0u32),
            (1, 1, 1),
            (0x1_0000_0000, 999_999, 10),
            (0xFFFF_FFFF_FFFF_FFFF, 1_000_000, u32::MAX),
            (0x16_B374D848, 5_000_000, 744),
        ] {
            r.id = ChangeId {
                commit_lsn: Lsn(lsn),
                ordinal,
            };
            r.lsn = Lsn(lsn);
            r.commit_lsn = Lsn(lsn ^ 0xF0F0);
            r.xid = xid;
            let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            assert_eq!(v["id"], r.id.to_string());
            assert_eq!(v["lsn"], r.lsn.to_string());
            assert_eq!(v["commit_lsn"], r.commit_lsn.to_string());
            assert_eq!(v["xid"], xid);
        }
    }

    #[test]
    fn strings_are_escaped_and_messages_carry_their_content() {
        let mut r = sample();
        r.table = "we\"ird\\\n\u{1}".into();
        r.unchanged_toast = vec!["big".into()];
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["table"], "we\"ird\\\n\u{1}");
        assert_eq!(v["unchanged_toast"][0], "big");

        for (content, field, want) in [
            (&br#"{"a":1}"#[..], "content", serde_json::json!({"a": 1})),
            (
                b"plain text",
                "content_text",
                serde_json::json!("plain text"),
            ),
            (
                &[0xff, 0x00, 0x10][..],
                "content_base64",
                serde_json::json!("/wAQ"),
            ),
        ] {
            let mut m = sample();
            m.op = Op::Message;
            m.key = None;
            m.after = None;
            m.message = Some(LogicalMessage {
                prefix: "p".into(),
                content: content.to_vec(),
                transactional: true,
            });
            let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
            assert_eq!(v["message"][field], want);
            assert_eq!(v["schema"], serde_json::Value::Null);
        }
    }
}
