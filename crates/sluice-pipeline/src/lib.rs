//! Pipelines as a library: the pipeline configuration, one pipeline's run
//! (preflight, log, sinks, source, drain), and the [`Supervisor`] that runs many of them
//! in one process, each stoppable and reconfigurable on its own, with their HTTP
//! endpoints published in a [`Directory`] that the server reads.
//!
//! Invariants:
//! - A configuration is validated (pure, every problem named) before it runs, and
//!   checked against the servers (preflight and sink health checks) when it starts; a
//!   blocking finding refuses the start with its fix.
//! - Errors cross into the supervisor as [`sluice_core::Fault`]s: classified once, with
//!   the operator's fix.

pub mod config;
mod directory;
mod gauges;
pub mod jetstream_log;
mod lock;
pub mod outbox_clean;
mod output;
pub mod preflight;
mod progress;
mod run;
mod sinks;
mod supervisor;
mod telemetry;

pub use config::Config;
pub use directory::{
    CopyStatus, Directory, Endpoints, Lookup, NotReady, PipelineStatus, Readiness, ServedStatus,
    SinkStatus,
};
pub use run::{data_dir, run, Outcome, RunContext, SHUTDOWN_DEADLINE};
pub use sinks::Undelivered;
pub use supervisor::{Ended, Supervisor};
pub use telemetry::{install_metrics, MetricsError};
