//! Error classes. Every error that crosses a worker boundary is classified exactly once,
//! where it is created, as transient (the worker retries with backoff) or definite (the
//! worker stops and the operator is told what to do).

/// How the supervisor treats an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying: connection loss, a server restarting, a slot still held by a
    /// process that is going away.
    Transient,
    /// Retrying cannot help until someone changes something; stop with a hint.
    Definite,
}
