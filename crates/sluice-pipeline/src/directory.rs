//! The directory of running pipelines' endpoints: what each pipeline serves over HTTP
//! (its log for SSE, its waiting rooms, its pull queues) and how ready it is. The HTTP
//! server is started once per process and looks pipelines up here per request, so it
//! outlives every pipeline: a pipeline that stops or restarts withdraws and publishes its
//! own entry, and no client of another pipeline notices.
//!
//! Invariants:
//! - A pipeline's entry exists only while it runs; its `stop` token is cancelled as it
//!   is withdrawn, which ends its SSE feeds (clients resume with `Last-Event-ID`).
//! - Configured pipelines that are not running make the process not ready.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use sluice_delivery::Control;
use sluice_log::SharedLog;
use sluice_sinks::pull::PullQueue;
use sluice_sinks::sse::SseFeed;
use tokio_util::sync::CancellationToken;

/// Why the process is not ready, if it is not.
pub type Readiness = Arc<dyn Fn() -> Result<(), NotReady> + Send + Sync>;

/// Why a pipeline, or the process, is not ready. Each passes by itself (the source
/// reconnects, the sinks catch up), so a probe only waits; the texts name pipelines and
/// sinks, never data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the source is not streaming")]
    NotStreaming,
    #[error("the log is at its disk budget; the source is paused")]
    LogFull,
    #[error("sink {0:?} was shed by the disk budget")]
    Shed(String),
    #[error("pipeline {0:?} is not running")]
    NotRunning(String),
    /// A configured pipeline that runs and is not ready, and why.
    #[error("pipeline {pipeline:?}: {why}")]
    Pipeline {
        pipeline: String,
        #[source]
        why: Box<NotReady>,
    },
}

impl sluice_core::Classify for NotReady {
    fn class(&self) -> sluice_core::ErrorClass {
        sluice_core::ErrorClass::Transient
    }
}

