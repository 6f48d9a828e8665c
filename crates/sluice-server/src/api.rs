//! What every endpoint shares: who the caller is (its token and scope) and the sink a path
//! names, as extractors, and typed API errors answered as `{"error": "..."}` with their
//! status.
//!
//! Invariants: no handler runs for a request without an accepted token (when tokens are
//! in force), nor for a token whose scope does not cover it; error texts name what is
//! wrong and what to do, never a token or a row.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_control::{ControlError, FindingView, Handle, Scope, TokenInfo};
use sluice_pipeline::{Endpoints, Lookup};
use utoipa::ToSchema;

use crate::AppState;

/// An API error: its status and its message.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    /// The token is good but its scope does not cover this.
    Forbidden(String),
    BadRequest(String),
    /// A body with problems, each naming the setting and what to change.
    Invalid {
        error: String,
        problems: Vec<String>,
    },
    /// The checks against the source and the sinks failed: each finding has its fix.
    Refused(Vec<FindingView>),
    NotFound(String),
    Conflict(String),
    /// A server the request needs could not be reached or answered with an error.
    Upstream(String),
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) | ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ApiError::Unauthorized => {
                "a valid token is required: Authorization: Bearer <token> (or ?access_token=<token> for EventSource)"
            }
            ApiError::Refused(_) => {
                "the checks against the source and the sinks failed: each failed finding has its fix"
            }
            ApiError::Invalid { error: m, .. }
            | ApiError::Forbidden(m)
            | ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Upstream(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m) => m,
        }
    }

    /// The answer's body, as the API document describes it.
    fn body(self) -> ErrorBody {
        let error = self.message().to_owned();
        match self {
            ApiError::Invalid { problems, .. } => ErrorBody {
                error,
                problems: Some(problems),
                findings: None,
            },
            ApiError::Refused(findings) => ErrorBody {
                error,
                problems: None,
                findings: Some(findings),
            },
            _ => ErrorBody::new(error),
        }
    }
}

/// Every error answer of the API: what is wrong and what to do; with the problems of a
/// body (400) or the failed checks (422) when there are.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<FindingView>>,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            problems: None,
            findings: None,
        }
    }
}

/// A JSON response.
pub(crate) fn reply(status: StatusCode, body: impl serde::Serialize) -> Response {
    let mut text = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        reply(status, self.body())
    }
}

