//! A pipeline's log in NATS JetStream (`[log] backend = "jetstream"`): the second backend
//! behind `sluice-log`'s seam, so a pipeline's backlog is a replicated stream rather than
//! one machine's disk, and everything that reads the log reads it unchanged.
//!
//! Layout: one stream per pipeline with a subject per partition
//! (`{subject_prefix}.{partition}`, partition = hash of the table and the key, modulo a
//! count fixed when the stream is created). The source's hand-offs become groups of
//! messages (`group.rs` has the format); positions are dense record offsets across
//! groups, so cursors, lag and position tokens mean what they mean for the embedded log.
//!
//! Invariants (rule 1 of the project's guarantees):
//! - The durable end, and with it the LSN PostgreSQL is told, moves only over groups every
//!   message of which JetStream acknowledged (stored on a quorum of its replicas).
//! - The stream holds a prefix of what the writer published (each publish names the
//!   sequence it follows), and readers return whole groups only: a crash mid-group
//!   leaves records that no reader returns and the next writer writes again.
//! - The source's state (plans, the slot's record) is in a key-value bucket beside the
//!   stream (`state.rs`), so an instance on another machine that takes over the pipeline
//!   finds the slot it made; the cursors and the delivery state (waiting rooms, dead
//!   letters) are kept in the pipeline's data directory, as for the embedded log.

mod group;
mod log;
mod reader;
mod state;
mod writer;

pub use group::GroupError;
pub use log::{check, open, JetStreamLog, Opened, Settings};
pub use state::{open_state, Connect, KvState};
pub use writer::JsWriter;
