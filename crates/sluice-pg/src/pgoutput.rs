//! Decoder for the messages of PostgreSQL's `pgoutput` logical decoding plugin, protocol
//! versions 1 and 2 (and the longer Stream Abort of version 4).
//!
//! # Invariants
//!
//! - **Pure.** [`decode`] does no I/O, keeps no state and logs nothing (the input holds row
//!   values). The one piece of context the wire format does not carry in the message itself
//!   is whether it arrived between Stream Start and Stream Stop, so the caller passes it as
//!   `in_stream`: in protocol version 2, Relation, Type, Insert, Update, Delete, Truncate and
//!   Message then carry the xid of the streamed transaction right after the tag.
//! - **Never panics**, on any byte sequence. Every read goes through `Cursor`, which checks
//!   bounds; lengths and counts from the wire are checked before use, and a count is never
//!   trusted for an allocation larger than the remaining bytes could fill.
//! - **Borrows from the input.** Names and column values are slices of the buffer; the only
//!   allocations are one `Vec` per tuple, per relation's columns and per truncate's relations.
//! - **Exact.** A message must be consumed to its last byte: trailing bytes mean Sluice and the
//!   server disagree about the layout, which must be an error and not a silent misreading. The
//!   one exception is the 16-byte tail (abort LSN and timestamp) that protocol version 4 adds
//!   to Stream Abort, which is accepted and ignored.
//! - **Errors say what and where:** which field was being read and its byte offset from the
//!   start of the buffer (the tag is at offset 0).
//!
//! # Wire format
//!
//! Integers are big-endian; `String` is NUL-terminated UTF-8; `[xid]` is an Int32 present
//! only inside a streamed block.
//!
//! ```text
//! 'B' Begin          Int64 final LSN, Int64 commit ts, Int32 xid
//! 'C' Commit         Int8 flags, Int64 commit LSN, Int64 end LSN, Int64 commit ts
//! 'O' Origin         Int64 commit LSN, String name
//! 'R' Relation       [xid] Int32 oid, String namespace, String name, Int8 replica identity,
//!                    Int16 n, n × (Int8 flags, String name, Int32 type oid, Int32 typmod)
//! 'Y' Type           [xid] Int32 oid, String namespace, String name
//! 'I' Insert         [xid] Int32 relation, 'N' TupleData
//! 'U' Update         [xid] Int32 relation, optional ('K' | 'O') TupleData, 'N' TupleData
//! 'D' Delete         [xid] Int32 relation, ('K' | 'O') TupleData
//! 'T' Truncate       [xid] Int32 n, Int8 options, n × Int32 relation
//! 'M' Message        [xid] Int8 flags, Int64 LSN, String prefix, Int32 len, len bytes
//! 'S' Stream Start   Int32 xid, Int8 first segment (0 or 1)
//! 'E' Stream Stop    (nothing)
//! 'c' Stream Commit  Int32 xid, Int8 flags, Int64 commit LSN, Int64 end LSN, Int64 commit ts
//! 'A' Stream Abort   Int32 xid, Int32 subxid, v4 only: Int64 abort LSN, Int64 abort ts
//!
//! TupleData: Int16 n, n × ('n' | 'u' | 't' Int32 len, len bytes | 'b' Int32 len, len bytes)
//! ```
//!
//! Timestamps stay raw: microseconds since 2000-01-01 00:00:00 UTC.

use std::fmt;

/// Length of the abort LSN and abort timestamp that protocol version 4 appends to Stream Abort.
const STREAM_ABORT_V4_TAIL: usize = 16;

/// Smallest encoding of one Relation column: flags, an empty name's NUL, type oid, typmod.
const MIN_RELATION_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

