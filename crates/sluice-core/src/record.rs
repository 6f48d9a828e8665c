//! The change record and its JSON envelope (DESIGN.md, "The change record").
//!
//! Row images (`key`, `before`, `after`) are held as the text of a JSON object, produced
//! once by the decoder; encoding a record splices them in. Every field of the envelope is
//! always present, with `null` where it does not apply, so consumers need no guessing.

use std::sync::Arc;

use crate::{format_rfc3339_micros, ChangeId, Lsn};

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row copied by a snapshot.
    Read,
    /// A logical decoding message (`pg_logical_emit_message`).
    Message,
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
}

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
}

impl ChangeRecord {
    /// Appends the record's JSON envelope (one object, no trailing newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writes into a Vec cannot fail.
        let _ = write!(
            out,
            "{{\"id\":\"{}\",\"op\":\"{}\"",
            self.id,
            self.op.as_str()
        );
        if self.op == Op::Message {
            out.extend_from_slice(b",\"schema\":null,\"table\":null");
        } else {
            out.extend_from_slice(b",\"schema\":");
            write_json_str(&self.schema, out);
            out.extend_from_slice(b",\"table\":");
            write_json_str(&self.table, out);
        }
        for (name, image) in [
            ("key", &self.key),
            ("before", &self.before),
            ("after", &self.after),
        ] {
            let _ = write!(out, ",\"{name}\":");
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
        let _ = write!(
            out,
            "],\"lsn\":\"{}\",\"commit_lsn\":\"{}\",\"commit_ts\":\"",
            self.lsn, self.commit_lsn
        );
        format_rfc3339_micros(self.commit_ts_micros, out);
        let _ = write!(out, "\",\"xid\":{}", self.xid);
        if let Some(m) = &self.message {
            out.extend_from_slice(b",\"message\":{\"prefix\":");
            write_json_str(&m.prefix, out);
            let _ = write!(out, ",\"transactional\":{}", m.transactional);
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
        }
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
