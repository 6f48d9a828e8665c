//! The SSE sink: its configuration, and [`SseFeed`], the one read and encoding of the
//! log that all of a sink's clients share. The HTTP server (`sluice-server`'s `sse.rs`)
//! serves the clients, each filtering the shared chunks by its own query.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use sluice_core::{Fault, Finding, Op, TablePatterns};
use sluice_log::{LogRead, Position, RecordBatch, SharedLog};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{finding_for, Built, Capabilities, Context, SinkSpec};

/// `type = "sse"`: Server-Sent Events at `GET /v1/sinks/<name>/events` on the HTTP server.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    /// Unique name of the sink within the pipeline (the URL path).
    pub name: String,
    /// Tables this sink serves (`schema.table` or `schema.*`; default: all).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Seconds a client's buffer may stay full before it is disconnected.
    #[serde(default = "default_slow_client")]
    pub slow_client_timeout_secs: u64,
}

fn default_slow_client() -> u64 {
    10
}

/// What the server needs to serve one SSE sink.
#[derive(Debug, Clone)]
pub struct SseOptions {
    /// Tables it serves (`schema.table` or `schema.*`; empty: all).
    pub tables: Vec<String>,
    /// A client whose buffer stays full this long is disconnected.
    pub slow_client_timeout: Duration,
    /// Batches of events buffered per client.
    pub buffer: usize,
}

impl SinkSpec for SseConfig {
    const DESCRIPTION: &'static str = "Server-Sent Events: clients follow the changes over HTTP and resume from their last event id.";
    const CAPABILITIES: Capabilities = Capabilities {
        served: true,
        ..Capabilities::NONE
    };

    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn validate(&self, errs: &mut Vec<String>) {
        if self.slow_client_timeout_secs == 0 {
            errs.push(finding_for(
                &self.name,
                "slow_client_timeout_secs must be at least 1",
            ));
        }
    }

    async fn check(&self, _ctx: &Context<'_>) -> Vec<Finding> {
        vec![Finding::pass(finding_for(
            &self.name,
            "served by the HTTP server",
        ))]
    }

    async fn build(&self, _ctx: &Context<'_>) -> Result<Built, Fault> {
        Ok(Built::Served(SseOptions {
            tables: self.tables.clone(),
            slow_client_timeout: Duration::from_secs(self.slow_client_timeout_secs),
            // 4 batches of ≤ 256 KiB: about 1 MiB per client at most.
            buffer: 4,
        }))
    }
}

/// Bytes of records read per chunk.
pub const CHUNK_BYTES: usize = 256 << 10;

/// Chunks a subscriber may fall behind before it catches up from the log on its own.
const CHUNKS: usize = 64;

/// Appends one `id:`/`data:` event. The record is one line of JSON (no raw newlines).
pub fn encode_event(out: &mut Vec<u8>, position: u64, json: &[u8]) {
    out.extend_from_slice(b"id: ");
    Position(position).write_token(out);
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

/// One event of a [`Chunk`].
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub position: u64,
    pub op: Op,
    /// Index into [`Chunk::tables`].
    pub table: u32,
    /// Where the event's bytes end in [`Chunk::bytes`] (they start where the previous
    /// event's end).
    pub end: u32,
}

/// Records read once from the log and encoded once, for every client of the sink.
#[derive(Debug)]
pub struct Chunk {
    /// The positions `[start, next)` were read for it; the events kept are among them.
    pub start: u64,
    pub next: u64,
    pub bytes: Bytes,
    pub events: Vec<Event>,
    /// `(schema, table)` of the events.
    pub tables: Vec<(String, String)>,
}

/// The shared read of one SSE sink: a task reads the log at its end and broadcasts each
/// batch, encoded, to every subscribed client; a client that starts behind it, or falls
/// more than `CHUNKS` (64) chunks behind, catches up with a reader of its own, then takes the
/// shared chunks again. With no client, it reads nothing.
///
/// Invariant: chunks are contiguous (each starts where the previous ended) except after
/// a skip while nobody listened; a subscriber learns from [`SseFeed::subscribe`] where
/// its first chunk starts, and a chunk that starts past what a client has sent tells it
/// to catch up first. So each client gets every record once, in order.
pub struct SseFeed {
    pub options: SseOptions,
    /// Its clients now and the events sent to them, for the pipeline's status.
    pub counts: SseCounts,
    log: SharedLog,
    tx: broadcast::Sender<Arc<Chunk>>,
    /// Where the next chunk starts; held while a chunk is sent, so a subscriber knows
    /// exactly where its receiver begins.
    next: Mutex<u64>,
}

