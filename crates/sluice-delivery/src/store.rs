//! The embedded log's delivery state ([`RedbState`]): the waiting rooms, the dead
//! letters and the outbox cleaner's deferred rows, in the cursors' redb file.
//!
//! Tables (all keyed by sink first):
//! - `delivery_waiting` (sink, key, offset) → a stored record: the records of keys that
//!   are parked, delayed or being redriven, in their order per key;
//! - `delivery_keys` (sink, key) → [`KeyRow`]: why the key is held, and `upto`, the
//!   offset after the key's last record that reached the waiting room;
//! - `delivery_dead` (sink, offset) → a stored record with the reason it is there;
//! - `delivery_finished` sink → ranges of records finished past the sink's cursor (saved
//!   about once a second), skipped when the log replays them after a crash.
//!
//! Invariants:
//! - A record is written here (and committed) before the sink's cursor moves past it, so
//!   the log may delete it.
//! - `upto` stays in a key's row until the sink's persisted cursor has passed it: after a
//!   crash the log replays records the waiting room already holds (or that an operator
//!   skipped), and the engine drops those below `upto` instead of delivering them.
//! - Value form: u32 LE length of a JSON head, the head, then the record's envelope.

use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sluice_core::{ChangeId, Op};
use sluice_log::CursorStore;

use crate::state::{Change, DeliveryState, KeyRow, SharedState, Store, Stored, WaitingRoom};
use crate::{DeliveryError, Item};

const WAITING: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("delivery_waiting");
const KEYS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("delivery_keys");
const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("delivery_dead");
/// Per sink: ranges of records finished past its cursor, as u64 LE pairs.
const FINISHED: TableDefinition<&str, &[u8]> = TableDefinition::new("delivery_finished");

#[derive(Serialize, Deserialize)]
struct Head {
    offset: u64,
    id: String,
    op: String,
    key: String,
    route: String,
    commit_ts: i64,
    #[serde(default)]
    deliver_at: Option<i64>,
    #[serde(default)]
    expires_at: Option<i64>,
    attempts: u32,
    #[serde(default)]
    last_error: String,
    #[serde(default)]
    reason: String,
    at: i64,
}

/// Why a stored record could not be read back: the waiting room's file is damaged or was
/// written by a version that stored something else. It becomes the cause of a
/// [`DeliveryError::State`]. The texts hold no record's value.
#[derive(Debug, thiserror::Error)]
enum DecodeError {
    #[error("short value")]
    ShortValue,
    #[error("short head")]
    ShortHead,
    #[error("{0}")]
    Head(#[from] serde_json::Error),
    #[error("id: {0}")]
    Id(#[from] sluice_core::ParseError),
    #[error("op")]
    Op,
}

impl Stored {
    fn encode(&self) -> Vec<u8> {
        let i = &self.item;
        let head = Head {
            offset: i.offset,
            id: i.id.to_string(),
            op: i.op.as_str().to_owned(),
            key: i.key.to_string(),
            route: i.route.to_string(),
            commit_ts: i.commit_ts_micros,
            deliver_at: i.deliver_at_micros,
            expires_at: i.expires_at_micros,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            reason: self.reason.clone(),
            at: self.at_micros,
        };
        let head = serde_json::to_vec(&head).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + head.len() + i.json.len());
        out.extend_from_slice(&(head.len() as u32).to_le_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&i.json);
        out
    }

    fn decode(b: &[u8]) -> Result<Stored, DecodeError> {
        let n = b
            .get(..4)
            .map(|n| u32::from_le_bytes(n.try_into().expect("4")) as usize)
            .ok_or(DecodeError::ShortValue)?;
        let head = b.get(4..4 + n).ok_or(DecodeError::ShortHead)?;
        let head: Head = serde_json::from_slice(head)?;
        let id: ChangeId = head.id.parse()?;
        Ok(Stored {
            item: Item {
                offset: head.offset,
                id,
                op: Op::from_name(&head.op).ok_or(DecodeError::Op)?,
                key: head.key.into(),
                route: head.route.into(),
                commit_ts_micros: head.commit_ts,
                deliver_at_micros: head.deliver_at,
                expires_at_micros: head.expires_at,
                json: b[4 + n..].into(),
            },
            attempts: head.attempts,
            last_error: head.last_error,
            reason: head.reason,
            at_micros: head.at,
        })
    }
}

/// Rows whose record a waiting room held when the outbox cleaner reached it, by offset.
const DEFERRED: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox_deferred");

/// The delivery state of a pipeline on the embedded log: tables in the same redb file as
/// the cursors, so a pipeline's sink state is one file.
pub struct RedbState {
    cursors: Arc<CursorStore>,
}

/// One sink's waiting room and dead letters in [`RedbState`].
struct RedbRoom {
    cursors: Arc<CursorStore>,
    sink: Arc<str>,
}

fn err(e: impl Into<sluice_core::BoxError>) -> DeliveryError {
    DeliveryError::State {
        what: "the waiting room",
        source: e.into(),
    }
}

impl RedbState {
    /// The state kept beside the embedded log's cursors (its tables are created here).
    pub fn open(cursors: Arc<CursorStore>) -> Result<SharedState, DeliveryError> {
        let tx = cursors.database().begin_write().map_err(err)?;
        tx.open_table(WAITING).map_err(err)?;
        tx.open_table(KEYS).map_err(err)?;
        tx.open_table(DEAD).map_err(err)?;
        tx.open_table(FINISHED).map_err(err)?;
        tx.open_table(DEFERRED).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Arc::new(RedbState { cursors }))
    }

