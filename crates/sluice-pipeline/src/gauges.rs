//! Gauges computed from the pipeline's state (log size, sink lag, slot lag, memory), kept
//! fresh once a second and whenever `/metrics` is read. Counters and histograms are
//! recorded where things happen (the output, the sink loops, the SSE feeds).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::metric;
use sluice_core::SinkStats;
use sluice_log::{Cursor, SharedLog};
use sluice_pg::{ConnInfo, Connection, SourceStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::directory::{CopyStatus, PipelineStatus, SinkStatus};

pub struct Gauges {
    /// The pipeline's name: every series here carries it as the `pipeline` label.
    pipeline: String,
    log: SharedLog,
    /// The tables being copied.
    copies: Arc<sluice_pg::snapshot::Progress>,
    /// This pipeline's heartbeats as they come through.
    heartbeats: Arc<sluice_pg::heartbeat::Arrivals>,
    sinks: Vec<(String, Arc<Cursor>, Arc<SinkStats>)>,
    status: watch::Receiver<SourceStatus>,
    /// The slot as last queried: active, and bytes of WAL it retains past its confirmed
    /// position.
    slot: Mutex<Option<SlotView>>,
    /// Per sink, records delivered per second over the last sample (≥ 1 s), and the
    /// sample it was measured from.
    rates: Mutex<(Instant, Vec<u64>, Vec<f64>)>,
}

impl Gauges {
    pub fn new(
        pipeline: String,
        log: SharedLog,
        copies: Arc<sluice_pg::snapshot::Progress>,
        heartbeats: Arc<sluice_pg::heartbeat::Arrivals>,
        sinks: Vec<(String, Arc<Cursor>, Arc<SinkStats>)>,
        status: watch::Receiver<SourceStatus>,
    ) -> Gauges {
        let delivered = sinks
            .iter()
            .map(|(_, _, s)| s.delivered.load(Ordering::Relaxed))
            .collect();
        let rates = vec![0.0; sinks.len()];
        Gauges {
            pipeline,
            log,
            copies,
            heartbeats,
            sinks,
            status,
            slot: Mutex::new(None),
            rates: Mutex::new((Instant::now(), delivered, rates)),
        }
    }

    /// Updates the per-sink rates once at least a second has passed since the last.
    fn sample_rates(&self) {
        let mut r = self.rates.lock().expect("rates lock");
        let elapsed = r.0.elapsed().as_secs_f64();
        if elapsed < 1.0 {
            return;
        }
        for (i, (_, _, stats)) in self.sinks.iter().enumerate() {
            let now = stats.delivered.load(Ordering::Relaxed);
            r.2[i] = now.saturating_sub(r.1[i]) as f64 / elapsed;
            r.1[i] = now;
        }
        r.0 = Instant::now();
    }

    /// The pipeline's state as the management API shows it (no row data).
    pub fn status(&self) -> PipelineStatus {
        let end = self.log.durable_end();
        let source = self.status.borrow().clone();
        let rates = self.rates.lock().expect("rates lock").2.clone();
        let slot = self.slot.lock().expect("slot lock").clone();
        PipelineStatus {
            streaming: source.streaming,
            confirmed_lsn: source.confirmed.to_string(),
            reconnects: source.reconnects,
            last_error: source.last_error.clone(),
            // The slot is queried every 5 s; while the source streams from it, it is
            // active and exists, whatever the last query (before the start) said.
            slot_active: match &slot {
                _ if source.streaming => Some(true),
                Some(s) => Some(s.active),
                None => None,
            },
            slot_lag_bytes: slot.as_ref().and_then(|s| s.lag_bytes),
            slot_retained_bytes: slot.as_ref().and_then(|s| s.retained_bytes),
            slot_wal_status: match &slot {
                Some(s) if !s.exists && !source.streaming => Some("missing".into()),
                Some(s) if s.exists => s.wal_status.clone(),
                _ => None,
            },
            log: self.log.describe(),
            log_bytes: self.log.bytes(),
            log_records: end.saturating_sub(self.log.first()),
            log_paused: self.log.paused(),
            heartbeat_age_secs: self.heartbeats.age_and_latency().map(|(a, _)| a),
            sinks: self
                .sinks
                .iter()
                .zip(rates)
                .map(|((name, cursor, stats), rate)| SinkStatus {
                    name: name.clone(),
                    lag_records: end.saturating_sub(cursor.position()),
                    delivered: stats.delivered.load(Ordering::Relaxed),
                    failures: stats.failures.load(Ordering::Relaxed),
                    per_second: (rate * 10.0).round() / 10.0,
                    shed: cursor.is_shed(),
                })
                .collect(),
            // Filled in by the run, which holds the SSE feeds.
            served: Vec::new(),
            copies: self
                .copies
                .tables()
                .into_iter()
                .map(|t| CopyStatus {
                    table: t.table,
                    kind: match t.kind {
                        sluice_pg::snapshot::PlanKind::Initial => "snapshot",
                        sluice_pg::snapshot::PlanKind::Backfill => "backfill",
                    },
                    rows: t.rows,
                    estimated_rows: t.est_rows,
                    ranges_done: t.ranges_done,
                    ranges: t.ranges,
                    finished: t.finished,
                })
                .collect(),
        }
    }

    /// A sink the disk budget shed, if any.
    pub fn shed(&self) -> Option<String> {
        self.sinks
            .iter()
            .find(|(_, c, _)| c.is_shed())
            .map(|(n, _, _)| n.clone())
    }

    pub fn refresh(&self) {
        self.sample_rates();
        let end = self.log.durable_end();
        let p = || ("pipeline", self.pipeline.clone());
        metrics::gauge!(metric::LOG_BYTES.name, &[p()]).set(self.log.bytes() as f64);
        metrics::gauge!(metric::LOG_RECORDS.name, &[p()])
            .set(end.saturating_sub(self.log.first()) as f64);
        metrics::gauge!(metric::LOG_PAUSED.name, &[p()]).set(if self.log.paused() {
            1.0
        } else {
            0.0
        });
        let now = sluice_core::time::now_micros();
        for (name, cursor, stats) in &self.sinks {
            let lag = end.saturating_sub(cursor.position());
            let labels = [p(), ("sink", name.clone())];
            metrics::gauge!(metric::SINK_LAG_RECORDS.name, &labels).set(lag as f64);
            // Behind: how old the last delivered change is; caught up: nothing waits.
            let last = stats.last_commit_ts.load(Ordering::Relaxed);
            let secs = if lag > 0 && last > 0 {
                (now - last).max(0) as f64 / 1e6
            } else {
                0.0
            };
            metrics::gauge!(metric::SINK_LAG_SECONDS.name, &labels).set(secs);
            metrics::gauge!(metric::SINK_SHED.name, &labels).set(if cursor.is_shed() {
                1.0
            } else {
                0.0
            });
        }
        let s = self.status.borrow().clone();
        metrics::counter!(metric::SOURCE_RECONNECTS.name, &[p()]).absolute(s.reconnects);
        metrics::gauge!(metric::SOURCE_STREAMING.name, &[p()]).set(if s.streaming {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(metric::SOURCE_CONFIRMED_LSN.name, &[p()]).set(s.confirmed.0 as f64);
        if let Some((age, took)) = self.heartbeats.age_and_latency() {
            metrics::gauge!(metric::HEARTBEAT_AGE.name, &[p()]).set(age);
            metrics::gauge!(metric::HEARTBEAT_LATENCY.name, &[p()]).set(took);
        }
        if let Some(rss) = resident_bytes() {
            metrics::gauge!(metric::RESIDENT_MEMORY.name).set(rss as f64);
        }
    }
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// The slot as last queried.
#[derive(Debug, Clone, Default)]
pub struct SlotView {
    /// Whether it exists at all.
    pub exists: bool,
    pub active: bool,
    /// WAL between the server's end and the slot's confirmed position.
    pub lag_bytes: Option<i64>,
    /// WAL the slot keeps on the server's disk (from its restart position).
    pub retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
}

impl SlotView {
    fn parse(rows: &[Vec<Option<String>>]) -> SlotView {
        let Some(r) = rows.first() else {
            return SlotView::default();
        };
        let col = |i: usize| r.get(i).cloned().flatten();
        SlotView {
            exists: true,
            active: col(0).as_deref() == Some("t"),
            lag_bytes: col(1).and_then(|v| v.parse().ok()),
            retained_bytes: col(3).and_then(|v| v.parse().ok()),
            wal_status: col(2),
        }
    }
}

/// Refreshes the gauges every second and the slot's state every five, until `stop`.
/// With `max_retained`, also the point of no return: see [`protect_database`].
pub async fn watch(
    gauges: Arc<Gauges>,
    conninfo: ConnInfo,
    slot: String,
    max_retained: Option<u64>,
    stop: CancellationToken,
) {
    let mut conn: Option<Connection> = None;
    let mut tick = 0u64;
    // wal_status through to_jsonb: the column exists from PostgreSQL 13 on only.
    let sql = format!(
        "SELECT active, pg_current_wal_lsn() - confirmed_flush_lsn, to_jsonb(s) ->> 'wal_status', \
         pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots s WHERE slot_name = {}",
        sluice_pg::wire::quote_literal(&slot)
    );
    loop {
        gauges.refresh();
        if tick.is_multiple_of(5) {
            if conn.is_none() {
                conn = Connection::connect(&conninfo, false).await.ok();
            }
            if let Some(c) = conn.as_mut() {
                match c.query(&sql).await {
                    Ok(rows) => {
                        let view = SlotView::parse(&rows);
                        let p = [("pipeline", gauges.pipeline.clone())];
                        let flag = |b: bool| if b { 1.0 } else { 0.0 };
                        metrics::gauge!(metric::SLOT_ACTIVE.name, &p).set(flag(view.active));
                        let lost = !view.exists || view.wal_status.as_deref() == Some("lost");
                        metrics::gauge!(metric::SLOT_LOST.name, &p).set(flag(lost));
                        if let Some(lag) = view.lag_bytes {
                            metrics::gauge!(metric::SLOT_LAG_BYTES.name, &p).set(lag as f64);
                        }
                        if let Some(kept) = view.retained_bytes {
                            metrics::gauge!(metric::SLOT_RETAINED_BYTES.name, &p).set(kept as f64);
                        }
                        let over = match (max_retained, view.retained_bytes) {
                            (Some(max), Some(kept)) => kept > 0 && kept as u64 > max,
                            _ => false,
                        };
                        *gauges.slot.lock().expect("slot lock") = Some(view);
                        if over
                            && !gauges.progressing()
                            && protect_database(c, &slot, max_retained.unwrap_or(0)).await
                        {
                            // Said at once: the pipeline stops as soon as its source
                            // finds the slot gone.
                            metrics::gauge!(metric::SLOT_LOST.name, &p).set(1.0);
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "metrics: slot query failed; reconnecting");
                        conn = None;
                    }
                }
            }
        }
        tick += 1;
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    if let Some(c) = conn {
        c.close().await;
    }
}

impl Gauges {
    /// Whether the pipeline can move its slot: its source streams and its log takes more.
    fn progressing(&self) -> bool {
        self.status.borrow().streaming && !self.log.paused()
    }
}

/// The point of no return: the slot retains more WAL than allowed while the pipeline
/// cannot make progress, so it is dropped before the database's disk fills. The
/// walsender holding it is ended first; the source, reconnecting, finds its slot gone and
/// acts per `on_slot_lost` (stop, or resnapshot). A failed attempt is retried at the
/// next check.
async fn protect_database(conn: &mut Connection, slot: &str, max: u64) -> bool {
    let name = sluice_pg::wire::quote_literal(slot);
    // The source reconnects after a short backoff: end its walsender, then try to drop
    // the slot every few milliseconds (for up to 2 s), so the drop lands in the moment
    // between the walsender's exit and the source's next connection.
    let sql = format!(
        "DO $$ BEGIN \
           PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = {name} AND active_pid IS NOT NULL; \
           FOR i IN 1..400 LOOP \
             BEGIN \
               PERFORM pg_drop_replication_slot({name}); \
               RETURN; \
             EXCEPTION WHEN object_in_use THEN \
               PERFORM pg_sleep(0.005); \
             END; \
           END LOOP; \
           RAISE EXCEPTION 'the slot stayed in use'; \
         END $$"
    );
    match conn.simple_query(&sql).await {
        Ok(_) => {
            tracing::error!(
                slot,
                max_slot_lag_bytes = max,
                "dropped the replication slot to protect the database: it retained more WAL than \
                 max_slot_lag_bytes while the pipeline could not make progress; the changes since \
                 are lost to this pipeline, which resnapshots or stops per [source] on_slot_lost"
            );
            true
        }
        Err(e) => {
            debug!(error = %e, "could not drop the slot yet; trying again");
            false
        }
    }
}
