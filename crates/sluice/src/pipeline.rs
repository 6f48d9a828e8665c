//! One run of a pipeline: preflight, the log, the sinks on their own threads, the HTTP
//! server, metrics, and the source feeding the log, until cancelled.
//!
//! Supervision: the session's cancellation token stops the source; a sink's definite
//! failure cancels it too. Shutdown order keeps rule 1: the source stops and drains into
//! the log, the log writer syncs and closes, then every sink delivers what the log holds
//! (bounded by the deadline) and the cursors are committed one last time.
//!
//! Only one instance uses a data_dir at a time (an flock on `data_dir/lock`): a standby on
//! the same machine waits there, touching nothing, and takes over when the lock is freed.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sluice_core::ErrorClass;
use sluice_log::{FullPolicy, Log, LogConfig};
use sluice_pg::catalog::{self, Finding};
use sluice_pg::{Connection, SourceConfig, SourceWorker};
use sluice_sinks::{file::LineSink, RunOptions, SinkStats, TableFilter};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::commands::{print_findings, spec};
use crate::config::{Auth, Config, OnFull, SinkConfig};
use crate::metrics::Gauges;
use crate::output::LogOutput;

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// Holds `data_dir/lock` (flock) while alive.
struct DataDirLock(#[allow(dead_code)] std::fs::File);

impl DataDirLock {
    /// Waits for the lock; `None` when cancelled first.
    async fn acquire(dir: &Path, cancel: &CancellationToken) -> anyhow::Result<Option<Self>> {
        use std::os::fd::AsRawFd;
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut announced = false;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                if announced {
                    info!("took over the data_dir from the instance that held it");
                }
                return Ok(Some(DataDirLock(file)));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                anyhow::bail!("cannot lock {}: {e}", path.display());
            }
            if !announced {
                info!(data_dir = %dir.display(), "another instance is active on this data_dir; waiting as a standby");
                announced = true;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// Tables among `tables` that have no primary key.
pub async fn tables_without_primary_key(
    conn: &mut Connection,
    tables: &[String],
) -> anyhow::Result<Vec<String>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let rows = conn
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT EXISTS \
             (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)",
        )
        .await?;
    let keyless: std::collections::BTreeSet<String> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    Ok(tables
        .iter()
        .filter(|t| keyless.contains(*t))
        .cloned()
        .collect())
}

/// The captured tables a sink takes.
pub fn sink_tables(sink: &SinkConfig, captured: &[String]) -> Vec<String> {
    let filter = TableFilter::new(sink.tables());
    captured
        .iter()
        .filter(|t| {
            let (s, n) = t.split_once('.').unwrap_or(("", t));
            filter.accepts(sluice_core::Op::Insert, s, n)
        })
        .cloned()
        .collect()
}

/// Tables that need a primary key (Redis sinks' tables, outbox tables whose delivered
/// rows are deleted) and the DELETE grant, as findings for `check` and start-up.
pub async fn key_findings(
    config: &Config,
    conn: &mut Connection,
    captured: &[String],
) -> anyhow::Result<Vec<Finding>> {
    let mut out = Vec::new();
    for s in &config.sinks {
        if let SinkConfig::Redis { name, .. } = s {
            let tables = sink_tables(s, captured);
            let missing = tables_without_primary_key(conn, &tables).await?;
            out.push(Finding {
                ok: missing.is_empty(),
                blocking: true,
                what: if missing.is_empty() {
                    format!("sink {name:?}: every table has a primary key")
                } else {
                    format!(
                        "sink {name:?}: {} without a primary key: a cache key needs one",
                        missing.join(", ")
                    )
                },
                fix: (!missing.is_empty()).then(|| {
                    format!(
                        "add a primary key (ALTER TABLE {} ADD PRIMARY KEY (...)), or leave the table out of the sink's tables",
                        missing[0]
                    )
                }),
            });
        }
    }
    out.extend(crate::outbox_clean::findings(config, conn).await?);
    Ok(out)
}

/// The configured sink kinds behind one type, so one loop runs them all.
enum AnySink {
    Lines(LineSink),
    Redis(Box<sluice_sinks::redis::RedisSink>),
}

impl sluice_sinks::Sink for AnySink {
    async fn deliver(
        &mut self,
        batch: &sluice_log::RecordBatch,
    ) -> Result<(), sluice_sinks::SinkError> {
        match self {
            AnySink::Lines(s) => s.deliver(batch).await,
            AnySink::Redis(s) => s.deliver(batch).await,
        }
    }
}

/// What the outbox cleaner needs to know of a sink: where it is and what it takes.
fn watch(
    cursor: &Arc<sluice_log::Cursor>,
    filter: &TableFilter,
    waiting: Option<(sluice_delivery::Store, sluice_delivery::ItemOptions)>,
) -> sluice_delivery::Watch {
    let filter = filter.clone();
    sluice_delivery::Watch {
        cursor: cursor.clone(),
        accepts: Box::new(move |op, s, t| filter.accepts(op, s, t)),
        waiting,
    }
}

/// A target chosen at start-up (webhook or pull).
struct DynTarget(Arc<dyn sluice_delivery::Target>);

impl sluice_delivery::Target for DynTarget {
    fn deliver(&self, items: Vec<Arc<sluice_delivery::Item>>) -> sluice_delivery::Delivery {
        self.0.deliver(items)
    }
}

fn spawn_thread(
    name: String,
    f: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<Result<(), String>>> {
    Ok(std::thread::Builder::new().name(name).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        rt.block_on(f)
    })?)
}

