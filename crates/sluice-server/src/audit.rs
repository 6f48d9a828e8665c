//! The audit trail of `sluice server`: a middleware that records every management
//! action (each request under `/v1` that may change something) in the data dir's audit
//! log, and `GET /v1/audit` to read it.
//!
//! Invariants:
//! - An action is recorded whatever its answer, refusals (401, 403) included, and after
//!   the answer is known; reading the log is not itself recorded. Refusals of requests
//!   without an accepted token are counted per address and minute (see
//!   `sluice_control::audit`).
//! - A token appears by id only; the request body and query (which may carry a token)
//!   are never recorded.
//! - Consumers' traffic (pull receive, ack, nack) is data, not management: not recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Serialize;
use sluice_control::audit::AuditEvent;
use tracing::warn;
use utoipa::ToSchema;

use crate::api::{presented, reply, ApiError, Caller, ErrorBody};
use crate::AppState;

/// What a handler acted on when its path does not say (a pipeline or token it created).
#[derive(Clone)]
pub(crate) struct AuditTarget(pub String);

/// Records the action `req` asks for, with its answer.
pub(crate) async fn record(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(control) = s.control.clone() else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_owned();
    let consuming = ["/receive", "/ack", "/nack", "/events"]
        .iter()
        .any(|e| path.ends_with(e));
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || !path.starts_with("/v1/")
        || consuming
    {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let token = presented(req.headers(), req.uri())
        .and_then(|t| control.tokens.authenticate(&t))
        .map(|t| t.id);
    let method = req.method().clone();
    let res = next.run(req).await;
    let target = match res.extensions().get::<AuditTarget>() {
        Some(t) => t.0.clone(),
        None => route
            .as_deref()
            .map(|r| params_of(r, &path))
            .unwrap_or_default(),
    };
    let status = res.status();
    let event = AuditEvent {
        time_ms: sluice_core::time::now_ms(),
        token,
        from: peer.ip().to_string(),
        action: format!("{method} {}", route.as_deref().unwrap_or(&path)),
        target,
        status: status.as_u16(),
        count: None,
    };
    let audit = control.audit.clone();
    // Anyone who can reach the port can be refused: those are counted, not written one
    // by one, so they cannot push real actions out of the log.
    let anonymous_refusal =
        event.token.is_none() && matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    let written = tokio::task::spawn_blocking(move || {
        if anonymous_refusal {
            audit.refused(event)
        } else {
            audit.record(&event)
        }
    })
    .await;
    if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
        warn!(error = %e, "audit: cannot append to the audit log");
    }
    res
}

/// Writes each minute's counts of refusals once the minute is over, until the server
/// stops.
pub(crate) async fn flush_refusals(s: Arc<AppState>) {
    let Some(control) = s.control.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        // At the stop, the minute in progress is written too.
        let now = tokio::select! {
            _ = s.shutdown.cancelled() => i64::MAX,
            _ = tick.tick() => sluice_core::time::now_ms(),
        };
        let audit = control.audit.clone();
        let written = tokio::task::spawn_blocking(move || audit.flush_refusals(now)).await;
        if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
            warn!(error = %e, "audit: cannot append to the refusals log");
        }
        if now == i64::MAX {
            return;
        }
    }
}

/// The values of a route's parameters in `path`, joined by `/` (`pa/out` for
/// `/v1/pipelines/{pipeline}/sinks/{name}/...`).
fn params_of(route: &str, path: &str) -> String {
    route
        .split('/')
        .zip(path.split('/'))
        .filter(|(r, _)| r.starts_with('{'))
        .map(|(_, p)| p)
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AuditLog {
    /// Newest first.
    events: Vec<AuditEvent>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "access",
    summary = "The latest management actions, newest first: token id, address, action, target, answer",
    params(("limit" = Option<usize>, Query, description = "How many (default 100, at most 10000)")),
    responses((status = 200, body = AuditLog), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn audit_log(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::BadRequest("limit: a number from 1 to 10000".into()))?,
    };
    let Some(control) = s.control.clone() else {
        return Err(ApiError::NotFound(
            "the audit log is kept by `sluice server`".into(),
        ));
    };
    let events = tokio::task::spawn_blocking(move || control.audit.recent(limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("cannot read the audit log: {e}")))?;
    Ok(reply(StatusCode::OK, AuditLog { events }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets_are_the_routes_parameters() {
        assert_eq!(
            super::params_of(
                "/v1/pipelines/{pipeline}/sinks/{name}/parked/redrive",
                "/v1/pipelines/pa/sinks/out/parked/redrive"
            ),
            "pa/out"
        );
        assert_eq!(super::params_of("/v1/pipelines", "/v1/pipelines"), "");
    }
}
