//! One run of a pipeline: preflight, the log, the sinks on their own threads, metrics,
//! and the source feeding the log, until cancelled. Its HTTP endpoints are published in
//! the process's [`Directory`] while it runs (the server itself outlives it).
//!
//! Supervision: the run's cancellation token stops the source; a sink's definite failure
//! cancels it too. Shutdown order keeps rule 1: the source stops and drains into the log,
//! the log writer syncs and closes, then every sink delivers what the log holds (bounded
//! by the deadline) and the cursors are committed one last time.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{ErrorClass, Fault, Finding, Lsn};
use sluice_delivery::{RedbState, SharedState};
use sluice_log::{FullPolicy, Log, LogConfig, LogWriter, SharedLog};
use sluice_pg::catalog::{self, CheckSpec, TableRef};
use sluice_pg::source::SharedStore;
use sluice_pg::{Connection, SourceConfig, SourceWorker};
use sluice_sinks::sse::SseFeed;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, LogBackendKind, OnFull};
use crate::directory::{Directory, Endpoints, NotReady};
use crate::gauges::Gauges;
use crate::lock::{DataDirLock, PipelineLock};
use crate::output::LogOutput;
use crate::preflight;
use crate::sinks::{self, Sinks, Undelivered};

/// How long shutdown may take before the run ends anyway.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// How a run ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped as asked (cancelled, or `until` reached), with what the sinks had not
    /// delivered when they stopped (it stays in the log).
    Done(Vec<Undelivered>),
    /// Preflight failed: nothing was started. The findings say what to fix.
    Refused(Vec<Finding>),
    /// The shutdown deadline passed with work unconfirmed (it is sent again next time).
    Abandoned,
}

/// What a run needs besides its configuration.
#[derive(Clone)]
pub struct RunContext {
    /// Relative paths in the configuration are relative to this directory.
    pub base_dir: PathBuf,
    /// Stop cleanly once everything up to this LSN is confirmed.
    pub until: Option<Lsn>,
    pub directory: Arc<Directory>,
}

/// The source, checked and ready to stream.
struct Prepared {
    spec: CheckSpec,
    conn: Connection,
    tables: Vec<TableRef>,
    captured: Vec<String>,
    columns: sluice_core::Columns,
}

fn blocking(findings: &[Finding]) -> bool {
    findings.iter().any(|f| !f.ok && f.blocking)
}

/// Preflight (the source, keys, every sink's health check) and the publication.
async fn prepare(config: &Config, base: &Path) -> Result<Result<Prepared, Outcome>, Fault> {
    let spec = preflight::spec(config)?;
    let findings = catalog::check(&spec).await;
    if blocking(&findings) {
        return Ok(Err(Outcome::Refused(findings)));
    }
    let mut conn = Connection::connect(&spec.conninfo, false).await?;
    let (tables, _) = catalog::expand_tables(&mut conn, &config.source.tables).await?;
    let captured: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let mut findings = preflight::key_findings(config, &mut conn, &captured).await?;
    let mut columns = catalog::columns(&mut conn, &captured).await?;
    catalog::without_excluded(&mut columns, &spec.exclusions);
    findings.extend(preflight::sink_findings(config, base, &captured, &columns).await);
    if blocking(&findings) {
        conn.close().await;
        return Ok(Err(Outcome::Refused(findings)));
    }
    for f in findings.iter().filter(|f| !f.ok) {
        warn!(finding = %f.what, fix = f.fix.as_deref().unwrap_or(""), "preflight: not ready yet; the pipeline starts and waits it out");
    }
    if config.source.publication.is_none() {
        catalog::ensure_publication(&mut conn, &spec.publication, &tables).await?;
    }
    Ok(Ok(Prepared {
        spec,
        conn,
        tables,
        captured,
        columns,
    }))
}

/// What keeps this run the pipeline's only active instance while it lives: the data_dir's
/// lock and, with a log shared between machines, the pipeline's PostgreSQL lock, held
/// before the log is opened or a sink started.
struct Locks {
    _data_dir: DataDirLock,
    pipeline: Option<tokio::task::JoinHandle<()>>,
}

