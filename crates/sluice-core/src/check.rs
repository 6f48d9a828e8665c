//! Findings of a preflight or health check: what was checked, whether it passed, and for
//! a failure what the operator should do. Source, sinks and the CLI all report in this
//! one shape, so `sluice check` prints them alike.

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    /// What to do, for a failure.
    pub fix: Option<String>,
    /// A failure that `sluice run` cannot wait out (as it waits out a busy slot or a
    /// server that is down).
    pub blocking: bool,
}

impl Finding {
    /// A check that passed.
    pub fn pass(what: impl Into<String>) -> Finding {
        Finding {
            ok: true,
            what: what.into(),
            fix: None,
            blocking: false,
        }
    }

    /// A failure nothing but the operator can fix: `sluice run` refuses to start.
    pub fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            ok: false,
            what: what.into(),
            fix: Some(fix.into()),
            blocking: true,
        }
    }

    /// A failure that may pass by itself (a busy slot, a server still starting).
    pub fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            blocking: false,
            ..Finding::fail(what, fix)
        }
    }
}
