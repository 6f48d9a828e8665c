//! The `delivery` table of a sink driven by the engine (webhook, pull): concurrency, rate,
//! retries and what happens when they run out. Pure: [`DeliveryConfig::validate`] does no
//! I/O, [`DeliveryConfig::policy`] is what the engine runs with.

use std::time::Duration;

use crate::{OnExhausted, Policy, Retry};
use serde::Deserialize;

/// Delivery settings of one sink.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Deliveries in flight at once (requests, or records on offer to pull consumers).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Records per second at most (default: no limit).
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Upper bound of the first retry's wait, in milliseconds (full jitter below it).
    #[serde(default = "default_initial_ms")]
    pub retry_initial_ms: u64,
    /// No retry waits longer than this, in milliseconds.
    #[serde(default = "default_max_ms")]
    pub retry_max_ms: u64,
    /// Growth of the wait's bound per attempt.
    #[serde(default = "default_multiplier")]
    pub retry_multiplier: f64,
    /// Attempts per record, the first included, before `on_exhausted` (0: no limit).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Seconds after a record's first attempt when retries stop (0: no limit).
    #[serde(default = "default_age")]
    pub max_age_secs: u64,
    /// `"park"` (default: hold the key's records in the waiting room for an operator) or
    /// `"dead_letter"` (dead-letter the record, go on with the key).
    #[serde(default)]
    pub on_exhausted: OnExhausted,
    /// Records read from the log and not yet finished, at most (bounds memory).
    #[serde(default = "default_window")]
    pub window: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: default_concurrency(),
            rate_limit: None,
            retry_initial_ms: default_initial_ms(),
            retry_max_ms: default_max_ms(),
            retry_multiplier: default_multiplier(),
            max_attempts: default_attempts(),
            max_age_secs: default_age(),
            on_exhausted: OnExhausted::Park,
            window: default_window(),
        }
    }
}

fn default_concurrency() -> usize {
    16
}
fn default_initial_ms() -> u64 {
    100
}
fn default_max_ms() -> u64 {
    30_000
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_attempts() -> u32 {
    10
}
fn default_age() -> u64 {
    3600
}
fn default_window() -> usize {
    20_000
}

impl DeliveryConfig {
    /// Problems, each naming the setting.
    pub fn validate(&self, sink: &str, errs: &mut Vec<String>) {
        if self.concurrency == 0 {
            errs.push(format!(
                "sink {sink:?}: delivery.concurrency must be at least 1"
            ));
        }
        if self.window < self.concurrency {
            errs.push(format!(
                "sink {sink:?}: delivery.window must be at least delivery.concurrency"
            ));
        }
        if self.rate_limit.is_some_and(|r| r.is_nan() || r < 0.001) {
            errs.push(format!(
                "sink {sink:?}: delivery.rate_limit must be at least 0.001 (records per second)"
            ));
        }
        if self.retry_multiplier.is_nan() || self.retry_multiplier < 1.0 {
            errs.push(format!(
                "sink {sink:?}: delivery.retry_multiplier must be at least 1"
            ));
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            errs.push(format!("sink {sink:?}: delivery.retry_initial_ms must be at least 1 and at most retry_max_ms"));
        }
    }

    pub fn policy(&self, batch: usize) -> Policy {
        Policy {
            concurrency: self.concurrency,
            batch: batch.max(1),
            rate_limit: self.rate_limit,
            retry: Retry {
                initial: Duration::from_millis(self.retry_initial_ms),
                max: Duration::from_millis(self.retry_max_ms),
                multiplier: self.retry_multiplier,
                max_attempts: self.max_attempts,
                max_age: (self.max_age_secs > 0).then(|| Duration::from_secs(self.max_age_secs)),
            },
            on_exhausted: self.on_exhausted,
            window: self.window,
        }
    }
}
