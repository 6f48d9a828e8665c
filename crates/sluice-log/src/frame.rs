//! One record on disk: a frame.
//!
//! ```text
//! u32 LE  body length n
//! u32 LE  CRC32C of the body
//! body (n bytes):
//!   u64 LE  commit LSN            } the record's id: (commit LSN, ordinal)
//!   u64 LE  ordinal               }
//!   i64 LE  commit time, µs since the Unix epoch (0: not known, e.g. snapshot rows)
//!   u8      op (0 insert, 1 update, 2 delete, 3 truncate, 4 read, 5 message)
//!   u16 LE  schema length, schema bytes (UTF-8)
//!   u16 LE  table length, table bytes (UTF-8)
//!   the JSON envelope (docs/GUARANTEES.md, "The change record"), to the end of the body
//! ```
//!
//! Sinks filter and order by the fixed fields without parsing JSON. Decoding never
//! panics: a short or damaged frame is reported as such.

use sluice_core::{ChangeRecord, Framing, Lsn, Op};

/// Length and CRC.
pub const FRAME_HEADER: usize = 8;
/// A body longer than this is damage, not a record (row images are bounded by
/// PostgreSQL's 1 GB field limit, times a few for JSON escaping).
pub const MAX_BODY: usize = 4 << 30;

/// The fixed fields of a record.
pub use sluice_core::RecordHead as Head;

/// This log's [`Framing`], for producers that encode envelopes themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Frames;

impl Framing for Frames {
    fn begin(&self, out: &mut Vec<u8>, head: &Head<'_>) -> usize {
        begin(out, head)
    }

    fn finish(&self, out: &mut Vec<u8>, start: usize) {
        finish(out, start)
    }
}

fn begin(out: &mut Vec<u8>, head: &Head<'_>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.extend_from_slice(&head.commit_lsn.0.to_le_bytes());
    out.extend_from_slice(&head.ordinal.to_le_bytes());
    out.extend_from_slice(&head.commit_ts_micros.to_le_bytes());
    out.push(head.op.code());
    for s in [head.schema, head.table] {
        // Identifiers are at most 63 bytes in PostgreSQL; clamp rather than fail.
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(b);
    }
    start
}

fn finish(out: &mut [u8], start: usize) {
    let body = &out[start + FRAME_HEADER..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `record` as one frame.
pub fn encode_record(out: &mut Vec<u8>, record: &ChangeRecord) {
    let start = begin(out, &Head::of(record));
    record.write_json(out);
    finish(out, start);
}

/// The result of looking at the bytes where a frame should start.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame with a valid CRC, `len` bytes long in all.
    Frame { len: usize },
    /// Fewer bytes than the frame needs (the torn end of a crashed write).
    Incomplete,
    /// The CRC or the fixed fields do not match: damage.
    Corrupt(FrameError),
}

/// What is wrong with a damaged frame. Local data, so never worth a retry: the reader
/// that meets one reports the log as damaged. The texts name no field's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is implausible")]
    Length(usize),
    #[error("CRC mismatch")]
    Crc,
    #[error("frame body too short")]
    Short,
    #[error("unknown op code")]
    UnknownOp,
    #[error("name is not UTF-8")]
    NameNotUtf8,
}

/// Checks the frame at the start of `buf`.
pub fn check(buf: &[u8]) -> Decoded {
    if buf.len() < FRAME_HEADER {
        return Decoded::Incomplete;
    }
    let n = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if n > MAX_BODY {
        return Decoded::Corrupt(FrameError::Length(n));
    }
    let Some(body) = buf.get(FRAME_HEADER..FRAME_HEADER + n) else {
        return Decoded::Incomplete;
    };
    if crc32c::crc32c(body) != crc {
        return Decoded::Corrupt(FrameError::Crc);
    }
    match parse_body(body) {
        Ok(_) => Decoded::Frame {
            len: FRAME_HEADER + n,
        },
        Err(e) => Decoded::Corrupt(e),
    }
}

/// The fixed fields of a body, and where its JSON starts.
pub fn parse_body(body: &[u8]) -> Result<(Head<'_>, usize), FrameError> {
    let u64_at = |i: usize| -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(
            body.get(i..i + 8)
                .ok_or(FrameError::Short)?
                .try_into()
                .expect("8"),
        ))
    };
    let commit_lsn = Lsn(u64_at(0)?);
    let ordinal = u64_at(8)?;
    let commit_ts_micros = u64_at(16)? as i64;
    let op = Op::from_code(*body.get(24).ok_or(FrameError::Short)?).ok_or(FrameError::UnknownOp)?;
    let mut pos = 25;
    let mut text = || -> Result<&str, FrameError> {
        let len = u16::from_le_bytes(
            body.get(pos..pos + 2)
                .ok_or(FrameError::Short)?
                .try_into()
                .expect("2"),
        ) as usize;
        let s = body.get(pos + 2..pos + 2 + len).ok_or(FrameError::Short)?;
        pos += 2 + len;
        std::str::from_utf8(s).map_err(|_| FrameError::NameNotUtf8)
    };
    let schema = text()?;
    let table = text()?;
    Ok((
        Head {
            commit_lsn,
            ordinal,
            commit_ts_micros,
            op,
            schema,
            table,
        },
        pos,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::ChangeId;
    use std::sync::Arc;

    fn record() -> ChangeRecord {
        ChangeRecord {
            id: ChangeId {
                commit_lsn: Lsn(0x16B37A0),
                ordinal: 3,
            },
            op: Op::Update,
            schema: Arc::from("public"),
            table: Arc::from("or\"ders"),
            key: Some("{\"id\":42}".into()),
            before: None,
            after: Some("{\"id\":42,\"schema\":\"x\"}".into()),
            unchanged_toast: vec![],
            lsn: Lsn(0x16B3748),
            commit_lsn: Lsn(0x16B37A0),
            commit_ts_micros: 1_700_000_000_000_000,
            xid: 744,
            message: None,
            old_key: None,
        }
    }

    #[test]
    fn a_record_framed_by_a_producer_is_the_same_frame_as_the_logs_own() {
        let r = record();
        let mut a = Vec::new();
        encode_record(&mut a, &r);
        // A producer that encodes the envelope itself (as snapshot workers do).
        let mut b = b"earlier frames".to_vec();
        let head = Head {
            commit_lsn: r.id.commit_lsn,
            ordinal: r.id.ordinal,
            commit_ts_micros: r.commit_ts_micros,
            op: r.op,
            schema: &r.schema,
            table: &r.table,
        };
        let start = Frames.begin(&mut b, &head);
        r.write_json(&mut b);
        Frames.finish(&mut b, start);
        assert_eq!(&b[start..], &a[..]);
        assert_eq!(check(&a), Decoded::Frame { len: a.len() });
        let (h, j) = parse_body(&a[FRAME_HEADER..]).unwrap();
        assert_eq!(h, head);
        assert_eq!(h.table, "or\"ders");
        assert_eq!(&a[FRAME_HEADER + j..], r.to_json().as_bytes());
    }

    #[test]
    fn damage_is_reported_not_panicked_on() {
        let mut a = Vec::new();
        encode_record(&mut a, &record());
        for cut in 0..a.len() {
            assert_eq!(check(&a[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
        let mut flipped = a.clone();
        flipped[20] ^= 1;
        assert!(matches!(check(&flipped), Decoded::Corrupt(_)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = check(&bytes);
            let _ = parse_body(&bytes);
        }
    }
}
