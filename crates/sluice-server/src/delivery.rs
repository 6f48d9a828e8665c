//! The waiting room, the dead letters and pull consumers over HTTP:
//!
//! ```text
//! GET  /v1/sinks/{name}/parked                     parked and delayed keys
//! GET  /v1/sinks/{name}/parked/records?key=K       a key's held records, in order
//! POST /v1/sinks/{name}/parked/redrive  {"keys":[..]} | {"all":true}
//! POST /v1/sinks/{name}/parked/skip     {"keys":[..]} | {"all":true}
//! GET  /v1/sinks/{name}/dead?from=POSITION&limit=N dead letters
//! POST /v1/sinks/{name}/dead/redrive    {"positions":[..]} | {"all":true}
//! POST /v1/sinks/{name}/receive?max=N&visibility=30s&wait=5s
//! POST /v1/sinks/{name}/ack             {"ids":[..]}
//! POST /v1/sinks/{name}/nack            {"ids":[..], "delay":"5s"}
//! ```
//!
//! Invariants: every endpoint needs the bearer token (records are row data; the
//! [`SinkRef`] extractor checks it before a handler runs), and a read-only token sees
//! keys, reasons and attempts but never a record's values; state
//! changes go through the engine that owns the sink (its command channel), never to the
//! store directly, so they are ordered with deliveries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_delivery::{Command, Control, DeliveryError, Reply, Selection, Store, Stored};
use sluice_log::Position;
use sluice_sinks::pull::PullQueue;
use utoipa::ToSchema;

use crate::api::{reply, ApiError, ErrorBody, SinkRef};