impl Locks {
    /// Waits for both as a standby; `None` when cancelled first. Losing the pipeline's
    /// lock for good records the reason in `failure` and cancels the run.
    async fn take(
        config: &Config,
        data_dir: &Path,
        spec: &CheckSpec,
        cancel: &CancellationToken,
        failure: &sinks::FailureSlot,
    ) -> Result<Option<Locks>, Fault> {
        let Some(data_dir) = DataDirLock::acquire(data_dir, cancel).await? else {
            return Ok(None);
        };
        if config.log.backend != LogBackendKind::Jetstream {
            return Ok(Some(Locks {
                _data_dir: data_dir,
                pipeline: None,
            }));
        }
        let lock = PipelineLock::acquire(&spec.conninfo, &config.pipeline.name, cancel).await?;
        Ok(lock.map(|l| Locks {
            _data_dir: data_dir,
            pipeline: Some(l.hold(failure.clone(), cancel.clone())),
        }))
    }
}

/// A run's log behind the seam: the only place that knows which backend it is.
struct Backend {
    log: SharedLog,
    writer: Box<dyn LogWriter>,
    /// The sinks' waiting rooms and dead letters, and the cleaner's deferred rows.
    state: SharedState,
    /// Commit LSN of the log's last record when it was opened.
    last: Lsn,
    /// The last change (not a read) in the log when it was opened.
    last_change: Option<sluice_core::ChangeId>,
    /// Whether anything still holds the log's files open (readers, cursors, waiting
    /// rooms: anything that keeps `cursors.redb` open).
    held: Box<dyn Fn() -> bool + Send + Sync>,
    /// Where the source keeps its state when not in the data_dir's file (a log shared
    /// between machines: the run then holds the pipeline's lock itself).
    source_state: Option<SharedStore>,
}

/// Opens the configured log, with the delivery state beside its cursors.
async fn open_log(config: &Config, base: &Path, data_dir: &Path) -> Result<Backend, Fault> {
    match (config.log.backend, &config.log.jetstream) {
        (LogBackendKind::Jetstream, Some(js)) => {
            let (opened, source_state) = js
                .open(
                    &config.pipeline.name,
                    config.log.max_bytes.unwrap_or(0),
                    Duration::from_secs(config.log.retention_secs),
                    base,
                    data_dir,
                )
                .await?;
            let state = RedbState::open(opened.cursors.clone())?;
            Ok(Backend {
                held: opened.held(),
                log: Arc::new(opened.log),
                writer: Box::new(opened.writer),
                state,
                last: opened.last,
                last_change: opened.last_change,
                source_state: Some(SharedStore(Arc::new(source_state))),
            })
        }
        _ => open_embedded(config, data_dir),
    }
}

/// Opens the embedded log in `data_dir/log`, with the delivery state beside its cursors.
fn open_embedded(config: &Config, data_dir: &Path) -> Result<Backend, Fault> {
    let (log, writer, last) = Log::open(LogConfig {
        dir: data_dir.join("log"),
        segment_bytes: config.log.segment_bytes,
        max_bytes: config.log.max_bytes,
        on_full: match config.log.on_full {
            OnFull::PauseSource => FullPolicy::PauseSource,
            OnFull::ShedSink => FullPolicy::ShedSink,
        },
        retention: Duration::from_secs(config.log.retention_secs),
        shed_after: Duration::from_secs(config.log.shed_after_secs),
    })?;
    let state = RedbState::open(log.cursors().clone())?;
    let last_change = log.last_change();
    let files = Arc::downgrade(log.cursors());
    Ok(Backend {
        log: log.into(),
        writer: Box::new(writer),
        state,
        last,
        last_change,
        held: Box::new(move || files.strong_count() > 0),
        source_state: None,
    })
}

/// The pipeline's data_dir, created if missing.
pub fn data_dir(config: &Config, base: &Path) -> Result<PathBuf, Fault> {
    let dir = if config.pipeline.data_dir.is_absolute() {
        config.pipeline.data_dir.clone()
    } else {
        base.join(&config.pipeline.data_dir)
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        Fault::from(e).within(format_args!("cannot create data_dir {}", dir.display()))
    })?;
    Ok(dir)
}