/// A running pipeline's state for the management API: positions, lags, rates; never row
/// data.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PipelineStatus {
    /// Holding the slot and streaming.
    pub streaming: bool,
    /// The position confirmed to PostgreSQL.
    pub confirmed_lsn: String,
    pub reconnects: u64,
    /// The error that ended the source's last session (it reconnects unless the error
    /// cannot pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// As last queried (every 5 s); `None` before the first answer.
    pub slot_active: Option<bool>,
    /// WAL the slot holds past its confirmed position.
    pub slot_lag_bytes: Option<i64>,
    /// WAL the slot keeps on the server's disk, from its restart position.
    pub slot_retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved`, `lost` (PostgreSQL 13+), or `missing` when
    /// the slot is gone.
    pub slot_wal_status: Option<String>,
    /// Where the log is: the embedded log's directory, or the JetStream stream.
    pub log: String,
    pub log_bytes: u64,
    pub log_records: u64,
    /// The log is at its disk budget and the source waits.
    pub log_paused: bool,
    /// Seconds since this pipeline's last heartbeat came through the stream (with
    /// `heartbeat_secs`; absent before the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_age_secs: Option<f64>,
    pub sinks: Vec<SinkStatus>,
    /// Sinks served to clients as they read (SSE): no cursor, so no lag; their clients
    /// and what was sent.
    pub served: Vec<ServedStatus>,
    /// Tables being copied in this run (the initial snapshot, or backfills), with those
    /// finished since it started.
    pub copies: Vec<CopyStatus>,
}

/// One table's snapshot or backfill.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CopyStatus {
    pub table: String,
    /// `snapshot` (part of the initial copy) or `backfill` (while streaming).
    pub kind: &'static str,
    pub rows: u64,
    /// The planner's estimate of the table's rows (0: unknown).
    pub estimated_rows: u64,
    pub ranges_done: usize,
    pub ranges: usize,
    pub finished: bool,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SinkStatus {
    pub name: String,
    /// Records in the log the sink has not acknowledged.
    pub lag_records: u64,
    pub delivered: u64,
    pub failures: u64,
    /// Records delivered per second, over the last second or so.
    pub per_second: f64,
    /// Dropped by the disk budget; to be re-backfilled.
    pub shed: bool,
}

/// An SSE sink as the status shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ServedStatus {
    pub name: String,
    /// Clients connected now.
    pub clients: u64,
    /// Events sent to its clients since the pipeline started.
    pub sent: u64,
}

/// What one running pipeline serves.
pub struct Endpoints {
    pub log: SharedLog,
    /// SSE sinks by name.
    pub sse: HashMap<String, Arc<SseFeed>>,
    /// Waiting rooms of engine-driven sinks (webhook, pull) by name.
    pub delivery: HashMap<String, Control>,
    /// Pull sinks' queues by name.
    pub pull: HashMap<String, Arc<PullQueue>>,
    pub readiness: Readiness,
    /// Refreshes the pipeline's gauges (before `/metrics` renders).
    pub refresh: Arc<dyn Fn() + Send + Sync>,
    /// The pipeline's state now.
    pub status: Arc<dyn Fn() -> PipelineStatus + Send + Sync>,
    /// Cancelled when the pipeline is withdrawn.
    pub stop: CancellationToken,
}

impl Endpoints {
    /// Whether this pipeline has a sink of that name the server serves.
    pub fn has_sink(&self, name: &str) -> bool {
        self.sse.contains_key(name) || self.delivery.contains_key(name)
    }
}

/// Why a sink could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    NoPipeline(String),
    NoSink(String),
    /// Several pipelines have a sink of that name: the pipeline must be named.
    Ambiguous(String, Vec<String>),
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::NoPipeline(p) => write!(f, "no running pipeline named {p:?}"),
            Lookup::NoSink(s) => write!(f, "no sink named {s:?} is served by a running pipeline"),
            Lookup::Ambiguous(s, ps) => write!(
                f,
                "sink {s:?} exists in pipelines {}: use /v1/pipelines/<pipeline>/sinks/{s}/...",
                ps.join(", ")
            ),
        }
    }
}

/// Shared by the supervisor (which publishes) and the HTTP server (which reads).
#[derive(Default)]
pub struct Directory {
    running: RwLock<BTreeMap<String, Arc<Endpoints>>>,
    /// Pipelines configured to run, running or not.
    configured: RwLock<BTreeSet<String>>,
    /// Hex SHA-256 of each accepted token; `None`: no authentication.
    tokens: RwLock<Option<Vec<String>>>,
    server_addr: RwLock<Option<SocketAddr>>,
}

impl Directory {
    pub fn new() -> Arc<Directory> {
        Arc::default()
    }

    pub fn configure(&self, pipeline: &str) {
        self.configured
            .write()
            .expect("directory lock")
            .insert(pipeline.to_owned());
    }

    pub fn unconfigure(&self, pipeline: &str) {
        self.configured
            .write()
            .expect("directory lock")
            .remove(pipeline);
    }

    pub fn publish(&self, pipeline: &str, endpoints: Endpoints) {
        let old = self
            .running
            .write()
            .expect("directory lock")
            .insert(pipeline.to_owned(), Arc::new(endpoints));
        if let Some(old) = old {
            old.stop.cancel();
        }
    }

    pub fn withdraw(&self, pipeline: &str) {
        let old = self
            .running
            .write()
            .expect("directory lock")
            .remove(pipeline);
        if let Some(old) = old {
            old.stop.cancel();
        }
    }

    /// The running pipelines, by name.
    pub fn running(&self) -> Vec<(String, Arc<Endpoints>)> {
        self.running
            .read()
            .expect("directory lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The pipeline that serves sink `sink`: the named one, or the only one that has it;
    /// with its name.
    pub fn find(
        &self,
        pipeline: Option<&str>,
        sink: &str,
    ) -> Result<(String, Arc<Endpoints>), Lookup> {
        let running = self.running.read().expect("directory lock");
        if let Some(p) = pipeline {
            let e = running
                .get(p)
                .ok_or_else(|| Lookup::NoPipeline(p.to_owned()))?;
            return match e.has_sink(sink) {
                true => Ok((p.to_owned(), e.clone())),
                false => Err(Lookup::NoSink(sink.to_owned())),
            };
        }
        let with: Vec<(&String, &Arc<Endpoints>)> =
            running.iter().filter(|(_, e)| e.has_sink(sink)).collect();
        match with.as_slice() {
            [] => Err(Lookup::NoSink(sink.to_owned())),
            [(p, e)] => Ok(((*p).clone(), (*e).clone())),
            many => Err(Lookup::Ambiguous(
                sink.to_owned(),
                many.iter().map(|(p, _)| (*p).clone()).collect(),
            )),
        }
    }

    /// Ready when every configured pipeline runs and is ready.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let running = self.running.read().expect("directory lock");
        for p in self.configured.read().expect("directory lock").iter() {
            match running.get(p) {
                None => return Err(NotReady::NotRunning(p.clone())),
                Some(e) => (e.readiness)().map_err(|why| NotReady::Pipeline {
                    pipeline: p.clone(),
                    why: Box::new(why),
                })?,
            }
        }
        Ok(())
    }

    /// Refreshes every running pipeline's gauges.
    pub fn refresh(&self) {
        for (_, e) in self.running() {
            (e.refresh)();
        }
    }

    pub fn set_tokens(&self, hashes: Option<Vec<String>>) {
        *self.tokens.write().expect("directory lock") = hashes;
    }

    pub fn tokens(&self) -> Option<Vec<String>> {
        self.tokens.read().expect("directory lock").clone()
    }

    pub fn set_server_addr(&self, addr: SocketAddr) {
        *self.server_addr.write().expect("directory lock") = Some(addr);
    }

    /// Where the HTTP server listens, once it does.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        *self.server_addr.read().expect("directory lock")
    }
}
