//! Sinks: one module per sink, each with the same anatomy, and a registry that maps a
//! `type` name to its module.
//!
//! A sink module owns:
//! - its configuration struct (serde, `deny_unknown_fields`, a doc comment per field);
//! - a pure [`SinkSpec::validate`] (no I/O) that names the setting and the fix;
//! - [`SinkSpec::check`], the health check `sluice check` and start-up run (reachable,
//!   authenticated, writable), whose blocking findings stop a start with their fix;
//! - [`SinkSpec::build`], which returns what runs: batches from the log through [`run`],
//!   a [`sluice_delivery::Target`] for the per-key delivery engine, or options for the
//!   HTTP server (SSE);
//! - its tests, for both delivered and failed batches.
//!
//! Adding a sink is one new module and one line in the registry (`registry.rs`): the
//! API's document, `GET /v1/sink-types`, the console's forms and the sealing of its
//! secrets all follow from the module's configuration type.
//!
//! Invariants of every sink:
//! - A sink's cursor moves only after the sink acknowledged every record below it
//!   (a whole batch, in log order): docs/GUARANTEES.md, rule 1.
//! - Failures are [`Fault`]s, classified once where they arise: a transient one (server
//!   down, timeout) is retried with backoff, forever, on the same batch — back-pressure,
//!   not loss; a definite one (a wrong password, a refused permission) stops the pipeline
//!   at once with its fix.
//! - A sink shed by the log's disk budget stops; the next start re-backfills it.

#[cfg(any(feature = "nats", feature = "kafka"))]
mod broker;
#[cfg(feature = "clickhouse")]
pub mod clickhouse;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
pub mod package;
pub mod postgres;
pub mod pull;
#[cfg(feature = "redis")]
pub mod redis;
mod registry;
#[cfg(any(feature = "nats", feature = "kafka"))]
mod route;
mod runner;
mod secret;
pub mod sse;
pub mod stdout;
#[cfg(feature = "webhook")]
pub mod webhook;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

pub use registry::{sink_types, SinkConfig, SinkField, SinkType};
pub use runner::{run, TableFilter};
pub use secret::{is_secret_schema, Secret};
pub use sluice_core::{Fault, Finding, SinkStats};

use sluice_delivery::DeliveryConfig;
use sluice_log::RecordBatch;

/// The rest of a started delivery: resolves once the batch is acknowledged.
pub type InFlight = Pin<Box<dyn Future<Output = Result<(), Fault>> + Send>>;

/// A destination for batches of records.
pub trait Sink: Send {
    /// Delivers `batch` (in order). `Ok` means every record is acknowledged (written,
    /// fsync'd, or answered by the server), so the cursor may move past them.
    fn deliver(&mut self, batch: &RecordBatch) -> impl Future<Output = Result<(), Fault>> + Send;

    /// Starts delivering `batch` and returns the rest, so the runner can read and start
    /// the next batch while this one is applied (the default: delivered whole here).
    ///
    /// A sink that overrides it keeps this contract: batches are applied in the order
    /// they were started; once one fails, no batch started after it is applied until the
    /// runner starts again from its cursor (it then starts over, idempotently).
    fn start(
        &mut self,
        batch: &RecordBatch,
    ) -> impl Future<Output = Result<InFlight, Fault>> + Send {
        async move {
            self.deliver(batch).await?;
            let done: InFlight = Box::pin(std::future::ready(Ok(())));
            Ok(done)
        }
    }
}

/// A batch sink chosen at run time (one boxed future per batch, not per record).
pub type BoxSink = Box<dyn DynSink>;

/// [`Sink`] in a form that can be boxed.
pub trait DynSink: Send {
    fn deliver_boxed<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
    ) -> Pin<Box<dyn Future<Output = Result<(), Fault>> + Send + 'a>>;
    fn start_boxed<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
    ) -> Pin<Box<dyn Future<Output = Result<InFlight, Fault>> + Send + 'a>>;
}

impl<S: Sink> DynSink for S {
    fn deliver_boxed<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
    ) -> Pin<Box<dyn Future<Output = Result<(), Fault>> + Send + 'a>> {
        Box::pin(self.deliver(batch))
    }

    fn start_boxed<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
    ) -> Pin<Box<dyn Future<Output = Result<InFlight, Fault>> + Send + 'a>> {
        Box::pin(self.start(batch))
    }
}

impl Sink for BoxSink {
    async fn deliver(&mut self, batch: &RecordBatch) -> Result<(), Fault> {
        // The sink inside: `self.deliver_boxed` would pick the blanket impl for the box
        // itself and call back here.
        (**self).deliver_boxed(batch).await
    }

    async fn start(&mut self, batch: &RecordBatch) -> Result<InFlight, Fault> {
        (**self).start_boxed(batch).await
    }
}

