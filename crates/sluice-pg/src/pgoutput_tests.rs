//! Tests of the pgoutput decoder: byte fixtures for every message, every error, and
//! properties over arbitrary and mutated input.

use super::*;
use proptest::prelude::*;

/// Builds messages byte by byte, the way the walsender writes them.
struct W(Vec<u8>);

impl W {
    fn tag(tag: u8) -> Self {
        W(vec![tag])
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn u8(self, v: u8) -> Self {
        self.raw(&[v])
    }
    fn u16(self, v: u16) -> Self {
        self.raw(&v.to_be_bytes())
    }
    fn u32(self, v: u32) -> Self {
        self.raw(&v.to_be_bytes())
    }
    fn i32(self, v: i32) -> Self {
        self.raw(&v.to_be_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.raw(&v.to_be_bytes())
    }
    fn i64(self, v: i64) -> Self {
        self.raw(&v.to_be_bytes())
    }
    fn str(self, s: &str) -> Self {
        self.raw(s.as_bytes()).u8(0)
    }
    fn xid(self, xid: Option<u32>) -> Self {
        match xid {
            Some(x) => self.u32(x),
            None => self,
        }
    }
    fn tuple(self, cols: &[TupleValue<'_>]) -> Self {
        cols.iter()
            .fold(self.u16(cols.len() as u16), |w, c| match c {
                TupleValue::Null => w.u8(b'n'),
                TupleValue::UnchangedToast => w.u8(b'u'),
                TupleValue::Text(v) => w.u8(b't').i32(v.len() as i32).raw(v),
                TupleValue::Binary(v) => w.u8(b'b').i32(v.len() as i32).raw(v),
            })
    }
    fn done(self) -> Vec<u8> {
        self.0
    }
}

/// A row with every kind of column value, including empty and NUL-containing ones.
fn row() -> TupleData<'static> {
    TupleData {
        columns: vec![
            TupleValue::Text(b"42"),
            TupleValue::Null,
            TupleValue::UnchangedToast,
            TupleValue::Binary(b"\x00\x01\xff"),
            TupleValue::Text(b""),
        ],
    }
}

fn key() -> TupleData<'static> {
    TupleData {
        columns: vec![TupleValue::Text(b"41"), TupleValue::Null],
    }
}

/// A valid message built by hand, the `in_stream` it is decoded under, and its meaning.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    in_stream: bool,
    expected: Message<'static>,
}

fn case(name: &'static str, w: W, in_stream: bool, expected: Message<'static>) -> Case {
    Case {
        name,
        bytes: w.done(),
        in_stream,
        expected,
    }
}