/// Decodes one pgoutput message (the payload of an XLogData message, starting at its tag).
///
/// `in_stream` tells whether the message arrived between Stream Start and Stream Stop; only
/// then do Relation, Type, Insert, Update, Delete, Truncate and Message carry an xid.
/// Never panics; see the module documentation for the invariants.
pub fn decode(buf: &[u8], in_stream: bool) -> Result<Message<'_>, DecodeError> {
    let mut cur = Cursor::new(buf);
    let tag = match cur.rest.split_first() {
        Some((&tag, rest)) => {
            cur.rest = rest;
            tag
        }
        None => return Err(DecodeError::Empty),
    };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: cur.u64("begin final LSN")?,
            commit_ts: cur.i64("begin commit timestamp")?,
            xid: cur.u32("begin xid")?,
        },
        b'C' => Message::Commit {
            flags: cur.u8("commit flags")?,
            commit_lsn: cur.u64("commit LSN")?,
            end_lsn: cur.u64("commit end LSN")?,
            commit_ts: cur.i64("commit timestamp")?,
        },
        b'O' => Message::Origin {
            commit_lsn: cur.u64("origin commit LSN")?,
            name: cur.cstr("origin name")?,
        },
        b'R' => Message::Relation(decode_relation(&mut cur, in_stream)?),
        b'Y' => Message::Type {
            xid: cur.stream_xid(in_stream)?,
            oid: cur.u32("type OID")?,
            namespace: cur.cstr("type namespace")?,
            name: cur.cstr("type name")?,
        },
        b'I' => {
            let xid = cur.stream_xid(in_stream)?;
            let relation = cur.u32("insert relation OID")?;
            cur.expect(b'N', "insert new tuple marker")?;
            Message::Insert {
                xid,
                relation,
                new: cur.tuple()?,
            }
        }
        b'U' => decode_update(&mut cur, in_stream)?,
        b'D' => {
            let xid = cur.stream_xid(in_stream)?;
            let relation = cur.u32("delete relation OID")?;
            let at = cur.offset();
            let old = match cur.u8("delete old tuple marker")? {
                b'K' => OldTuple::Key(cur.tuple()?),
                b'O' => OldTuple::Full(cur.tuple()?),
                byte => return Err(unexpected("delete old tuple marker", byte, at)),
            };
            Message::Delete { xid, relation, old }
        }
        b'T' => {
            let xid = cur.stream_xid(in_stream)?;
            let count = cur.u32("truncate relation count")?;
            let options = cur.u8("truncate options")?;
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            let mut relations = Vec::with_capacity(count.min(cur.rest.len() / 4));
            for _ in 0..count {
                relations.push(cur.u32("truncate relation OID")?);
            }
            Message::Truncate {
                xid,
                options,
                relations,
            }
        }
        b'M' => {
            let xid = cur.stream_xid(in_stream)?;
            let at = cur.offset();
            // Only bit 0 is defined; any other value would be dropped by the bool, so refuse it.
            let transactional = match cur.u8("message flags")? {
                0 => false,
                1 => true,
                byte => return Err(unexpected("message flags", byte, at)),
            };
            Message::Message {
                xid,
                transactional,
                lsn: cur.u64("message LSN")?,
                prefix: cur.cstr("message prefix")?,
                content: cur.len_prefixed("message content")?,
            }
        }
        b'S' => {
            let xid = cur.u32("stream start xid")?;
            let at = cur.offset();
            let first_segment = match cur.u8("stream start first-segment flag")? {
                0 => false,
                1 => true,
                byte => return Err(unexpected("stream start first-segment flag", byte, at)),
            };
            Message::StreamStart { xid, first_segment }
        }
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit {
            xid: cur.u32("stream commit xid")?,
            flags: cur.u8("stream commit flags")?,
            commit_lsn: cur.u64("stream commit LSN")?,
            end_lsn: cur.u64("stream commit end LSN")?,
            commit_ts: cur.i64("stream commit timestamp")?,
        },
        b'A' => {
            let msg = Message::StreamAbort {
                xid: cur.u32("stream abort xid")?,
                subxid: cur.u32("stream abort subtransaction xid")?,
            };
            if cur.rest.len() == STREAM_ABORT_V4_TAIL {
                cur.rest = &[];
            }
            msg
        }
        other => return Err(DecodeError::UnknownTag(other)),
    };
    if !cur.rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            tag,
            extra: cur.rest.len(),
        });
    }
    Ok(msg)
}