/// What an SSE sink's clients are doing, counted by the server that serves them.
#[derive(Debug, Default)]
pub struct SseCounts {
    /// Clients connected now.
    pub clients: std::sync::atomic::AtomicU64,
    /// Events sent to clients since the pipeline started.
    pub sent: std::sync::atomic::AtomicU64,
}

impl SseFeed {
    /// Starts the shared read of `log` at its durable end, until `stop`.
    pub fn start(options: SseOptions, log: SharedLog, stop: CancellationToken) -> Arc<SseFeed> {
        let (tx, _) = broadcast::channel(CHUNKS);
        let feed = Arc::new(SseFeed {
            options,
            counts: SseCounts::default(),
            next: Mutex::new(log.durable_end()),
            log,
            tx,
        });
        tokio::spawn(feed.clone().run(stop));
        feed
    }

    /// The log, for readers of clients that catch up.
    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    /// A receiver of the chunks to come, and the position the first of them starts at.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Chunk>>, u64) {
        let next = self.next.lock().expect("feed lock");
        (self.tx.subscribe(), *next)
    }

    /// Moves the shared read to the log's durable end; subscribers see the gap and read
    /// it on their own. `false`: the log cannot be read.
    fn skip_to_end(&self, reader: &mut Box<dyn LogRead>) -> bool {
        let end = self.log.durable_end();
        let mut next = self.next.lock().expect("feed lock");
        match self.log.reader(end) {
            Ok(r) => *reader = r,
            Err(_) => return false,
        }
        *next = end;
        true
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let served = TablePatterns::new(&self.options.tables);
        let start = *self.next.lock().expect("feed lock");
        let Ok(mut reader) = self.log.reader(start) else {
            return;
        };
        let mut batch = RecordBatch::default();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                r = reader.wait() => if r.is_err() { return },
            }
            if self.tx.receiver_count() == 0 {
                // Nobody listens: skip what is there rather than read and encode it.
                if !self.skip_to_end(&mut reader) {
                    return;
                }
                continue;
            }
            batch.clear();
            let read = reader.read(&mut batch, 1000, CHUNK_BYTES, &mut |_, s, t| {
                served.is_empty() || served.matches(s, t)
            });
            let chunk = match read {
                Ok(()) => encode(&batch, *self.next.lock().expect("feed lock")),
                Err(e) => {
                    // Start again at the end; clients see the gap and read it themselves
                    // (and meet the error there, with its message).
                    warn!(error = %e, "sse: the shared read of the log failed; starting again at its end");
                    if !self.skip_to_end(&mut reader) {
                        return;
                    }
                    continue;
                }
            };
            let mut next = self.next.lock().expect("feed lock");
            *next = chunk.next;
            // No receiver left is not an error: the next round skips.
            let _ = self.tx.send(Arc::new(chunk));
        }
    }
}

/// Encodes a batch read from `start` on.
fn encode(batch: &RecordBatch, start: u64) -> Chunk {
    let mut bytes = Vec::with_capacity(batch.len() * 300);
    let mut events = Vec::with_capacity(batch.len());
    let mut tables: Vec<(String, String)> = Vec::new();
    for r in batch.iter() {
        let table = match tables
            .iter()
            .position(|(s, t)| s == r.schema && t == r.table)
        {
            Some(i) => i,
            None => {
                tables.push((r.schema.to_owned(), r.table.to_owned()));
                tables.len() - 1
            }
        };
        encode_event(&mut bytes, r.offset, r.json);
        events.push(Event {
            position: r.offset,
            op: r.op,
            table: table as u32,
            end: bytes.len() as u32,
        });
    }
    Chunk {
        start,
        next: batch.next,
        bytes: Bytes::from(bytes),
        events,
        tables,
    }
}