fn cases() -> Vec<Case> {
    let (row, key) = (row(), key());
    let mut v = vec![
        case(
            "begin",
            W::tag(b'B').u64(0x16B_37A0).i64(-5).u32(744),
            false,
            Message::Begin {
                final_lsn: 0x16B_37A0,
                commit_ts: -5,
                xid: 744,
            },
        ),
        case(
            "commit",
            W::tag(b'C').u8(0).u64(10).u64(20).i64(30),
            false,
            Message::Commit {
                flags: 0,
                commit_lsn: 10,
                end_lsn: 20,
                commit_ts: 30,
            },
        ),
        case(
            "origin",
            W::tag(b'O').u64(u64::MAX).str("node-ä"),
            false,
            Message::Origin {
                commit_lsn: u64::MAX,
                name: "node-ä",
            },
        ),
        case(
            "relation without columns",
            W::tag(b'R').u32(1).str("").str("t").u8(b'n').u16(0),
            false,
            Message::Relation(Relation {
                xid: None,
                oid: 1,
                namespace: "",
                name: "t",
                replica_identity: b'n',
                columns: vec![],
            }),
        ),
        case(
            "insert without columns",
            W::tag(b'I').u32(1).u8(b'N').u16(0),
            false,
            Message::Insert {
                xid: None,
                relation: 1,
                new: TupleData { columns: vec![] },
            },
        ),
        case(
            "truncate of nothing",
            W::tag(b'T').u32(0).u8(0),
            false,
            Message::Truncate {
                xid: None,
                options: 0,
                relations: vec![],
            },
        ),
        case(
            "non-transactional empty message",
            W::tag(b'M').u8(0).u64(1).str("p").i32(0),
            false,
            Message::Message {
                xid: None,
                transactional: false,
                lsn: 1,
                prefix: "p",
                content: b"",
            },
        ),
        case(
            "stream start, first segment",
            W::tag(b'S').u32(900).u8(1),
            false,
            Message::StreamStart {
                xid: 900,
                first_segment: true,
            },
        ),
        case(
            "stream start, later segment",
            W::tag(b'S').u32(900).u8(0),
            false,
            Message::StreamStart {
                xid: 900,
                first_segment: false,
            },
        ),
        case("stream stop", W::tag(b'E'), true, Message::StreamStop),
        case(
            "stream commit",
            W::tag(b'c').u32(900).u8(0).u64(1).u64(2).i64(3),
            false,
            Message::StreamCommit {
                xid: 900,
                flags: 0,
                commit_lsn: 1,
                end_lsn: 2,
                commit_ts: 3,
            },
        ),
        case(
            "stream abort v2",
            W::tag(b'A').u32(900).u32(901),
            false,
            Message::StreamAbort {
                xid: 900,
                subxid: 901,
            },
        ),
        case(
            "stream abort v4 (abort LSN and timestamp ignored)",
            W::tag(b'A').u32(900).u32(901).u64(5).i64(6),
            false,
            Message::StreamAbort {
                xid: 900,
                subxid: 901,
            },
        ),
    ];
    // Every message that may appear inside a streamed block, in its v1 form and in its
    // v2 streamed form with the xid after the tag.
    for xid in [None, Some(900)] {
        let s = xid.is_some();
        v.extend([
            case(
                "relation",
                W::tag(b'R')
                    .xid(xid)
                    .u32(16384)
                    .str("public")
                    .str("orders")
                    .u8(b'd')
                    .u16(2)
                    .u8(1)
                    .str("id")
                    .u32(20)
                    .i32(-1)
                    .u8(0)
                    .str("status")
                    .u32(1043)
                    .i32(68),
                s,
                Message::Relation(Relation {
                    xid,
                    oid: 16384,
                    namespace: "public",
                    name: "orders",
                    replica_identity: b'd',
                    columns: vec![
                        RelationColumn {
                            flags: 1,
                            name: "id",
                            type_oid: 20,
                            type_modifier: -1,
                        },
                        RelationColumn {
                            flags: 0,
                            name: "status",
                            type_oid: 1043,
                            type_modifier: 68,
                        },
                    ],
                }),
            ),
            case(
                "type",
                W::tag(b'Y').xid(xid).u32(70000).str("public").str("mood"),
                s,
                Message::Type {
                    xid,
                    oid: 70000,
                    namespace: "public",
                    name: "mood",
                },
            ),
            case(
                "insert",
                W::tag(b'I')
                    .xid(xid)
                    .u32(16384)
                    .u8(b'N')
                    .tuple(&row.columns),
                s,
                Message::Insert {
                    xid,
                    relation: 16384,
                    new: row.clone(),
                },
            ),
            case(
                "update without old tuple",
                W::tag(b'U').xid(xid).u32(5).u8(b'N').tuple(&row.columns),
                s,
                Message::Update {
                    xid,
                    relation: 5,
                    old: None,
                    new: row.clone(),
                },
            ),
            case(
                "update with old key",
                W::tag(b'U')
                    .xid(xid)
                    .u32(5)
                    .u8(b'K')
                    .tuple(&key.columns)
                    .u8(b'N')
                    .tuple(&row.columns),
                s,
                Message::Update {
                    xid,
                    relation: 5,
                    old: Some(OldTuple::Key(key.clone())),
                    new: row.clone(),
                },
            ),
            case(
                "update with old row",
                W::tag(b'U')
                    .xid(xid)
                    .u32(5)
                    .u8(b'O')
                    .tuple(&row.columns)
                    .u8(b'N')
                    .tuple(&key.columns),
                s,
                Message::Update {
                    xid,
                    relation: 5,
                    old: Some(OldTuple::Full(row.clone())),
                    new: key.clone(),
                },
            ),
            case(
                "delete with old key",
                W::tag(b'D').xid(xid).u32(5).u8(b'K').tuple(&key.columns),
                s,
                Message::Delete {
                    xid,
                    relation: 5,
                    old: OldTuple::Key(key.clone()),
                },
            ),
            case(
                "delete with old row",
                W::tag(b'D').xid(xid).u32(5).u8(b'O').tuple(&row.columns),
                s,
                Message::Delete {
                    xid,
                    relation: 5,
                    old: OldTuple::Full(row.clone()),
                },
            ),
            case(
                "truncate",
                W::tag(b'T').xid(xid).u32(2).u8(3).u32(10).u32(11),
                s,
                Message::Truncate {
                    xid,
                    options: 3,
                    relations: vec![10, 11],
                },
            ),
            case(
                "transactional message",
                W::tag(b'M')
                    .xid(xid)
                    .u8(1)
                    .u64(77)
                    .str("sluice")
                    .i32(4)
                    .raw(b"a\0\xffb"),
                s,
                Message::Message {
                    xid,
                    transactional: true,
                    lsn: 77,
                    prefix: "sluice",
                    content: b"a\0\xffb",
                },
            ),
        ]);
    }
    v
}

