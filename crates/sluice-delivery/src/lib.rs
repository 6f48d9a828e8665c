//! The delivery engine (docs/GUARANTEES.md, "Delivery to services"): it reads a sink's records from the
//! log and hands them to a [`Target`] (webhook, pull consumers, ...) with per-key order,
//! retries with backoff and full jitter, a durable waiting room, dead letters, delays,
//! TTLs, and concurrency and rate limits.
//!
//! Invariants:
//! - Per-key FIFO: a record is handed to the target only after every earlier record of its
//!   key was acknowledged, dead-lettered or skipped. Keys are independent of each other.
//! - The sink's cursor moves only over a contiguous prefix of finished records: delivered,
//!   dead-lettered, or stored in the waiting room (committed to redb first). So a parked
//!   key holds neither the cursor nor the log back, and nothing is lost on kill -9: what
//!   was not finished is read from the log again, what was stored is in the store.
//! - A key in the waiting room takes its later records into it too, so a redrive delivers
//!   the parked records in their order before any newer record of the key.
//! - Every delivery carries the record's id; a repeat (after a crash or an unanswered
//!   attempt) carries the same id, so receivers can drop it.

mod config;
mod engine;
mod item;
mod outbox;
mod policy;
mod state;
mod store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use config::DeliveryConfig;
pub use engine::{run, EngineConfig, EngineIo};
pub use item::{Item, ItemOptions, Parsed, Topics, OUTBOX_PREFIX};
pub use outbox::{clean, outbox_rows, Cleaner, Deletion, RowDeleter, Watch, CLEANER_CURSOR};
pub use policy::{OnExhausted, Policy, Retry};
pub use state::{Change, DeliveryState, KeyRow, KeyState, SharedState, Store, Stored, WaitingRoom};
pub use store::RedbState;

/// Why a delivery did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt (timeouts, 5xx, 429, a connection refused), after `after`
    /// if the receiver said so (`Retry-After`), else after the policy's backoff.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// The receiver refused the record for good (a 4xx): it goes to the dead letters.
    Reject(String),
    /// Nothing can be delivered until the operator changes something: the pipeline stops.
    Stop(sluice_core::Fault),
}

/// A classified error from a target's client: transient ones are retried by the policy,
/// definite ones stop the sink with their fix.
impl From<sluice_core::Fault> for Failure {
    fn from(f: sluice_core::Fault) -> Failure {
        if f.is_transient() {
            Failure::Retry {
                error: f.to_string(),
                after: None,
            }
        } else {
            Failure::Stop(f)
        }
    }
}

/// A delivery in progress.
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// Where a sink's records go. The engine calls `deliver` with records of distinct keys
/// that share a route, at most `Policy::batch` of them, and at most
/// `Policy::concurrency` calls at once; one outcome covers the whole call.
pub trait Target: Send + Sync + 'static {
    fn deliver(&self, items: Vec<Arc<Item>>) -> Delivery;
}

/// A failure of the engine itself.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("delivery state ({what}, in cursors.redb): {source}")]
    State {
        what: &'static str,
        #[source]
        source: sluice_core::BoxError,
    },
    #[error(transparent)]
    Log(#[from] sluice_log::LogError),
    #[error(transparent)]
    Stopped(sluice_core::Fault),
}

/// Into the one error policy.
impl From<DeliveryError> for sluice_core::Fault {
    fn from(e: DeliveryError) -> sluice_core::Fault {
        match e {
            DeliveryError::Stopped(f) => f,
            other => sluice_core::Fault::fatal("delivery").caused_by(other),
        }
    }
}

/// Which keys an operator's command is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Keys(Vec<String>),
}

/// The engine's answer to a command: how many keys or records it acted on.
pub type Reply = tokio::sync::oneshot::Sender<Result<usize, DeliveryError>>;

/// An operator's command, carried out by the engine that owns the sink's state.
#[derive(Debug)]
pub enum Command {
    /// Deliver the parked records of these keys again, in order, before newer ones.
    Redrive(Selection, Reply),
    /// Move the parked records of these keys to the dead letters (reason `skipped`); the
    /// keys go on with their newer records.
    Skip(Selection, Reply),
    /// Deliver these dead letters (by log offset; `None`: all) again.
    RedriveDead(Option<Vec<u64>>, Reply),
}

/// Why a command got no count back: the sink was not there to take it, or its engine
/// failed carrying it out (the engine's error is the cause).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the sink is not running")]
    NotRunning,
    #[error("the sink stopped before answering")]
    NoAnswer,
    #[error(transparent)]
    Failed(#[from] DeliveryError),
}

/// What the HTTP API and the CLI use to inspect and steer a sink's waiting room.
#[derive(Clone)]
pub struct Control {
    pub store: Store,
    pub commands: tokio::sync::mpsc::Sender<Command>,
}

impl Control {
    /// Sends a command and waits for the engine's answer.
    pub async fn ask(&self, make: impl FnOnce(Reply) -> Command) -> Result<usize, CommandError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| CommandError::NotRunning)?;
        Ok(rx.await.map_err(|_| CommandError::NoAnswer)??)
    }
}

/// The channel an engine takes its commands from, and the control for the API.
pub fn control(store: Store) -> (Control, tokio::sync::mpsc::Receiver<Command>) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (
        Control {
            store,
            commands: tx,
        },
        rx,
    )
}

#[cfg(test)]
mod tests;
