//! What the source produces and reports, apart from the worker that produces it: the
//! [`Output`] records go to, pre-encoded [`Batch`]es from snapshot workers, and the
//! [`SourceStatus`] the supervisor watches. A leaf module, so the snapshot and backfill
//! workers can use these without depending on the source worker.
//!
//! Invariant: an output reports as durable (its watch channel) only commit LSNs of
//! transactions it has made durable whole; the source confirms nothing beyond that.

use std::future::Future;
use std::sync::Arc;

use sluice_core::{ChangeRecord, Framing, Lsn};
use tokio::sync::watch;

/// Records framed elsewhere (by snapshot workers, on their own threads, with the output's
/// [`Output::framing`]), written in the order sent.
#[derive(Debug, Default)]
pub struct Batch {
    /// Whole frames, back to back.
    pub bytes: Vec<u8>,
    /// The end LSN of the last transaction this batch completes.
    pub commit: Option<Lsn>,
    /// Answered once this batch and everything sent before it is durable.
    pub ack: Option<tokio::sync::oneshot::Sender<()>>,
    /// How many frames `bytes` holds.
    pub records: u64,
}

/// Where assembled records go. `push` buffers; `hand_off` passes the buffer on (waiting
/// when the output is saturated); the output reports the last committed LSN it made
/// durable through the watch channel.
pub trait Output: Send {
    fn push(&mut self, record: &ChangeRecord);
    /// Whether enough is buffered that it should be handed off now.
    fn wants_hand_off(&self) -> bool;
    /// Whether anything is buffered.
    fn has_pending(&self) -> bool;
    /// Drops what is buffered and not yet handed off: after a lost connection the server
    /// sends that transaction again, whole.
    fn discard_pending(&mut self);
    /// Hands the buffer off; `commit` is the end LSN of the last transaction it completes.
    fn hand_off(
        &mut self,
        commit: Option<Lsn>,
    ) -> impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send;
    /// The end LSN of the last transaction made durable.
    fn durable(&mut self) -> &mut watch::Receiver<Lsn>;
    /// A sender for pre-encoded batches; they go after whatever was handed off before.
    fn batches(&self) -> tokio::sync::mpsc::Sender<Batch>;
    /// How records in those batches are framed.
    fn framing(&self) -> Arc<dyn Framing>;
}

/// Events the supervisor and tests can watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// Holding the lock and streaming.
    pub streaming: bool,
    pub confirmed: Lsn,
    pub reconnects: u64,
    /// The error that ended the last session, as logged (no row data).
    pub last_error: Option<String>,
}
