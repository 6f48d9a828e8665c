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
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_control::access::{Access, AccessError, AllowLists, Area};
use sluice_control::probe::{self, SourceRequest, TableInfo};
use sluice_control::{FindingView, PipelineView, Scope};
use std::net::SocketAddr;
use tracing::info;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{control, reply, scope_name, ApiError, Caller, ErrorBody};
use crate::audit::AuditTarget;
use crate::AppState;

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

/// Every management route, each documented by its handler's `#[utoipa::path]`.
pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, delete))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(test_source))
        .routes(routes!(discover_source))
        .routes(routes!(pipeline_tables))
        .routes(routes!(verify_sink))
        .routes(routes!(sink_types))
        .routes(routes!(get_access, put_access))
        .routes(routes!(crate::audit::audit_log))
        .routes(routes!(crate::console::whoami))
        .routes(routes!(crate::console::stream_pipelines))
        .routes(routes!(crate::console::stream_pipeline))
        .routes(routes!(crate::console::history))
        .routes(routes!(crate::console::server_info))
        .routes(routes!(crate::sse::events))
        .routes(routes!(crate::delivery::parked))
        .routes(routes!(crate::delivery::parked_records))
        .routes(routes!(crate::delivery::redrive))
        .routes(routes!(crate::delivery::skip))
        .routes(routes!(crate::delivery::dead))
        .routes(routes!(crate::delivery::redrive_dead))
        .routes(routes!(crate::delivery::receive))
        .routes(routes!(crate::delivery::ack))
        .routes(routes!(crate::delivery::nack))
}

/// Which allow-list a path is under: the consumers' for a sink's data, management's for
/// the rest of `/v1` and the metrics; none for health and the OpenAPI document.
fn area_of(path: &str) -> Option<Area> {
    match path {
        "/healthz" | "/readyz" | "/v1/openapi.json" => None,
        "/metrics" | "/v1/sinks/verify" | "/" => Some(Area::Management),
        p if p.starts_with("/console/") => Some(Area::Management),
        p if p.contains("/sinks/") => Some(Area::Consumers),
        p if p.starts_with("/v1/") => Some(Area::Management),
        _ => None,
    }
}

