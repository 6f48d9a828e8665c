//! Where a pipeline keeps its source's durable state (snapshot and backfill plans, the
//! slot's record), as a seam: a file in the data directory by default, a key-value
//! bucket beside a JetStream log, so a standby on another machine finds it.
//!
//! Invariants every store keeps:
//! - `put` and `remove` are durable when they return.
//! - `scan` returns every key with the prefix, in key order.
//! - Errors say whether a retry can help ([`ErrorClass`]): a local file's failure is
//!   definite, a server that does not answer is transient.

use crate::{BoxError, ErrorClass};

/// A failure of a [`StateStore`], with its class.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct StoreError {
    pub class: ErrorClass,
    #[source]
    pub source: BoxError,
}

/// Raw bytes under string keys.
pub trait StateStore: Send + Sync {
    /// Where the state is, for messages (a path, a bucket).
    fn location(&self) -> String;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn remove(&self, key: &str) -> Result<(), StoreError>;
    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}
