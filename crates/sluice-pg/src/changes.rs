//! Turns decoded pgoutput messages into change records: the relation cache (schema changes
//! are picked up whenever a Relation message arrives), row images as JSON, column
//! exclusions, transaction boundaries, and streamed in-progress transactions, which are
//! spilled to disk until their commit.
//!
//! Invariants:
//! - Records come out in commit order with ordinals 1, 2, ... per transaction; a streamed
//!   transaction's records come out only at its Stream Commit, and never if it aborts
//!   (aborted subtransactions are left out).
//! - An unchanged TOAST value is never written as null: it is filled from the old row when
//!   PostgreSQL sent one (REPLICA IDENTITY FULL), otherwise left out of `after` and named
//!   in `unchanged_toast`.
//! - Excluded columns never reach a record.
//! - Memory does not grow with the size of a transaction: records are handed to the
//!   caller one at a time, and streamed ones wait on disk.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use sluice_core::{
    pg_epoch_to_unix_micros, ChangeId, ChangeRecord, LogicalMessage, Lsn, Op, OUTBOX_PREFIX,
};

use crate::error::PgError;
use crate::pgoutput::{self, Message, OldTuple, TupleData, TupleValue};
use crate::values::{write_json, write_json_string, TypeKind, TypeRegistry};

/// Columns to leave out, by `schema.table`.
pub type Exclusions = HashMap<String, BTreeSet<String>>;

#[derive(serde::Deserialize)]
struct OutboxTopic<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
}

/// What the caller must do after handing a message to [`Assembler::handle`].
#[derive(Debug)]
pub enum Handled {
    /// Nothing more.
    Done,
    /// A transaction committed; everything before `end_lsn` has been emitted.
    Commit { end_lsn: Lsn },
    /// The Relation message needs catalog facts first: resolve these type OIDs (and the
    /// primary key of `primary_key_of`), record them, and hand the same message again.
    NeedCatalog {
        types: Vec<u32>,
        primary_key_of: Option<u32>,
    },
    /// A streamed transaction committed: emit its records from the replay, then treat it
    /// as a commit at `end_lsn`.
    Replay { replay: Replay, end_lsn: Lsn },
}

struct Column {
    name: Arc<str>,
    /// `"name":` ready to splice into a JSON object.
    json_key: Box<[u8]>,
    kind: TypeKind,
    key: bool,
    excluded: bool,
}

struct Relation {
    schema: Arc<str>,
    table: Arc<str>,
    columns: Vec<Column>,
}

struct Txn {
    xid: u32,
    commit_lsn: Lsn,
    commit_ts: i64,
    ordinal: u64,
}

/// A record of a streamed transaction waiting on disk for its commit.
struct Spill {
    file: BufWriter<std::fs::File>,
    path: PathBuf,
    aborted_subxacts: HashSet<u32>,
    count: u64,
}

/// Assembles committed transactions out of pgoutput messages.
pub struct Assembler {
    relations: HashMap<u32, Relation>,
    types: TypeRegistry,
    primary_keys: HashMap<u32, Vec<String>>,
    exclusions: Exclusions,
    txn: Option<Txn>,
    in_stream: bool,
    stream_xid: u32,
    spills: HashMap<u32, Spill>,
    spill_dir: PathBuf,
    /// Deliver every logical message (`None`), or only those with these prefixes. A
    /// message left out takes no ordinal, so transactions keep ordinals 1..n.
    message_prefixes: Option<Vec<String>>,
}

impl Assembler {
    /// `spill_dir` holds streamed transactions until they commit; it is emptied here,
    /// since a restart re-streams anything that was not confirmed.
    pub fn new(exclusions: Exclusions, spill_dir: PathBuf) -> std::io::Result<Self> {
        if spill_dir.exists() {
            std::fs::remove_dir_all(&spill_dir)?;
        }
        std::fs::create_dir_all(&spill_dir)?;
        Ok(Assembler {
            relations: HashMap::new(),
            types: TypeRegistry::new(),
            primary_keys: HashMap::new(),
            exclusions,
            txn: None,
            in_stream: false,
            stream_xid: 0,
            spills: HashMap::new(),
            spill_dir,
            message_prefixes: None,
        })
    }

