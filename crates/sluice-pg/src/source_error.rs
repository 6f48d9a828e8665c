//! [`SourceError`]: what stops the source, for the source worker and the snapshot and
//! backfill workers alike (a module of its own, so those do not import the worker).
//!
//! Invariant: its class is its cause's (PostgreSQL's error class; the state file and the
//! output are definite).

use sluice_core::ErrorClass;

use crate::state::StateError;
use crate::PgError;

/// A failure that stops the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The pipeline's state file (plans, the slot's record) failed: local, definite.
    #[error(transparent)]
    State(#[from] StateError),
    #[error("output failed: {0}")]
    Output(Box<dyn std::error::Error + Send + Sync>),
}

impl sluice_core::Classify for SourceError {
    fn class(&self) -> ErrorClass {
        SourceError::class(self)
    }
}

impl SourceError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SourceError::Pg(e) => e.class(),
            SourceError::State(e) => sluice_core::Classify::class(e),
            SourceError::Output(_) => ErrorClass::Definite,
        }
    }
}

/// Into the one error policy, keeping the class and the error as its cause.
impl From<SourceError> for sluice_core::Fault {
    fn from(e: SourceError) -> sluice_core::Fault {
        sluice_core::Fault::of("source", e)
    }
}

impl From<std::io::Error> for SourceError {
    fn from(e: std::io::Error) -> Self {
        SourceError::Pg(PgError::Io(e))
    }
}
