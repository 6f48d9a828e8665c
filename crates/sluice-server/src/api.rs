//! What every data endpoint shares: the bearer-token check and the sink a path names, as
//! extractors, and typed API errors answered as `{"error": "..."}` with their status.
//!
//! Invariants: no handler runs for a request without an accepted token (when tokens are
//! configured); error texts name what is wrong and what to do, never a token or a row.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sluice_pipeline::{Endpoints, Lookup};

use crate::AppState;

/// An API error: its status and its message.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ApiError::Unauthorized => {
                "a bearer token is required: Authorization: Bearer <token> (one of [server] tokens)"
            }
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m) => m,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut text = json!({ "error": self.message() }).to_string();
        text.push('\n');
        (
            self.status(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            text,
        )
            .into_response()
    }
}

impl From<Lookup> for ApiError {
    fn from(l: Lookup) -> ApiError {
        match l {
            Lookup::Ambiguous(..) => ApiError::Conflict(l.to_string()),
            _ => ApiError::NotFound(l.to_string()),
        }
    }
}

/// A request that carries an accepted token (or any request, with auth off).
pub struct Authorized;

impl FromRequestParts<Arc<AppState>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match state.authorized(&parts.headers) {
            true => Ok(Authorized),
            false => Err(ApiError::Unauthorized),
        }
    }
}

/// The sink a path names (`/v1/sinks/{name}` or `/v1/pipelines/{pipeline}/sinks/{name}`),
/// in the running pipeline that serves it; authorized first.
pub struct SinkRef {
    pub name: String,
    pub endpoints: Arc<Endpoints>,
}

impl FromRequestParts<Arc<AppState>> for SinkRef {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        Authorized::from_request_parts(parts, state).await?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let name = params
            .get("name")
            .cloned()
            .ok_or_else(|| ApiError::BadRequest("no sink in the path".into()))?;
        let endpoints = state
            .directory
            .find(params.get("pipeline").map(String::as_str), &name)?;
        Ok(SinkRef { name, endpoints })
    }
}
