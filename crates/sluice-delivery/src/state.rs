//! The delivery state seam: where a pipeline keeps what its sinks hold outside the log
//! (the waiting rooms, the dead letters, the outbox cleaner's deferred rows). The engine,
//! the cleaner and the API see it only through [`DeliveryState`] and [`WaitingRoom`];
//! [`crate::RedbState`] (beside the embedded log's cursors) is the first implementation,
//! and a second log backend brings its own (a key-value bucket beside its stream).
//!
//! Invariants every implementation keeps:
//! - [`WaitingRoom::apply`] commits its changes together, and durably when asked: the
//!   engine moves a sink's cursor past a record only after the record is stored.
//! - Records of one key come back from [`WaitingRoom::waiting`] in position order.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{DeliveryError, Item};

/// One sink's waiting room and dead letters.
pub trait WaitingRoom: Send + Sync {
    /// The sink's name.
    fn sink(&self) -> &str;
    /// Every key row of the sink.
    fn keys(&self) -> Result<Vec<(String, KeyRow)>, DeliveryError>;
    /// The row of `key`, if it is held or marked.
    fn key(&self, key: &str) -> Result<Option<KeyRow>, DeliveryError>;
    /// The waiting records of `key` from position `from` on, in order (at most `limit`).
    fn waiting(&self, key: &str, from: u64, limit: usize) -> Result<Vec<Stored>, DeliveryError>;
    /// Whether the record at `offset` of `key` is in the waiting room.
    fn holds(&self, key: &str, offset: u64) -> Result<bool, DeliveryError>;
    /// How many records wait for `key`.
    fn waiting_len(&self, key: &str) -> Result<usize, DeliveryError>;
    /// Dead letters from position `from` on (at most `limit`).
    fn dead(&self, from: u64, limit: usize) -> Result<Vec<Stored>, DeliveryError>;
    /// Commits `changes` together. `durable = false` lets a later commit carry them to
    /// disk: for removals whose loss in a crash only means a repeated delivery.
    fn apply(&self, changes: &[Change], durable: bool) -> Result<(), DeliveryError>;
    /// The records finished past the sink's cursor as last saved: `[start, end)` ranges
    /// of positions, ascending.
    fn finished(&self) -> Result<Vec<(u64, u64)>, DeliveryError>;
    /// Replaces (durably) the saved ranges of records finished past the cursor.
    fn save_finished(&self, ranges: &[(u64, u64)]) -> Result<(), DeliveryError>;
}

/// A sink's waiting room, shared by its engine, the cleaner and the API.
pub type Store = Arc<dyn WaitingRoom>;

/// A pipeline's delivery state.
pub trait DeliveryState: Send + Sync + 'static {
    /// The waiting room of sink `sink`.
    fn waiting_room(&self, sink: &str) -> Result<Store, DeliveryError>;
    /// Removes everything of sinks not in `names` (sinks taken out of the config).
    fn retain(&self, names: &[&str]) -> Result<(), DeliveryError>;
    /// The outbox cleaner's deferred rows (position, encoded row), oldest first.
    fn deferred(&self, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, DeliveryError>;
    /// Removes and writes deferred rows in one commit.
    fn update_deferred(&self, remove: &[u64], put: &[(u64, Vec<u8>)]) -> Result<(), DeliveryError>;
}

/// A pipeline's delivery state, shared.
pub type SharedState = Arc<dyn DeliveryState>;

/// Why a key is in the waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
