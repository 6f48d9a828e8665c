//! The waiting room and the dead letters, in the cursors' redb file.
//!
//! Tables (all keyed by sink first):
//! - `delivery_waiting` (sink, key, offset) → a stored record: the records of keys that
//!   are parked, delayed or being redriven, in their order per key;
//! - `delivery_keys` (sink, key) → [`KeyRow`]: why the key is held, and `upto`, the
//!   offset after the key's last record that reached the waiting room;
//! - `delivery_dead` (sink, offset) → a stored record with the reason it is there.
//!
//! Invariants:
//! - A record is written here (and committed) before the sink's cursor moves past it, so
//!   the log may delete it.
//! - `upto` stays in a key's row until the sink's persisted cursor has passed it: after a
//!   crash the log replays records the waiting room already holds (or that an operator
//!   skipped), and the engine drops those below `upto` instead of delivering them.
//! - Value form: u32 LE length of a JSON head, the head, then the record's envelope.

use std::sync::Arc;

use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};
use sluice_core::{ChangeId, Op};
use sluice_log::CursorStore;

use crate::{DeliveryError, Item};

const WAITING: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("delivery_waiting");
const KEYS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("delivery_keys");
const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("delivery_dead");

/// Why a key is in the waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Retries ran out; held until an operator redrives or skips it.
    Parked,
    /// Its next record has a `deliver_at` in the future; released then.
    Delayed,
    /// Being delivered again from the waiting room, before the key's newer records.
    Released,
    /// Nothing held; only the `upto` mark remains until the cursor passes it.
    Done,
}

/// A key's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow {
    pub state: KeyState,
    pub upto: u64,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: String,
    /// When it was parked or delayed (µs since the epoch).
    #[serde(default)]
    pub since_micros: i64,
    /// Delayed until (µs since the epoch).
    #[serde(default)]
    pub until_micros: Option<i64>,
}

/// A record kept in the waiting room or the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub item: Item,
    pub attempts: u32,
    pub last_error: String,
    /// Dead letters: `exhausted`, `rejected`, `expired`, `skipped` or `malformed`.
    pub reason: String,
    /// When it was stored (µs since the epoch).
    pub at_micros: i64,
}

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

    fn decode(b: &[u8]) -> Result<Stored, String> {
        let n = b
            .get(..4)
            .map(|n| u32::from_le_bytes(n.try_into().expect("4")) as usize)
            .ok_or("short value")?;
        let head = b.get(4..4 + n).ok_or("short head")?;
        let head: Head = serde_json::from_slice(head).map_err(|e| e.to_string())?;
        let id: ChangeId = head.id.parse().map_err(|e| format!("id: {e}"))?;
        Ok(Stored {
            item: Item {
                offset: head.offset,
                id,
                op: Op::from_name(&head.op).ok_or("op")?,
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

/// One change to the store; a list of them commits together.
#[derive(Debug)]
pub enum Change {
    PutWaiting(Stored),
    DelWaiting(Box<str>, u64),
    PutKey(Box<str>, KeyRow),
    DelKey(Box<str>),
    PutDead(Stored),
    DelDead(u64),
}

/// One sink's waiting room and dead letters.
#[derive(Clone)]
pub struct Store {
    cursors: Arc<CursorStore>,
    sink: Arc<str>,
}

fn err(e: impl Into<sluice_core::BoxError>) -> DeliveryError {
    DeliveryError::State {
        what: "the waiting room",
        source: e.into(),
    }
}

impl Store {
    pub fn open(cursors: Arc<CursorStore>, sink: &str) -> Result<Store, DeliveryError> {
        let store = Store {
            cursors,
            sink: sink.into(),
        };
        let tx = store.db().begin_write().map_err(err)?;
        tx.open_table(WAITING).map_err(err)?;
        tx.open_table(KEYS).map_err(err)?;
        tx.open_table(DEAD).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(store)
    }

    fn db(&self) -> &Database {
        self.cursors.database()
    }

    /// Every key row of the sink.
    pub fn keys(&self) -> Result<Vec<(String, KeyRow)>, DeliveryError> {
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

    pub fn key(&self, key: &str) -> Result<Option<KeyRow>, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(KEYS).map_err(err)?;
        match t.get((&*self.sink, key)).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    /// The waiting records of `key` from offset `from` on, in order (at most `limit`).
    pub fn waiting(
        &self,
        key: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, DeliveryError> {
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
    pub fn holds(&self, key: &str, offset: u64) -> Result<bool, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(WAITING).map_err(err)?;
        Ok(t.get((&*self.sink, key, offset)).map_err(err)?.is_some())
    }

    /// The sink's name.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// How many records wait for `key`.
    pub fn waiting_len(&self, key: &str) -> Result<usize, DeliveryError> {
        let tx = self.db().begin_read().map_err(err)?;
        let t = tx.open_table(WAITING).map_err(err)?;
        let range = (&*self.sink, key, 0u64)..=(&*self.sink, key, u64::MAX);
        Ok(t.range(range).map_err(err)?.count())
    }

    /// Dead letters from offset `from` on (at most `limit`).
    pub fn dead(&self, from: u64, limit: usize) -> Result<Vec<Stored>, DeliveryError> {
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
    pub fn apply(&self, changes: &[Change], durable: bool) -> Result<(), DeliveryError> {
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

    /// Removes everything of sinks not in `names` (a sink taken out of the config).
    pub fn retain(cursors: &CursorStore, names: &[&str]) -> Result<(), DeliveryError> {
        let db = cursors.database();
        let tx = db.begin_write().map_err(err)?;
        {
            let mut waiting = tx.open_table(WAITING).map_err(err)?;
            waiting
                .retain(|(s, _, _), _| names.contains(&s))
                .map_err(err)?;
            let mut keys = tx.open_table(KEYS).map_err(err)?;
            keys.retain(|(s, _), _| names.contains(&s)).map_err(err)?;
            let mut dead = tx.open_table(DEAD).map_err(err)?;
            dead.retain(|(s, _), _| names.contains(&s)).map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}
