//! How a sink is driven: concurrency, batching, rate, retries, and what happens when the
//! retries of a record are exhausted.

use std::time::Duration;

use serde::Deserialize;

/// What to do with a key whose head record ran out of retries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Hold the key's records in the waiting room until an operator redrives or skips
    /// them; the key's later records join them, other keys go on.
    #[default]
    Park,
    /// Put the record in the dead letters and go on with the key's next record.
    DeadLetter,
}

/// Retries of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// The first wait's upper bound.
    pub initial: Duration,
    /// No wait's upper bound is longer.
    pub max: Duration,
    /// Growth of the bound per attempt.
    pub multiplier: f64,
    /// Attempts in all, the first included (0: no limit).
    pub max_attempts: u32,
    /// Time since the first attempt after which no retry is made (`None`: no limit).
    pub max_age: Option<Duration>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: 10,
            max_age: Some(Duration::from_secs(3600)),
        }
    }
}

impl Retry {
    /// The wait before attempt `failed + 1`, after `failed` failures: full jitter, a
    /// uniform draw below the exponential bound, so a crowd of retries spreads out.
    pub fn backoff(&self, failed: u32) -> Duration {
        sluice_core::Backoff {
            initial: self.initial,
            max: self.max,
            multiplier: self.multiplier,
        }
        .delay(failed)
    }

    /// Whether a record that failed `failed` times, first tried `age` ago, gets no more
    /// attempts.
    pub fn exhausted(&self, failed: u32, age: Duration) -> bool {
        (self.max_attempts > 0 && failed >= self.max_attempts)
            || self.max_age.is_some_and(|m| age >= m)
    }
}

/// How one sink is driven.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Deliveries (requests) in flight at once.
    pub concurrency: usize,
    /// Records per delivery (distinct keys, one route).
    pub batch: usize,
    /// Records per second at most (`None`: no limit).
    pub rate_limit: Option<f64>,
    pub retry: Retry,
    pub on_exhausted: OnExhausted,
    /// Records read from the log and not yet finished, at most: bounds memory while keys
    /// retry. Reading pauses at the limit.
    pub window: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            concurrency: 16,
            batch: 1,
            rate_limit: None,
            retry: Retry::default(),
            on_exhausted: OnExhausted::Park,
            window: 20_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_a_growing_capped_bound() {
        let r = Retry {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: 5,
            max_age: None,
        };
        for _ in 0..200 {
            assert!(r.backoff(1) <= Duration::from_millis(100));
            assert!(r.backoff(3) <= Duration::from_millis(400));
            assert!(r.backoff(30) <= Duration::from_secs(1));
        }
        // Jitter: not always the bound.
        let draws: std::collections::BTreeSet<_> = (0..50).map(|_| r.backoff(3)).collect();
        assert!(draws.len() > 10);
        assert!(!r.exhausted(4, Duration::from_secs(999)));
        assert!(r.exhausted(5, Duration::ZERO));
        let aged = Retry {
            max_attempts: 0,
            max_age: Some(Duration::from_secs(10)),
            ..r
        };
        assert!(!aged.exhausted(1000, Duration::from_secs(9)));
        assert!(aged.exhausted(1, Duration::from_secs(10)));
    }
}
