//! Server-Sent Events from the log.
//!
//! `GET /v1/sinks/{name}/events[?tables=s.t,...&ops=insert,...&from=now|earliest|<id>]`.
//! An event's `id:` is an opaque position token ([`Position`]); `Last-Event-ID` (or
//! `from`) resumes after it. Decimal ids, which earlier releases issued, still resume.
//! Without `Last-Event-ID` or `from`, a client starts at the log's end (new changes only).
//! A position older than the log keeps is answered with one `event: error` whose data
//! says so, then the stream ends.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_core::{metric, Op, TablePatterns};
use sluice_log::{LogError, LogRead, Position, RecordBatch};
use sluice_sinks::sse::{encode_event, Chunk, SseFeed, CHUNK_BYTES};
use tokio::sync::broadcast;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::api::ErrorBody;
use crate::api::SinkRef;
use crate::AppState;

/// An empty list serves every table.
fn matches(list: &TablePatterns, schema: &str, table: &str) -> bool {
    list.is_empty() || list.matches(schema, table)
}

/// Events are written as text/event-stream by hand: a batch of records becomes one
/// write (one frame to the client) instead of one per event.
fn error_event(data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long catching up waits for records a remote log has not delivered yet.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// What one client takes: the sink's tables, narrowed by its query.
struct Filter {
    served: TablePatterns,
    tables: TablePatterns,
    ops: BTreeSet<u8>,
}

impl Filter {
    fn accepts(&self, op: Op, schema: &str, table: &str) -> bool {
        matches(&self.served, schema, table)
            && matches(&self.tables, schema, table)
            && (self.ops.is_empty() || self.ops.contains(&op.code()))
    }

    /// Whether every event passes (no narrowing): chunks go out as they are.
    fn all(&self) -> bool {
        self.tables.is_empty() && self.ops.is_empty()
    }
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/sinks/{name}/events", tag = "consumers",
    summary = "Server-Sent Events of an SSE sink; resume with Last-Event-ID",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name"), ("from" = Option<String>, Query, description = "`earliest`, `latest` or a position"),
        ("tables" = Option<String>, Query, description = "Only these tables (comma-separated schema.table)"),
        ("ops" = Option<String>, Query, description = "Only these operations (comma-separated insert, update, delete, truncate)"),
        ("access_token" = Option<String>, Query, description = "The token, for EventSource")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    target: SinkRef,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (pipeline, name, endpoints) = (target.pipeline, target.name, target.endpoints);
    let Some(feed) = endpoints.sse.get(&name).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            format!("no sse sink named {name:?}\n"),
        )
            .into_response();
    };
    let log = feed.log().clone();
    let bad = |m: String| (StatusCode::BAD_REQUEST, m).into_response();
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let from = match (last_id, q.get("from").map(String::as_str)) {
        (Some(id), _) => match Position::parse(id) {
            Some(p) => p.0.saturating_add(1),
            None => {
                return bad(format!(
                    "Last-Event-ID {id:?} is not an event id of this stream\n"
                ))
            }
        },
        (None, None | Some("now")) => log.durable_end(),
        (None, Some("earliest")) => log.first(),
        // The event with this id and what follows.
        (None, Some(n)) => match Position::parse(n) {
            Some(p) => p.0,
            None => return bad(format!("from={n:?}: use now, earliest or an event id\n")),
        },
    };
    // Query filters narrow the sink's own.
    let tables = TablePatterns::new(
        q.get("tables")
            .map(|t| t.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    let mut ops = BTreeSet::new();
    for o in q.get("ops").map(|o| o.split(',')).into_iter().flatten() {
        match Op::from_name(o) {
            Some(op) => {
                ops.insert(op.code());
            }
            None => return bad(format!("ops: unknown op {o:?}\n")),
        }
    }
    let filter = Filter {
        served: TablePatterns::new(&feed.options.tables),
        tables,
        ops,
    };
    // Each message is a batch of events; the buffer is counted in batches.
    let (tx, rx) = mpsc::channel::<Bytes>(feed.options.buffer.max(1));
    // A reader to start with: it says now whether the position is still in the log.
    match log.reader(from) {
        Ok(reader) => {
            let labels = [("pipeline", pipeline), ("sink", name.clone())];
            let client = Client {
                sink: name.clone(),
                clients: metrics::gauge!(metric::SSE_CLIENTS.name, &labels),
                filter,
                timeout: feed.options.slow_client_timeout,
                next: from,
                tx,
                sent: metrics::counter!(metric::SINK_DELIVERED.name, &labels),
                feed: feed.clone(),
            };
            let stop = [state.shutdown.clone(), endpoints.stop.clone()];
            tokio::spawn(client.run(stop, feed, reader));
        }
        Err(LogError::Expired { .. }) => {
            let first = Position(log.first()).token();
            let _ = tx.try_send(error_event(serde_json::json!({
                "error": "expired",
                "message": "the records after this id are no longer in the log: resume from the first one kept (from=earliest, or from=<first>) and backfill what is missing",
                "first": first,
            })));
        }
        Err(e) => {
            let _ = tx.try_send(error_event(
                serde_json::json!({"error": "log", "message": e.to_string()}),
            ));
        }
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "text/event-stream")
        .header(axum::http::header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Why a client's stream ends.
enum End {
    /// Gone, too slow, or the server or pipeline stopped.
    Stop,
}

/// One client: sends the shared chunks it takes, and reads the log on its own while it is
/// behind them.
struct Client {
    sink: String,
    /// The sink's connected-clients gauge.
    clients: metrics::Gauge,
    filter: Filter,
    timeout: Duration,
    /// The position of the first record not yet sent (or skipped by the filter).
    next: u64,
    tx: mpsc::Sender<Bytes>,
    sent: metrics::Counter,
    /// The sink's shared read, whose counts the status shows.
    feed: Arc<SseFeed>,
}

impl Client {
    async fn run(
        mut self,
        stop: [CancellationToken; 2],
        feed: Arc<SseFeed>,
        first: Box<dyn LogRead>,
    ) {
        let clients = self.clients.clone();
        clients.increment(1.0);
        feed.counts.clients.fetch_add(1, Ordering::Relaxed);
        let (mut rx, shared_from) = feed.subscribe();
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.reset();
        let mut ended = self
            .catch_up(Some(first), feed.log(), shared_from)
            .await
            .is_err();
        while !ended {
            let chunk = tokio::select! {
                biased;
                _ = stop[0].cancelled() => break,
                _ = stop[1].cancelled() => break,
                _ = self.tx.closed() => break,
                chunk = rx.recv() => chunk,
                _ = keep_alive.tick() => {
                    ended = self.send(Bytes::from_static(b": keep-alive\n\n"), 0).await.is_err();
                    continue;
                }
            };
            let chunk = match chunk {
                Ok(c) => c,
                // Fell behind the shared chunks: the next one shows the gap.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if chunk.start > self.next
                && self.catch_up(None, feed.log(), chunk.start).await.is_err()
            {
                break;
            }
            ended = self.take(&chunk).await.is_err();
            keep_alive.reset();
        }
        debug!(sink = %self.sink, position = self.next, "sse: client gone");
        clients.decrement(1.0);
        feed.counts.clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sends what this client takes of a shared chunk.
    async fn take(&mut self, chunk: &Chunk) -> Result<(), End> {
        if chunk.next <= self.next {
            return Ok(());
        }
        let from = self.next;
        self.next = chunk.next;
        if self.filter.all() && chunk.start >= from {
            return self.send(chunk.bytes.clone(), chunk.events.len()).await;
        }
        let mut out = Vec::new();
        let (mut begin, mut count) = (0usize, 0usize);
        for e in &chunk.events {
            let end = e.end as usize;
            let (schema, table) = &chunk.tables[e.table as usize];
            if e.position >= from && self.filter.accepts(e.op, schema, table) {
                out.extend_from_slice(&chunk.bytes[begin..end]);
                count += 1;
            }
            begin = end;
        }
        if out.is_empty() {
            return Ok(());
        }
        self.send(Bytes::from(out), count).await
    }

    /// Reads the log on its own from `next` up to at least `to` (the shared chunks take
    /// over from there), starting with `reader` if given.
    async fn catch_up(
        &mut self,
        reader: Option<Box<dyn LogRead>>,
        log: &sluice_log::SharedLog,
        to: u64,
    ) -> Result<(), End> {
        if self.next >= to {
            return Ok(());
        }
        let mut reader = match reader {
            Some(r) => r,
            None => match log.reader(self.next) {
                Ok(r) => r,
                Err(e) => return self.fail(&e).await,
            },
        };
        let mut batch = RecordBatch::default();
        while self.next < to {
            batch.clear();
            let filter = &self.filter;
            if let Err(e) = reader.read(&mut batch, 1000, CHUNK_BYTES, &mut |op, s, t| {
                filter.accepts(op, s, t)
            }) {
                return self.fail(&e).await;
            }
            if batch.next <= self.next {
                // Nothing at hand below `to`: a remote log's records are still on their
                // way. Waited for, bounded; the client resumes with its last id.
                match tokio::time::timeout(CATCH_UP_WAIT, reader.wait()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => return self.fail(&e).await,
                    Err(_) => return Err(End::Stop),
                }
            }
            self.next = batch.next;
            if batch.is_empty() {
                continue;
            }
            let mut out = Vec::with_capacity(batch.len() * 300);
            for r in batch.iter() {
                encode_event(&mut out, r.offset, r.json);
            }
            self.send(Bytes::from(out), batch.len()).await?;
        }
        Ok(())
    }

    /// Sends one write of `events` events, or ends a client too slow to take it.
    async fn send(&mut self, bytes: Bytes, events: usize) -> Result<(), End> {
        match self.tx.send_timeout(bytes, self.timeout).await {
            Ok(()) => {
                self.sent.increment(events as u64);
                self.feed
                    .counts
                    .sent
                    .fetch_add(events as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                // It resumes with the id of the last event it read.
                info!(sink = %self.sink, "sse: disconnecting a client too slow to keep up; it resumes with Last-Event-ID");
                Err(End::Stop)
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(End::Stop),
        }
    }

    async fn fail(&mut self, e: &LogError) -> Result<(), End> {
        let event = match e {
            LogError::Expired { first, .. } => error_event(serde_json::json!({
                "error": "expired",
                "message": "the records after this id are no longer in the log: resume from the first one kept (from=earliest, or from=<first>) and backfill what is missing",
                "first": Position(*first).token(),
            })),
            e => error_event(serde_json::json!({"error": "log", "message": e.to_string()})),
        };
        let _ = self.tx.send(event).await;
        Err(End::Stop)
    }
}
