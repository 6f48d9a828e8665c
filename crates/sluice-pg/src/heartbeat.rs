//! The heartbeat: a write to the source database every few seconds, so that a slot on an
//! idle or filtered database keeps advancing while other databases of the same server
//! write WAL, and so its arrival through the stream measures end-to-end freshness.
//!
//! Invariants:
//! - A heartbeat is a non-transactional logical message with prefix [`PREFIX`] and the
//!   content `<pipeline> <unix micros>` (or, where a table write is needed, an upsert into
//!   a table the user names); it is never delivered to a sink.
//! - Only this pipeline's own heartbeats (by name) count as its freshness: pipelines
//!   sharing a database see each other's messages and ignore them.
//! - A failed heartbeat is retried at the next beat; it never stops the pipeline.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::conninfo::ConnInfo;
use crate::wire::{quote_ident, quote_literal, Connection};

/// The prefix of heartbeat messages.
pub const PREFIX: &str = "sluice.heartbeat";

/// When this pipeline's last heartbeat came through the stream.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// Unix microseconds of the arrival; 0: none yet.
    arrived: AtomicI64,
    /// Microseconds from the heartbeat's write to its arrival.
    took: AtomicI64,
}

impl Arrivals {
    /// Notes a heartbeat message's content if it is `pipeline`'s own.
    pub fn observe(&self, pipeline: &str, content: &[u8]) {
        let Some((name, sent)) = std::str::from_utf8(content)
            .ok()
            .and_then(|c| c.split_once(' '))
        else {
            return;
        };
        let Ok(sent) = sent.parse::<i64>() else {
            return;
        };
        if name != pipeline {
            return;
        }
        let now = now_micros();
        self.arrived.store(now, Ordering::Relaxed);
        self.took
            .store(now.saturating_sub(sent).max(0), Ordering::Relaxed);
    }

    /// Seconds since the last arrival, and how long that heartbeat took; `None` before
    /// the first.
    pub fn age_and_latency(&self) -> Option<(f64, f64)> {
        let at = self.arrived.load(Ordering::Relaxed);
        (at > 0).then(|| {
            (
                (now_micros() - at).max(0) as f64 / 1e6,
                self.took.load(Ordering::Relaxed) as f64 / 1e6,
            )
        })
    }
}

use sluice_core::time::now_micros;

/// Where heartbeats are written.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub conninfo: ConnInfo,
    pub pipeline: String,
    pub every: Duration,
    /// `schema.table` with columns `pipeline text PRIMARY KEY, at timestamptz`: upserted
    /// instead of a logical message.
    pub table: Option<String>,
}

impl Heartbeat {
    fn sql(&self) -> String {
        match &self.table {
            None => format!(
                "SELECT pg_logical_emit_message(false, {}, {})",
                quote_literal(PREFIX),
                quote_literal(&format!("{} {}", self.pipeline, now_micros()))
            ),
            Some(t) => {
                let (schema, table) = t.split_once('.').unwrap_or(("public", t));
                format!(
                    "INSERT INTO {}.{} (pipeline, at) VALUES ({}, now()) \
                     ON CONFLICT (pipeline) DO UPDATE SET at = EXCLUDED.at",
                    quote_ident(schema),
                    quote_ident(table),
                    quote_literal(&self.pipeline)
                )
            }
        }
    }

    /// Beats until `stop`, on a connection of its own (made again after a failure).
    pub async fn run(self, stop: CancellationToken) {
        let mut conn: Option<Connection> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
            if conn.is_none() {
                conn = Connection::connect(&self.conninfo, false).await.ok();
            }
            let Some(c) = conn.as_mut() else {
                continue;
            };
            match c.execute(&self.sql()).await {
                Ok(_) => {
                    failing = false;
                    debug!("source: heartbeat written");
                }
                Err(e) => {
                    // Said once per failing streak, not at every beat.
                    if !failing {
                        warn!(error = %e, "source: cannot write the heartbeat; retrying at each beat");
                    }
                    failing = true;
                    conn = None;
                }
            }
        }
    }
}
