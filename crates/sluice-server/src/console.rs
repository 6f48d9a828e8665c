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
//! - The history behind the charts is sampled every [`SAMPLE_EVERY`] for [`SAMPLES`]
//!   samples (an hour), in memory: it starts again with the server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::{reply, scope_name, ApiError, Caller, ErrorBody};
use crate::AppState;

const INDEX: &str = include_str!("../console/index.html");
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
/// Every file under `/console/`: its name, content type and text. The scripts are ES
/// modules (`main.js` imports the others), loaded as they are: there is no build step.
const ASSETS: &[(&str, &str, &str)] = &[
    ("main.js", JS, include_str!("../console/main.js")),
    ("api.js", JS, include_str!("../console/api.js")),
    ("dom.js", JS, include_str!("../console/dom.js")),
    ("signin.js", JS, include_str!("../console/signin.js")),
    ("pipelines.js", JS, include_str!("../console/pipelines.js")),
    ("pipeline.js", JS, include_str!("../console/pipeline.js")),
    ("charts.js", JS, include_str!("../console/charts.js")),
    ("sinkform.js", JS, include_str!("../console/sinkform.js")),
    ("wizard.js", JS, include_str!("../console/wizard.js")),
    ("waiting.js", JS, include_str!("../console/waiting.js")),
    ("consumers.js", JS, include_str!("../console/consumers.js")),
    ("settings.js", JS, include_str!("../console/settings.js")),
    ("app.css", CSS, include_str!("../console/app.css")),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../console/icon.svg"),
    ),
    // uPlot (MIT), the charts; vendored by `scripts/vendor-console.sh`.
    (
        "uPlot.iife.min.js",
        JS,
        include_str!("../console/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        CSS,
        include_str!("../console/vendor/uPlot.min.css"),
    ),
];

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
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some(&(_, content_type, body)) if s.control.is_some() => page(content_type, body),
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
    let handle = crate::api::control(&s)?.clone();
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
    let handle = crate::api::control(&s)?.clone();
    // Unknown now: a 404, not a stream that ends at once.
    handle.get(&name).await?;
    Ok(stream(s, "pipeline", move || {
        let (handle, name) = (handle.clone(), name.clone());
        async move { Ok(handle.get(&name).await?) }
    }))
}

/// How often each pipeline's sinks are sampled for the charts.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept per pipeline: an hour's worth.
const SAMPLES: usize = 360;

/// One sample of a pipeline's sinks.
#[derive(Clone, Serialize, ToSchema)]
pub(crate) struct Sample {
    /// Milliseconds since the Unix epoch.
    time_ms: i64,
    /// Per sink: records behind, and records delivered per second.
    #[schema(value_type = Object)]
    sinks: std::collections::BTreeMap<String, (u64, f64)>,
}

/// The last hour of every pipeline's samples.
#[derive(Default)]
pub(crate) struct History(
    std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<Sample>>>,
);

impl History {
    fn record(&self, views: &[sluice_control::PipelineView]) {
        let now = sluice_control::registry::now_ms();
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Deleted pipelines leave with their history.
        all.retain(|name, _| views.iter().any(|v| &v.name == name));
        for v in views {
            let Some(status) = &v.status else { continue };
            let sample = Sample {
                time_ms: now,
                sinks: status
                    .sinks
                    .iter()
                    .map(|k| (k.name.clone(), (k.lag_records, k.per_second)))
                    .collect(),
            };
            let q = all.entry(v.name.clone()).or_default();
            if q.len() == SAMPLES {
                q.pop_front();
            }
            q.push_back(sample);
        }
    }

    fn of(&self, name: &str) -> Vec<Sample> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.get(name)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Samples every pipeline until the server stops.
pub(crate) async fn sample(s: Arc<AppState>) {
    let Some(handle) = s.control.clone() else {
        return;
    };
    loop {
        if let Ok(views) = handle.list().await {
            s.history.record(&views);
        }
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct HistoryView {
    /// Seconds between samples.
    interval_secs: u64,
    /// Oldest first, at most an hour's worth.
    samples: Vec<Sample>,
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/history", tag = "pipelines",
    summary = "The last hour of each sink's lag and throughput, sampled every 10 s (for charts)",
    params(("pipeline" = String, Path, description = "The pipeline's name")),
    responses((status = 200, body = HistoryView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn history(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_read()?;
    crate::api::control(&s)?.get(&name).await?;
    Ok(reply(
        StatusCode::OK,
        HistoryView {
            interval_secs: SAMPLE_EVERY.as_secs(),
            samples: s.history.of(&name),
        },
    ))
}

/// What the console's settings show of the server itself.
#[derive(Serialize, ToSchema)]
pub(crate) struct ServerInfo {
    version: &'static str,
    /// Serving HTTPS.
    tls: bool,
    /// The certificate file (reloaded when it changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<String>,
}

#[utoipa::path(get, path = "/v1/server", tag = "access",
    summary = "The server: its version and whether it serves HTTPS (with which certificate file)",
    responses((status = 200, body = ServerInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn server_info(
    State(s): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.may_read()?;
    Ok(reply(
        StatusCode::OK,
        ServerInfo {
            version: env!("CARGO_PKG_VERSION"),
            tls: s.tls_cert.is_some(),
            tls_cert: s.tls_cert.as_ref().map(|p| p.display().to_string()),
        },
    ))
}