/// Answers the framework's own refusals (a body over the size limit, an unknown route
/// or method, a malformed header) in the API's error body, like every other error: a
/// client reads one shape. Answers that are JSON already pass untouched.
pub(crate) async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let api = req.uri().path().starts_with("/v1/");
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !api || !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than {} MiB: send a smaller one",
            BODY_LIMIT >> 20
        ),
        StatusCode::NOT_FOUND => "no such route: see /v1/openapi.json for the routes".into(),
        StatusCode::METHOD_NOT_ALLOWED => {
            "this route does not take that method: see /v1/openapi.json".into()
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "send the body as application/json".into(),
        s => format!(
            "the request was refused ({}): see /v1/openapi.json for what each route takes",
            s.canonical_reason().unwrap_or("error")
        ),
    };
    let mut out = reply(status, ErrorBody::new(error));
    // Keep what tells a client how to go on (Allow, WWW-Authenticate, Retry-After).
    for (k, v) in res.headers() {
        if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// The largest request body taken (axum's default).
pub(crate) const BODY_LIMIT: usize = 2 << 20;

impl From<Lookup> for ApiError {
    fn from(l: Lookup) -> ApiError {
        match l {
            Lookup::Ambiguous(..) => ApiError::Conflict(l.to_string()),
            _ => ApiError::NotFound(l.to_string()),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::NotFound(_) => ApiError::NotFound(e.to_string()),
            ControlError::Conflict(m) => ApiError::Conflict(m),
            ControlError::Invalid(problems) => ApiError::Invalid {
                error: "the configuration is not valid: fix every problem listed".into(),
                problems,
            },
            ControlError::Refused(findings) => ApiError::Refused(findings),
            ControlError::Upstream(m) => ApiError::Upstream(m),
            ControlError::SlotNotDropped { .. } => ApiError::Upstream(e.to_string()),
            ControlError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// The controller of `sluice server`, or a 404 under `sluice run`.
pub(crate) fn control(state: &AppState) -> Result<&Handle, ApiError> {
    state.control.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "the management API is served by `sluice server`; `sluice run` is configured by its files".into(),
        )
    })
}

/// Who is calling.
pub enum Caller {
    /// Authentication is off, or the request carries one of `sluice run`'s configured
    /// tokens (which may do everything that mode offers).
    Open,
    /// A token of `sluice server`.
    Token(TokenInfo),
}

impl Caller {
    fn scope_error(&self, needs: &str) -> ApiError {
        let has = match self {
            Caller::Open => "none".to_string(),
            Caller::Token(t) => format!("{:?} ({})", t.name, scope_name(&t.scope)),
        };
        ApiError::Forbidden(format!(
            "this needs {needs}; the token presented is {has}: use a token with that scope (POST /v1/tokens with an admin token creates one)"
        ))
    }

    /// May read the management API.
    pub fn may_read(&self) -> Result<(), ApiError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(t) if matches!(t.scope, Scope::Admin | Scope::Read) => Ok(()),
            _ => Err(self.scope_error("an admin or read-only token")),
        }
    }

    /// Holds a read-only token.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Caller::Token(t) if t.scope == Scope::Read)
    }

    /// May change anything.
    pub fn may_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(t) if t.scope == Scope::Admin => Ok(()),
            _ => Err(self.scope_error("an admin token")),
        }
    }

    /// May consume sink `sink` of `pipeline`.
    pub fn may_consume(&self, pipeline: &str, sink: &str) -> Result<(), ApiError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(t) => match &t.scope {
                Scope::Admin => Ok(()),
                Scope::Consume {
                    pipeline: p,
                    sink: s,
                } if p == pipeline && s == sink => Ok(()),
                _ => Err(self.scope_error(&format!(
                    "an admin token or one that consumes sink {sink:?} of pipeline {pipeline:?}"
                ))),
            },
        }
    }
}

pub fn scope_name(s: &Scope) -> String {
    match s {
        Scope::Admin => "admin".into(),
        Scope::Read => "read".into(),
        Scope::Consume { pipeline, sink } => format!("consume {pipeline}/{sink}"),
    }
}

/// The token a request carries: `Authorization: Bearer`, or the `access_token` query
/// parameter (browsers' EventSource cannot set headers).
pub(crate) fn presented(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    if let Some(t) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_string());
    }
    uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_string())
    })
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match &state.control {
            Some(control) => presented(&parts.headers, &parts.uri)
                .and_then(|t| control.tokens.authenticate(&t))
                .map(Caller::Token)
                .ok_or(ApiError::Unauthorized),
            None => match state.authorized(presented(&parts.headers, &parts.uri).as_deref()) {
                true => Ok(Caller::Open),
                false => Err(ApiError::Unauthorized),
            },
        }
    }
}

/// The sink a path names (`/v1/sinks/{name}` or `/v1/pipelines/{pipeline}/sinks/{name}`),
/// in the running pipeline that serves it; the caller may consume it.
pub struct SinkRef {
    /// The pipeline serving it.
    pub pipeline: String,
    pub name: String,
    pub endpoints: Arc<Endpoints>,
    /// Whether the caller may see row values: a read-only token may look at a sink's
    /// waiting room and dead letters, with the records' values hidden.
    pub reveal: bool,
}

impl FromRequestParts<Arc<AppState>> for SinkRef {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let name = params
            .get("name")
            .cloned()
            .ok_or_else(|| ApiError::BadRequest("no sink in the path".into()))?;
        let (pipeline, endpoints) = state
            .directory
            .find(params.get("pipeline").map(String::as_str), &name)?;
        let reveal = match caller.may_consume(&pipeline, &name) {
            Ok(()) => true,
            Err(_)
                if caller.is_read_only()
                    && parts.method == axum::http::Method::GET
                    && !parts.uri.path().ends_with("/events") =>
            {
                false
            }
            Err(e) => return Err(e),
        };
        Ok(SinkRef {
            pipeline,
            name,
            endpoints,
            reveal,
        })
    }
}