fn source_config(
    config: &Config,
    prepared: &Prepared,
    data_dir: &Path,
    progress: Arc<sluice_pg::snapshot::Progress>,
    arrivals: Arc<sluice_pg::heartbeat::Arrivals>,
) -> SourceConfig {
    let spec = &prepared.spec;
    SourceConfig {
        conninfo: spec.conninfo.clone(),
        pipeline: config.pipeline.name.clone(),
        slot: spec.slot.clone(),
        publication: spec.publication.clone(),
        exclusions: spec.exclusions.clone(),
        spill_dir: data_dir.join("spill"),
        // Outbox events are logical messages.
        messages: config.source.messages
            || config
                .sinks
                .iter()
                .any(|s| s.events().is_some_and(|e| !e.topics.is_empty())),
        proto_version: config.source.protocol_version,
        status_interval: Duration::from_secs(config.source.status_interval_secs),
        tables: pairs(prepared.tables.iter()),
        snapshot_tables: pairs(
            prepared
                .tables
                .iter()
                .filter(|t| config.snapshots(&t.to_string())),
        ),
        snapshot_workers: config.source.snapshot_workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        chunk_rows: config.source.chunk_rows,
        state_path: data_dir.join("state.redb"),
        state_store: None,
        lock_held: false,
        progress,
        arrivals,
        reconnect_for: (config.source.reconnect_for_secs > 0)
            .then(|| Duration::from_secs(config.source.reconnect_for_secs)),
        on_slot_lost: config.source.on_slot_lost,
        on_unknown_slot: config.source.on_unknown_slot,
    }
}

fn pairs<'a>(tables: impl Iterator<Item = &'a TableRef>) -> Vec<(String, String)> {
    tables.map(|t| (t.schema.clone(), t.name.clone())).collect()
}

/// Cursors are persisted together, a few times a second: a crash re-delivers at most that
/// much, and the ids let sinks drop the repeats.
fn spawn_committer(log: SharedLog, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let l = log.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || l.cursors().commit()).await {
                error!(error = %e, "cannot save sink cursors");
            }
        }
    })
}