/// What building or checking a sink needs from its pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Relative paths in the configuration are relative to this directory.
    pub base_dir: &'a Path,
    /// The source database's name.
    pub db: &'a str,
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The captured tables this sink takes, as `schema.table`.
    pub tables: &'a [String],
    /// Their columns as the source's catalog lists them (empty when it was not read).
    pub columns: &'a sluice_core::Columns,
    /// The source's catalog as it is now, for a column that appears mid-stream (`None`
    /// in checks).
    pub catalog: Option<&'a Arc<dyn sluice_core::Catalog>>,
    /// The disk budget shed this sink: its destination starts over, as if its tables
    /// were truncated at this commit LSN, before the re-backfill arrives.
    pub reset: Option<sluice_core::Lsn>,
}

/// What runs for a sink.
pub enum Built {
    /// Batches read from the log and delivered through [`run`] (file, stdout, Redis).
    Batches {
        sink: BoxSink,
        /// Records per batch at most.
        max_records: usize,
        /// A read waits this window for more records (broker packages); `None`: reads
        /// what is there.
        window: Option<Window>,
    },
    /// Per-key delivery through the engine (webhook, pull consumers).
    Engine {
        target: Arc<dyn sluice_delivery::Target>,
        /// Records per delivery.
        batch: usize,
        /// A pull sink's queue, which the HTTP server serves.
        pull: Option<Arc<pull::PullQueue>>,
    },
    /// Served by the HTTP server (SSE): the pipeline starts its shared read
    /// ([`sse::SseFeed`]).
    Served(sse::SseOptions),
}

/// How long a batch sink's read waits to collect more records, and up to how many bytes.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub max_bytes: usize,
    pub linger: std::time::Duration,
}

/// The routing and delivery settings of a sink driven by the engine.
#[derive(Debug, Clone, Copy)]
pub struct Events<'a> {
    /// Outbox topics taken (`name` or `prefix*`).
    pub topics: &'a [String],
    /// Debezium-layout outbox tables routed as events.
    pub outbox_tables: &'a [String],
    /// Whether finished `outbox_tables` rows are deleted from the source.
    pub delete_delivered: bool,
    pub delivery: &'a DeliveryConfig,
}

/// What a sink is, for the API, the console and the pipeline: each sink declares it
/// once, on its configuration type ([`SinkSpec::CAPABILITIES`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Capabilities {
    /// Each table it takes needs a primary key (rows are keyed by it).
    pub needs_primary_key: bool,
    /// A key whose records cannot be delivered waits in a waiting room (inspect,
    /// redrive, skip) while the other keys flow.
    pub waiting_room: bool,
    /// Served by Sluice's HTTP server: consumers connect to it.
    pub served: bool,
    /// Takes outbox topics and outbox tables, not only tables.
    pub outbox: bool,
}

impl Capabilities {
    pub const NONE: Capabilities = Capabilities {
        needs_primary_key: false,
        waiting_room: false,
        served: false,
        outbox: false,
    };
}

/// The anatomy every sink's configuration implements. The configuration type is also
/// the sink's published schema (`utoipa::ToSchema`, with a doc comment per field), and
/// a secret setting is declared by its type ([`Secret`]).
pub trait SinkSpec: utoipa::ToSchema {
    /// One line: what the sink does.
    const DESCRIPTION: &'static str;
    /// What it is (default: none of the capabilities).
    const CAPABILITIES: Capabilities = Capabilities::NONE;
    /// Unique name of the sink within its pipeline.
    fn name(&self) -> &str;
    /// Tables the sink takes (`schema.table` or `schema.*`; empty: all).
    fn tables(&self) -> &[String];
    /// Pure checks (no I/O): each problem names the setting and what to change.
    fn validate(&self, errs: &mut Vec<String>);
    /// Checks the destination before anything is delivered: reachable, authenticated,
    /// writable. A blocking finding is one only the operator can fix.
    fn check(&self, ctx: &Context<'_>) -> impl Future<Output = Vec<Finding>> + Send;
    /// Connects (where it must) and returns what runs.
    fn build(&self, ctx: &Context<'_>) -> impl Future<Output = Result<Built, Fault>> + Send;
    /// Routing of an engine-driven sink.
    fn events(&self) -> Option<Events<'_>> {
        None
    }
    /// Whether each table the sink takes needs a primary key (a cache key).
    fn needs_primary_key(&self) -> bool {
        Self::CAPABILITIES.needs_primary_key
    }
    /// Whether the sink is served by the HTTP server.
    fn needs_server(&self) -> bool {
        Self::CAPABILITIES.served
    }
    /// A file this sink alone may write.
    fn exclusive_path(&self) -> Option<&Path> {
        None
    }
}

/// A finding about sink `name`.
pub(crate) fn finding_for(name: &str, what: impl std::fmt::Display) -> String {
    format!("sink {name:?}: {what}")
}
