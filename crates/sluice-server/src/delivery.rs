//! The waiting room, the dead letters and pull consumers over HTTP:
//!
//! ```text
//! GET  /v1/sinks/{name}/parked                     parked and delayed keys
//! GET  /v1/sinks/{name}/parked/records?key=K       a key's held records, in order
//! POST /v1/sinks/{name}/parked/redrive  {"keys":[..]} | {"all":true}
//! POST /v1/sinks/{name}/parked/skip     {"keys":[..]} | {"all":true}
//! GET  /v1/sinks/{name}/dead?from=OFFSET&limit=N   dead letters
//! POST /v1/sinks/{name}/dead/redrive    {"offsets":[..]} | {"all":true}
//! POST /v1/sinks/{name}/receive?max=N&visibility=30s&wait=5s
//! POST /v1/sinks/{name}/ack             {"ids":[..]}
//! POST /v1/sinks/{name}/nack            {"ids":[..], "delay":"5s"}
//! ```
//!
//! Invariants: every endpoint needs the bearer token (records are row data); state
//! changes go through the engine that owns the sink (its command channel), never to the
//! store directly, so they are ordered with deliveries.

// Handlers answer early with a ready response; its size does not matter here.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_delivery::{Command, Control, DeliveryError, Selection, Store, Stored};

use crate::AppState;

fn reply(status: StatusCode, body: Value) -> Response {
    let mut text = body.to_string();
    text.push('\n');
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    reply(status, json!({ "error": message.into() }))
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "a bearer token is required: Authorization: Bearer <token> (one of [server] tokens)",
    )
}

fn control<'a>(state: &'a AppState, name: &str) -> Result<&'a Control, Response> {
    state.options.delivery.get(name).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("no webhook or pull sink named {name:?} in this pipeline"),
        )
    })
}

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn record_json(s: &Stored) -> Value {
    json!({
        "offset": s.item.offset,
        "id": s.item.id.to_string(),
        "key": &*s.item.key,
        "route": &*s.item.route,
        "reason": s.reason,
        "attempts": s.attempts,
        "last_error": s.last_error,
        "at_micros": s.at_micros,
        "record": serde_json::from_slice::<Value>(&s.item.json).unwrap_or(Value::Null),
    })
}

/// Answers with what `read` finds in a sink's store, read off the async threads (redb
/// reads block).
async fn read_store(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    read: impl FnOnce(&Store) -> Result<Value, DeliveryError> + Send + 'static,
) -> Response {
    if !state.authorized(headers) {
        return unauthorized();
    }
    let c = match control(state, name) {
        Ok(c) => c.clone(),
        Err(r) => return r,
    };
    match tokio::task::spawn_blocking(move || read(&c.store)).await {
        Ok(Ok(v)) => reply(StatusCode::OK, v),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(crate) async fn parked(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    read_store(&state, &name, &headers, |store| {
        let mut keys = Vec::new();
        for (key, row) in store.keys()? {
            if row.state == sluice_delivery::KeyState::Done {
                continue;
            }
            let records = store.waiting_len(&key)?;
            keys.push(json!({
                "key": key, "state": row.state, "reason": row.reason,
                "attempts": row.attempts, "last_error": row.last_error,
                "since_micros": row.since_micros, "until_micros": row.until_micros,
                "records": records,
            }));
        }
        Ok(json!({ "keys": keys }))
    })
    .await
}

pub(crate) async fn parked_records(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(key) = q.get("key").cloned() else {
        return error(StatusCode::BAD_REQUEST, "key=... is required");
    };
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    read_store(&state, &name, &headers, move |store| {
        let list = store.waiting(&key, 0, limit)?;
        Ok(json!({ "records": list.iter().map(record_json).collect::<Vec<_>>() }))
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Choose {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    offsets: Vec<u64>,
    #[serde(default)]
    all: bool,
}

fn choose(body: &Bytes) -> Result<Choose, Response> {
    let c: Choose = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body must be JSON like {{\"keys\": [...]}} or {{\"all\": true}}: {e}"),
        )
    })?;
    if !c.all && c.keys.is_empty() && c.offsets.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "name what to act on: {\"keys\": [...]}, {\"offsets\": [...]} or {\"all\": true}",
        ));
    }
    Ok(c)
}

