//! The web console's side of the server: its static files at `/` and `/console/*`
//! (compiled into the binary, so it works with no network and no other web server), who
//! the signed-in token is (`/v1/whoami`), and live views of the pipelines as Server-Sent
//! Events (`/v1/stream/pipelines[/{pipeline}]`), all under `sluice server` only.
//!
//! Invariants:
//! - The console uses the management API and nothing else: these routes add no power, only
//!   a view; streams need a read scope, like the reads they repeat.
//! - The pages are served with a content security policy that allows only this origin, so
//!   no script or style from elsewhere can run in them.
//! - A stream sends its first view at once, then one a second, and ends with the server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::{reply, scope_name, ApiError, Caller};
use crate::manage::ErrorBody;
use crate::AppState;

const INDEX: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// How often a stream sends the current view.
const EVERY: Duration = Duration::from_secs(1);

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn index(State(s): State<Arc<AppState>>) -> Response {
    match s.control {
        Some(_) => page("text/html; charset=utf-8", INDEX),
        None => (
            StatusCode::NOT_FOUND,
            "the web console is served by `sluice server`\n",
        )
            .into_response(),
    }
}

pub(crate) async fn asset(State(s): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    match (s.control.is_some(), file.as_str()) {
        (true, "app.js") => page("text/javascript; charset=utf-8", APP_JS),
        (true, "app.css") => page("text/css; charset=utf-8", APP_CSS),
        _ => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

/// The token making the request.
#[derive(Serialize, ToSchema)]
pub(crate) struct Me {
    id: String,
    name: String,
    #[schema(value_type = Object)]
    scope: sluice_control::Scope,
    /// The scope in words.
    scope_name: String,
}

#[utoipa::path(get, path = "/v1/whoami", tag = "tokens",
    summary = "The token making the request: its id, name and scope (for the console)",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn whoami(caller: Caller) -> Result<Response, ApiError> {
    match caller {
        Caller::Token(t) => Ok(reply(
            StatusCode::OK,
            Me {
                scope_name: scope_name(&t.scope),
                id: t.id,
                name: t.name,
                scope: t.scope,
            },
        )),
        Caller::Open => Err(ApiError::NotFound(
            "tokens are `sluice server`'s; `sluice run` checks configured hashes".into(),
        )),
    }
}

/// A stream of `event: {event}` messages, each the JSON `view` gives, once a second
/// until the server stops; a view that fails ends the stream with an `error` event.
fn stream<F, Fut, T>(s: Arc<AppState>, event: &'static str, view: F) -> Response
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, ApiError>> + Send,
    T: Serialize,
{
    let shutdown = s.shutdown.clone();
    let stream = futures_util::stream::unfold((view, true, false), move |(view, first, done)| {
        let shutdown = shutdown.clone();
        async move {
            if done {
                return None;
            }
            if !first {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(EVERY) => {}
                }
            }
            let (text, done) = match view().await {
                Ok(v) => (
                    format!(
                        "event: {event}\ndata: {}\n\n",
                        serde_json::to_string(&v).unwrap_or_default()
                    ),
                    false,
                ),
                Err(e) => (
                    format!(
                        "event: error\ndata: {}\n\n",
                        serde_json::json!({ "error": e.message() })
                    ),
                    true,
                ),
            };
            Some((Ok::<_, Infallible>(Bytes::from(text)), (view, false, done)))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Serialize)]
struct PipelineList {
    pipelines: Vec<sluice_control::PipelineView>,
}

#[utoipa::path(get, path = "/v1/stream/pipelines", tag = "pipelines",
    summary = "The pipelines list as Server-Sent Events (`event: pipelines`), once a second",
    params(("access_token" = Option<String>, Query, description = "The token, for EventSource")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn stream_pipelines(
    State(s): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.may_read()?;
    let handle = crate::manage::control(&s)?.clone();
    Ok(stream(s, "pipelines", move || {
        let handle = handle.clone();
        async move {
            Ok(PipelineList {
                pipelines: handle.list().await?,
            })
        }
    }))
}

#[utoipa::path(get, path = "/v1/stream/pipelines/{pipeline}", tag = "pipelines",
    summary = "One pipeline's view (as GET /v1/pipelines/{pipeline}) as Server-Sent Events (`event: pipeline`), once a second",
    params(("pipeline" = String, Path, description = "The pipeline's name"),
        ("access_token" = Option<String>, Query, description = "The token, for EventSource")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn stream_pipeline(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_read()?;
    let handle = crate::manage::control(&s)?.clone();
    // Unknown now: a 404, not a stream that ends at once.
    handle.get(&name).await?;
    Ok(stream(s, "pipeline", move || {
        let (handle, name) = (handle.clone(), name.clone());
        async move { Ok(handle.get(&name).await?) }
    }))
}