fn err(buf: &[u8], in_stream: bool) -> DecodeError {
    match decode(buf, in_stream) {
        Ok(m) => panic!("decoded unexpectedly: {m:?}"),
        Err(e) => e,
    }
}

#[test]
fn decodes_every_fixture() {
    for c in cases() {
        match decode(&c.bytes, c.in_stream) {
            Ok(m) => assert_eq!(m, c.expected, "{} (in_stream={})", c.name, c.in_stream),
            Err(e) => panic!("{} (in_stream={}): {e}", c.name, c.in_stream),
        }
    }
}

#[test]
fn messages_without_a_stream_xid_ignore_in_stream() {
    for c in cases() {
        if matches!(c.bytes[0], b'B' | b'C' | b'O' | b'S' | b'E' | b'c' | b'A') {
            assert_eq!(decode(&c.bytes, !c.in_stream), Ok(c.expected), "{}", c.name);
        }
    }
}

#[test]
fn streamed_messages_read_without_in_stream_do_not_pass() {
    // The xid shifts every field; for these fixtures that misreading is always caught.
    for c in cases() {
        if c.in_stream && c.bytes[0] != b'E' {
            assert!(decode(&c.bytes, false).is_err(), "{}", c.name);
        }
    }
}

#[test]
fn error_every_proper_prefix_is_rejected() {
    for c in cases() {
        let v4_abort = c.bytes[0] == b'A' && c.bytes.len() == 1 + 8 + STREAM_ABORT_V4_TAIL;
        for cut in 0..c.bytes.len() {
            if v4_abort && cut == 9 {
                continue; // the v2 form of the same message
            }
            let e = err(&c.bytes[..cut], c.in_stream);
            assert!(
                matches!(
                    e,
                    DecodeError::Empty
                        | DecodeError::Truncated { .. }
                        | DecodeError::UnterminatedString { .. }
                        | DecodeError::TrailingBytes { tag: b'A', .. }
                ),
                "{} cut at {cut}: {e:?}",
                c.name
            );
        }
    }
}

#[test]
fn error_trailing_bytes_after_every_fixture() {
    for mut c in cases() {
        let tag = c.bytes[0];
        c.bytes.push(0);
        let e = err(&c.bytes, c.in_stream);
        if tag == b'A' {
            assert!(matches!(e, DecodeError::TrailingBytes { tag: b'A', .. }));
        } else {
            assert_eq!(
                e,
                DecodeError::TrailingBytes { tag, extra: 1 },
                "{}",
                c.name
            );
        }
    }
    // Stream Abort accepts exactly the v4 tail, nothing shorter.
    let b = W::tag(b'A').u32(900).u32(901).u64(5).done();
    let e = DecodeError::TrailingBytes {
        tag: b'A',
        extra: 8,
    };
    assert_eq!(err(&b, false), e);
}

#[test]
fn error_empty_and_unknown_tag() {
    assert_eq!(err(b"", false), DecodeError::Empty);
    assert_eq!(err(b"", true), DecodeError::Empty);
    // 'b' is Begin Prepare of protocol version 3.
    assert_eq!(err(b"b", false), DecodeError::UnknownTag(b'b'));
    assert_eq!(err(&[0xff, 1, 2], true), DecodeError::UnknownTag(0xff));
    assert!(DecodeError::UnknownTag(b'b')
        .to_string()
        .contains("'b' (0x62)"));
    assert!(DecodeError::UnknownTag(0).to_string().contains("0x00"));
}

fn truncated(what: &'static str, offset: usize) -> DecodeError {
    DecodeError::Truncated { what, offset }
}

#[test]
fn error_truncated_names_field_and_offset() {
    let b = W::tag(b'B').u64(1).raw(&[0, 0]).done();
    assert_eq!(err(&b, false), truncated("begin commit timestamp", 9));
    assert_eq!(
        err(&[b'I', 0, 0], true),
        truncated("streamed transaction xid", 1)
    );
    let b = W::tag(b'I')
        .u32(1)
        .u8(b'N')
        .u16(1)
        .u8(b't')
        .i32(10)
        .raw(b"abc")
        .done();
    assert_eq!(err(&b, false), truncated("text column value", 13));
    let b = W::tag(b'M').u8(0).u64(1).str("p").i32(i32::MAX).done();
    assert_eq!(err(&b, false), truncated("message content", b.len()));
}

