//! Unit tests of transaction assembly, fed with hand-built pgoutput bytes.

use super::*;

/// pgoutput bytes, written the way the walsender does.
#[derive(Default)]
struct B(Vec<u8>);
impl B {
    fn tag(c: u8) -> B {
        B(vec![c])
    }
    fn u8(mut self, v: u8) -> B {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> B {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> B {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> B {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn s(mut self, v: &str) -> B {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    /// TupleData: None = null, Some("\u{0}u") = unchanged toast, else text.
    fn tuple(mut self, cols: &[Option<&str>]) -> B {
        self = self.i16(cols.len() as i16);
        for c in cols {
            self = match c {
                None => self.u8(b'n'),
                Some("\u{0}u") => self.u8(b'u'),
                Some(t) => {
                    let b = self.u8(b't').i32(t.len() as i32);
                    let mut b = b;
                    b.0.extend_from_slice(t.as_bytes());
                    b
                }
            };
        }
        self
    }
}

fn begin(xid: u32, final_lsn: i64) -> Vec<u8> {
    B::tag(b'B').i64(final_lsn).i64(0).i32(xid as i32).0
}
fn commit(lsn: i64, end: i64) -> Vec<u8> {
    B::tag(b'C').u8(0).i64(lsn).i64(end).i64(0).0
}
/// Relation 16384 public.t (id int4 key, big text), with an optional streamed xid.
fn relation(xid: Option<u32>, identity: u8) -> Vec<u8> {
    let mut b = B::tag(b'R');
    if let Some(x) = xid {
        b = b.i32(x as i32);
    }
    b.i32(16384)
        .s("public")
        .s("t")
        .u8(identity)
        .i16(2)
        .u8(1)
        .s("id")
        .i32(23)
        .i32(-1)
        .u8(0)
        .s("big")
        .i32(25)
        .i32(-1)
        .0
}
fn insert(xid: Option<u32>, id: &str) -> Vec<u8> {
    let mut b = B::tag(b'I');
    if let Some(x) = xid {
        b = b.i32(x as i32);
    }
    b.i32(16384).u8(b'N').tuple(&[Some(id), Some("v")]).0
}

fn feed(a: &mut Assembler, msgs: &[Vec<u8>]) -> (Vec<ChangeRecord>, Vec<Lsn>) {
    let mut recs = Vec::new();
    let mut commits = Vec::new();
    for m in msgs {
        match a.handle(Lsn(1), m, &mut |r| recs.push(r)).unwrap() {
            Handled::Commit { end_lsn } => commits.push(end_lsn),
            Handled::Replay {
                mut replay,
                end_lsn,
            } => {
                while let Some(r) = replay.next_record().unwrap() {
                    recs.push(r);
                }
                commits.push(end_lsn);
            }
            Handled::NeedCatalog { .. } => panic!("built-in types need no catalog"),
            Handled::Done => {}
        }
    }
    (recs, commits)
}

fn assembler() -> (Assembler, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (
        Assembler::new(Exclusions::new(), dir.path().join("spill")).unwrap(),
        dir,
    )
}

#[test]
fn a_transaction_becomes_records_with_ordinals() {
    let (mut a, _d) = assembler();
    let (recs, commits) = feed(
        &mut a,
        &[
            begin(7, 0x100),
            relation(None, b'd'),
            insert(None, "1"),
            insert(None, "2"),
            commit(0x100, 0x120),
        ],
    );
    assert_eq!(commits, [Lsn(0x120)]);
    assert_eq!(recs.len(), 2);
    assert_eq!(
        recs[1].id,
        ChangeId {
            commit_lsn: Lsn(0x100),
            ordinal: 2
        }
    );
    assert_eq!(recs[0].key.as_deref(), Some(r#"{"id":1}"#));
    assert_eq!(recs[0].after.as_deref(), Some(r#"{"id":1,"big":"v"}"#));
    assert_eq!((recs[0].xid, &*recs[0].table), (7, "t"));
    assert!(!a.in_transaction());
}

#[test]
fn streamed_transactions_wait_for_commit_and_drop_aborted_subtransactions() {
    let (mut a, dir) = assembler();
    let start = |xid: i32| B::tag(b'S').i32(xid).u8(1).0;
    let stop = B::tag(b'E').0;
    let (recs, _) = feed(
        &mut a,
        &[
            start(100),
            relation(Some(100), b'd'),
            insert(Some(100), "1"),
            insert(Some(101), "2"),
            stop.clone(),
        ],
    );
    assert!(recs.is_empty(), "nothing before the commit");
    assert!(a.in_transaction());
    let abort_sub = B::tag(b'A').i32(100).i32(101).0;
    let stream_commit = B::tag(b'c').i32(100).u8(0).i64(0x500).i64(0x520).i64(0).0;
    let (recs, commits) = feed(
        &mut a,
        &[
            abort_sub,
            start(100),
            insert(Some(100), "3"),
            stop.clone(),
            stream_commit,
        ],
    );
    assert_eq!(commits, [Lsn(0x520)]);
    let keys: Vec<_> = recs.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys, [r#"{"id":1}"#, r#"{"id":3}"#]);
    assert_eq!(
        recs[1].id,
        ChangeId {
            commit_lsn: Lsn(0x500),
            ordinal: 2
        }
    );
    assert_eq!(recs[0].xid, 100);

    // A whole aborted transaction emits nothing and leaves no file behind.
    let (recs, _) = feed(
        &mut a,
        &[
            start(200),
            insert(Some(200), "9"),
            stop,
            B::tag(b'A').i32(200).i32(200).0,
        ],
    );
    assert!(recs.is_empty());
    assert!(!a.in_transaction());
    assert_eq!(
        std::fs::read_dir(dir.path().join("spill")).unwrap().count(),
        0
    );
}

#[test]
fn unchanged_toast_is_named_not_nulled_and_filled_from_a_full_old_row() {
    let (mut a, _d) = assembler();
    let update = B::tag(b'U')
        .i32(16384)
        .u8(b'N')
        .tuple(&[Some("1"), Some("\u{0}u")])
        .0;
    let (recs, _) = feed(
        &mut a,
        &[
            begin(1, 0x10),
            relation(None, b'd'),
            update,
            commit(0x10, 0x20),
        ],
    );
    assert_eq!(recs[0].after.as_deref(), Some(r#"{"id":1}"#));
    assert_eq!(recs[0].unchanged_toast, vec![Arc::<str>::from("big")]);

    a.set_primary_key(16384, vec!["id".into()]);
    let full = B::tag(b'U')
        .i32(16384)
        .u8(b'O')
        .tuple(&[Some("1"), Some("old big")])
        .u8(b'N')
        .tuple(&[Some("1"), Some("\u{0}u")])
        .0;
    let (recs, _) = feed(
        &mut a,
        &[
            begin(2, 0x30),
            relation(None, b'f'),
            full,
            commit(0x30, 0x40),
        ],
    );
    assert_eq!(
        recs[0].after.as_deref(),
        Some(r#"{"id":1,"big":"old big"}"#)
    );
    assert_eq!(
        recs[0].before.as_deref(),
        Some(r#"{"id":1,"big":"old big"}"#)
    );
    assert_eq!(recs[0].key.as_deref(), Some(r#"{"id":1}"#));
    assert!(recs[0].unchanged_toast.is_empty());
}

#[test]
fn unknown_types_ask_for_the_catalog_and_unknown_tags_are_skipped() {
    let (mut a, _d) = assembler();
    let rel = B::tag(b'R')
        .i32(1)
        .s("public")
        .s("e")
        .u8(b'd')
        .i16(1)
        .u8(1)
        .s("mood")
        .i32(99999)
        .i32(-1)
        .0;
    match a.handle(Lsn(1), &rel, &mut |_| {}).unwrap() {
        Handled::NeedCatalog {
            types,
            primary_key_of,
        } => {
            assert_eq!((types, primary_key_of), (vec![99999], None));
        }
        other => panic!("{other:?}"),
    }
    a.types_mut().record(99999, b'e', b'E', 0, 0, b',');
    assert!(matches!(
        a.handle(Lsn(1), &rel, &mut |_| {}).unwrap(),
        Handled::Done
    ));
    assert!(matches!(
        a.handle(Lsn(1), b"Z\x00", &mut |_| {}).unwrap(),
        Handled::Done
    ));
    assert!(
        a.handle(Lsn(1), b"I\x00", &mut |_| {}).is_err(),
        "malformed input is an error"
    );
}

#[test]
fn excluded_columns_never_reach_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let ex: Exclusions = [("public.t".to_string(), ["big".to_string()].into())].into();
    let mut a = Assembler::new(ex, dir.path().join("spill")).unwrap();
    let (recs, _) = feed(
        &mut a,
        &[
            begin(1, 0x10),
            relation(None, b'd'),
            insert(None, "5"),
            commit(0x10, 0x20),
        ],
    );
    assert_eq!(recs[0].after.as_deref(), Some(r#"{"id":5}"#));
}
