//! The one backoff every retry loop uses (source reconnects, backfills, sinks, the
//! delivery engine, the outbox cleaner): an exponential bound, capped, with full jitter —
//! a uniform draw below the bound — so instances and sinks retrying together spread out
//! instead of retrying in step.

use std::time::Duration;

/// How waits grow.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The first wait's upper bound.
    pub initial: Duration,
    /// No wait's upper bound is longer.
    pub max: Duration,
    /// Growth of the bound per failure.
    pub multiplier: f64,
}

impl Backoff {
    /// Doubling from `initial` up to `max`.
    pub const fn doubling(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            multiplier: 2.0,
        }
    }

    /// The upper bound of the wait after `failed` failures (1 for the first).
    pub fn bound(&self, failed: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(failed.saturating_sub(1).min(1000) as i32);
        // Capped before it is a Duration: a product past Duration's range would panic.
        let secs = (self.initial.as_secs_f64() * exp.min(1e9)).min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }

    /// The wait after `failed` failures: full jitter below [`Self::bound`].
    pub fn delay(&self, failed: u32) -> Duration {
        self.bound(failed).mul_f64(fastrand::f64())
    }

    /// A counter of failures that yields each wait in turn.
    pub fn start(&self) -> Retrying {
        Retrying {
            backoff: self.clone(),
            failed: 0,
        }
    }
}

/// Failures so far of one retry loop.
#[derive(Debug, Clone)]
pub struct Retrying {
    backoff: Backoff,
    failed: u32,
}

impl Retrying {
    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failed = self.failed.saturating_add(1);
        self.backoff.delay(self.failed)
    }

    /// After a success: the next failure waits as little as the first.
    pub fn reset(&mut self) {
        self.failed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_below_a_growing_capped_bound() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        assert_eq!(b.bound(1), Duration::from_millis(100));
        assert_eq!(b.bound(3), Duration::from_millis(400));
        assert_eq!(b.bound(30), Duration::from_secs(1));
        assert_eq!(b.bound(u32::MAX), Duration::from_secs(1));
        let mut r = b.start();
        for _ in 0..200 {
            assert!(r.next_delay() <= Duration::from_secs(1));
        }
        r.reset();
        assert!(r.next_delay() <= Duration::from_millis(100));
        let draws: std::collections::BTreeSet<_> = (0..50).map(|_| b.delay(3)).collect();
        assert!(draws.len() > 10, "full jitter draws spread out");
    }
}