    /// Forgets transaction state after the connection was lost: the server sends every
    /// unconfirmed transaction again, with its Relation messages.
    pub fn reset(&mut self) {
        self.txn = None;
        self.in_stream = false;
        for (_, s) in self.spills.drain() {
            let _ = std::fs::remove_file(&s.path);
        }
        self.relations.clear();
    }

    /// Whether a transaction is open (received in part, not yet committed).
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some() || !self.spills.is_empty()
    }

    /// Keeps only logical messages whose prefix is one of `prefixes`.
    pub fn keep_messages_only(&mut self, prefixes: Vec<String>) {
        self.message_prefixes = Some(prefixes);
    }

    pub fn types_mut(&mut self) -> &mut TypeRegistry {
        &mut self.types
    }

    pub fn set_primary_key(&mut self, relation: u32, columns: Vec<String>) {
        self.primary_keys.insert(relation, columns);
    }

    /// Handles one pgoutput message that started at `wal_start`; records go to `emit`.
    pub fn handle(
        &mut self,
        wal_start: Lsn,
        data: &[u8],
        emit: &mut dyn FnMut(ChangeRecord),
    ) -> Result<Handled, PgError> {
        let msg = match pgoutput::decode(data, self.in_stream) {
            Ok(m) => m,
            // A message type from a newer protocol than we asked for carries nothing we
            // could deliver; skipping it loses nothing we know of, stopping would stall.
            Err(pgoutput::DecodeError::UnknownTag(tag)) => {
                tracing::warn!(tag = %(tag as char), lsn = %wal_start, "skipping unknown pgoutput message");
                return Ok(Handled::Done);
            }
            Err(e) => return Err(e.into()),
        };
        match msg {
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                self.txn = Some(Txn {
                    xid,
                    commit_lsn: Lsn(final_lsn),
                    commit_ts,
                    ordinal: 0,
                });
            }
            Message::Commit { end_lsn, .. } => {
                self.txn = None;
                return Ok(Handled::Commit {
                    end_lsn: Lsn(end_lsn),
                });
            }
            Message::Origin { .. } | Message::Type { .. } => {}
            Message::Relation(rel) => return self.relation(rel),
            Message::Insert { xid, relation, new } => {
                self.on_insert(xid, wal_start, relation, &new, emit)?
            }
            Message::Update {
                xid,
                relation,
                old,
                new,
            } => self.on_update(xid, wal_start, relation, old.as_ref(), &new, emit)?,
            Message::Delete { xid, relation, old } => {
                self.on_delete(xid, wal_start, relation, &old, emit)?
            }
            Message::Truncate { xid, relations, .. } => {
                for relation in relations {
                    self.relation_of(relation)?;
                    let change = Change::new(xid, wal_start, Op::Truncate);
                    self.change(relation, change, emit)?;
                }
            }
            Message::Message {
                xid,
                transactional,
                lsn,
                prefix,
                content,
            } => self.on_message(xid, transactional, Lsn(lsn), prefix, content, emit)?,
            Message::StreamStart { xid, .. } => self.on_stream_start(xid)?,
            Message::StreamStop => self.in_stream = false,
            Message::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    if let Some(s) = self.spills.remove(&xid) {
                        let _ = std::fs::remove_file(&s.path);
                    }
                } else if let Some(s) = self.spills.get_mut(&xid) {
                    s.aborted_subxacts.insert(subxid);
                }
            }
            Message::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_ts,
                ..
            } => return self.on_stream_commit(xid, Lsn(commit_lsn), Lsn(end_lsn), commit_ts),
        }
        Ok(Handled::Done)
    }

    fn on_insert(
        &mut self,
        xid: Option<u32>,
        lsn: Lsn,
        relation: u32,
        new: &TupleData<'_>,
        emit: &mut dyn FnMut(ChangeRecord),
    ) -> Result<(), PgError> {
        let rel = self.relation_of(relation)?;
        let mut change = Change::new(xid, lsn, Op::Insert);
        change.after = Some(row_json(
            rel,
            new,
            false,
            None,
            &mut change.unchanged_toast,
        )?);
        change.key = Some(key_json(rel, new)?);
        self.change(relation, change, emit)
    }

    fn on_update(
        &mut self,
        xid: Option<u32>,
        lsn: Lsn,
        relation: u32,
        old: Option<&OldTuple<'_>>,
        new: &TupleData<'_>,
        emit: &mut dyn FnMut(ChangeRecord),
    ) -> Result<(), PgError> {
        let rel = self.relation_of(relation)?;
        let mut change = Change::new(xid, lsn, Op::Update);
        let full_old = match old {
            Some(OldTuple::Full(t)) => {
                change.before = Some(row_json(rel, t, false, None, &mut Vec::new())?);
                Some(t)
            }
            Some(OldTuple::Key(t)) => {
                change.before = Some(row_json(rel, t, true, None, &mut Vec::new())?);
                None
            }
            None => None,
        };
        change.after = Some(row_json(
            rel,
            new,
            false,
            full_old,
            &mut change.unchanged_toast,
        )?);
        let key = key_json(rel, new)?;
        // A key that changed: the old one goes too, so a cache can drop it.
        change.old_key = match old {
            Some(OldTuple::Full(t) | OldTuple::Key(t)) => {
                Some(key_json(rel, t)?).filter(|k| *k != key)
            }
            None => None,
        };
        change.key = Some(key);
        self.change(relation, change, emit)
    }

    fn on_delete(
        &mut self,
        xid: Option<u32>,
        lsn: Lsn,
        relation: u32,
        old: &OldTuple<'_>,
        emit: &mut dyn FnMut(ChangeRecord),
    ) -> Result<(), PgError> {
        let rel = self.relation_of(relation)?;
        let (before, tuple) = match old {
            OldTuple::Full(t) => (row_json(rel, t, false, None, &mut Vec::new())?, t),
            OldTuple::Key(t) => (row_json(rel, t, true, None, &mut Vec::new())?, t),
        };
        let mut change = Change::new(xid, lsn, Op::Delete);
        change.key = Some(key_json(rel, tuple)?);
        change.before = Some(before);
        self.change(relation, change, emit)
    }

    /// A logical decoding message: in its transaction, or (not transactional) on its own
    /// at once, its own position its identity.
    fn on_message(
        &mut self,
        xid: Option<u32>,
        transactional: bool,
        lsn: Lsn,
        prefix: &str,
        content: &[u8],
        emit: &mut dyn FnMut(ChangeRecord),
    ) -> Result<(), PgError> {
        if let Some(keep) = &self.message_prefixes {
            if !keep.iter().any(|p| p == prefix) {
                return Ok(());
            }
        }
        let message = LogicalMessage {
            prefix: prefix.to_owned(),
            content: content.to_vec(),
            transactional,
        };
        if !transactional {
            emit(ChangeRecord {
                id: ChangeId {
                    commit_lsn: lsn,
                    ordinal: 0,
                },
                op: Op::Message,
                schema: "".into(),
                table: "".into(),
                key: None,
                before: None,
                after: None,
                unchanged_toast: Vec::new(),
                lsn,
                commit_lsn: lsn,
                commit_ts_micros: pg_epoch_to_unix_micros(crate::replication::pg_now_micros()),
                xid: xid.unwrap_or(0),
                message: Some(message),
                old_key: None,
            });
            return Ok(());
        }
        let mut change = Change::new(xid, lsn, Op::Message);
        // The log frame names an outbox event's topic (as the table, the prefix as the
        // schema), so sinks route it by topic without parsing its JSON.
        change.table = (prefix == OUTBOX_PREFIX).then(|| {
            let topic = serde_json::from_slice::<OutboxTopic<'_>>(content)
                .map(|t| t.topic.into_owned())
                .unwrap_or_default();
            (Arc::<str>::from(prefix), Arc::<str>::from(topic))
        });
        change.message = Some(message);
        self.emit_or_spill(change, emit)
    }

    /// A streamed (in-progress) transaction's part begins: its changes go to its spill
    /// file until it commits.
    fn on_stream_start(&mut self, xid: u32) -> Result<(), PgError> {
        self.in_stream = true;
        self.stream_xid = xid;
        if !self.spills.contains_key(&xid) {
            let path = self.spill_dir.join(format!("{xid}.spill"));
            let file = BufWriter::with_capacity(256 * 1024, std::fs::File::create(&path)?);
            self.spills.insert(
                xid,
                Spill {
                    file,
                    path,
                    aborted_subxacts: HashSet::new(),
                    count: 0,
                },
            );
        }
        Ok(())
    }

    /// A streamed transaction committed: its spilled changes are replayed in order.
    fn on_stream_commit(
        &mut self,
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    ) -> Result<Handled, PgError> {
        let Some(mut spill) = self.spills.remove(&xid) else {
            // Everything it did was filtered out or it was empty.
            return Ok(Handled::Commit { end_lsn });
        };
        spill.file.flush()?;
        let file = spill.file.into_inner().map_err(|e| e.into_error())?;
        drop(file);
        let reader = BufReader::with_capacity(256 * 1024, std::fs::File::open(&spill.path)?);
        // Unlinked now: the open reader keeps the data until it is dropped.
        let _ = std::fs::remove_file(&spill.path);
        Ok(Handled::Replay {
            replay: Replay {
                reader,
                remaining: spill.count,
                aborted: spill.aborted_subxacts,
                xid,
                commit_lsn,
                commit_ts,
                ordinal: 0,
            },
            end_lsn,
        })
    }

    fn relation_of(&self, oid: u32) -> Result<&Relation, PgError> {
        self.relations.get(&oid).ok_or_else(|| {
            PgError::Protocol(format!(
                "change for relation {oid} before its Relation message"
            ))
        })
    }

    fn relation(&mut self, rel: pgoutput::Relation<'_>) -> Result<Handled, PgError> {
        let unknown: Vec<u32> = rel
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| !self.types.knows(*oid))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let full = rel.replica_identity == b'f';
        let pk_missing = full && !self.primary_keys.contains_key(&rel.oid);
        if !unknown.is_empty() || pk_missing {
            return Ok(Handled::NeedCatalog {
                types: unknown,
                primary_key_of: pk_missing.then_some(rel.oid),
            });
        }
        let qualified = format!("{}.{}", rel.namespace, rel.name);
        let excluded = self.exclusions.get(&qualified);
        // With REPLICA IDENTITY FULL every column is flagged as identity; the record's key
        // is the primary key then, or the whole row if there is none.
        let pk = self
            .primary_keys
            .get(&rel.oid)
            .filter(|pk| full && !pk.is_empty());
        let columns = rel
            .columns
            .iter()
            .map(|c| {
                let mut json_key = Vec::with_capacity(c.name.len() + 3);
                write_json_string(c.name.as_bytes(), &mut json_key);
                json_key.push(b':');
                Column {
                    name: c.name.into(),
                    json_key: json_key.into_boxed_slice(),
                    kind: self.types.kind(c.type_oid),
                    key: match pk {
                        Some(pk) => pk.iter().any(|k| k == c.name),
                        None => c.flags & 1 == 1,
                    },
                    excluded: excluded.is_some_and(|ex| ex.contains(c.name)),
                }
            })
            .collect();
        self.relations.insert(
            rel.oid,
            Relation {
                schema: rel.namespace.into(),
                table: rel.name.into(),
                columns,
            },
        );
        Ok(Handled::Done)
    }

    /// A change of `relation`'s rows: named by its table.
    fn change(
        &mut self,
        relation: u32,
        mut change: Change,
        emit: &mut dyn FnMut(ChangeRecord),
    ) -> Result<(), PgError> {
        let rel = self.relation_of(relation)?;
        change.table = Some((rel.schema.clone(), rel.table.clone()));
        self.emit_or_spill(change, emit)
    }

    /// Emits `change` as the next of its transaction, or spills it while its
    /// transaction is streamed (not yet committed).
    fn emit_or_spill(
        &mut self,
        change: Change,
        emit: &mut dyn FnMut(ChangeRecord),
    ) -> Result<(), PgError> {
        let Change {
            xid,
            lsn,
            op,
            table,
            key,
            old_key,
            before,
            after,
            unchanged_toast,
            message,
        } = change;
        let (schema, table) = table.unwrap_or_else(|| ("".into(), "".into()));
        if self.in_stream {
            let spill = self.spills.get_mut(&self.stream_xid).ok_or_else(|| {
                PgError::Protocol("streamed change outside a Stream Start".into())
            })?;
            let entry = SpillEntry {
                subxid: xid.unwrap_or(self.stream_xid),
                op,
                schema: &schema,
                table: &table,
                key: key.as_deref(),
                old_key: old_key.as_deref(),
                before: before.as_deref(),
                after: after.as_deref(),
                unchanged: &unchanged_toast,
                lsn,
                message: message.as_ref(),
            };
            entry.write(&mut spill.file)?;
            spill.count += 1;
            return Ok(());
        }
        let txn = self
            .txn
            .as_mut()
            .ok_or_else(|| PgError::Protocol("change outside a transaction".into()))?;
        txn.ordinal += 1;
        emit(ChangeRecord {
            id: ChangeId {
                commit_lsn: txn.commit_lsn,
                ordinal: txn.ordinal,
            },
            op,
            schema,
            table,
            key,
            before,
            after,
            unchanged_toast,
            lsn,
            commit_lsn: txn.commit_lsn,
            commit_ts_micros: pg_epoch_to_unix_micros(txn.commit_ts),
            xid: txn.xid,
            message,
            old_key,
        });
        Ok(())
    }
}

