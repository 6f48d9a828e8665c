//! A run's sinks: each registered with its cursor, built through its module
//! ([`sluice_sinks::SinkConfig::build`]) and started on a thread of its own, plus the
//! outbox cleaner that follows them.
//!
//! Invariants:
//! - A sink's failure is recorded and cancels the run (a critical task's failure cancels
//!   its siblings); the first failure is the one reported.
//! - A sink shed by the disk budget starts again from the log's start, its tables are
//!   re-backfilled through the WAL, and only then is its shed mark cleared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_core::{Fault, Lsn, SinkStats};
use sluice_delivery::{Control, ItemOptions, SharedState, Store};
use sluice_log::{Consumer, Cursor, SharedLog, Until};
use sluice_pg::catalog::TableRef;
use sluice_pg::{ConnInfo, Connection};
use sluice_sinks::pull::PullQueue;
use sluice_sinks::sse::SseOptions;
use sluice_sinks::{Built, Context, SinkConfig, TableFilter};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;

/// Where a sink's failure goes.
pub type FailureSlot = Arc<Mutex<Option<Fault>>>;

/// What starting the sinks needs from the run.
pub struct Start<'a> {
    pub log: &'a SharedLog,
    pub state: &'a SharedState,
    /// Commit LSN of the log's last record when it was opened.
    pub last: Lsn,
    pub base: &'a std::path::Path,
    pub db: &'a str,
    pub pipeline: &'a str,
    pub captured: &'a [String],
    /// The captured tables' columns (`sluice_pg::catalog::columns`).
    pub columns: &'a sluice_core::Columns,
    /// The source's catalog, for columns that appear mid-stream.
    pub catalog: &'a Arc<dyn sluice_core::Catalog>,
    pub failure: &'a FailureSlot,
    pub cancel: &'a CancellationToken,
}

/// The running sinks of one run.
pub struct Sinks {
    threads: Vec<JoinHandle<Result<(), Fault>>>,
    /// Per sink with a cursor: its name, cursor and figures, for the gauges.
    pub stats: Vec<(String, Arc<Cursor>, Arc<SinkStats>)>,
    pub sse: HashMap<String, SseOptions>,
    pub controls: HashMap<String, Control>,
    pub pulls: HashMap<String, Arc<PullQueue>>,
    watches: Vec<sluice_delivery::Watch>,
    rebackfill: Vec<String>,
    shed: Vec<String>,
    /// `drain`: cancelled when the source has stopped (deliver what the log holds, then
    /// return); `abort`: cancelled when everything must stop now.
    until: Until,
    /// `until.abort`, for the run.
    pub abort: CancellationToken,
}

fn spawn_thread(
    name: String,
    f: impl std::future::Future<Output = Result<(), Fault>> + Send + 'static,
) -> Result<JoinHandle<Result<(), Fault>>, Fault> {
    Ok(std::thread::Builder::new().name(name).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Fault::fatal("cannot start a runtime").caused_by(e))?;
        rt.block_on(f)
    })?)
}

