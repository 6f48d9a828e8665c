//! A group: what the writer publishes for one hand-off of framed records, and how its
//! messages are laid out.
//!
//! ```text
//! subject:  {prefix}.{partition}        partition = crc32c(schema 0 table 0 key) % partitions
//! header Sluice-Group: "1 {first_seq} {first_offset} {records} {durable_lsn} {last_lsn} {change_lsn} {change_ordinal}"
//! body:     u32 LE n, n × u32 LE the record's index in the group, then the n frames
//!           (sluice-log's frame format: length, CRC32C, fixed fields, JSON envelope)
//!
//! a frame larger than a message may be (the server's max_payload) goes in parts,
//! consecutive messages of its partition:
//! header Sluice-Part: "{index} {part} {parts}"
//! body:     the part's bytes of the frame
//! ```
//!
//! Invariants:
//! - A group's messages are consecutive in the stream (the writer publishes each with the
//!   sequence it expects before it, so nothing else lands between them) and every one of
//!   them carries the same header. A group is whole when its messages hold `records`
//!   records; only the last group of the stream can be short (a crash mid-group), and
//!   readers never return a short group's records.
//! - A record's position is `first_offset + index`: positions are dense across the
//!   groups of the stream, in the order the source handed the records over, whichever
//!   partition a record went to.
//! - One key's records always go to the same partition (the hash of the table and the
//!   key's JSON, which the encoder writes the same way every time); records without a
//!   key (truncates, logical messages) go to the partition of their table's `null` key.
//! - The header's LSNs are the log's state once the group is stored: the durable LSN to
//!   confirm, the commit LSN of the last record and the id of the last change (not a
//!   snapshot read), which a producer that starts over skips up to.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::IgnoredAny;
use sluice_core::{ChangeId, Lsn, Op};
use sluice_log::frame::{self, FRAME_HEADER};

/// The header that describes a message's group.
pub const GROUP_HEADER: &str = "Sluice-Group";
/// The header of a message that holds a part of one frame too large for a message.
pub const PART_HEADER: &str = "Sluice-Part";
/// The format's version, first in the header.
const VERSION: &str = "1";

/// What every message of a group says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHead {
    /// The stream sequence of the group's first message.
    pub first_seq: u64,
    /// The position of the group's first record.
    pub first_offset: u64,
    /// Records in the whole group.
    pub records: u32,
    /// The log's durable LSN once the group is stored.
    pub durable_lsn: Lsn,
    /// Commit LSN of the last record in the log once the group is stored.
    pub last_lsn: Lsn,
    /// The last change (not a read) in the log once the group is stored.
    pub last_change: Option<ChangeId>,
}

impl GroupHead {
    /// The header's value.
    pub fn encode(&self) -> String {
        let (c_lsn, c_ord) = self
            .last_change
            .map_or((0, 0), |c| (c.commit_lsn.0, c.ordinal));
        format!(
            "{VERSION} {} {} {} {} {} {c_lsn} {c_ord}",
            self.first_seq, self.first_offset, self.records, self.durable_lsn.0, self.last_lsn.0
        )
    }

    /// Reads a header's value; `None` if it is not one this version wrote.
    pub fn parse(text: &str) -> Option<GroupHead> {
        let mut it = text.split(' ');
        if it.next()? != VERSION {
            return None;
        }
        let mut n = || it.next()?.parse::<u64>().ok();
        let (first_seq, first_offset, records) = (n()?, n()?, n()?);
        let (durable, last, c_lsn, c_ord) = (n()?, n()?, n()?, n()?);
        // Damage must not overflow a position later.
        first_offset.checked_add(records)?;
        Some(GroupHead {
            first_seq,
            first_offset,
            records: u32::try_from(records).ok()?,
            durable_lsn: Lsn(durable),
            last_lsn: Lsn(last),
            last_change: (c_lsn != 0).then_some(ChangeId {
                commit_lsn: Lsn(c_lsn),
                ordinal: c_ord,
            }),
        })
    }

    /// The position after the group's last record.
    pub fn end_offset(&self) -> u64 {
        self.first_offset + u64::from(self.records)
    }
}

/// Where a part of a large frame belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The record's index in its group.
    pub index: u32,
    /// This part's number, from 0.
    pub part: u32,
    pub parts: u32,
}