/// Runs `config` until `cancel` (or `ctx.until`), a definite failure, or a refused
/// preflight.
pub async fn run(
    config: &Config,
    ctx: &RunContext,
    cancel: CancellationToken,
) -> Result<Outcome, Fault> {
    let base = ctx.base_dir.as_path();
    let mut prepared = match prepare(config, base).await? {
        Ok(p) => p,
        Err(refused) => return Ok(refused),
    };
    let spec = prepared.spec.clone();
    info!(pipeline = %config.pipeline.name, tables = prepared.tables.len(), slot = %spec.slot, publication = %spec.publication, "starting");
    let data_dir = data_dir(config, base)?;
    let failure: Arc<Mutex<Option<Fault>>> = Arc::default();
    let Some(locks) = Locks::take(config, &data_dir, &spec, &cancel, &failure).await? else {
        prepared.conn.close().await;
        return Ok(Outcome::Done(Vec::new()));
    };
    let _metrics = crate::telemetry::install_metrics()?;
    let Backend {
        log,
        writer,
        state,
        last,
        last_change,
        held,
        source_state,
    } = open_log(config, base, &data_dir).await?;
    let output = LogOutput::start(&config.pipeline.name, &log, writer, last_change)?;
    let source_catalog: Arc<dyn sluice_core::Catalog> = Arc::new(catalog::SourceCatalog {
        conninfo: spec.conninfo.clone(),
        exclusions: spec.exclusions.clone(),
    });
    let mut sinks = Sinks::start(
        config,
        &sinks::Start {
            log: &log,
            state: &state,
            last,
            base,
            db: &spec.conninfo.dbname,
            pipeline: &config.pipeline.name,
            captured: &prepared.captured,
            columns: &prepared.columns,
            catalog: &source_catalog,
            failure: &failure,
            cancel: &cancel,
        },
    )
    .await?;
    sinks
        .request_rebackfills(&mut prepared.conn, &config.pipeline.name, &log)
        .await?;
    let cleaner = sinks.start_cleaner(config, &log, &state, &spec.conninfo, &failure, &cancel)?;
    let progress = Arc::new(sluice_pg::snapshot::Progress::default());
    let arrivals = Arc::new(sluice_pg::heartbeat::Arrivals::default());
    let mut source_config = source_config(
        config,
        &prepared,
        &data_dir,
        progress.clone(),
        arrivals.clone(),
    );
    source_config.lock_held = locks.pipeline.is_some();
    source_config.state_store = source_state;
    prepared.conn.close().await;
    let committer = spawn_committer(log.clone(), sinks.abort.clone());
    let (worker, status) = SourceWorker::new(source_config, output)?;
    if config.source.heartbeat_secs > 0 {
        let beat = sluice_pg::heartbeat::Heartbeat {
            conninfo: spec.conninfo.clone(),
            pipeline: config.pipeline.name.clone(),
            every: Duration::from_secs(config.source.heartbeat_secs),
            table: config.source.heartbeat_table.clone(),
        };
        tokio::spawn(beat.run(sinks.abort.clone()));
    }
    let gauges = Arc::new(Gauges::new(
        config.pipeline.name.clone(),
        log.clone(),
        progress.clone(),
        arrivals,
        sinks.stats.clone(),
        status.clone(),
    ));
    let metrics_task = tokio::spawn(crate::gauges::watch(
        gauges.clone(),
        spec.conninfo.clone(),
        spec.slot.clone(),
        (config.source.max_slot_lag_bytes > 0).then_some(config.source.max_slot_lag_bytes),
        sinks.abort.clone(),
    ));
    publish(config, ctx, &data_dir, &log, &mut sinks, &gauges, &status);
    tokio::spawn(crate::progress::show(progress, cancel.clone()));
    if let Some(until) = ctx.until {
        let (stop, mut status) = (cancel.clone(), status.clone());
        tokio::spawn(async move {
            if status.wait_for(|s| s.confirmed >= until).await.is_ok() {
                info!(%until, "everything up to the requested LSN is confirmed; stopping");
                stop.cancel();
            }
        });
    }
    let source = tokio::spawn(worker.run(cancel.clone()));
    let ended = shutdown(
        source,
        &cancel,
        &log,
        sinks,
        cleaner,
        committer,
        metrics_task,
    )
    .await;
    ctx.directory.withdraw(&config.pipeline.name);
    drop((gauges, state, log));
    // SSE clients of this run and in-flight requests hold the log until they see the
    // stop; the next run of this pipeline opens the same files, so this one ends only once
    // nothing holds them.
    if !released(&*held, SHUTDOWN_DEADLINE).await {
        warn!("parts of the stopped pipeline still hold its log; a restart may wait for them");
    }
    let closed = ended?;
    if let Some(f) = failure.lock().expect("failure lock").take() {
        return Err(f);
    }
    match closed {
        Stopped::Clean(left) => Ok(Outcome::Done(left)),
        Stopped::Abandoned => Ok(Outcome::Abandoned),
        Stopped::Source(e) => {
            let hint = if e.class() == ErrorClass::Definite {
                " (run `sluice check` for the fix)"
            } else {
                ""
            };
            error!(error = %e, "source stopped{hint}");
            Err(Fault::from(e))
        }
    }
}