/// Runs a sink's loop on a thread of its own. Its failure is recorded and stops the
/// pipeline (the supervisor's rule: a critical task's failure cancels its siblings).
fn spawn_sink<E: std::fmt::Display>(
    name: &str,
    fut: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
    failure: &Arc<Mutex<Option<String>>>,
    cancel: &CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<Result<(), String>>> {
    let (failure, stop, name2) = (failure.clone(), cancel.clone(), name.to_owned());
    spawn_thread(format!("sink-{name}"), async move {
        let r = fut.await.map_err(|e| e.to_string());
        if let Err(e) = &r {
            error!(sink = %name2, error = %e, "sink stopped; stopping the pipeline");
            failure
                .lock()
                .expect("failure lock")
                .get_or_insert(e.clone());
            stop.cancel();
        }
        r
    })
}

/// Preflight, publication, then the source feeding the log and the sinks until `cancel`.
pub async fn run_pipeline(
    config: &Config,
    base: &Path,
    cancel: CancellationToken,
    until: Option<sluice_core::Lsn>,
) -> anyhow::Result<ExitCode> {
    let spec = spec(config)?;
    let findings = catalog::check(&spec).await;
    let blocking = findings.iter().filter(|f| !f.ok && f.blocking).count();
    if blocking > 0 {
        print_findings(&findings);
        error!(failed = blocking, "preflight failed; nothing was started");
        return Ok(ExitCode::from(2));
    }
    let mut conn = Connection::connect(&spec.conninfo, false).await?;
    let (tables, _) = catalog::expand_tables(&mut conn, &config.source.tables).await?;
    let captured: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let keys = key_findings(config, &mut conn, &captured).await?;
    let blocking = keys.iter().filter(|f| !f.ok && f.blocking).count();
    if blocking > 0 {
        print_findings(&keys);
        error!(failed = blocking, "preflight failed; nothing was started");
        conn.close().await;
        return Ok(ExitCode::from(2));
    }
    if config.source.publication.is_none() {
        catalog::ensure_publication(&mut conn, &spec.publication, &tables).await?;
    }
    info!(pipeline = %config.pipeline.name, tables = tables.len(), slot = %spec.slot, publication = %spec.publication, "starting");

    let data_dir = if config.pipeline.data_dir.is_absolute() {
        config.pipeline.data_dir.clone()
    } else {
        base.join(&config.pipeline.data_dir)
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    let Some(_lock) = DataDirLock::acquire(&data_dir, &cancel).await? else {
        conn.close().await;
        return Ok(ExitCode::SUCCESS);
    };
    let handle = sluice_server::install_metrics().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
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
    let output = LogOutput::start(&log, writer, last)?;

    // Sinks, each on a thread of its own.
    let cleaned = crate::outbox_clean::tables(config);
    let mut durable: Vec<&str> = config
        .sinks
        .iter()
        .filter(|s| !matches!(s, SinkConfig::Sse { .. }))
        .map(|s| s.name())
        .collect();
    if !cleaned.is_empty() {
        durable.push(sluice_delivery::CLEANER_CURSOR);
    }
    log.cursors().retain(&durable)?;
    sluice_delivery::Store::retain(log.cursors(), &durable)?;
    let drain = CancellationToken::new();
    let abort = CancellationToken::new();
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let mut threads = Vec::new();
    let mut stats = Vec::new();
    let mut rebackfill = Vec::new();
    let mut shed_sinks = Vec::new();
    let mut controls = std::collections::HashMap::new();
    let mut pulls = std::collections::HashMap::new();
    let mut watches = Vec::new();
    for s in &config.sinks {
        let name = s.name().to_owned();
        let filter = TableFilter::new(s.tables());
        let sink_options = RunOptions {
            // A Redis batch is one pipeline.
            max_records: match s {
                SinkConfig::Redis { batch, .. } => *batch,
                _ => 1000,
            },
            max_bytes: 4 << 20,
        };
        if matches!(s, SinkConfig::Sse { .. }) {
            continue; // served by the HTTP server, one reader per client
        }
        let (cursor, shed) = log.cursors().register(&name, log.first())?;
        if let Some(at) = shed {
            warn!(sink = %name, shed_at = at, "sink was shed by the disk budget; it resumes at the log's start and its tables are backfilled");
            rebackfill.extend(sink_tables(s, &captured));
            shed_sinks.push(name.clone());
        }
        if let Some((topics, outbox_tables, delivery)) = s.events() {
            let st = Arc::new(SinkStats::default());
            stats.push((name.clone(), cursor.clone(), st.clone()));
            let store = sluice_delivery::Store::open(log.cursors().clone(), &name)?;
            let (control, commands) = sluice_delivery::control(store.clone());
            controls.insert(name.clone(), control);
            let mut tables = s.tables().to_vec();
            tables.extend(outbox_tables.iter().cloned());
            let filter = TableFilter::with_topics(&tables, topics);
            let items = sluice_delivery::ItemOptions {
                outbox_tables: outbox_tables.to_vec(),
            };
            watches.push(watch(
                &cursor,
                &filter,
                Some((store.clone(), items.clone())),
            ));
            let (target, batch): (Arc<dyn sluice_delivery::Target>, usize) = match s {
                SinkConfig::Webhook {
                    url,
                    urls,
                    secret,
                    secret_env,
                    headers,
                    timeout_secs,
                    batch,
                    retry_4xx,
                    ..
                } => {
                    let secret = match secret_env {
                        Some(var) => Some(std::env::var(var).map_err(|_| {
                            anyhow::anyhow!(
                                "sink {name:?}: secret_env {var:?} is not set in the environment"
                            )
                        })?),
                        None => secret.clone(),
                    };
                    let hook = sluice_sinks::webhook::Webhook::new(
                        sluice_sinks::webhook::WebhookOptions {
                            url: url.clone(),
                            urls: urls.clone(),
                            secret,
                            headers: headers
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                            timeout: Duration::from_secs(*timeout_secs),
                            array: *batch > 1,
                            retry_4xx: *retry_4xx,
                        },
                    )
                    .map_err(|e| anyhow::anyhow!("sink {name:?}: {e}"))?;
                    (Arc::new(hook), *batch)
                }
                _ => {
                    let queue = sluice_sinks::pull::PullQueue::new();
                    pulls.insert(name.clone(), queue.clone());
                    (Arc::new(sluice_sinks::pull::PullTarget(queue)), 1)
                }
            };
            let engine = sluice_delivery::EngineConfig {
                name: name.clone(),
                policy: delivery.policy(batch),
                items,
                topics: sluice_delivery::Topics::new(topics),
            };
            let fut = sluice_delivery::run(
                engine,
                Arc::new(DynTarget(target)),
                log.clone(),
                cursor,
                store,
                move |op, sc, t| filter.accepts(op, sc, t),
                st,
                commands,
                drain.clone(),
                abort.clone(),
            );
            threads.push(spawn_sink(&name, fut, &failure, &cancel)?);
            continue;
        }
        let sink = match s {
            SinkConfig::File { path, .. } => {
                let path = if path.is_absolute() {
                    path.clone()
                } else {
                    base.join(path)
                };
                AnySink::Lines(LineSink::file(&path).map_err(|e| {
                    anyhow::anyhow!("sink {name:?}: cannot open {}: {e}", path.display())
                })?)
            }
            SinkConfig::Stdout { .. } => AnySink::Lines(LineSink::stdout()),
            SinkConfig::Redis {
                url,
                format,
                prefix,
                key_template,
                ttl_secs,
                ..
            } => AnySink::Redis(Box::new(sluice_sinks::redis::RedisSink::new(
                sluice_sinks::redis::RedisOptions {
                    url: url.clone(),
                    prefix: prefix.clone(),
                    key_template: key_template.clone(),
                    format: *format,
                    ttl_secs: *ttl_secs,
                    db: spec.conninfo.dbname.clone(),
                    // A shed cache starts over: its tables are cleared, then backfilled.
                    reset: shed.map(|_| {
                        let tables = sink_tables(s, &captured)
                            .iter()
                            .map(|t| {
                                let r = catalog::TableRef::parse(t);
                                (r.schema, r.name)
                            })
                            .collect();
                        (tables, last)
                    }),
                },
            ))),
            SinkConfig::Sse { .. } | SinkConfig::Webhook { .. } | SinkConfig::Pull { .. } => {
                unreachable!("handled above")
            }
        };
        watches.push(watch(&cursor, &filter, None));
        let st = Arc::new(SinkStats::default());
        stats.push((name.clone(), cursor.clone(), st.clone()));
        let fut = sluice_sinks::run(
            name.clone(),
            sink,
            log.clone(),
            cursor,
            filter,
            sink_options,
            st,
            drain.clone(),
            abort.clone(),
        );
        threads.push(spawn_sink(&name, fut, &failure, &cancel)?);
    }
    // Tables shared by several shed sinks are backfilled once.
    rebackfill.sort();
    rebackfill.dedup();
    for t in &rebackfill {
        let r = catalog::TableRef::parse(t);
        let req = sluice_pg::backfill::BackfillRequest {
            schema: r.schema,
            table: r.name,
            filter: None,
        };
        conn.execute(&sluice_pg::backfill::request_sql(
            &config.pipeline.name,
            &req,
        ))
        .await?;
        info!(table = %t, "backfill requested for a sink that was shed");
    }
    // The requests are in the WAL now: the marks may go.
    for name in &shed_sinks {
        log.cursors().clear_shed(name)?;
    }
    let cleaner = if cleaned.is_empty() {
        None
    } else {
        let (cursor, shed) = log
            .cursors()
            .register(sluice_delivery::CLEANER_CURSOR, log.first())?;
        cursor.set_follower();
        if shed.is_some() {
            warn!("the outbox cleaner was shed by the disk budget: rows delivered while it was detached stay in the outbox tables (delete them by hand); it goes on from the log's start");
            log.cursors().clear_shed(sluice_delivery::CLEANER_CURSOR)?;
        }
        let cleaner = sluice_delivery::Cleaner {
            tables: cleaned
                .iter()
                .map(|t| {
                    let r = catalog::TableRef::parse(t);
                    (r.schema, r.name)
                })
                .collect(),
            watches,
        };
        let fut = sluice_delivery::clean(
            cleaner,
            log.clone(),
            cursor,
            crate::outbox_clean::PgDeleter::new(spec.conninfo.clone()),
            abort.clone(),
        );
        Some(spawn_sink("outbox-cleaner", fut, &failure, &cancel)?)
    };
    conn.close().await;
    // Cursors are persisted together, a few times a second: a crash re-delivers at most
    // that much, and the ids let sinks drop the repeats.
    let committer = {
        let (log, stop) = (log.clone(), abort.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                let l = log.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || l.cursors().commit()).await
                {
                    error!(error = %e, "cannot save sink cursors");
                }
            }
        })
    };

    let progress = std::sync::Arc::new(sluice_pg::snapshot::Progress::default());
    let source_config = SourceConfig {
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
                .any(|s| s.events().is_some_and(|(topics, _, _)| !topics.is_empty())),
        proto_version: config.source.protocol_version,
        status_interval: Duration::from_secs(config.source.status_interval_secs),
        tables: tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect(),
        snapshot_tables: tables
            .iter()
            .filter(|t| config.snapshots(&t.to_string()))
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect(),
        snapshot_workers: config.source.snapshot_workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        chunk_rows: config.source.chunk_rows,
        state_path: data_dir.join("state.redb"),
        progress: progress.clone(),
    };
    let (worker, mut status) = SourceWorker::new(source_config, output)?;
    let gauges = Arc::new(Gauges::new(log.clone(), stats, status.clone()));
    let metrics_task = tokio::spawn(crate::metrics::watch(
        gauges.clone(),
        spec.conninfo.clone(),
        spec.slot.clone(),
        abort.clone(),
    ));

    // The HTTP server, on a runtime of its own (many SSE clients, never in the source's way).
    let server = match config.server_section() {
        None => None,
        Some(section) => {
            let sse = config
                .sinks
                .iter()
                .filter_map(|s| match s {
                    SinkConfig::Sse {
                        name,
                        tables,
                        slow_client_timeout_secs,
                    } => Some((
                        name.clone(),
                        sluice_server::SseOptions {
                            tables: tables.clone(),
                            slow_client_timeout: Duration::from_secs(*slow_client_timeout_secs),
                            // 4 batches of ≤ 256 KiB: about 1 MiB per client at most.
                            buffer: 4,
                        },
                    )),
                    _ => None,
                })
                .collect();
            let ready_status = status.clone();
            let ready_log = log.clone();
            let ready_stats = gauges.clone();
            let refresh = gauges.clone();
            let options = sluice_server::ServerOptions {
                listen: section.listen.parse().context("server.listen")?,
                token_hashes: (section.auth == Auth::Token).then(|| {
                    section
                        .tokens
                        .iter()
                        .map(|t| t.trim_start_matches("sha256:").to_ascii_lowercase())
                        .collect()
                }),
                sse,
                delivery: std::mem::take(&mut controls),
                pull: std::mem::take(&mut pulls),
                readiness: Arc::new(move || {
                    if !ready_status.borrow().streaming {
                        return Err("the source is not streaming".into());
                    }
                    if ready_log.paused() {
                        return Err("the log is at its disk budget; the source is paused".into());
                    }
                    if let Some(s) = ready_stats.shed() {
                        return Err(format!("sink {s:?} was shed by the disk budget"));
                    }
                    Ok(())
                }),
                refresh: Arc::new(move || refresh.refresh()),
            };
            let (server_log, server_stop) = (log.clone(), abort.clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            let thread = std::thread::Builder::new()
                .name("sluice-http".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        match sluice_server::bind(options, server_log, server_stop).await {
                            Ok((addr, serve)) => {
                                let _ = tx.send(Ok(addr));
                                if let Err(e) = serve.await {
                                    error!(error = %e, "server stopped");
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                            }
                        }
                    });
                })?;
            match rx.await {
                Ok(Ok(addr)) => {
                    // Where `sluice parked` / `sluice dead` find this instance (the
                    // configured port may be 0).
                    let path = data_dir.join("server.addr");
                    if let Err(e) = std::fs::write(&path, addr.to_string()) {
                        warn!(error = %e, path = %path.display(), "cannot record the server's address");
                    }
                }
                Ok(Err(e)) => {
                    abort.cancel();
                    anyhow::bail!("server: {e}");
                }
                Err(_) => anyhow::bail!("server thread ended at start"),
            }
            Some(thread)
        }
    };

    tokio::spawn(crate::progress::show(progress, cancel.clone()));
    if let Some(until) = until {
        let stop = cancel.clone();
        tokio::spawn(async move {
            if status.wait_for(|s| s.confirmed >= until).await.is_ok() {
                info!(%until, "everything up to the requested LSN is confirmed; stopping");
                stop.cancel();
            }
        });
    }
    let mut source = tokio::spawn(worker.run(cancel.clone()));
    let result = tokio::select! {
        r = &mut source => r,
        _ = cancel.cancelled() => match tokio::time::timeout(SHUTDOWN_DEADLINE, &mut source).await {
            Ok(r) => r,
            Err(_) => {
                error!("shutdown deadline passed; exiting with work unconfirmed (it will be sent again)");
                abort.cancel();
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    let source_result = result.context("source task failed")?;
    // Stop taking changes, then let the sinks deliver what the log holds.
    let closed = match source_result {
        Ok(output) => {
            log.closing();
            tokio::task::spawn_blocking(move || output.close())
                .await?
                .map(|()| None)
        }
        Err(e) => Ok(Some(e)),
    };
    drain.cancel();
    let joined = tokio::task::spawn_blocking(move || {
        threads.into_iter().map(|t| t.join()).collect::<Vec<_>>()
    });
    // The sinks' own deadline starts now: a clean stop delivers a backlog of a few
    // seconds' worth rather than leaving it for the next start.
    let drain_deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
    if tokio::time::timeout_at(drain_deadline, joined)
        .await
        .is_err()
    {
        warn!("sinks did not deliver everything before the shutdown deadline; they resume from their cursors");
    }
    abort.cancel();
    if let Some(t) = cleaner {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let _ = committer.await;
    let _ = metrics_task.await;
    {
        let l = log.clone();
        tokio::task::spawn_blocking(move || l.cursors().commit()).await??;
    }
    if let Some(t) = server {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    drop(handle);
    if let Some(f) = failure.lock().expect("failure lock").take() {
        anyhow::bail!("{f}");
    }
    match closed? {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            let hint = if e.class() == ErrorClass::Definite {
                " (run `sluice check` for the fix)"
            } else {
                ""
            };
            error!(error = %e, "source stopped{hint}");
            Err(anyhow::anyhow!("{e}"))
        }
    }
}
