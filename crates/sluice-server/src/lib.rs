//! The HTTP server: `/healthz`, `/readyz`, `/metrics` (Prometheus text), Server-Sent
//! Events at `GET /v1/sinks/{name}/events` for `type = "sse"` sinks, the waiting room,
//! dead letters and pull consumers of engine-driven sinks (`delivery.rs`), and under
//! `sluice server` the management API (`manage.rs`) with `/v1/openapi.json`.
//!
//! Invariants:
//! - Under `sluice run`, endpoints that serve row data require a bearer token whose
//!   SHA-256 is configured, unless auth is off (which the config allows only on a
//!   loopback address). Under `sluice server` every `/v1` route but the OpenAPI document
//!   needs a token whose scope covers it, from an address the area's allow-list holds.
//!   Health and readiness carry no row data and need none.
//! - An SSE sink's feed reads and encodes the log once for all its clients; a client
//!   behind it reads with a reader of its own until it catches up. A slow client lags
//!   alone and is disconnected once its buffer stays full, never slowing the pipeline or
//!   other clients.
//! - An event's `id:` is an opaque position token; `Last-Event-ID` resumes just after it.
//! - The server outlives pipelines: it finds a sink's pipeline in the shared
//!   [`Directory`] per request, so a pipeline restarting drops only its own clients.

mod api;
mod audit;
mod console;
mod delivery;
mod manage;
mod sse;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sluice_control::Handle;
use sluice_pipeline::Directory;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use api::ApiError;
pub use delivery::parse_duration;
pub use sluice_pipeline::install_metrics;
pub use tls::{TlsError, TlsFiles};

/// The server's serving future.
pub type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

/// SHA-256 of a token, hex: the form `[server] tokens` holds.
pub fn token_hash(token: &str) -> String {
    sluice_control::tokens::hash(token)
}

pub(crate) struct AppState {
    directory: Arc<Directory>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    /// `sluice server`'s controller and tokens; `None` under `sluice run`, whose tokens
    /// are the configuration's hashes in the directory.
    control: Option<Handle>,
    /// The last hour of each pipeline's sink figures, for the console's charts.
    history: console::History,
    /// The certificate file, when serving HTTPS.
    tls_cert: Option<std::path::PathBuf>,
}

impl AppState {
    /// Whether `token` is accepted by `sluice run`'s configured hashes (or auth is off).
    fn authorized(&self, token: Option<&str>) -> bool {
        let Some(hashes) = self.directory.tokens() else {
            return true;
        };
        let Some(token) = token else {
            return false;
        };
        let h = token_hash(token.trim());
        // Compares every configured hash in full, whatever matches.
        hashes
            .iter()
            .fold(false, |ok, c| ok | sluice_control::tokens::same(c, &h))
    }
}

/// Every sink route under `/v1/sinks/{name}`, the short form when one pipeline has a
/// sink of that name (the routes under `/v1/pipelines/{pipeline}/sinks/{name}`, which tell
/// apart sinks of the same name in several pipelines, are documented in `manage.rs`).
fn sink_routes(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    let routes: [(&str, MethodRouter<Arc<AppState>>); 10] = [
        ("events", get(sse::events)),
        ("parked", get(delivery::parked)),
        ("parked/records", get(delivery::parked_records)),
        ("parked/redrive", post(delivery::redrive)),
        ("parked/skip", post(delivery::skip)),
        ("dead", get(delivery::dead)),
        ("dead/redrive", post(delivery::redrive_dead)),
        ("receive", post(delivery::receive)),
        ("ack", post(delivery::ack)),
        ("nack", post(delivery::nack)),
    ];
    routes.into_iter().fold(router, |r, (path, handler)| {
        r.route(&format!("/v1/sinks/{{name}}/{path}"), handler)
    })
}

/// Why the server could not start serving: the address, the certificate or the
/// process's metrics recorder, all the operator's to change, so none is retried.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{0}")]
    Metrics(#[from] sluice_pipeline::MetricsError),
    #[error("cannot listen on {addr}: {source} ([server] listen)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    LocalAddr(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl BindError {
    /// What the operator can change, where the error names it.
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            BindError::Listen { .. } => Some("[server] listen"),
            BindError::Tls(e) => e.fix(),
            _ => None,
        }
    }
}

/// Binds `listen` (failing at once if it cannot) and serves the pipelines of `directory`
/// until `cancel`, over HTTPS with `tls`; with `control` (`sluice server`), the
/// management API and its tokens too. Returns the bound address and the serving future.
pub async fn bind(
    listen: SocketAddr,
    tls: Option<TlsFiles>,
    directory: Arc<Directory>,
    control: Option<Handle>,
    cancel: CancellationToken,
) -> Result<(SocketAddr, Serving), BindError> {
    let metrics = install_metrics()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| BindError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(BindError::LocalAddr)?;
    directory.set_server_addr(addr);
    let state = Arc::new(AppState {
        directory,
        metrics,
        shutdown: cancel.clone(),
        control,
        history: Default::default(),
        tls_cert: tls.as_ref().map(|t| t.cert.clone()),
    });
    tokio::spawn(console::sample(state.clone()));
    tokio::spawn(audit::flush_refusals(state.clone()));
    let (managed, api) = manage::routes().split_for_parts();
    let doc = manage::document(api);
    let allow = axum::middleware::from_fn_with_state(state.clone(), manage::allow_list);
    let audit = axum::middleware::from_fn_with_state(state.clone(), audit::record);
    let app = sink_routes(
        Router::new()
            .merge(managed)
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/", get(console::index))
            .route("/console/{file}", get(console::asset))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route(
                "/v1/openapi.json",
                get(move || async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc,
                    )
                }),
            ),
    )
    .layer(allow)
    // Outside the allow-list, so refused addresses are recorded too.
    .layer(audit)
    .layer(axum::extract::DefaultBodyLimit::max(api::BODY_LIMIT))
    // Outermost: whatever refuses a request, the answer is the API's error body.
    .layer(axum::middleware::from_fn(api::json_errors))
    .with_state(state);
    // The peer's address, for the allow-lists.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let stop = async move { cancel.cancelled().await };
    let serve: Serving = match tls {
        Some(files) => {
            // A tap that does nothing: through it, axum knows the peer's address
            // (ConnectInfo), as for the plain listener. NODELAY is set before the handshake.
            let listener = axum::serve::ListenerExt::tap_io(
                tls::TlsListener::new(listener, addr, files)?,
                |_| {},
            );
            info!(%addr, "server: listening (HTTPS)");
            Box::pin(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        }
        None => {
            // Events are small writes: without NODELAY, Nagle's algorithm holds each one
            // back until the client's delayed ACK (tens of milliseconds).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            info!(%addr, "server: listening");
            Box::pin(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        }
    };
    Ok((addr, serve))
}

async fn readyz(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    match s.directory.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    s.directory.refresh();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
