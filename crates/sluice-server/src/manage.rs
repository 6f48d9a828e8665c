//! The management API of `sluice server` (`/v1/pipelines`, `/v1/tokens`): JSON in and
//! out, every change through the controller.
//!
//! Invariants:
//! - Reads need an admin or read-only token, changes an admin token.
//! - Bodies are parsed here, so a malformed one is a 400 with what is wrong, never a
//!   framework's text or a 500; a configuration is refused with every problem (400) or
//!   with the failed checks and their fixes (422), as `sluice check` reports them.
//! - Responses never hold a secret: configurations are redacted, tokens listed without
//!   their hashes, and a token's secret appears once, in the answer that created it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_control::{Handle, Scope};
use tracing::info;

use crate::api::{reply, scope_name, ApiError, Caller};
use crate::AppState;

fn control(state: &AppState) -> Result<&Handle, ApiError> {
    state.control.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "the management API is served by `sluice server`; `sluice run` is configured by its files".into(),
        )
    })
}

/// A JSON object from a request body, or a 400 saying what is wrong with it.
fn object(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    match v {
        Value::Object(_) => Ok(v),
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

/// A pipeline name from a path: the same rule as `pipeline.name`.
fn name(n: &str) -> Result<&str, ApiError> {
    let ok = !n.is_empty()
        && n.len() <= 50
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match ok {
        true => Ok(n),
        false => Err(ApiError::NotFound(format!(
            "no pipeline named {n:?} (names are 1-50 characters of a-z, 0-9 and _)"
        ))),
    }
}

pub(crate) fn routes(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router
        .route("/v1/pipelines", get(list).post(create))
        .route(
            "/v1/pipelines/{pipeline}",
            get(show).put(update).delete(delete),
        )
        .route("/v1/pipelines/{pipeline}/pause", post(pause))
        .route("/v1/pipelines/{pipeline}/resume", post(resume))
        .route("/v1/tokens", get(tokens).post(create_token))
        .route("/v1/tokens/{id}", axum::routing::delete(revoke_token))
}

async fn list(State(s): State<Arc<AppState>>, caller: Caller) -> Result<Response, ApiError> {
    caller.may_read()?;
    let all = control(&s)?.list().await?;
    Ok(reply(StatusCode::OK, json!({ "pipelines": all })))
}

async fn create(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let value = object(&body)?;
    let view = control(&s)?.put(value, None).await?;
    info!(pipeline = %view.name, "api: pipeline created");
    Ok(reply(StatusCode::CREATED, view))
}

async fn show(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(pipeline): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_read()?;
    let view = control(&s)?.get(name(&pipeline)?).await?;
    Ok(reply(StatusCode::OK, view))
}

async fn update(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(pipeline): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let value = object(&body)?;
    let view = control(&s)?.put(value, Some(name(&pipeline)?)).await?;
    info!(pipeline = %view.name, "api: pipeline updated");
    Ok(reply(StatusCode::OK, view))
}

#[derive(Deserialize)]
struct DeleteQuery {
    /// Keep the replication slot and publication (to re-create the pipeline later
    /// without losing changes, or to drop them by hand).
    #[serde(default)]
    keep_slot: bool,
}

async fn delete(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(pipeline): Path<String>,
    q: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let Query(q) =
        q.map_err(|e| ApiError::BadRequest(format!("keep_slot: {e} (true or false)")))?;
    let name = name(&pipeline)?;
    let dropped = control(&s)?.delete(name, q.keep_slot).await?;
    info!(pipeline = %name, "api: pipeline deleted");
    Ok(reply(
        StatusCode::OK,
        json!({ "deleted": name, "dropped": dropped }),
    ))
}

async fn pause(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(pipeline): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let view = control(&s)?.set_paused(name(&pipeline)?, true).await?;
    Ok(reply(StatusCode::OK, view))
}

async fn resume(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(pipeline): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let view = control(&s)?.set_paused(name(&pipeline)?, false).await?;
    Ok(reply(StatusCode::OK, view))
}

fn token_json(t: &sluice_control::TokenInfo) -> Value {
    json!({ "id": t.id, "name": t.name, "scope": t.scope, "scope_text": scope_name(&t.scope), "created_ms": t.created_ms })
}

async fn tokens(State(s): State<Arc<AppState>>, caller: Caller) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let all: Vec<Value> = control(&s)?.tokens.list().iter().map(token_json).collect();
    Ok(reply(StatusCode::OK, json!({ "tokens": all })))
}

async fn create_token(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let v = object(&body)?;
    let mut fields: HashMap<String, Value> =
        serde_json::from_value(v).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let token_name = match fields.remove("name") {
        Some(Value::String(n)) if !n.trim().is_empty() && n.len() <= 200 => n,
        _ => {
            return Err(ApiError::BadRequest(
                "name: give the token a name of 1-200 characters (what or who it is for)".into(),
            ))
        }
    };
    let scope: Scope = match fields.remove("scope") {
        Some(v) => serde_json::from_value(v).map_err(|e| {
            ApiError::BadRequest(format!(
                "scope: {e}: use {{\"kind\": \"admin\"}}, {{\"kind\": \"read\"}} or {{\"kind\": \"consume\", \"pipeline\": \"...\", \"sink\": \"...\"}}"
            ))
        })?,
        None => return Err(ApiError::BadRequest("scope: required: {\"kind\": \"admin\" | \"read\" | \"consume\", ...}".into())),
    };
    if let Some(k) = fields.keys().next() {
        return Err(ApiError::BadRequest(format!(
            "unknown field {k:?}: a token has a name and a scope"
        )));
    }
    let handle = control(&s)?;
    if let Scope::Consume { pipeline, sink } = &scope {
        let view = handle.get(name(pipeline)?).await?;
        if !view.sinks.iter().any(|x| &x.name == sink) {
            return Err(ApiError::BadRequest(format!(
                "scope: pipeline {pipeline:?} has no sink named {sink:?}"
            )));
        }
    }
    let (info, secret) = handle
        .tokens
        .create(&token_name, scope)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    info!(id = %info.id, scope = %scope_name(&info.scope), "api: token created");
    let mut body = token_json(&info);
    body["token"] = Value::String(secret);
    Ok(reply(StatusCode::CREATED, body))
}

async fn revoke_token(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let gone = control(&s)?.tokens.revoke(&id).map_err(|e| match e {
        sluice_control::TokenError::NotFound(_) => ApiError::NotFound(e.to_string()),
        sluice_control::TokenError::LastAdmin(_) => ApiError::Conflict(e.to_string()),
        sluice_control::TokenError::Io(_) => ApiError::Internal(e.to_string()),
    })?;
    info!(id = %gone.id, "api: token revoked");
    Ok(reply(StatusCode::OK, json!({ "revoked": gone.id })))
}
