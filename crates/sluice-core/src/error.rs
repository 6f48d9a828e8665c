//! The one error policy. Every error that crosses a worker boundary is classified exactly
//! once, where it is created, as transient (the worker retries with [`crate::Backoff`]) or
//! definite (the worker stops and the operator is told what to do). Source, sinks and the
//! delivery engine all speak this vocabulary: an error type of theirs implements
//! [`Classify`], and what crosses into the supervisor is a [`Fault`].

/// Any error, boxed, as a `#[source]`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the supervisor treats an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying: connection loss, a server restarting, a slot still held by a
    /// process that is going away.
    Transient,
    /// Retrying cannot help until someone changes something; stop with a hint.
    Definite,
}

/// An error that knows its class.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

/// A classified failure: what happened, its class, the operator's fix for a definite one,
/// and the error underneath. Its text — the message, the cause's text, the fix — never
/// holds row values or secrets. The cause is in the text because a Fault is usually
/// logged on its own; it is also the `source()`, for code that inspects it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}{}{}",
    source.as_ref().map(|s| format!(": {s}")).unwrap_or_default(),
    fix.as_deref().map(|f| format!(" (fix: {f})")).unwrap_or_default())]
pub struct Fault {
    pub class: ErrorClass,
    pub message: String,
    pub fix: Option<String>,
    #[source]
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl Fault {
    /// Worth retrying.
    pub fn transient(message: impl Into<String>) -> Fault {
        Fault {
            class: ErrorClass::Transient,
            message: message.into(),
            fix: None,
            source: None,
        }
    }

    /// Retrying cannot help: `fix` says what the operator must change.
    pub fn definite(message: impl Into<String>, fix: impl Into<String>) -> Fault {
        Fault {
            class: ErrorClass::Definite,
            message: message.into(),
            fix: Some(fix.into()),
            source: None,
        }
    }

    /// Definite, where the message says it all.
    pub fn fatal(message: impl Into<String>) -> Fault {
        Fault {
            class: ErrorClass::Definite,
            message: message.into(),
            fix: None,
            source: None,
        }
    }

    /// An error of another crate that knows its class, as the cause of `message`.
    pub fn of<E: Classify + std::error::Error + Send + Sync + 'static>(
        message: impl Into<String>,
        e: E,
    ) -> Fault {
        Fault {
            class: e.class(),
            message: message.into(),
            fix: None,
            source: None,
        }
        .caused_by(e)
    }

    /// Keeps `source` as the cause.
    pub fn caused_by(mut self, source: impl Into<BoxError>) -> Fault {
        self.source = Some(std::sync::Arc::from(source.into()));
        self
    }

    /// Puts `context` (e.g. `sink "cache"`) before the message.
    pub fn within(mut self, context: impl std::fmt::Display) -> Fault {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
}

/// Local I/O (files, threads): definite, the message says what failed.
impl From<std::io::Error> for Fault {
    fn from(e: std::io::Error) -> Fault {
        Fault::fatal("I/O").caused_by(e)
    }
}

/// Equal when they say the same (the cause is not compared).
impl PartialEq for Fault {
    fn eq(&self, other: &Fault) -> bool {
        self.class == other.class && self.message == other.message && self.fix == other.fix
    }
}

impl Eq for Fault {}

impl Classify for Fault {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_says_its_fix_and_keeps_its_cause() {
        let io = std::io::Error::other("refused");
        let f = Fault::definite("redis: wrong password", "set the password in url")
            .caused_by(io)
            .within("sink \"cache\"");
        assert_eq!(
            f.to_string(),
            "sink \"cache\": redis: wrong password: refused (fix: set the password in url)"
        );
        assert_eq!(f.class(), ErrorClass::Definite);
        assert!(std::error::Error::source(&f).is_some());
        assert!(Fault::transient("down").is_transient());
    }
}