/// One change as decoded, before it gets its place in its transaction.
struct Change {
    /// The (sub)transaction of a streamed change.
    xid: Option<u32>,
    lsn: Lsn,
    op: Op,
    /// Schema and table (for an outbox message: its prefix and topic).
    table: Option<(Arc<str>, Arc<str>)>,
    key: Option<String>,
    /// The key before an update that changed it.
    old_key: Option<String>,
    before: Option<String>,
    after: Option<String>,
    unchanged_toast: Vec<Arc<str>>,
    message: Option<LogicalMessage>,
}

impl Change {
    fn new(xid: Option<u32>, lsn: Lsn, op: Op) -> Change {
        Change {
            xid,
            lsn,
            op,
            table: None,
            key: None,
            old_key: None,
            before: None,
            after: None,
            unchanged_toast: Vec::new(),
            message: None,
        }
    }
}

/// Appends a JSON object of the tuple's columns (only key columns with `keys_only`).
/// Unchanged TOAST values are taken from `old` when it has them, else named in `unchanged`.
fn row_json(
    rel: &Relation,
    tuple: &TupleData<'_>,
    keys_only: bool,
    old: Option<&TupleData<'_>>,
    unchanged: &mut Vec<Arc<str>>,
) -> Result<String, PgError> {
    if tuple.columns.len() != rel.columns.len() {
        return Err(PgError::Protocol(format!(
            "{}.{}: tuple has {} columns, its Relation message {}",
            rel.schema,
            rel.table,
            tuple.columns.len(),
            rel.columns.len()
        )));
    }
    // Sized from the values so the buffer is allocated once (escaping may still grow it).
    let size: usize = rel
        .columns
        .iter()
        .zip(&tuple.columns)
        .map(|(c, v)| {
            c.json_key.len()
                + 4
                + match v {
                    TupleValue::Text(t) | TupleValue::Binary(t) => t.len() * 4 / 3 + 2,
                    _ => 4,
                }
        })
        .sum();
    let mut out = Vec::with_capacity(size + 2);
    out.push(b'{');
    let mut first = true;
    for (i, (col, val)) in rel.columns.iter().zip(&tuple.columns).enumerate() {
        if col.excluded || (keys_only && !col.key) {
            continue;
        }
        let val = match val {
            TupleValue::UnchangedToast => match old.and_then(|o| o.columns.get(i)) {
                Some(v @ (TupleValue::Text(_) | TupleValue::Binary(_) | TupleValue::Null)) => v,
                _ => {
                    unchanged.push(col.name.clone());
                    continue;
                }
            },
            v => v,
        };
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&col.json_key);
        write_value(&col.kind, val, &mut out);
    }
    out.push(b'}');
    // Built only from ASCII framing and write_json/write_json_string output, which is UTF-8.
    String::from_utf8(out).map_err(|_| PgError::Protocol("row image is not UTF-8".into()))
}