    fn db(&self) -> &Database {
        self.cursors.database()
    }
}

impl DeliveryState for RedbState {
    fn waiting_room(&self, sink: &str) -> Result<Store, DeliveryError> {
        Ok(Arc::new(RedbRoom {
            cursors: self.cursors.clone(),
            sink: sink.into(),
        }))
    }

    fn retain(&self, names: &[&str]) -> Result<(), DeliveryError> {
        let tx = self.db().begin_write().map_err(err)?;
        {
            let mut waiting = tx.open_table(WAITING).map_err(err)?;
            waiting
                .retain(|(s, _, _), _| names.contains(&s))
                .map_err(err)?;
            let mut keys = tx.open_table(KEYS).map_err(err)?;
            keys.retain(|(s, _), _| names.contains(&s)).map_err(err)?;
            let mut dead = tx.open_table(DEAD).map_err(err)?;
            dead.retain(|(s, _), _| names.contains(&s)).map_err(err)?;
            let mut finished = tx.open_table(FINISHED).map_err(err)?;
            finished.retain(|s, _| names.contains(&s)).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    fn deferred(&self, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(DEFERRED).map_err(err)?;
        let mut rows = Vec::new();
        for e in t.iter().map_err(err)?.take(limit) {
            let (k, v) = e.map_err(err)?;
            rows.push((k.value(), v.value().to_vec()));
        }
        Ok(rows)
    }

    fn update_deferred(&self, remove: &[u64], put: &[(u64, Vec<u8>)]) -> Result<(), DeliveryError> {
        let tx = self.db().begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(DEFERRED).map_err(err)?;
            for offset in remove {
                t.remove(*offset).map_err(err)?;
            }
            for (offset, v) in put {
                t.insert(*offset, v.as_slice()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

impl RedbRoom {
    fn db(&self) -> &Database {
        self.cursors.database()
    }
}

impl WaitingRoom for RedbRoom {
    fn keys(&self) -> Result<Vec<(String, KeyRow)>, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(KEYS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.range((&*self.sink, "")..).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let (sink, key) = k.value();
            if sink != &*self.sink {
                break;
            }
            let r: KeyRow = serde_json::from_slice(v.value())
                .map_err(|e| err(format!("key row {key:?}: {e}")))?;
            out.push((key.to_owned(), r));
        }
        Ok(out)
    }

    fn key(&self, key: &str) -> Result<Option<KeyRow>, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(KEYS).map_err(err)?;
        match t.get((&*self.sink, key)).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    /// The waiting records of `key` from offset `from` on, in order (at most `limit`).
    fn waiting(&self, key: &str, from: u64, limit: usize) -> Result<Vec<Stored>, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(WAITING).map_err(err)?;
        let mut out = Vec::new();
        let range = (&*self.sink, key, from)..=(&*self.sink, key, u64::MAX);
        for row in t.range(range).map_err(err)?.take(limit) {
            let (_, v) = row.map_err(err)?;
            out.push(Stored::decode(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    /// Whether the record at `offset` of `key` is in the waiting room.
    fn holds(&self, key: &str, offset: u64) -> Result<bool, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(WAITING).map_err(err)?;
        Ok(t.get((&*self.sink, key, offset)).map_err(err)?.is_some())
    }

    fn sink(&self) -> &str {
        &self.sink
    }

    /// How many records wait for `key`.
    fn waiting_len(&self, key: &str) -> Result<usize, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(WAITING).map_err(err)?;
        let range = (&*self.sink, key, 0u64)..=(&*self.sink, key, u64::MAX);
        Ok(t.range(range).map_err(err)?.count())
    }

    /// Dead letters from offset `from` on (at most `limit`).
    fn dead(&self, from: u64, limit: usize) -> Result<Vec<Stored>, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(DEAD).map_err(err)?;
        let mut out = Vec::new();
        let range = (&*self.sink, from)..=(&*self.sink, u64::MAX);
        for row in t.range(range).map_err(err)?.take(limit) {
            let (_, v) = row.map_err(err)?;
            out.push(Stored::decode(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    /// Commits `changes` together. `durable = false` lets a later commit carry them to
    /// disk: for removals whose loss in a crash only means a repeated delivery.
    fn apply(&self, changes: &[Change], durable: bool) -> Result<(), DeliveryError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.db().begin_write().map_err(err)?;
        if !durable {
            tx.set_durability(redb::Durability::Eventual);
        }
        {
            let mut waiting = tx.open_table(WAITING).map_err(err)?;
            let mut keys = tx.open_table(KEYS).map_err(err)?;
            let mut dead = tx.open_table(DEAD).map_err(err)?;
            let s = &*self.sink;
            for c in changes {
                match c {
                    Change::PutWaiting(r) => {
                        waiting
                            .insert((s, &*r.item.key, r.item.offset), r.encode().as_slice())
                            .map_err(err)?;
                    }
                    Change::DelWaiting(k, o) => {
                        waiting.remove((s, &**k, *o)).map_err(err)?;
                    }
                    Change::PutKey(k, row) => {
                        let v = serde_json::to_vec(row).map_err(err)?;
                        keys.insert((s, &**k), v.as_slice()).map_err(err)?;
                    }
                    Change::DelKey(k) => {
                        keys.remove((s, &**k)).map_err(err)?;
                    }
                    Change::PutDead(r) => {
                        dead.insert((s, r.item.offset), r.encode().as_slice())
                            .map_err(err)?;
                    }
                    Change::DelDead(o) => {
                        dead.remove((s, *o)).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }

    fn finished(&self) -> Result<Vec<(u64, u64)>, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(FINISHED).map_err(err)?;
        let Some(v) = t.get(&*self.sink).map_err(err)? else {
            return Ok(Vec::new());
        };
        let bytes = v.value();
        if bytes.len() % 16 != 0 {
            return Err(err(format!(
                "finished ranges of {:?}: {} bytes",
                self.sink,
                bytes.len()
            )));
        }
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
        Ok(bytes
            .chunks_exact(16)
            .map(|c| (word(&c[..8]), word(&c[8..])))
            .collect())
    }

    fn save_finished(&self, ranges: &[(u64, u64)]) -> Result<(), DeliveryError> {
        let mut v = Vec::with_capacity(ranges.len() * 16);
        for (start, end) in ranges {
            v.extend_from_slice(&start.to_le_bytes());
            v.extend_from_slice(&end.to_le_bytes());
        }
        let tx = self.db().begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(FINISHED).map_err(err)?;
            if v.is_empty() {
                t.remove(&*self.sink).map_err(err)?;
            } else {
                t.insert(&*self.sink, v.as_slice()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}