/// Runs a sink's loop on a thread of its own; its failure is recorded and stops the run.
fn spawn_sink<E: Into<Fault>>(
    name: &str,
    fut: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
    failure: &FailureSlot,
    cancel: &CancellationToken,
) -> Result<JoinHandle<Result<(), Fault>>, Fault> {
    let (failure, stop, name2) = (failure.clone(), cancel.clone(), name.to_owned());
    spawn_thread(format!("sink-{name}"), async move {
        let r = fut.await.map_err(Into::into);
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

impl Sinks {
    /// Registers every sink's cursor, builds it and starts it.
    pub async fn start(config: &Config, start: &Start<'_>) -> Result<Sinks, Fault> {
        let log = start.log;
        // Cursors of sinks that are gone (and their waiting rooms) are dropped.
        let mut durable: Vec<&str> = config
            .sinks
            .iter()
            .filter(|s| s.has_cursor())
            .map(|s| s.name())
            .collect();
        if !crate::outbox_clean::tables(config).is_empty() {
            durable.push(sluice_delivery::CLEANER_CURSOR);
        }
        log.cursors().retain(&durable)?;
        start.state.retain(&durable)?;
        let until = Until::default();
        let mut sinks = Sinks {
            threads: Vec::new(),
            stats: Vec::new(),
            sse: HashMap::new(),
            controls: HashMap::new(),
            pulls: HashMap::new(),
            watches: Vec::new(),
            rebackfill: Vec::new(),
            shed: Vec::new(),
            abort: until.abort.clone(),
            until,
        };
        for s in &config.sinks {
            sinks.start_one(s, start).await?;
        }
        Ok(sinks)
    }

    async fn start_one(&mut self, s: &SinkConfig, start: &Start<'_>) -> Result<(), Fault> {
        let (log, name) = (start.log, s.name().to_owned());
        let tables = s.takes(start.captured);
        if !s.has_cursor() {
            // Served by the HTTP server, one reader per client: no cursor.
            let ctx = context(start, &tables, None);
            if let Built::Served(options) = s.build(&ctx).await? {
                self.sse.insert(name, options);
            }
            return Ok(());
        }
        let (cursor, shed) = log.cursors().register(&name, log.first())?;
        if let Some(at) = shed {
            warn!(sink = %name, shed_at = at, "sink was shed by the disk budget; it resumes at the log's start and its tables are backfilled");
            self.rebackfill.extend(tables.iter().cloned());
            self.shed.push(name.clone());
        }
        let ctx = context(start, &tables, shed.map(|_| start.last));
        let filter = s.filter();
        let stats = Arc::new(SinkStats::default());
        self.stats
            .push((name.clone(), cursor.clone(), stats.clone()));
        let fut_thread = match s.build(&ctx).await? {
            Built::Batches {
                sink,
                max_records,
                window,
            } => {
                self.watches.push(watch(&cursor, &filter, None));
                let mut consumer = Consumer::open(log, cursor, filter.keep())?;
                consumer.max_records = max_records;
                if let Some(w) = window {
                    consumer.max_bytes = w.max_bytes;
                    consumer.linger = Some(w.linger);
                }
                let fut = sluice_sinks::run(
                    start.pipeline.to_owned(),
                    name.clone(),
                    sink,
                    consumer,
                    stats,
                    self.until.clone(),
                );
                spawn_sink(&name, fut, start.failure, start.cancel)?
            }
            Built::Engine {
                target,
                batch,
                pull,
            } => {
                let events = s.events().expect("an engine-driven sink has events");
                let store = start.state.waiting_room(&name)?;
                let (control, commands) = sluice_delivery::control(store.clone());
                self.controls.insert(name.clone(), control);
                if let Some(queue) = pull {
                    self.pulls.insert(name.clone(), queue);
                }
                let items = ItemOptions {
                    outbox_tables: events.outbox_tables.to_vec(),
                };
                self.watches.push(watch(
                    &cursor,
                    &filter,
                    Some((store.clone(), items.clone())),
                ));
                let engine = sluice_delivery::EngineConfig {
                    pipeline: start.pipeline.to_owned(),
                    name: name.clone(),
                    policy: events.delivery.policy(batch),
                    items,
                    topics: sluice_delivery::Topics::new(events.topics),
                };
                let consumer = Consumer::open(log, cursor, filter.keep())?;
                let fut = sluice_delivery::run(
                    engine,
                    sluice_delivery::EngineIo {
                        target: Arc::new(DynTarget(target)),
                        consumer,
                        store,
                        stats,
                        commands,
                        until: self.until.clone(),
                    },
                );
                spawn_sink(&name, fut, start.failure, start.cancel)?
            }
            Built::Served(_) => {
                return Err(Fault::fatal(format!(
                    "sink {name:?}: a served sink with a cursor"
                )))
            }
        };
        self.threads.push(fut_thread);
        Ok(())
    }

    /// Asks for the backfill of shed sinks' tables (through the WAL, each table once),
    /// then clears their shed marks.
    pub async fn request_rebackfills(
        &mut self,
        conn: &mut Connection,
        pipeline: &str,
        log: &SharedLog,
    ) -> Result<(), Fault> {
        self.rebackfill.sort();
        self.rebackfill.dedup();
        for t in &self.rebackfill {
            let r = TableRef::parse(t);
            let req = sluice_pg::backfill::BackfillRequest {
                schema: r.schema,
                table: r.name,
                filter: None,
            };
            conn.execute(&sluice_pg::backfill::request_sql(pipeline, &req))
                .await?;
            info!(table = %t, "backfill requested for a sink that was shed");
        }
        // The requests are in the WAL now: the marks may go.
        for name in &self.shed {
            log.cursors().clear_shed(name)?;
        }
        Ok(())
    }

    /// Starts the outbox cleaner if any sink deletes delivered rows.
    pub fn start_cleaner(
        &mut self,
        config: &Config,
        log: &SharedLog,
        state: &SharedState,
        conninfo: &ConnInfo,
        failure: &FailureSlot,
        cancel: &CancellationToken,
    ) -> Result<Option<JoinHandle<Result<(), Fault>>>, Fault> {
        let cleaned = crate::outbox_clean::tables(config);
        if cleaned.is_empty() {
            return Ok(None);
        }
        let (cursor, shed) = log
            .cursors()
            .register(sluice_delivery::CLEANER_CURSOR, log.first())?;
        cursor.set_follower();
        if shed.is_some() {
            warn!("the outbox cleaner was shed by the disk budget: rows delivered while it was detached stay in the outbox tables (delete them by hand); it goes on from the log's start");
            log.cursors().clear_shed(sluice_delivery::CLEANER_CURSOR)?;
        }
        let tables: Vec<(String, String)> = cleaned
            .iter()
            .map(|t| {
                let r = TableRef::parse(t);
                (r.schema, r.name)
            })
            .collect();
        let consumer = Consumer::open(log, cursor, sluice_delivery::outbox_rows(&tables))?;
        let cleaner = sluice_delivery::Cleaner {
            pipeline: config.pipeline.name.clone(),
            tables,
            watches: std::mem::take(&mut self.watches),
        };
        let fut = sluice_delivery::clean(
            cleaner,
            consumer,
            state.clone(),
            crate::outbox_clean::PgDeleter::new(conninfo.clone()),
            self.abort.clone(),
        );
        Ok(Some(spawn_sink("outbox-cleaner", fut, failure, cancel)?))
    }

    /// Lets every sink deliver what the log holds, bounded by `deadline`, and for as long
    /// as they make progress: once no cursor has moved for [`STALLED`] (nobody reads a
    /// pull sink, a server is down) the drain ends, since what is left is safe in the log
    /// and a stop must not wait on a sink that cannot move. Returns what each sink left.
    pub async fn drain(self, deadline: Duration, log: &SharedLog) -> Vec<Undelivered> {
        self.until.drain.cancel();
        let cursors: Vec<(String, Arc<Cursor>)> = self
            .stats
            .iter()
            .map(|(name, cursor, _)| (name.clone(), cursor.clone()))
            .collect();
        let threads = self.threads;
        let mut joined = tokio::task::spawn_blocking(move || {
            threads.into_iter().map(|t| t.join()).collect::<Vec<_>>()
        });
        let positions = || {
            cursors
                .iter()
                .map(|(_, c)| c.position())
                .collect::<Vec<_>>()
        };
        let until = tokio::time::Instant::now() + deadline;
        let (mut last, mut moved_at) = (positions(), tokio::time::Instant::now());
        let finished = loop {
            tokio::select! {
                _ = &mut joined => break true,
                _ = tokio::time::sleep(STALL_CHECK) => {}
            }
            let now = tokio::time::Instant::now();
            let at = positions();
            if at != last {
                (last, moved_at) = (at, now);
            } else if now - moved_at >= STALLED || now >= until {
                break false;
            }
        };
        let end = log.durable_end();
        let left: Vec<Undelivered> = cursors
            .iter()
            .map(|(sink, c)| Undelivered {
                sink: sink.clone(),
                records: end.saturating_sub(c.position()),
            })
            .filter(|u| u.records > 0)
            .collect();
        if !finished {
            for u in &left {
                warn!(sink = %u.sink, records = u.records, "sink: stopped with records undelivered; they stay in the log and are delivered from its cursor at the next start");
            }
        }
        left
    }
}

/// How often a drain looks at the cursors.
const STALL_CHECK: Duration = Duration::from_millis(100);
/// A drain ends once no cursor has moved for this long.
pub const STALLED: Duration = Duration::from_secs(1);

/// Records a sink had not delivered when its pipeline stopped: they are in the log and
/// go out from the sink's cursor at the next start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Undelivered {
    pub sink: String,
    pub records: u64,
}

fn context<'a>(start: &Start<'a>, tables: &'a [String], reset: Option<Lsn>) -> Context<'a> {
    Context {
        base_dir: start.base,
        db: start.db,
        pipeline: start.pipeline,
        tables,
        columns: start.columns,
        catalog: Some(start.catalog),
        reset,
    }
}

/// What the outbox cleaner needs to know of a sink: where it is and what it takes.
fn watch(
    cursor: &Arc<Cursor>,
    filter: &TableFilter,
    waiting: Option<(Store, ItemOptions)>,
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
