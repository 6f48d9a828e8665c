//! The loop every batch sink runs: wait for durable records and read a batch through the
//! shared [`Consumer`] (the sink's table filter), deliver it (retrying transient failures with backoff and full jitter),
//! then move the cursor. On `drain` it delivers what the log holds and returns.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{metric, Backoff, Fault, Op, SinkStats, TablePatterns};
use sluice_log::{Consumer, LogError, RecordBatch, Step, Until};
use tracing::{error, info, warn};

use crate::{InFlight, Sink};

/// Which records a sink takes: tables (empty: all of the pipeline's) and outbox topics.
#[derive(Debug, Clone, Default)]
pub struct TableFilter {
    tables: TablePatterns,
    /// Outbox topics taken (empty: every logical message, if no tables are listed).
    topics: sluice_delivery::Topics,
}

impl TableFilter {
    /// From `schema.table` and `schema.*` entries.
    pub fn new(entries: &[String]) -> TableFilter {
        TableFilter {
            tables: TablePatterns::new(entries),
            topics: Default::default(),
        }
    }

    /// A sink of outbox events: `sluice.publish` messages of these topics, and the
    /// listed tables (Debezium-layout outboxes, or plain tables). Topics only: no rows.
    pub fn with_topics(entries: &[String], topics: &[String]) -> TableFilter {
        let mut f = TableFilter::new(entries);
        f.topics = sluice_delivery::Topics::new(topics);
        f
    }

    /// The filter as a consumer's [`Keep`](sluice_log::Keep).
    pub fn keep(self) -> sluice_log::Keep {
        Box::new(move |op, s, t| self.accepts(op, s, t))
    }

    pub fn accepts(&self, op: Op, schema: &str, table: &str) -> bool {
        let no_tables = self.tables.is_empty();
        if op == Op::Message {
            // An outbox message's frame carries its prefix and topic as schema and table.
            if !self.topics.is_empty() {
                return schema == sluice_delivery::OUTBOX_PREFIX && self.topics.matches(table);
            }
            return no_tables;
        }
        if no_tables {
            return self.topics.is_empty();
        }
        self.tables.matches(schema, table)
    }
}

/// Waits between attempts at one batch.
const RETRY: Backoff = Backoff::doubling(Duration::from_millis(50), Duration::from_secs(10));

use sluice_core::time::now_micros;

/// The metrics and stats of one sink's loop.
struct Counters {
    name: String,
    stats: Arc<SinkStats>,
    latency: metrics::Histogram,
    delivered: metrics::Counter,
    failures: metrics::Counter,
}

