//! Errors of the PostgreSQL side, classified once (see [`PgError::class`]).

use sluice_core::{Classify, ErrorClass};

/// An ErrorResponse from the server, without row data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

/// Anything that went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("server error: {0}")]
    Server(ServerError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error(transparent)]
    ConnInfo(#[from] crate::conninfo::ConnInfoError),
    #[error("{0}")]
    Definite(String),
    #[error("pgoutput: {0}")]
    Decode(sluice_core::BoxError),
}

impl PgError {
    /// Transient errors are retried with backoff; definite ones stop the pipeline.
    pub fn class(&self) -> ErrorClass {
        match self {
            PgError::Connect { .. } | PgError::Io(_) | PgError::Protocol(_) => {
                ErrorClass::Transient
            }
            PgError::Server(e) => server_error_class(&e.code),
            PgError::Tls(_) | PgError::Auth(_) | PgError::ConnInfo(_) | PgError::Definite(_) => {
                ErrorClass::Definite
            }
            // A stream we cannot decode will not decode better after a reconnect.
            PgError::Decode(_) => ErrorClass::Definite,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

impl Classify for PgError {
    fn class(&self) -> ErrorClass {
        PgError::class(self)
    }
}

/// Into the one error policy, keeping the class and the error as its cause.
impl From<PgError> for sluice_core::Fault {
    fn from(e: PgError) -> sluice_core::Fault {
        sluice_core::Fault::of("postgres", e)
    }
}

/// SQLSTATE insufficient_privilege.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Classes by SQLSTATE: connection problems, shutdowns, resource exhaustion, an object
/// (a slot) held by another process and the server's internal and I/O errors can pass;
/// privileges, missing objects and bad configuration cannot.
fn server_error_class(code: &str) -> ErrorClass {
    match code {
        // object_in_use (slot active elsewhere), lock_not_available
        "55006" | "55P03" => ErrorClass::Transient,
        // too_many_connections, configuration_limit_exceeded (no free wal sender/slot)
        "53300" | "53400" => ErrorClass::Transient,
        // admin_shutdown, crash_shutdown, cannot_connect_now, idle_session_timeout
        "57P01" | "57P02" | "57P03" | "57P05" => ErrorClass::Transient,
        c if c.starts_with("08") => ErrorClass::Transient,
        // serialization / deadlock
        "40001" | "40P01" => ErrorClass::Transient,
        // internal_error (e.g. in the walsender's reorder buffer), system_error, io_error,
        // query_canceled: a new session starts afresh from the slot.
        "XX000" | "58000" | "58030" | "57014" => ErrorClass::Transient,
        _ => ErrorClass::Definite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_can_pass_reconnect_and_the_others_stop() {
        for code in ["XX000", "58030", "57P01", "55006", "08006", "53300"] {
            assert_eq!(server_error_class(code), ErrorClass::Transient, "{code}");
        }
        // undefined_object (slot or publication missing), insufficient_privilege,
        // invalid_password, object_not_in_prerequisite_state (an invalidated slot).
        for code in ["42704", "42501", "28P01", "55000"] {
            assert_eq!(server_error_class(code), ErrorClass::Definite, "{code}");
        }
    }
}