fn key_json(rel: &Relation, tuple: &TupleData<'_>) -> Result<String, PgError> {
    row_json(rel, tuple, true, None, &mut Vec::new())
}

fn write_value(kind: &TypeKind, val: &TupleValue<'_>, out: &mut Vec<u8>) {
    match val {
        TupleValue::Null | TupleValue::UnchangedToast => out.extend_from_slice(b"null"),
        TupleValue::Text(text) => {
            if write_json(kind, text, out).is_err() {
                // A value we cannot map is still delivered, as its text form.
                write_json_string(text, out);
            }
        }
        TupleValue::Binary(bytes) => {
            use base64::Engine;
            out.push(b'"');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .as_bytes(),
            );
            out.push(b'"');
        }
    }
}

/// The on-disk form of a streamed change: length-prefixed fields, little-endian.
struct SpillEntry<'a> {
    subxid: u32,
    op: Op,
    schema: &'a str,
    table: &'a str,
    key: Option<&'a str>,
    old_key: Option<&'a str>,
    before: Option<&'a str>,
    after: Option<&'a str>,
    unchanged: &'a [Arc<str>],
    lsn: Lsn,
    message: Option<&'a LogicalMessage>,
}

impl SpillEntry<'_> {
    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.subxid.to_le_bytes())?;
        w.write_all(&[self.op.code()])?;
        w.write_all(&self.lsn.0.to_le_bytes())?;
        put_bytes(w, Some(self.schema.as_bytes()))?;
        put_bytes(w, Some(self.table.as_bytes()))?;
        put_bytes(w, self.key.map(str::as_bytes))?;
        put_bytes(w, self.old_key.map(str::as_bytes))?;
        put_bytes(w, self.before.map(str::as_bytes))?;
        put_bytes(w, self.after.map(str::as_bytes))?;
        w.write_all(&(self.unchanged.len() as u32).to_le_bytes())?;
        for c in self.unchanged {
            put_bytes(w, Some(c.as_bytes()))?;
        }
        match self.message {
            None => w.write_all(&[0]),
            Some(m) => {
                w.write_all(&[1 + m.transactional as u8])?;
                put_bytes(w, Some(m.prefix.as_bytes()))?;
                put_bytes(w, Some(&m.content))
            }
        }
    }
}