fn control(sink: &SinkRef) -> Result<Control, ApiError> {
    sink.endpoints
        .delivery
        .get(&sink.name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no webhook or pull sink named {:?}", sink.name)))
}

fn pull_queue(sink: &SinkRef) -> Result<Arc<PullQueue>, ApiError> {
    sink.endpoints
        .pull
        .get(&sink.name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no pull sink named {:?}", sink.name)))
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
    // Checked: a huge finite value does not fit a Duration (from_secs_f64 would panic).
    Duration::try_from_secs_f64(secs).ok()
}

/// The longest visibility a pull consumer may ask for: a lease longer than a day is a
/// mistake, and a bound keeps deadline arithmetic far from overflow.
const MAX_VISIBILITY: Duration = Duration::from_secs(24 * 3600);

/// A record held in the waiting room or the dead letters.
#[derive(Serialize, ToSchema)]
pub(crate) struct HeldRecord {
    /// Its place in the log, as `dead?from=` and `dead/redrive` take it.
    position: String,
    /// The change record's id.
    id: String,
    key: String,
    /// The table or outbox topic it was routed by.
    route: String,
    /// Dead letters: `exhausted`, `rejected`, `expired`, `skipped` or `malformed`.
    reason: String,
    attempts: u32,
    last_error: String,
    /// When it was stored (µs since the epoch).
    at_micros: i64,
    /// The change record; absent (null) for a read-only token.
    #[schema(value_type = Option<Object>)]
    record: Option<Value>,
    /// The values were left out (a read-only token).
    values_hidden: bool,
}

impl HeldRecord {
    /// `s` as the API shows it; without `reveal`, its values are left out.
    fn of(s: &Stored, reveal: bool) -> HeldRecord {
        HeldRecord {
            position: Position(s.item.offset).token(),
            id: s.item.id.to_string(),
            key: s.item.key.to_string(),
            route: s.item.route.to_string(),
            reason: s.reason.clone(),
            attempts: s.attempts,
            last_error: s.last_error.clone(),
            at_micros: s.at_micros,
            record: reveal.then(|| serde_json::from_slice(&s.item.json).unwrap_or(Value::Null)),
            values_hidden: !reveal,
        }
    }
}

/// A key in the waiting room.
#[derive(Serialize, ToSchema)]
pub(crate) struct ParkedKey {
    key: String,
    state: sluice_delivery::KeyState,
    reason: String,
    attempts: u32,
    last_error: String,
    /// When it was parked or delayed (µs since the epoch).
    since_micros: i64,
    /// Delayed until (µs since the epoch).
    until_micros: Option<i64>,
    /// Records it holds.
    records: usize,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ParkedKeys {
    keys: Vec<ParkedKey>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct HeldRecords {
    records: Vec<HeldRecord>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeadLetters {
    dead_letters: Vec<HeldRecord>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Redriven {
    /// Keys or dead letters sent again.
    redriven: usize,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Skipped {
    /// Keys whose held records became dead letters.
    skipped: usize,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Acked {
    acked: usize,
    /// Ids that were not on offer (already acknowledged, or their lease ran out).
    unknown: usize,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Nacked {
    nacked: usize,
    /// Ids that were not on offer.
    unknown: usize,
}

/// Records taken by a pull consumer, each a change record.
#[derive(Serialize, ToSchema)]
pub(crate) struct Received {
    records: Vec<ChangeRecordView>,
}

/// The change record (documented here; the server sends the log's bytes as they are).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // The body is written from the log's encoding, not from this type.
pub(crate) struct ChangeRecordView {
    /// The commit position and the change's place in its transaction: the idempotency key.
    id: String,
    /// `insert`, `update`, `delete`, `truncate`, `read` or `message`.
    op: String,
    schema: String,
    table: String,
    /// The replica identity columns.
    #[schema(value_type = Option<Object>)]
    key: Option<Value>,
    #[schema(value_type = Option<Object>)]
    before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    after: Option<Value>,
    /// Columns whose unchanged TOAST value was not sent.
    unchanged_toast: Vec<String>,
    lsn: String,
    commit_lsn: String,
    /// RFC 3339, UTC.
    commit_ts: String,
    xid: u64,
}

/// Answers with what `read` finds in a sink's store, read off the async threads (redb
/// reads block).
async fn read_store<T: Serialize + Send + 'static>(
    sink: SinkRef,
    read: impl FnOnce(&Store) -> Result<T, DeliveryError> + Send + 'static,
) -> Result<Response, ApiError> {
    let c = control(&sink)?;
    match tokio::task::spawn_blocking(move || read(&c.store)).await {
        Ok(Ok(v)) => Ok(reply(StatusCode::OK, v)),
        Ok(Err(e)) => Err(ApiError::Internal(e.to_string())),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/sinks/{name}/parked", tag = "consumers",
    summary = "The waiting room: parked and delayed keys with reason, attempts and last error",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name")),
    responses((status = 200, body = ParkedKeys), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn parked(sink: SinkRef) -> Result<Response, ApiError> {
    read_store(sink, |store| {
        let mut keys = Vec::new();
        for (key, row) in store.keys()? {
            if row.state == sluice_delivery::KeyState::Done {
                continue;
            }
            let records = store.waiting_len(&key)?;
            keys.push(ParkedKey {
                key,
                state: row.state,
                reason: row.reason,
                attempts: row.attempts,
                last_error: row.last_error,
                since_micros: row.since_micros,
                until_micros: row.until_micros,
                records,
            });
        }
        Ok(ParkedKeys { keys })
    })
    .await
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/sinks/{name}/parked/records", tag = "consumers",
    summary = "A parked key's held records, in order (values hidden from read-only tokens)",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name"), ("key" = String, Query, description = "The key, as `parked` lists it"), ("limit" = Option<usize>, Query, description = "At most this many (default 100)")),
    responses((status = 200, body = HeldRecords), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn parked_records(
    sink: SinkRef,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(key) = q.get("key").cloned() else {
        return Err(ApiError::BadRequest("key=... is required".into()));
    };
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    let reveal = sink.reveal;
    read_store(sink, move |store| {
        let list = store.waiting(&key, 0, limit)?;
        let records = list.iter().map(|s| HeldRecord::of(s, reveal)).collect();
        Ok(HeldRecords { records })
    })
    .await
}

/// What to act on (documentation of the body; it is parsed by `choose`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Choice {
    keys: Option<Vec<String>>,
    positions: Option<Vec<String>>,
    all: Option<bool>,
}

/// Records by id (documentation of the body).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Ids {
    ids: Vec<String>,
    /// For nack: wait this long before offering them again (e.g. 5s).
    delay: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Choose {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    positions: Vec<String>,
    /// Raw log offsets, as earlier releases listed dead letters.
    #[serde(default)]
    offsets: Vec<u64>,
    #[serde(default)]
    all: bool,
}

fn choose(body: &Bytes) -> Result<Choose, ApiError> {
    let mut c: Choose = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be JSON like {{\"keys\": [...]}} or {{\"all\": true}}: {e}"
        ))
    })?;
    if !c.all && c.keys.is_empty() && c.positions.is_empty() && c.offsets.is_empty() {
        return Err(ApiError::BadRequest(
            "name what to act on: {\"keys\": [...]}, {\"positions\": [...]} or {\"all\": true}"
                .into(),
        ));
    }
    for p in std::mem::take(&mut c.positions) {
        let pos = Position::parse(&p).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "position {p:?} is not one of this sink's dead letters' positions (as `dead` lists them)"
            ))
        })?;
        c.offsets.push(pos.0);
    }
    Ok(c)
}

/// Asks the sink's engine to act on what the body chooses; how many it acted on.
async fn act(
    sink: SinkRef,
    body: &Bytes,
    make: impl FnOnce(Choose) -> Box<dyn FnOnce(Reply) -> Command + Send>,
) -> Result<usize, ApiError> {
    let c = control(&sink)?;
    let chosen = choose(body)?;
    c.ask(make(chosen))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))
}

fn selection(c: &Choose) -> Selection {
    if c.all {
        Selection::All
    } else {
        Selection::Keys(c.keys.clone())
    }
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/sinks/{name}/parked/redrive", tag = "consumers",
    summary = "Retry parked keys now, in order",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name")),
    request_body(content = Choice, content_type = "application/json"),
    responses((status = 200, body = Redriven), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn redrive(sink: SinkRef, body: Bytes) -> Result<Response, ApiError> {
    let redriven = act(sink, &body, |c| {
        Box::new(move |tx| Command::Redrive(selection(&c), tx))
    })
    .await?;
    Ok(reply(StatusCode::OK, Redriven { redriven }))
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/sinks/{name}/parked/skip", tag = "consumers",
    summary = "Skip parked keys: their held records become dead letters",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name")),
    request_body(content = Choice, content_type = "application/json"),
    responses((status = 200, body = Skipped), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn skip(sink: SinkRef, body: Bytes) -> Result<Response, ApiError> {
    let skipped = act(sink, &body, |c| {
        Box::new(move |tx| Command::Skip(selection(&c), tx))
    })
    .await?;
    Ok(reply(StatusCode::OK, Skipped { skipped }))
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/sinks/{name}/dead", tag = "consumers",
    summary = "Dead letters from a position (values hidden from read-only tokens)",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name"), ("from" = Option<String>, Query, description = "A position as `dead` lists them"), ("limit" = Option<usize>, Query, description = "At most this many (default 100)")),
    responses((status = 200, body = DeadLetters), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn dead(
    sink: SinkRef,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let from = match q.get("from") {
        None => 0,
        Some(f) => {
            Position::parse(f)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("from={f:?}: use a position as `dead` lists them"))
                })?
                .0
        }
    };
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    let reveal = sink.reveal;
    read_store(sink, move |store| {
        let list = store.dead(from, limit)?;
        let dead_letters = list.iter().map(|s| HeldRecord::of(s, reveal)).collect();
        Ok(DeadLetters { dead_letters })
    })
    .await
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/sinks/{name}/dead/redrive", tag = "consumers",
    summary = "Deliver dead letters again",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name")),
    request_body(content = Choice, content_type = "application/json"),
    responses((status = 200, body = Redriven), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn redrive_dead(sink: SinkRef, body: Bytes) -> Result<Response, ApiError> {
    let redriven = act(sink, &body, |c| {
        Box::new(move |tx| Command::RedriveDead((!c.all).then(|| c.offsets.clone()), tx))
    })
    .await?;
    Ok(reply(StatusCode::OK, Redriven { redriven }))
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/sinks/{name}/receive", tag = "consumers",
    summary = "Pull consumers: take up to `max` records, hidden from others for `visibility`",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name"), ("max" = Option<usize>, Query, description = "1-10000 (default 10)"), ("visibility" = Option<String>, Query, description = "e.g. 30s; at most 24h"), ("wait" = Option<String>, Query, description = "Long poll, up to 60s")),
    responses((status = 200, body = Received), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn receive(
    sink: SinkRef,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let queue = pull_queue(&sink)?;
    let max = q
        .get("max")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 10_000);
    let dur = |k: &str, d: Duration, max: Duration| -> Result<Duration, ApiError> {
        match q.get(k) {
            None => Ok(d),
            Some(v) => parse_duration(v).filter(|d| *d <= max).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{k}: use a duration like 30s, 500ms or 2m, at most {}s",
                    max.as_secs()
                ))
            }),
        }
    };
    let visibility =
        dur("visibility", Duration::from_secs(30), MAX_VISIBILITY)?.max(Duration::from_millis(10));
    let wait = dur("wait", Duration::ZERO, MAX_VISIBILITY)?.min(Duration::from_secs(60));
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
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    ids: Vec<String>,
    #[serde(default)]
    delay: Option<String>,
}

fn answer(sink: SinkRef, body: &Bytes, ack: bool) -> Result<Response, ApiError> {
    let queue = pull_queue(&sink)?;
    let a: Answer = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be JSON like {{\"ids\": [\"<record id>\"]}}: {e}"
        ))
    })?;
    if ack {
        let n = queue.ack(&a.ids);
        return Ok(reply(
            StatusCode::OK,
            Acked {
                acked: n,
                unknown: a.ids.len() - n,
            },
        ));
    }
    let delay = match a.delay.as_deref().map(parse_duration) {
        None => None,
        Some(Some(d)) if d <= MAX_VISIBILITY => Some(d),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "delay: use a duration like 5s or 500ms, at most {}s",
                MAX_VISIBILITY.as_secs()
            )))
        }
    };
    let n = queue.nack(&a.ids, delay);
    Ok(reply(
        StatusCode::OK,
        Nacked {
            nacked: n,
            unknown: a.ids.len() - n,
        },
    ))
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/sinks/{name}/ack", tag = "consumers",
    summary = "Pull consumers: acknowledge records by id",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name")),
    request_body(content = Ids, content_type = "application/json"),
    responses((status = 200, body = Acked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn ack(sink: SinkRef, body: Bytes) -> Result<Response, ApiError> {
    answer(sink, &body, true)
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/sinks/{name}/nack", tag = "consumers",
    summary = "Pull consumers: give records back, after an optional delay",
    params(("pipeline" = String, Path, description = "The pipeline's name"), ("name" = String, Path, description = "The sink's name")),
    request_body(content = Ids, content_type = "application/json"),
    responses((status = 200, body = Nacked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn nack(sink: SinkRef, body: Bytes) -> Result<Response, ApiError> {
    answer(sink, &body, false)
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
        // Too large for a Duration, or not a number: refused, never a panic.
        assert_eq!(parse_duration("99999999999999999999999"), None);
        assert_eq!(parse_duration("1e400"), None);
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("NaN"), None);
        assert_eq!(parse_duration("5 days"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