async fn act(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    what: &str,
    make: impl FnOnce(
        Choose,
    ) -> Box<
        dyn FnOnce(tokio::sync::oneshot::Sender<Result<usize, String>>) -> Command + Send,
    >,
) -> Response {
    if !state.authorized(headers) {
        return unauthorized();
    }
    let c = match control(state, name) {
        Ok(c) => c.clone(),
        Err(r) => return r,
    };
    let chosen = match choose(body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match c.ask(make(chosen)).await {
        Ok(n) => reply(StatusCode::OK, json!({ what: n })),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn selection(c: &Choose) -> Selection {
    if c.all {
        Selection::All
    } else {
        Selection::Keys(c.keys.clone())
    }
}

pub(crate) async fn redrive(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    act(&state, &name, &headers, &body, "redriven", |c| {
        Box::new(move |tx| Command::Redrive(selection(&c), tx))
    })
    .await
}

pub(crate) async fn skip(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    act(&state, &name, &headers, &body, "skipped", |c| {
        Box::new(move |tx| Command::Skip(selection(&c), tx))
    })
    .await
}

pub(crate) async fn dead(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let from = q.get("from").and_then(|l| l.parse().ok()).unwrap_or(0);
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    read_store(&state, &name, &headers, move |store| {
        let list = store.dead(from, limit)?;
        Ok(json!({ "dead_letters": list.iter().map(record_json).collect::<Vec<_>>() }))
    })
    .await
}

pub(crate) async fn redrive_dead(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    act(&state, &name, &headers, &body, "redriven", |c| {
        Box::new(move |tx| Command::RedriveDead((!c.all).then(|| c.offsets.clone()), tx))
    })
    .await
}

pub(crate) async fn receive(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !state.authorized(&headers) {
        return unauthorized();
    }
    let Some(queue) = state.options.pull.get(&name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no pull sink named {name:?} in this pipeline"),
        );
    };
    let max = q
        .get("max")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 10_000);
    let dur = |k: &str, d: Duration| -> Result<Duration, Response> {
        match q.get(k) {
            None => Ok(d),
            Some(v) => parse_duration(v).ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("{k}={v:?}: use a duration like 30s, 500ms or 2m"),
                )
            }),
        }
    };
    let visibility = match dur("visibility", Duration::from_secs(30)) {
        Ok(v) => v.max(Duration::from_millis(10)),
        Err(r) => return r,
    };
    let wait = match dur("wait", Duration::ZERO) {
        Ok(v) => v.min(Duration::from_secs(60)),
        Err(r) => return r,
    };
    let items = queue.receive(max, visibility, wait).await;
    let mut body = Vec::with_capacity(items.iter().map(|i| i.json.len() + 1).sum::<usize>() + 16);
    body.extend_from_slice(b"{\"records\":[");
    for (n, i) in items.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&i.json);
    }
    body.extend_from_slice(b"]}\n");
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    ids: Vec<String>,
    #[serde(default)]
    delay: Option<String>,
}

async fn answer(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    ack: bool,
) -> Response {
    if !state.authorized(headers) {
        return unauthorized();
    }
    let Some(queue) = state.options.pull.get(name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no pull sink named {name:?} in this pipeline"),
        );
    };
    let a: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be JSON like {{\"ids\": [\"<record id>\"]}}: {e}"),
            )
        }
    };
    if ack {
        let n = queue.ack(&a.ids);
        return reply(
            StatusCode::OK,
            json!({ "acked": n, "unknown": a.ids.len() - n }),
        );
    }
    let delay = match a.delay.as_deref().map(parse_duration) {
        None => None,
        Some(Some(d)) => Some(d),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "delay: use a duration like 5s or 500ms",
            )
        }
    };
    let n = queue.nack(&a.ids, delay);
    reply(
        StatusCode::OK,
        json!({ "nacked": n, "unknown": a.ids.len() - n }),
    )
}

pub(crate) async fn ack(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&state, &name, &headers, &body, true).await
}

pub(crate) async fn nack(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&state, &name, &headers, &body, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("5 days"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