/// Waits, at most `timeout`, until `held` says nothing holds the log's files.
async fn released(held: &(dyn Fn() -> bool + Send + Sync), timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while held() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Publishes the run's HTTP endpoints in the directory.
fn publish(
    config: &Config,
    ctx: &RunContext,
    data_dir: &Path,
    log: &SharedLog,
    sinks: &mut Sinks,
    gauges: &Arc<Gauges>,
    status: &tokio::sync::watch::Receiver<sluice_pg::SourceStatus>,
) {
    let (ready_status, ready_log, ready_stats) = (status.clone(), log.clone(), gauges.clone());
    let (refresh, status_of) = (gauges.clone(), gauges.clone());
    let stop = sinks.abort.child_token();
    let sse: std::collections::HashMap<String, Arc<SseFeed>> = std::mem::take(&mut sinks.sse)
        .into_iter()
        .map(|(name, options)| (name, SseFeed::start(options, log.clone(), stop.clone())))
        .collect();
    let feeds: Vec<(String, Arc<SseFeed>)> =
        sse.iter().map(|(n, f)| (n.clone(), f.clone())).collect();
    ctx.directory.publish(
        &config.pipeline.name,
        Endpoints {
            log: log.clone(),
            sse,
            delivery: std::mem::take(&mut sinks.controls),
            pull: std::mem::take(&mut sinks.pulls),
            readiness: Arc::new(move || {
                if !ready_status.borrow().streaming {
                    return Err(NotReady::NotStreaming);
                }
                if ready_log.paused() {
                    return Err(NotReady::LogFull);
                }
                if let Some(s) = ready_stats.shed() {
                    return Err(NotReady::Shed(s));
                }
                Ok(())
            }),
            refresh: Arc::new(move || refresh.refresh()),
            status: Arc::new(move || {
                let mut status = status_of.status();
                status.served = feeds
                    .iter()
                    .map(|(name, feed)| crate::directory::ServedStatus {
                        name: name.clone(),
                        clients: feed.counts.clients.load(Ordering::Relaxed),
                        sent: feed.counts.sent.load(Ordering::Relaxed),
                    })
                    .collect();
                status
            }),
            stop,
        },
    );
    // Where `sluice parked` / `sluice dead` find this instance (the configured port may
    // be 0).
    if let Some(addr) = ctx.directory.server_addr() {
        let path = data_dir.join("server.addr");
        if let Err(e) = std::fs::write(&path, addr.to_string()) {
            warn!(error = %e, path = %path.display(), "cannot record the server's address");
        }
    }
}

/// How the source ended.
enum Stopped {
    Clean(Vec<Undelivered>),
    Abandoned,
    Source(sluice_pg::SourceError),
}

/// Waits for the source, then drains: the log closes, the sinks deliver what it holds
/// (bounded by the deadline), the cursors are committed one last time.
async fn shutdown(
    mut source: tokio::task::JoinHandle<Result<LogOutput, sluice_pg::SourceError>>,
    cancel: &CancellationToken,
    log: &SharedLog,
    sinks: Sinks,
    cleaner: Option<std::thread::JoinHandle<Result<(), Fault>>>,
    committer: tokio::task::JoinHandle<()>,
    metrics_task: tokio::task::JoinHandle<()>,
) -> Result<Stopped, Fault> {
    let result = tokio::select! {
        r = &mut source => r,
        _ = cancel.cancelled() => match tokio::time::timeout(SHUTDOWN_DEADLINE, async {
            // A source waiting on a full log would not see the stop: the writer takes what
            // it is handed from now on, past the budget, so the source can finish.
            log.closing();
            (&mut source).await
        }).await {
            Ok(r) => r,
            Err(_) => {
                error!("shutdown deadline passed; stopping with work unconfirmed (it will be sent again)");
                sinks.abort.cancel();
                return Ok(Stopped::Abandoned);
            }
        },
    };
    let source_result = result.map_err(|e| Fault::fatal("the source task failed").caused_by(e))?;
    // Stop taking changes, then let the sinks deliver what the log holds.
    let clean = match source_result {
        Ok(output) => {
            log.closing();
            tokio::task::spawn_blocking(move || output.close())
                .await
                .map_err(|e| Fault::fatal("the log writer failed").caused_by(e))??;
            Ok(())
        }
        Err(e) => Err(e),
    };
    let abort = sinks.abort.clone();
    let left = sinks.drain(SHUTDOWN_DEADLINE, log).await;
    let closed = match clean {
        Ok(()) => Stopped::Clean(left),
        Err(e) => Stopped::Source(e),
    };
    abort.cancel();
    if let Some(t) = cleaner {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let _ = committer.await;
    let _ = metrics_task.await;
    let l = log.clone();
    tokio::task::spawn_blocking(move || l.cursors().commit())
        .await
        .map_err(|e| Fault::fatal("saving the cursors failed").caused_by(e))??;
    Ok(closed)
}