impl Part {
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.index, self.part, self.parts)
    }

    pub fn parse(text: &str) -> Option<Part> {
        let mut it = text.split(' ').map(|n| n.parse::<u32>().ok());
        let p = Part {
            index: it.next()??,
            part: it.next()??,
            parts: it.next()??,
        };
        (p.part < p.parts && it.next().is_none()).then_some(p)
    }
}

/// Why a message cannot be read as part of a group. Texts name no value of a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("message {0} has no valid {GROUP_HEADER} header")]
    Header(u64),
    #[error("message {seq} is damaged: {what}")]
    Body { seq: u64, what: &'static str },
    #[error("message {seq}: a frame is damaged ({0})", .cause)]
    Frame { seq: u64, cause: frame::FrameError },
}

/// A message's records as `(index in the group, frame)`, frames whole (header included).
pub fn records(seq: u64, body: &Bytes) -> Result<Vec<(u32, Bytes)>, GroupError> {
    let damaged = |what| GroupError::Body { seq, what };
    let n = u32_at(body, 0).ok_or(damaged("short count"))? as usize;
    let frames_at = n
        .checked_mul(4)
        .and_then(|b| b.checked_add(4))
        .filter(|&end| end <= body.len())
        .ok_or(damaged("short index"))?;
    let mut out = Vec::with_capacity(n);
    let mut at = frames_at;
    for i in 0..n {
        let index = u32_at(body, 4 + 4 * i).ok_or(damaged("short index"))?;
        let len = match frame::check(&body[at..]) {
            frame::Decoded::Frame { len } => len,
            frame::Decoded::Incomplete => return Err(damaged("a frame is cut short")),
            frame::Decoded::Corrupt(cause) => return Err(GroupError::Frame { seq, cause }),
        };
        out.push((index, body.slice(at..at + len)));
        at += len;
    }
    if at != body.len() {
        return Err(damaged("bytes after the last frame"));
    }
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Where the writer sends one frame, read with one look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// The whole frame's length.
    pub len: usize,
    /// Its table and key's hash, modulo the partitions.
    pub partition: u32,
    pub id: ChangeId,
    /// A change, not a snapshot read.
    pub change: bool,
}

/// The frame at the start of `buf` as the writer routes it. The frames are the
/// process's own (the log's framing, on the source's side), so their CRC is not
/// computed again here; readers check it. `None`: not a whole frame.
pub fn route(buf: &[u8], partitions: u32) -> Option<Routed> {
    let n = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let body = buf.get(FRAME_HEADER..FRAME_HEADER.checked_add(n)?)?;
    let (head, json_at) = frame::parse_body(body).ok()?;
    let key = key_json(&body[json_at..]).unwrap_or(b"null");
    let mut h = crc32c::crc32c(head.schema.as_bytes());
    h = crc32c::crc32c_append(h, &[0]);
    h = crc32c::crc32c_append(h, head.table.as_bytes());
    h = crc32c::crc32c_append(h, &[0]);
    h = crc32c::crc32c_append(h, key);
    Some(Routed {
        len: FRAME_HEADER + n,
        partition: h % partitions.max(1),
        id: ChangeId {
            commit_lsn: head.commit_lsn,
            ordinal: head.ordinal,
        },
        change: head.op != Op::Read,
    })
}

/// The `key` member's JSON in an envelope. It is the first `,"key":` in the text: only
/// `id`, `op`, `schema` and `table` come before it, and a JSON string holds no bare `"`.
fn key_json(envelope: &[u8]) -> Option<&[u8]> {
    const MEMBER: &[u8] = b",\"key\":";
    let at = envelope.windows(MEMBER.len()).position(|w| w == MEMBER)? + MEMBER.len();
    let rest = &envelope[at..];
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<IgnoredAny>();
    values.next()?.ok()?;
    Some(rest[..values.byte_offset()].trim_ascii())
}

/// Builds one message body: records (index, frame) in order.
pub struct Body {
    index: BytesMut,
    frames: BytesMut,
    count: u32,
}

impl Body {
    pub fn new() -> Body {
        Body {
            index: BytesMut::new(),
            frames: BytesMut::new(),
            count: 0,
        }
    }