#[test]
fn error_huge_counts_in_tiny_buffers() {
    let b = W::tag(b'I').u32(1).u8(b'N').u16(u16::MAX).u8(b'n').done();
    assert_eq!(err(&b, false), truncated("tuple column kind", 9));
    let b = W::tag(b'T').u32(u32::MAX).u8(0).u32(1).done();
    assert_eq!(err(&b, false), truncated("truncate relation OID", 10));
    let b = W::tag(b'R')
        .u32(1)
        .str("")
        .str("t")
        .u8(b'd')
        .u16(u16::MAX)
        .done();
    assert_eq!(err(&b, false), truncated("relation column flags", b.len()));
}

#[test]
fn error_invalid_utf8() {
    let b = W::tag(b'R')
        .u32(1)
        .str("public")
        .raw(b"or\xffders\0")
        .u8(b'd')
        .u16(0)
        .done();
    let e = DecodeError::InvalidUtf8 {
        what: "relation name",
        offset: 14,
    };
    assert_eq!(err(&b, false), e);
    let b = W::tag(b'O').u64(1).raw(b"\xc3\0").done();
    let e = DecodeError::InvalidUtf8 {
        what: "origin name",
        offset: 9,
    };
    assert_eq!(err(&b, false), e);
}

#[test]
fn error_unterminated_string() {
    let b = W::tag(b'Y').u32(1).str("public").raw(b"mood").done();
    let e = DecodeError::UnterminatedString {
        what: "type name",
        offset: 12,
    };
    assert_eq!(err(&b, false), e);
}

#[test]
fn error_unexpected_markers_and_flags() {
    let cases: [(W, &str, u8, usize); 7] = [
        (
            W::tag(b'I').u32(1).u8(b'K').u16(0),
            "insert new tuple marker",
            b'K',
            5,
        ),
        (
            W::tag(b'U').u32(1).u8(b'X').u16(0),
            "update new tuple marker",
            b'X',
            5,
        ),
        (
            W::tag(b'U').u32(1).u8(b'K').u16(0).u8(b'O').u16(0),
            "update new tuple marker",
            b'O',
            8,
        ),
        (
            W::tag(b'D').u32(1).u8(b'N').u16(0),
            "delete old tuple marker",
            b'N',
            5,
        ),
        (
            W::tag(b'I').u32(1).u8(b'N').u16(2).u8(b'n').u8(b'x'),
            "tuple column kind",
            b'x',
            9,
        ),
        (
            W::tag(b'M').u8(2).u64(1).str("p").i32(0),
            "message flags",
            2,
            1,
        ),
        (
            W::tag(b'S').u32(1).u8(2),
            "stream start first-segment flag",
            2,
            5,
        ),
    ];
    for (w, what, byte, offset) in cases {
        let e = DecodeError::UnexpectedByte { what, byte, offset };
        assert_eq!(err(&w.done(), false), e);
    }
    let e = DecodeError::UnexpectedByte {
        what: "tuple column kind",
        byte: b'x',
        offset: 9,
    };
    assert_eq!(
        e.to_string(),
        "unexpected tuple column kind 'x' (0x78) at byte 9 in pgoutput message"
    );
}

#[test]
fn error_negative_length() {
    let b = W::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'b').i32(-1).done();
    let e = DecodeError::NegativeLength {
        what: "binary column value",
        length: -1,
        offset: 9,
    };
    assert_eq!(err(&b, false), e);
    let b = W::tag(b'M').u8(1).u64(1).str("p").i32(i32::MIN).done();
    let e = DecodeError::NegativeLength {
        what: "message content",
        length: i32::MIN,
        offset: 12,
    };
    assert_eq!(err(&b, false), e);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_bytes(
        buf in proptest::collection::vec(any::<u8>(), 0..256),
        in_stream in any::<bool>(),
    ) {
        let _ = decode(&buf, in_stream);
    }

    #[test]
    fn never_panics_on_known_tags_with_arbitrary_bodies(
        tag in proptest::sample::select(b"BCORYIUDTMSEcA".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..128),
        in_stream in any::<bool>(),
    ) {
        let mut buf = vec![tag];
        buf.extend_from_slice(&body);
        let _ = decode(&buf, in_stream);
    }

    #[test]
    fn never_panics_on_mutated_fixtures(
        pick in any::<proptest::sample::Index>(),
        edits in proptest::collection::vec(
            (any::<proptest::sample::Index>(), any::<u8>()),
            0..6,
        ),
        cut in any::<proptest::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..20),
        in_stream in any::<bool>(),
    ) {
        let all = cases();
        let mut buf = all[pick.index(all.len())].bytes.clone();
        for (at, byte) in edits {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        let _ = decode(&buf, in_stream);
        buf.truncate(cut.index(buf.len() + 1));
        let _ = decode(&buf, in_stream);
        buf.extend_from_slice(&tail);
        let _ = decode(&buf, in_stream);
    }
}
