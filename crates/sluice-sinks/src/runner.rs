//! The loop every sink runs: wait for durable records, read a batch through the sink's
//! table filter, deliver it (retrying transient failures with backoff and full jitter),
//! then move the cursor. On `drain` it delivers what the log holds and returns.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Op, SinkStats};
use sluice_log::{Cursor, Log, LogError, Reader, RecordBatch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{Sink, SinkError};

/// Which tables a sink takes (empty: all of the pipeline's).
#[derive(Debug, Clone, Default)]
pub struct TableFilter {
    tables: BTreeSet<String>,
    schemas: BTreeSet<String>,
    /// Outbox topics taken (empty: every logical message, if no tables are listed).
    topics: sluice_delivery::Topics,
}

impl TableFilter {
    /// From `schema.table` and `schema.*` entries.
    pub fn new(entries: &[String]) -> TableFilter {
        let mut f = TableFilter::default();
        for e in entries {
            match e.strip_suffix(".*") {
                Some(s) => f.schemas.insert(s.to_owned()),
                None => f.tables.insert(e.clone()),
            };
        }
        f
    }

    /// A sink of outbox events: `sluice.publish` messages of these topics, and the
    /// listed tables (Debezium-layout outboxes, or plain tables). Topics only: no rows.
    pub fn with_topics(entries: &[String], topics: &[String]) -> TableFilter {
        let mut f = TableFilter::new(entries);
        f.topics = sluice_delivery::Topics::new(topics);
        f
    }

    pub fn accepts(&self, op: Op, schema: &str, table: &str) -> bool {
        let no_tables = self.tables.is_empty() && self.schemas.is_empty();
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
        if self.schemas.contains(schema) {
            return true;
        }
        // Avoids building "schema.table" per record.
        self.tables.iter().any(|t| {
            t.len() == schema.len() + 1 + table.len()
                && t.starts_with(schema)
                && t.as_bytes()[schema.len()] == b'.'
                && t.ends_with(table)
        })
    }
}

/// How a sink loop batches.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub max_records: usize,
    pub max_bytes: usize,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Runs `sink` from its cursor until `drain` (then until the log's end) or `abort`.
#[allow(clippy::too_many_arguments)]
pub async fn run<S: Sink>(
    name: String,
    mut sink: S,
    log: Log,
    cursor: Arc<Cursor>,
    filter: TableFilter,
    options: RunOptions,
    stats: Arc<SinkStats>,
    drain: CancellationToken,
    abort: CancellationToken,
) -> Result<(), SinkError> {
    let definite = |e: LogError| SinkError::Definite(format!("sink {name:?}: {e}"));
    let mut reader = Reader::new(&log, cursor.position()).map_err(definite)?;
    let mut batch = RecordBatch::default();
    let latency =
        metrics::histogram!("sluice_sink_delivery_latency_seconds", "sink" => name.clone());
    let delivered =
        metrics::counter!("sluice_sink_delivered_records_total", "sink" => name.clone());
    let failures = metrics::counter!("sluice_sink_failures_total", "sink" => name.clone());
    loop {
        if reader.position() >= reader.log_end() {
            if drain.is_cancelled() {
                info!(sink = %name, position = reader.position(), "sink: drained");
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = abort.cancelled() => return Ok(()),
                _ = drain.cancelled() => continue,
                r = reader.wait() => match r {
                    Ok(()) => {}
                    Err(LogError::Closed) => return Ok(()),
                    Err(e) => return Err(definite(e)),
                },
            }
        }
        if cursor.is_shed() {
            error!(sink = %name, position = cursor.position(), "sink: shed by the log's disk budget; it stops and is backfilled when the pipeline restarts");
            return Ok(());
        }
        batch.clear();
        reader
            .read(
                &mut batch,
                options.max_records,
                options.max_bytes,
                &mut |op, s, t| filter.accepts(op, s, t),
            )
            .map_err(definite)?;
        if !batch.is_empty() {
            let mut backoff = Duration::from_millis(50);
            loop {
                match sink.deliver(&batch).await {
                    Ok(()) => break,
                    Err(SinkError::Transient(_)) if cursor.is_shed() => break,
                    Err(SinkError::Transient(e)) => {
                        failures.increment(1);
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        // Full jitter: instances and sinks retrying together spread out.
                        let wait = backoff.mul_f64(fastrand::f64());
                        warn!(sink = %name, error = %e, retry_in_ms = wait.as_millis() as u64, "sink: delivery failed; retrying the batch");
                        tokio::select! {
                            biased;
                            _ = abort.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(wait) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                    Err(SinkError::Definite(e)) => {
                        return Err(SinkError::Definite(format!("sink {name:?}: {e}")))
                    }
                }
            }
            if cursor.is_shed() {
                continue;
            }
            let now = now_micros();
            let mut last_ts = 0;
            for r in batch.iter() {
                if r.commit_ts_micros > 0 {
                    latency.record((now - r.commit_ts_micros).max(0) as f64 / 1e6);
                    last_ts = r.commit_ts_micros;
                }
            }
            if last_ts > 0 {
                stats.last_commit_ts.store(last_ts, Ordering::Relaxed);
            }
            delivered.increment(batch.len() as u64);
            stats
                .delivered
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        cursor.ack(batch.next);
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