fn put_bytes(w: &mut impl Write, b: Option<&[u8]>) -> std::io::Result<()> {
    match b {
        None => w.write_all(&u32::MAX.to_le_bytes()),
        Some(b) => {
            w.write_all(&(b.len() as u32).to_le_bytes())?;
            w.write_all(b)
        }
    }
}

/// The records of a committed streamed transaction, read back from its spill file.
pub struct Replay {
    reader: BufReader<std::fs::File>,
    remaining: u64,
    aborted: HashSet<u32>,
    xid: u32,
    commit_lsn: Lsn,
    commit_ts: i64,
    ordinal: u64,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("xid", &self.xid)
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl Replay {
    /// The next record in commit order, or `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<ChangeRecord>, PgError> {
        while self.remaining > 0 {
            self.remaining -= 1;
            let r = &mut self.reader;
            let subxid = u32::from_le_bytes(get_array(r)?);
            let [op] = get_array::<1>(r)?;
            let lsn = Lsn(u64::from_le_bytes(get_array(r)?));
            let schema = get_string(r)?.unwrap_or_default();
            let table = get_string(r)?.unwrap_or_default();
            let key = get_string(r)?;
            let old_key = get_string(r)?;
            let before = get_string(r)?;
            let after = get_string(r)?;
            let n = u32::from_le_bytes(get_array(r)?);
            let mut unchanged_toast = Vec::new();
            for _ in 0..n {
                unchanged_toast.push(Arc::from(get_string(r)?.unwrap_or_default()));
            }
            let [m] = get_array::<1>(r)?;
            let message = if m == 0 {
                None
            } else {
                let prefix = get_string(r)?.unwrap_or_default();
                let content = get_bytes(r)?.unwrap_or_default();
                Some(LogicalMessage {
                    prefix,
                    content,
                    transactional: m == 2,
                })
            };
            if self.aborted.contains(&subxid) {
                continue;
            }
            // Written by `SpillEntry::write` from `Op::code`.
            let op = Op::from_code(op).unwrap_or(Op::Message);
            self.ordinal += 1;
            return Ok(Some(ChangeRecord {
                id: ChangeId {
                    commit_lsn: self.commit_lsn,
                    ordinal: self.ordinal,
                },
                op,
                schema: schema.into(),
                table: table.into(),
                key,
                before,
                after,
                unchanged_toast,
                lsn,
                commit_lsn: self.commit_lsn,
                commit_ts_micros: pg_epoch_to_unix_micros(self.commit_ts),
                xid: self.xid,
                message,
                old_key,
            }));
        }
        Ok(None)
    }
}

fn get_array<const N: usize>(r: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn get_bytes(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let len = u32::from_le_bytes(get_array(r)?);
    if len == u32::MAX {
        return Ok(None);
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b)?;
    Ok(Some(b))
}

fn get_string(r: &mut impl Read) -> std::io::Result<Option<String>> {
    get_bytes(r)?
        .map(|b| {
            String::from_utf8(b)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .transpose()
}

#[cfg(test)]
#[path = "changes_tests.rs"]
mod tests;
