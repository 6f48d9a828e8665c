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
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_core::{metric, Op, TablePatterns};
use sluice_log::{LogError, LogRead, Position, RecordBatch};
use sluice_sinks::sse::SseOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

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

/// Appends one `id:`/`data:` event. The record is one line of JSON (no raw newlines).
fn push_event(out: &mut Vec<u8>, offset: u64, json: &[u8]) {
    out.extend_from_slice(b"id: ");
    Position(offset).write_token(out);
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Bytes of records read per batch; with `SseOptions::buffer` batches queued, this bounds
/// what a client that stopped reading holds in memory until it is cut off.
const BATCH_BYTES: usize = 256 << 10;

pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    target: SinkRef,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (name, endpoints) = (target.name, target.endpoints);
    let Some(sink) = endpoints.sse.get(&name).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            format!("no sse sink named {name:?}\n"),
        )
            .into_response();
    };
    let log = &endpoints.log;
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
    // Each message is a batch of events; the buffer is counted in batches.
    let (tx, rx) = mpsc::channel::<Bytes>(sink.buffer.max(1));
    match log.reader(from) {
        Ok(reader) => {
            let stop = [state.shutdown.clone(), endpoints.stop.clone()];
            tokio::spawn(feed(stop, name, sink, tables, ops, reader, tx));
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

/// One client's worker: reads the log from its position and sends events until the
/// client goes away, is too slow, or the server stops.
async fn feed(
    stop: [CancellationToken; 2],
    sink: String,
    options: SseOptions,
    tables: TablePatterns,
    ops: BTreeSet<u8>,
    mut reader: Box<dyn LogRead>,
    tx: mpsc::Sender<Bytes>,
) {
    let clients = metrics::gauge!(metric::SSE_CLIENTS.name, "sink" => sink.clone());
    let sent = metrics::counter!(metric::SINK_DELIVERED.name, "sink" => sink.clone());
    let served = TablePatterns::new(&options.tables);
    clients.increment(1.0);
    let mut batch = RecordBatch::default();
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.reset();
    loop {
        tokio::select! {
            biased;
            _ = stop[0].cancelled() => break,
            _ = stop[1].cancelled() => break,
            _ = tx.closed() => break,
            r = reader.wait() => if r.is_err() { break },
            _ = keep_alive.tick() => {
                if tx.send_timeout(Bytes::from_static(b": keep-alive\n\n"), options.slow_client_timeout).await.is_err() {
                    break;
                }
                continue;
            }
        }
        batch.clear();
        let read = reader.read(&mut batch, 1000, BATCH_BYTES, &mut |op, s, t| {
            matches(&served, s, t)
                && matches(&tables, s, t)
                && (ops.is_empty() || ops.contains(&op.code()))
        });
        if let Err(e) = read {
            let _ = tx
                .send(error_event(
                    serde_json::json!({"error": "log", "message": e.to_string()}),
                ))
                .await;
            break;
        }
        if batch.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(batch.len() * 300);
        let first = batch.get(0).map_or(0, |r| r.offset);
        for r in batch.iter() {
            push_event(&mut out, r.offset, r.json);
        }
        match tx
            .send_timeout(Bytes::from(out), options.slow_client_timeout)
            .await
        {
            Ok(()) => {
                sent.increment(batch.len() as u64);
                keep_alive.reset();
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                // It resumes with the id of the last event it read, before `first`.
                info!(sink = %sink, not_sent_from = %Position(first).token(), "sse: disconnecting a client too slow to keep up; it resumes with Last-Event-ID");
                break;
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => break,
        }
    }
    debug!(sink = %sink, position = reader.position(), "sse: client gone");
    clients.decrement(1.0);
}
