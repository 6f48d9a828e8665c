//! Server-Sent Events from the log.
//!
//! `GET /v1/sinks/{name}/events[?tables=s.t,...&ops=insert,...&from=now|earliest|<offset>]`.
//! Without `Last-Event-ID` or `from`, a client starts at the log's end (new changes only).
//! A position older than the log keeps is answered with one `event: error` whose data
//! says so, then the stream ends.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_core::Op;
use sluice_log::{LogError, Reader, RecordBatch};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::AppState;

/// One SSE sink.
#[derive(Debug, Clone)]
pub struct SseOptions {
    /// Tables it serves (`schema.table` or `schema.*`; empty: all).
    pub tables: Vec<String>,
    /// A client whose buffer stays full this long is disconnected.
    pub slow_client_timeout: Duration,
    /// Batches of events buffered per client.
    pub buffer: usize,
}

fn matches(list: &[String], schema: &str, table: &str) -> bool {
    list.is_empty()
        || list.iter().any(|t| match t.strip_suffix(".*") {
            Some(s) => s == schema,
            None => t.split_once('.') == Some((schema, table)),
        })
}

/// Events are written as text/event-stream by hand: a batch of records becomes one
/// write (one frame to the client) instead of one per event.
fn error_event(data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// Appends one `id:`/`data:` event. The record is one line of JSON (no raw newlines).
fn push_event(out: &mut Vec<u8>, offset: u64, json: &[u8]) {
    use std::io::Write as _;
    let _ = write!(out, "id: {offset}\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Bytes of records read per batch; with `SseOptions::buffer` batches queued, this bounds
/// what a client that stopped reading holds in memory until it is cut off.
const BATCH_BYTES: usize = 256 << 10;

pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !state.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "a bearer token is required: Authorization: Bearer <token> (one of [server] tokens)\n",
        )
            .into_response();
    }
    let Some(sink) = state.options.sse.get(&name).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            format!("no sse sink named {name:?} in this pipeline\n"),
        )
            .into_response();
    };
    let bad = |m: String| (StatusCode::BAD_REQUEST, m).into_response();
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let from = match (last_id, q.get("from").map(String::as_str)) {
        (Some(id), _) => match id.parse::<u64>() {
            Ok(n) => n + 1,
            Err(_) => {
                return bad(format!(
                    "Last-Event-ID {id:?} is not an event id of this stream\n"
                ))
            }
        },
        (None, None | Some("now")) => state.log.next_offset(),
        (None, Some("earliest")) => state.log.first(),
        (None, Some(n)) => match n.parse::<u64>() {
            Ok(n) => n,
            Err(_) => return bad(format!("from={n:?}: use now, earliest or an offset\n")),
        },
    };
    // Query filters narrow the sink's own.
    let tables: Vec<String> = q
        .get("tables")
        .map(|t| {
            t.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
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
    match Reader::new(&state.log, from) {
        Ok(reader) => {
            tokio::spawn(feed(state.clone(), name, sink, tables, ops, reader, tx));
        }
        Err(e @ LogError::Expired { .. }) => {
            let first = state.log.first();
            let _ = tx.try_send(error_event(serde_json::json!({
                "error": "expired",
                "message": e.to_string(),
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
    state: Arc<AppState>,
    sink: String,
    options: SseOptions,
    tables: Vec<String>,
    ops: BTreeSet<u8>,
    mut reader: Reader,
    tx: mpsc::Sender<Bytes>,
) {
    let clients = metrics::gauge!("sluice_sse_clients", "sink" => sink.clone());
    let sent = metrics::counter!("sluice_sink_delivered_records_total", "sink" => sink.clone());
    clients.increment(1.0);
    let mut batch = RecordBatch::default();
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.reset();
    loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => break,
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
            matches(&options.tables, s, t)
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
                info!(sink = %sink, not_sent_from = first, "sse: disconnecting a client too slow to keep up; it resumes with Last-Event-ID");
                break;
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => break,
        }
    }
    debug!(sink = %sink, position = reader.position(), "sse: client gone");
    clients.decrement(1.0);
}