impl Counters {
    /// `batch` is acknowledged.
    fn done(&self, batch: &RecordBatch) {
        let now = now_micros();
        let mut last_ts = 0;
        for r in batch.iter() {
            if r.commit_ts_micros > 0 {
                self.latency
                    .record((now - r.commit_ts_micros).max(0) as f64 / 1e6);
                last_ts = r.commit_ts_micros;
            }
        }
        if last_ts > 0 {
            self.stats.last_commit_ts.store(last_ts, Ordering::Relaxed);
        }
        self.delivered.increment(batch.len() as u64);
        self.stats
            .delivered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

/// A started batch: the rest of its delivery, and the batch (for its position and stats).
type Started = (InFlight, RecordBatch);

/// Runs `sink` through `consumer` until `until.drain` (then until the log's end) or
/// `until.abort`.
///
/// One batch may be in flight while the next is read and started; batches are
/// acknowledged in order, each once its delivery has finished. A failed batch (or a
/// failure to start one) rewinds the consumer to the cursor and starts again from there
/// after a backoff: the sink's contract is that nothing started after a failure applies.
pub async fn run<S: Sink>(
    pipeline: String,
    name: String,
    mut sink: S,
    mut consumer: Consumer,
    stats: Arc<SinkStats>,
    until: Until,
) -> Result<(), Fault> {
    let definite =
        |e: LogError| Fault::fatal(format!("sink {name:?}: the log failed")).caused_by(e);
    let cursor = consumer.cursor().clone();
    let counters = Counters {
        latency: metrics::histogram!(metric::SINK_LATENCY.name, "pipeline" => pipeline.clone(), "sink" => name.clone()),
        delivered: metrics::counter!(metric::SINK_DELIVERED.name, "pipeline" => pipeline.clone(), "sink" => name.clone()),
        failures: metrics::counter!(metric::SINK_FAILURES.name, "pipeline" => pipeline.clone(), "sink" => name.clone()),
        name: name.clone(),
        stats,
    };
    let mut batch = RecordBatch::default();
    let mut spare = RecordBatch::default();
    let mut in_flight: Option<Started> = None;
    let mut backoff = RETRY.start();
    loop {
        // Nothing more to read now (or detached): finish what is in flight first, so its
        // acknowledgement does not wait for the next record.
        if in_flight.is_some() && (consumer.at_end() || cursor.is_shed()) {
            let started = in_flight.take().expect("checked");
            match finish(started, &cursor, &counters).await {
                Ok(done) => {
                    spare = done;
                    backoff = RETRY.start();
                }
                Err(e) => {
                    if !retry_after(e, &counters, &cursor, &mut backoff, &until).await? {
                        return Ok(());
                    }
                    consumer.rewind().map_err(definite)?;
                    continue;
                }
            }
        }
        match consumer
            .next(&mut batch, &until, None)
            .await
            .map_err(definite)?
        {
            Step::Read => {}
            Step::Drained => {
                info!(sink = %name, position = consumer.position(), "sink: drained");
                return Ok(());
            }
            // What is in flight is not acknowledged: it is delivered again after a restart.
            Step::Stopped | Step::Idle => return Ok(()),
            Step::Shed => {
                error!(sink = %name, position = cursor.position(), "sink: shed by the log's disk budget; it stops and is backfilled when the pipeline restarts");
                return Ok(());
            }
        }
        if batch.is_empty() {
            // Filtered out entirely: acknowledged once what is in flight before it is.
            if let Some(started) = in_flight.take() {
                in_flight = Some(chain_empty(started, batch.next));
            } else {
                cursor.ack(batch.next);
            }
            continue;
        }
        let started = sink.start(&batch).await;
        // The batch before finishes first: acknowledgements stay in order.
        let before = match in_flight.take() {
            Some(prev) => Some(finish(prev, &cursor, &counters).await),
            None => None,
        };
        let failed = match (started, before) {
            (Ok(f), None) => Ok(f),
            (Ok(f), Some(Ok(done))) => {
                spare = done;
                Ok(f)
            }
            // The batch before failed (this one then does not apply), or this one could
            // not start: both go again from the cursor.
            (_, Some(Err(e))) | (Err(e), _) => Err(e),
        };
        match failed {
            Ok(f) => {
                backoff = RETRY.start();
                let next = std::mem::take(&mut spare);
                in_flight = Some((f, std::mem::replace(&mut batch, next)));
            }
            Err(e) => {
                if !retry_after(e, &counters, &cursor, &mut backoff, &until).await? {
                    return Ok(());
                }
                consumer.rewind().map_err(definite)?;
            }
        }
    }
}

/// Waits for a started batch and acknowledges it; returns it for reuse.
async fn finish(
    (f, batch): Started,
    cursor: &sluice_log::Cursor,
    counters: &Counters,
) -> Result<RecordBatch, Fault> {
    f.await?;
    if !cursor.is_shed() {
        counters.done(&batch);
        cursor.ack(batch.next);
    }
    Ok(batch)
}

/// A started batch followed by records all filtered out: acknowledged up to `next`.
fn chain_empty((f, mut batch): Started, next: u64) -> Started {
    batch.next = next;
    (f, batch)
}

/// After a failure: a definite one ends the run; a transient one waits its backoff.
/// Returns `false` when the run is aborted meanwhile.
async fn retry_after(
    e: Fault,
    counters: &Counters,
    cursor: &sluice_log::Cursor,
    backoff: &mut sluice_core::Retrying,
    until: &Until,
) -> Result<bool, Fault> {
    let name = &counters.name;
    if !e.is_transient() {
        return Err(e.within(format_args!("sink {name:?}")));
    }
    if cursor.is_shed() {
        // The next read reports the shed.
        return Ok(true);
    }
    counters.failures.increment(1);
    counters.stats.failures.fetch_add(1, Ordering::Relaxed);
    let wait = backoff.next_delay();
    warn!(sink = %name, error = %e, retry_in_ms = wait.as_millis() as u64, "sink: delivery failed; retrying the batch");
    tokio::select! {
        biased;
        _ = until.abort.cancelled() => Ok(false),
        _ = tokio::time::sleep(wait) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_filters() {
        let all = TableFilter::new(&[]);
        assert!(all.accepts(Op::Insert, "public", "a"));
        assert!(all.accepts(Op::Message, "", ""));
        let f = TableFilter::new(&["public.orders".into(), "audit.*".into()]);
        assert!(f.accepts(Op::Insert, "public", "orders"));
        assert!(!f.accepts(Op::Insert, "public", "order"));
        assert!(!f.accepts(Op::Insert, "publi", "c.orders"));
        assert!(f.accepts(Op::Delete, "audit", "x"));
        assert!(!f.accepts(Op::Message, "", ""));
        let events = TableFilter::with_topics(&[], &["billing".into()]);
        assert!(events.accepts(Op::Message, "sluice.outbox", "billing"));
        assert!(!events.accepts(Op::Message, "sluice.outbox", "other"));
        assert!(!events.accepts(Op::Message, "app", "billing"));
        assert!(!events.accepts(Op::Insert, "public", "a"));
        let both = TableFilter::with_topics(&["public.outbox".into()], &["order*".into()]);
        assert!(both.accepts(Op::Insert, "public", "outbox"));
        assert!(both.accepts(Op::Message, "sluice.outbox", "orders"));
    }
}
