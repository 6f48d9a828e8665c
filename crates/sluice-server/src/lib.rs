//! The HTTP server: `/healthz`, `/readyz`, `/metrics` (Prometheus text), Server-Sent
//! Events at `GET /v1/sinks/{name}/events` for `type = "sse"` sinks, and the waiting
//! room, dead letters and pull consumers of engine-driven sinks (`delivery.rs`).
//!
//! Invariants:
//! - Endpoints that serve row data require a bearer token whose SHA-256 is configured,
//!   unless auth is off (which the config allows only on a loopback address). Health,
//!   readiness and metrics carry no row data and need none.
//! - Every SSE client reads the log with its own reader: a slow client lags alone and is
//!   disconnected once its buffer stays full, never slowing the pipeline or other clients.
//! - An event's `id:` is its log offset; `Last-Event-ID: n` resumes at offset n + 1.

mod delivery;
mod sse;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sluice_log::Log;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use delivery::parse_duration;
pub use sse::SseOptions;

/// Installs the process-wide metrics recorder (once) and returns the handle that renders
/// it. Latency histograms get buckets from 0.5 ms to 60 s.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// SHA-256 of a token, hex: the form `[server] tokens` holds.
pub fn token_hash(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the server serves.
pub struct ServerOptions {
    pub listen: SocketAddr,
    /// Hex SHA-256 of each accepted token; `None`: no authentication.
    pub token_hashes: Option<Vec<String>>,
    /// SSE sinks by name.
    pub sse: HashMap<String, SseOptions>,
    /// Waiting rooms of engine-driven sinks (webhook, pull) by name.
    pub delivery: HashMap<String, sluice_delivery::Control>,
    /// Pull sinks' queues by name.
    pub pull: HashMap<String, Arc<sluice_sinks::pull::PullQueue>>,
    /// Why the pipeline is not ready, if it is not.
    pub readiness: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// Called before rendering `/metrics`, to refresh gauges.
    pub refresh: Arc<dyn Fn() + Send + Sync>,
}

pub(crate) struct AppState {
    log: Log,
    options: ServerOptions,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
}

impl AppState {
    /// Whether the request carries an accepted token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(hashes) = &self.options.token_hashes else {
            return true;
        };
        let Some(token) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let h = token_hash(token.trim());
        // Compares every configured hash in full, whatever matches.
        hashes.iter().fold(false, |ok, c| {
            let same = c.len() == h.len()
                && c.bytes()
                    .zip(h.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            ok | same
        })
    }
}

/// Binds `options.listen` (failing at once if it cannot) and serves until `cancel`.
/// Returns the bound address and the serving future.
pub async fn bind(
    options: ServerOptions,
    log: Log,
    cancel: CancellationToken,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    String,
> {
    let metrics = install_metrics()?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e} ([server] listen)", options.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = Arc::new(AppState {
        log,
        options,
        metrics,
        shutdown: cancel.clone(),
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/sinks/{name}/events", get(sse::events))
        .route("/v1/sinks/{name}/parked", get(delivery::parked))
        .route(
            "/v1/sinks/{name}/parked/records",
            get(delivery::parked_records),
        )
        .route("/v1/sinks/{name}/parked/redrive", post(delivery::redrive))
        .route("/v1/sinks/{name}/parked/skip", post(delivery::skip))
        .route("/v1/sinks/{name}/dead", get(delivery::dead))
        .route(
            "/v1/sinks/{name}/dead/redrive",
            post(delivery::redrive_dead),
        )
        .route("/v1/sinks/{name}/receive", post(delivery::receive))
        .route("/v1/sinks/{name}/ack", post(delivery::ack))
        .route("/v1/sinks/{name}/nack", post(delivery::nack))
        .with_state(state);
    info!(%addr, "server: listening");
    // Events are small writes: without NODELAY, Nagle's algorithm holds each one back
    // until the client's delayed ACK (tens of milliseconds).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
    };
    Ok((addr, serve))
}

async fn readyz(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    match (s.options.readiness)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (s.options.refresh)();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