/// Refuses a request from an address its area's allow-list does not hold (under
/// `sluice server`; `sluice run` has no allow-lists).
pub(crate) async fn allow_list(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let (Some(c), Some(area)) = (&s.control, area_of(req.uri().path())) {
        if !c.access.allows(area, peer.ip()) {
            let which = match area {
                Area::Management => "management",
                Area::Consumers => "consumers",
            };
            return ApiError::Forbidden(format!(
                "address {} is not on the {which} allow-list: ask an admin to add it (PUT /v1/access)",
                peer.ip()
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// A pipeline's configuration: the TOML file's sections as JSON (see the README's
/// configuration reference). `pipeline.data_dir` and `server` are the server's and
/// refused here.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // Documentation of the body; the body is parsed into the real config.
struct PipelineConfig {
    pipeline: PipelineName,
    /// `url` (a PostgreSQL URL or key-value string), `tables` (`schema.table` or
    /// `schema.*`) and the optional source settings.
    #[schema(value_type = Object)]
    source: Value,
    /// Each sink: `name`, `type` and the type's own settings (described from each sink
    /// type's configuration; `GET /v1/sink-types` gives the same as form fields).
    #[schema(value_type = Vec<sluice_sinks::SinkConfig>)]
    sinks: Vec<Value>,
    #[schema(value_type = Option<Object>)]
    log: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct PipelineName {
    /// 1-50 characters of a-z, 0-9 and _; names the slot and publication.
    #[schema(pattern = "^[a-z0-9_]{1,50}$")]
    name: String,
}

#[derive(Serialize, ToSchema)]
struct PipelineList {
    pipelines: Vec<PipelineView>,
}

#[derive(Serialize, ToSchema)]
struct Deleted {
    deleted: String,
    /// What was dropped in PostgreSQL (the slot, the publication).
    dropped: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct NewToken {
    /// What or who it is for (1-200 characters).
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    name: String,
    scope: Scope,
}

#[derive(Serialize, ToSchema)]
struct TokenView {
    id: String,
    name: String,
    scope: Scope,
    scope_text: String,
    created_ms: i64,
    /// The secret: only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct TokenList {
    tokens: Vec<TokenView>,
}

#[derive(Serialize, ToSchema)]
struct Revoked {
    revoked: String,
}

#[utoipa::path(get, path = "/v1/sink-types", tag = "pipelines",
    summary = "The sink types this server has: each one's settings (name, kind, required, secret, choices), capabilities and JSON schema",
    responses((status = 200, body = Vec<sluice_sinks::SinkType>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn sink_types(caller: Caller) -> Result<Response, ApiError> {
    caller.may_read()?;
    Ok(reply(StatusCode::OK, sluice_sinks::sink_types()))
}

#[utoipa::path(get, path = "/v1/pipelines", tag = "pipelines",
    summary = "List pipelines with their state, slot lag and per-sink lag and throughput",
    responses((status = 200, body = PipelineList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list(State(s): State<Arc<AppState>>, caller: Caller) -> Result<Response, ApiError> {
    caller.may_read()?;
    let all = control(&s)?.list().await?;
    Ok(reply(StatusCode::OK, PipelineList { pipelines: all }))
}

#[utoipa::path(post, path = "/v1/pipelines", tag = "pipelines",
    summary = "Create a pipeline: validated, checked against the source and sinks, then started",
    request_body(content = PipelineConfig, content_type = "application/json"),
    responses((status = 201, body = PipelineView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let value = object(&body)?;
    let view = control(&s)?.put(value, None).await?;
    info!(pipeline = %view.name, "api: pipeline created");
    let target = AuditTarget(view.name.clone());
    let mut res = reply(StatusCode::CREATED, view);
    res.extensions_mut().insert(target);
    Ok(res)
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}", tag = "pipelines",
    summary = "A pipeline: its configuration (secrets redacted) and status",
    params(("pipeline" = String, Path, description = "The pipeline's name")),
    responses((status = 200, body = PipelineView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn show(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(pipeline): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_read()?;
    let view = control(&s)?.get(name(&pipeline)?).await?;
    Ok(reply(StatusCode::OK, view))
}

#[utoipa::path(put, path = "/v1/pipelines/{pipeline}", tag = "pipelines",
    summary = "Replace a pipeline's configuration (tables added are backfilled; sinks added, changed or removed)",
    params(("pipeline" = String, Path, description = "The pipeline's name")),
    request_body(content = PipelineConfig, content_type = "application/json"),
    responses((status = 200, body = PipelineView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
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
pub(crate) struct DeleteQuery {
    /// Keep the replication slot and publication (to re-create the pipeline later
    /// without losing changes, or to drop them by hand).
    #[serde(default)]
    keep_slot: bool,
}

#[utoipa::path(delete, path = "/v1/pipelines/{pipeline}", tag = "pipelines",
    summary = "Stop a pipeline, drop its slot and publication (unless keep_slot) and remove its data",
    params(("pipeline" = String, Path, description = "The pipeline's name"),
        ("keep_slot" = Option<bool>, Query, description = "Keep the slot and publication")),
    responses((status = 200, body = Deleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
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
    let deleted = Deleted {
        deleted: name.to_string(),
        dropped,
    };
    Ok(reply(StatusCode::OK, deleted))
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/pause", tag = "pipelines",
    summary = "Stop a pipeline until resumed (kept across restarts); its slot holds the changes meanwhile",
    params(("pipeline" = String, Path, description = "The pipeline's name")),
    responses((status = 200, body = PipelineView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn pause(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(pipeline): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let view = control(&s)?.set_paused(name(&pipeline)?, true).await?;
    Ok(reply(StatusCode::OK, view))
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/resume", tag = "pipelines",
    summary = "Start a paused pipeline again",
    params(("pipeline" = String, Path, description = "The pipeline's name")),
    responses((status = 200, body = PipelineView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn resume(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(pipeline): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let view = control(&s)?.set_paused(name(&pipeline)?, false).await?;
    Ok(reply(StatusCode::OK, view))
}

fn token_view(t: &sluice_control::TokenInfo, token: Option<String>) -> TokenView {
    TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        scope: t.scope.clone(),
        scope_text: scope_name(&t.scope),
        created_ms: t.created_ms,
        token,
    }
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    summary = "List tokens (never their secrets)",
    responses((status = 200, body = TokenList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn tokens(State(s): State<Arc<AppState>>, caller: Caller) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let tokens = control(&s)?
        .tokens
        .list()
        .iter()
        .map(|t| token_view(t, None))
        .collect();
    Ok(reply(StatusCode::OK, TokenList { tokens }))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    summary = "Create a token; its secret is in this answer only",
    request_body(content = NewToken, content_type = "application/json"),
    responses((status = 201, body = TokenView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
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
    let mut res = reply(StatusCode::CREATED, token_view(&info, Some(secret)));
    res.extensions_mut().insert(AuditTarget(info.id.clone()));
    Ok(res)
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    summary = "Revoke a token, effective at once (the last admin token cannot be revoked)",
    params(("id" = String, Path, description = "The token's id (not its secret)")),
    responses((status = 200, body = Revoked), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
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
    Ok(reply(StatusCode::OK, Revoked { revoked: gone.id }))
}

/// The OpenAPI 3.1 document of `routes`: what the handlers declare, with the bearer
/// scheme and the server's identity.
pub(crate) fn document(mut api: utoipa::openapi::OpenApi) -> String {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    api.info.title = "Sluice management API".into();
    api.info.description = Some(
        "Pipelines, tokens and the sinks' consumer endpoints of `sluice server`. Every route takes `Authorization: Bearer <token>`; SSE also takes `?access_token=`.".into(),
    );
    api.info.version = env!("CARGO_PKG_VERSION").into();
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("A token of the server: admin, read or consume"))
                .build(),
        ),
    );
    api.to_json().unwrap_or_else(|_| "{}".into())
}

/// Parses a body into `T`, or a 400 saying what is wrong.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_value(object(body)?)
        .map_err(|e| ApiError::BadRequest(format!("the body: {e}")))
}

#[derive(Serialize, ToSchema)]
struct Findings {
    /// Whether every check passed (a failed one that is not `blocking` would let a
    /// pipeline start and wait for it, e.g. a sink that is down).
    ok: bool,
    findings: Vec<FindingView>,
}

impl Findings {
    fn of(findings: Vec<FindingView>) -> Findings {
        Findings {
            ok: findings.iter().all(|f| f.ok),
            findings,
        }
    }
}

#[utoipa::path(post, path = "/v1/sources/test", tag = "sources",
    summary = "Run the source checks of `sluice check` (connection, wal_level, REPLICATION, free slots, tables) with their fixes",
    request_body(content = SourceRequest, content_type = "application/json"),
    responses((status = 200, body = Findings), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn test_source(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    control(&s)?;
    let req: SourceRequest = parse(&body)?;
    Ok(reply(
        StatusCode::OK,
        Findings::of(probe::test(&req).await?),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DiscoverRequest {
    /// A PostgreSQL URL or key-value connection string.
    url: String,
}

#[derive(Serialize, ToSchema)]
struct Tables {
    tables: Vec<TableInfo>,
}

#[utoipa::path(post, path = "/v1/sources/discover", tag = "sources",
    summary = "The tables a source offers: columns, primary key, replica identity, estimated rows, whether the role may read them",
    request_body(content = DiscoverRequest, content_type = "application/json"),
    responses((status = 200, body = Tables), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
async fn discover_source(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    control(&s)?;
    let req: DiscoverRequest = parse(&body)?;
    let tables = probe::discover(&req.url).await?;
    Ok(reply(StatusCode::OK, Tables { tables }))
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/tables", tag = "pipelines",
    summary = "The tables the pipeline's source offers (as /v1/sources/discover, with the stored credentials)",
    params(("pipeline" = String, Path, description = "The pipeline's name")),
    responses((status = 200, body = Tables), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
async fn pipeline_tables(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(pipeline): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let handle = control(&s)?;
    let url = handle
        .source_url(name(&pipeline)?)
        .ok_or_else(|| ApiError::NotFound(format!("no pipeline named {pipeline:?}")))?;
    let tables = probe::discover(&url).await?;
    Ok(reply(StatusCode::OK, Tables { tables }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct VerifySink {
    /// The sink as a pipeline would have it: `name`, `type` and its settings.
    #[schema(value_type = Object)]
    sink: Value,
    /// The `schema.table`s it would take.
    #[serde(default)]
    tables: Vec<String>,
    /// The source's database name (part of Redis keys).
    #[serde(default)]
    database: Option<String>,
}

#[utoipa::path(post, path = "/v1/sinks/verify", tag = "sinks",
    summary = "Check a sink before creating it: reachable, authenticated, writable (the check every start runs)",
    request_body(content = VerifySink, content_type = "application/json"),
    responses((status = 200, body = Findings), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn verify_sink(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let handle = control(&s)?;
    let req: VerifySink = parse(&body)?;
    let base = handle.registry().data_dir("verify");
    let findings = probe::verify_sink(
        req.sink,
        &req.tables,
        req.database.as_deref().unwrap_or("postgres"),
        &base,
    )
    .await?;
    Ok(reply(StatusCode::OK, Findings::of(findings)))
}

#[utoipa::path(get, path = "/v1/access", tag = "access",
    summary = "The IP allow-lists (null: everyone)",
    responses((status = 200, body = AllowLists), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_access(State(s): State<Arc<AppState>>, caller: Caller) -> Result<Response, ApiError> {
    caller.may_read()?;
    Ok(reply(StatusCode::OK, control(&s)?.access.lists()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AccessChange {
    /// CIDR blocks or addresses that may manage; null: everyone.
    management: Option<Vec<String>>,
    /// CIDR blocks or addresses that may consume; null: everyone.
    consumers: Option<Vec<String>>,
    /// Apply even if it shuts out the address making the change.
    #[serde(default)]
    force: bool,
}

#[utoipa::path(put, path = "/v1/access", tag = "access",
    summary = "Replace the IP allow-lists, effective at once; refused if it would shut out the caller, unless forced",
    request_body(content = AccessChange, content_type = "application/json"),
    responses((status = 200, body = AllowLists), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn put_access(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.may_admin()?;
    let handle = control(&s)?;
    let change: AccessChange = parse(&body)?;
    let lists = AllowLists {
        management: change.management,
        consumers: change.consumers,
    };
    let invalid = |problems: Vec<AccessError>| ApiError::Invalid {
        error: "the allow-lists are not valid: fix every problem listed".into(),
        problems: problems.iter().map(ToString::to_string).collect(),
    };
    if !Access::would_allow(&lists, peer.ip()).map_err(invalid)? && !change.force {
        return Err(ApiError::Conflict(format!(
            "this management list would shut out your address {}: include it, or send force: true",
            peer.ip()
        )));
    }
    handle.access.set(lists.clone()).map_err(invalid)?;
    info!("api: allow-lists changed");
    Ok(reply(StatusCode::OK, lists))
}