    pub fn len(&self) -> usize {
        4 + self.index.len() + self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn push(&mut self, index: u32, frame: &[u8]) {
        self.index.put_u32_le(index);
        self.frames.extend_from_slice(frame);
        self.count += 1;
    }

    /// The body, leaving this one empty.
    pub fn take(&mut self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        out.put_u32_le(self.count);
        out.extend_from_slice(&self.index);
        out.extend_from_slice(&self.frames);
        self.index.clear();
        self.frames.clear();
        self.count = 0;
        out.freeze()
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::ChangeRecord;
    use std::sync::Arc;

    fn record(op: Op, key: Option<&str>, ordinal: u64) -> ChangeRecord {
        ChangeRecord {
            id: ChangeId {
                commit_lsn: Lsn(0x10),
                ordinal,
            },
            op,
            schema: Arc::from("public"),
            table: Arc::from("t,\"key\":"),
            key: key.map(Into::into),
            before: None,
            after: key.map(Into::into),
            unchanged_toast: vec![],
            lsn: Lsn(0x8),
            commit_lsn: Lsn(0x10),
            commit_ts_micros: 0,
            xid: 1,
            message: None,
            old_key: None,
        }
    }

    fn framed(r: &ChangeRecord) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode_record(&mut out, r);
        out
    }

    #[test]
    fn headers_round_trip() {
        let h = GroupHead {
            first_seq: 7,
            first_offset: 1 << 40,
            records: 12,
            durable_lsn: Lsn(99),
            last_lsn: Lsn(98),
            last_change: Some(ChangeId {
                commit_lsn: Lsn(98),
                ordinal: 3,
            }),
        };
        assert_eq!(GroupHead::parse(&h.encode()), Some(h));
        let none = GroupHead {
            last_change: None,
            ..h
        };
        assert_eq!(GroupHead::parse(&none.encode()), Some(none));
        assert_eq!(GroupHead::parse("2 1 2 3 4 5 6 7"), None);
        let part = Part {
            index: 4,
            part: 1,
            parts: 3,
        };
        assert_eq!(Part::parse(&part.encode()), Some(part));
        assert_eq!(Part::parse("4 3 3"), None);
        assert_eq!(Part::parse("4 1"), None);
        assert_eq!(GroupHead::parse("1 1 2"), None);
        assert_eq!(h.end_offset(), (1 << 40) + 12);
    }

    #[test]
    fn the_key_is_found_even_when_a_table_name_looks_like_it() {
        let a = framed(&record(Op::Insert, Some("{\"id\":1}"), 1));
        let body = &a[FRAME_HEADER..];
        let (_, at) = frame::parse_body(body).unwrap();
        assert_eq!(key_json(&body[at..]), Some(&b"{\"id\":1}"[..]));
        let t = framed(&record(Op::Truncate, None, 2));
        let (_, at) = frame::parse_body(&t[FRAME_HEADER..]).unwrap();
        assert_eq!(key_json(&t[FRAME_HEADER + at..]), Some(&b"null"[..]));
    }

    #[test]
    fn one_key_one_partition_and_keys_spread() {
        let p = |k: &str, o| {
            route(&framed(&record(Op::Update, Some(k), o)), 16)
                .unwrap()
                .partition
        };
        assert_eq!(p("{\"id\":1}", 1), p("{\"id\":1}", 9));
        let used: std::collections::HashSet<u32> =
            (0..200).map(|i| p(&format!("{{\"id\":{i}}}"), 1)).collect();
        assert!(used.len() > 12, "{used:?}");
        assert!(used.iter().all(|&x| x < 16));
        assert_eq!(route(b"short", 16), None);
        let f = framed(&record(Op::Read, Some("{\"id\":1}"), 4));
        let r = route(&f, 16).unwrap();
        assert_eq!((r.len, r.change, r.id.ordinal), (f.len(), false, 4));
        assert_eq!(route(&f[..f.len() - 1], 16), None, "a frame cut short");
    }

    #[test]
    fn bodies_round_trip_and_damage_is_reported_not_panicked_on() {
        let frames: Vec<Vec<u8>> = (0..3)
            .map(|i| framed(&record(Op::Insert, Some(&format!("{{\"id\":{i}}}")), i)))
            .collect();
        let mut b = Body::new();
        for (i, f) in frames.iter().enumerate() {
            b.push(i as u32 * 2, f);
        }
        let bytes = b.take();
        assert!(b.is_empty());
        let got = records(5, &bytes).unwrap();
        assert_eq!(got.len(), 3);
        for (i, (index, f)) in got.iter().enumerate() {
            assert_eq!(*index, i as u32 * 2);
            assert_eq!(&f[..], &frames[i][..]);
        }
        for cut in 0..bytes.len() {
            assert!(records(5, &bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.to_vec();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert!(records(5, &Bytes::from(flipped)).is_err());
        assert_eq!(route(&frames[1], 4).map(|r| r.change), Some(true));
    }
}