fn decode_relation<'a>(cur: &mut Cursor<'a>, in_stream: bool) -> Result<Relation<'a>, DecodeError> {
    let xid = cur.stream_xid(in_stream)?;
    let oid = cur.u32("relation OID")?;
    let namespace = cur.cstr("relation namespace")?;
    let name = cur.cstr("relation name")?;
    let replica_identity = cur.u8("relation replica identity")?;
    let count = usize::from(cur.u16("relation column count")?);
    let mut columns = Vec::with_capacity(count.min(cur.rest.len() / MIN_RELATION_COLUMN_LEN));
    for _ in 0..count {
        columns.push(RelationColumn {
            flags: cur.u8("relation column flags")?,
            name: cur.cstr("relation column name")?,
            type_oid: cur.u32("relation column type OID")?,
            type_modifier: cur.i32("relation column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_update<'a>(cur: &mut Cursor<'a>, in_stream: bool) -> Result<Message<'a>, DecodeError> {
    let xid = cur.stream_xid(in_stream)?;
    let relation = cur.u32("update relation OID")?;
    let mut at = cur.offset();
    let mut marker = cur.u8("update tuple marker")?;
    let old = match marker {
        b'K' | b'O' => {
            let data = cur.tuple()?;
            let old = if marker == b'K' {
                OldTuple::Key(data)
            } else {
                OldTuple::Full(data)
            };
            at = cur.offset();
            marker = cur.u8("update new tuple marker")?;
            Some(old)
        }
        _ => None,
    };
    if marker != b'N' {
        return Err(unexpected("update new tuple marker", marker, at));
    }
    Ok(Message::Update {
        xid,
        relation,
        old,
        new: cur.tuple()?,
    })
}

fn unexpected(what: &'static str, byte: u8, offset: usize) -> DecodeError {
    DecodeError::UnexpectedByte { what, byte, offset }
}

/// One decoded pgoutput message. Borrowed fields point into the decoded buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Start of a (non-streamed) transaction.
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_ts: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a (non-streamed) transaction.
    Commit {
        /// Flags; currently always 0.
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just past the commit record: the position to confirm once the transaction is durable.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_ts: i64,
    },
    /// The transaction originated on another node (replication origin).
    Origin {
        /// LSN of the commit on the origin server.
        commit_lsn: u64,
        /// Name of the origin.
        name: &'a str,
    },
    /// Schema of a relation, sent before its first change in a session and after it changes.
    Relation(Relation<'a>),
    /// A non-built-in data type used by a following Relation.
    Type {
        /// Xid of the streamed transaction; `Some` only inside a streamed block.
        xid: Option<u32>,
        /// OID of the type.
        oid: u32,
        /// Namespace of the type (empty for `pg_catalog`).
        namespace: &'a str,
        /// Name of the type.
        name: &'a str,
    },
    /// A row was inserted.
    Insert {
        /// Xid of the streamed transaction; `Some` only inside a streamed block.
        xid: Option<u32>,
        /// OID of the relation, as announced by a Relation message.
        relation: u32,
        /// The new row.
        new: TupleData<'a>,
    },
    /// A row was updated.
    Update {
        /// Xid of the streamed transaction; `Some` only inside a streamed block.
        xid: Option<u32>,
        /// OID of the relation, as announced by a Relation message.
        relation: u32,
        /// The old key (when it changed) or old row (REPLICA IDENTITY FULL), if sent.
        old: Option<OldTuple<'a>>,
        /// The new row; unchanged TOAST values arrive as [`TupleValue::UnchangedToast`].
        new: TupleData<'a>,
    },
    /// A row was deleted.
    Delete {
        /// Xid of the streamed transaction; `Some` only inside a streamed block.
        xid: Option<u32>,
        /// OID of the relation, as announced by a Relation message.
        relation: u32,
        /// The old key, or the old row under REPLICA IDENTITY FULL.
        old: OldTuple<'a>,
    },
    /// One or more relations were truncated.
    Truncate {
        /// Xid of the streamed transaction; `Some` only inside a streamed block.
        xid: Option<u32>,
        /// Bit 0: CASCADE; bit 1: RESTART IDENTITY.
        options: u8,
        /// OIDs of the truncated relations.
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`), e.g. from the outbox.
    Message {
        /// Xid of the streamed transaction; `Some` only inside a streamed block.
        xid: Option<u32>,
        /// Whether the message belongs to its transaction (sent at commit) or not.
        transactional: bool,
        /// LSN of the message.
        lsn: u64,
        /// Prefix given by the emitter.
        prefix: &'a str,
        /// Content, arbitrary bytes.
        content: &'a [u8],
    },
    /// Start of a block of changes of an in-progress (streamed) transaction.
    StreamStart {
        /// Xid of the streamed transaction.
        xid: u32,
        /// Whether this is the first block of that transaction.
        first_segment: bool,
    },
    /// End of a block of streamed changes.
    StreamStop,
    /// A streamed transaction committed.
    StreamCommit {
        /// Xid of the transaction.
        xid: u32,
        /// Flags; currently always 0.
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just past the commit record.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_ts: i64,
    },
    /// A streamed transaction, or one of its subtransactions, aborted.
    StreamAbort {
        /// Xid of the top-level transaction.
        xid: u32,
        /// Xid of the aborted subtransaction; equal to `xid` when the whole transaction aborted.
        subxid: u32,
    },
}

/// The Relation message: a relation's identity and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation<'a> {
    /// Xid of the streamed transaction; `Some` only inside a streamed block.
    pub xid: Option<u32>,
    /// OID of the relation; changes refer to it.
    pub oid: u32,
    /// Namespace (schema); empty for `pg_catalog`.
    pub namespace: &'a str,
    /// Relation name.
    pub name: &'a str,
    /// `relreplident`: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in tuple order (generated columns are not sent).
    pub columns: Vec<RelationColumn<'a>>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Bit 0 (value 1): the column is part of the replica identity key.
    pub flags: u8,
    /// Column name.
    pub name: &'a str,
    /// OID of the column's data type.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// The old row sent with an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// Only the replica identity key columns are meaningful (`'K'`); others are null.
    Key(TupleData<'a>),
    /// The whole old row, under REPLICA IDENTITY FULL (`'O'`).
    Full(TupleData<'a>),
}

/// The column values of one row, in the order of the relation's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData<'a> {
    /// One value per column.
    pub columns: Vec<TupleValue<'a>>,
}

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue<'a> {
    /// SQL NULL (`'n'`).
    Null,
    /// An unchanged TOASTed value whose content was not sent (`'u'`); never a null.
    UnchangedToast,
    /// The value in PostgreSQL's text format (`'t'`).
    Text(&'a [u8]),
    /// The value in PostgreSQL's binary format (`'b'`).
    Binary(&'a [u8]),
}

/// Why a buffer is not a valid pgoutput message. Offsets count from the tag at offset 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer has no bytes at all.
    #[error("empty pgoutput message")]
    Empty,
    /// The first byte is not a tag of protocol version 1 or 2.
    #[error(
        "unknown pgoutput message tag {}; Sluice decodes protocol versions 1 and 2 \
         (two-phase messages are not supported)",
        TagName(*.0)
    )]
    UnknownTag(u8),
    /// The message ended before a field was complete.
    #[error("pgoutput message truncated: {what} at byte {offset} runs past the end")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where the field starts.
        offset: usize,
    },
    /// A string has no NUL terminator before the end of the message.
    #[error("pgoutput message truncated: {what} at byte {offset} has no NUL terminator")]
    UnterminatedString {
        /// The field being read.
        what: &'static str,
        /// Where the string starts.
        offset: usize,
    },
    /// A string is not valid UTF-8.
    #[error("{what} in pgoutput message is not valid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// The field being read.
        what: &'static str,
        /// The first byte that is not valid UTF-8.
        offset: usize,
    },
    /// A marker or flag byte has a value the protocol does not allow there.
    #[error("unexpected {what} {} at byte {offset} in pgoutput message", TagName(*.byte))]
    UnexpectedByte {
        /// The field being read.
        what: &'static str,
        /// The byte found.
        byte: u8,
        /// Where it was found.
        offset: usize,
    },
    /// A length prefix is negative.
    #[error("negative length {length} of {what} at byte {offset} in pgoutput message")]
    NegativeLength {
        /// The field whose length it is.
        what: &'static str,
        /// The length found.
        length: i32,
        /// Where the length prefix starts.
        offset: usize,
    },
    /// The message continues past its last field.
    #[error("{extra} unexpected trailing bytes after pgoutput message {}", TagName(*.tag))]
    TrailingBytes {
        /// The message's tag.
        tag: u8,
        /// How many bytes were left over.
        extra: usize,
    },
}

/// Shows a tag or marker byte as a character where it is printable ASCII, and in hex always.
struct TagName(u8);

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02x})", char::from(self.0), self.0)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// A read position over the message. Holds the unread suffix rather than an index, so that
/// every read is a checked split and no index arithmetic can go out of bounds.
struct Cursor<'a> {
    rest: &'a [u8],
    len: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            rest: buf,
            len: buf.len(),
        }
    }

    /// Offset of the next unread byte from the start of the buffer.
    #[inline]
    fn offset(&self) -> usize {
        self.len.saturating_sub(self.rest.len())
    }

    #[inline]
    fn truncated(&self, what: &'static str) -> DecodeError {
        DecodeError::Truncated {
            what,
            offset: self.offset(),
        }
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(*head)
            }
            None => Err(self.truncated(what)),
        }
    }

    #[inline]
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(what).map(|[b]| b)
    }

    #[inline]
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    #[inline]
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    #[inline]
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    #[inline]
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }

    #[inline]
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes)
    }

    /// The xid that protocol version 2 puts after the tag inside a streamed block.
    #[inline]
    fn stream_xid(&mut self, in_stream: bool) -> Result<Option<u32>, DecodeError> {
        if in_stream {
            self.u32("streamed transaction xid").map(Some)
        } else {
            Ok(None)
        }
    }

    #[inline]
    fn expect(&mut self, expected: u8, what: &'static str) -> Result<(), DecodeError> {
        let at = self.offset();
        match self.u8(what)? {
            b if b == expected => Ok(()),
            byte => Err(unexpected(what, byte, at)),
        }
    }

    #[inline]
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(self.truncated(what)),
        }
    }

    /// An Int32 length followed by that many bytes.
    #[inline]
    fn len_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let at = self.offset();
        let length = self.i32(what)?;
        let n = usize::try_from(length).map_err(|_| DecodeError::NegativeLength {
            what,
            length,
            offset: at,
        })?;
        self.bytes(n, what)
    }

    /// A NUL-terminated UTF-8 string; the NUL is consumed and not returned.
    fn cstr(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let start = self.offset();
        let Some(nul) = self.rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                what,
                offset: start,
            });
        };
        let (raw, tail) = self.rest.split_at_checked(nul).unwrap_or((self.rest, &[]));
        self.rest = tail.get(1..).unwrap_or_default();
        std::str::from_utf8(raw).map_err(|e| DecodeError::InvalidUtf8 {
            what,
            offset: start.saturating_add(e.valid_up_to()),
        })
    }

    fn tuple(&mut self) -> Result<TupleData<'a>, DecodeError> {
        let count = usize::from(self.u16("tuple column count")?);
        // Every column takes at least its kind byte, so a count beyond the remaining bytes
        // is a lie and must not size the allocation.
        let mut columns = Vec::with_capacity(count.min(self.rest.len()));
        for _ in 0..count {
            let at = self.offset();
            let value = match self.u8("tuple column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => TupleValue::Text(self.len_prefixed("text column value")?),
                b'b' => TupleValue::Binary(self.len_prefixed("binary column value")?),
                byte => return Err(unexpected("tuple column kind", byte, at)),
            };
            columns.push(value);
        }
        Ok(TupleData { columns })
    }
}

#[cfg(test)]
#[path = "pgoutput_tests.rs"]
mod tests;
