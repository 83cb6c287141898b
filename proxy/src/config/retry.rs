//! When to try a transaction again after a temporary failure.
//!
//! Same rule as the original Koukan: the wait grows with the transaction's
//! age (`age × backoff_factor`, clamped to `[min_attempt_time,
//! max_attempt_time]`), so a young message is retried quickly and an old
//! one rarely; it gives up after `max_attempts` or once the next attempt
//! would fall past `deadline`. Unlike the original, the wait carries
//! jitter so transactions that failed together (an upstream outage) do not
//! come back together.

use std::time::{Duration, SystemTime};

use koukan_storage::{FinalReason, NextStep};

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub min_attempt_time: Duration,
    pub max_attempt_time: Duration,
    pub backoff_factor: f64,
    pub deadline: Duration,
    /// Relative spread of the wait: 0.1 means ±10 %.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// The original's defaults.
    fn default() -> Self {
        Self {
            max_attempts: 30,
            min_attempt_time: Duration::from_secs(60),
            max_attempt_time: Duration::from_secs(3600),
            backoff_factor: 1.5,
            deadline: Duration::from_secs(86400),
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// What follows a temporary failure of attempt number `attempt`
    /// (1-based) at `now`, for a transaction created at `created`.
    /// `unit` is a uniform random number in [0, 1) (passed in so tests are
    /// exact).
    pub fn after_temp_failure(
        &self,
        attempt: u32,
        created: SystemTime,
        now: SystemTime,
        unit: f64,
    ) -> NextStep {
        if attempt >= self.max_attempts {
            return NextStep::Final {
                reason: FinalReason::RetryMaxAttempts,
            };
        }
        let age = now.duration_since(created).unwrap_or_default();
        let wait = age.mul_f64(self.backoff_factor.max(0.0)).clamp(
            self.min_attempt_time,
            self.max_attempt_time.max(self.min_attempt_time),
        );
        let spread = 1.0 + self.jitter.clamp(0.0, 1.0) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        let wait = wait.mul_f64(spread);
        let next = now + wait;
        if next.duration_since(created).unwrap_or_default() > self.deadline {
            return NextStep::Final {
                reason: FinalReason::RetryDeadline,
            };
        }
        NextStep::RetryAt(next)
    }
}

impl RetryPolicy {
    /// A chain's `retry`, unset fields taking the defaults.
    pub fn from_pb(r: &koukan_proto::config::v1::RetryParams) -> Self {
        use super::{duration, nonzero};
        let d = Self::default();
        Self {
            max_attempts: nonzero(r.max_attempts, d.max_attempts),
            min_attempt_time: duration(&r.min_attempt_time, d.min_attempt_time),
            max_attempt_time: duration(&r.max_attempt_time, d.max_attempt_time),
            backoff_factor: if r.backoff_factor > 0.0 {
                r.backoff_factor
            } else {
                d.backoff_factor
            },
            deadline: duration(&r.deadline, d.deadline),
            jitter: d.jitter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn young_message_waits_the_minimum() {
        let p = no_jitter();
        assert_eq!(
            p.after_temp_failure(1, at(0), at(5), 0.5),
            NextStep::RetryAt(at(65))
        );
    }

    #[test]
    fn wait_grows_with_age_and_is_capped() {
        let p = no_jitter();
        // Age 200 s × 1.5 = 300 s.
        assert_eq!(
            p.after_temp_failure(3, at(0), at(200), 0.5),
            NextStep::RetryAt(at(500))
        );
        // Age 10,000 s × 1.5 = 15,000 s, capped at 3,600 s.
        assert_eq!(
            p.after_temp_failure(9, at(0), at(10_000), 0.5),
            NextStep::RetryAt(at(13_600))
        );
    }

    #[test]
    fn gives_up_at_max_attempts_and_deadline() {
        let p = no_jitter();
        assert_eq!(
            p.after_temp_failure(30, at(0), at(100), 0.5),
            NextStep::Final {
                reason: FinalReason::RetryMaxAttempts
            }
        );
        assert_eq!(
            p.after_temp_failure(5, at(0), at(84_000), 0.5),
            NextStep::Final {
                reason: FinalReason::RetryDeadline
            }
        );
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        let p = RetryPolicy::default();
        let low = p.after_temp_failure(1, at(0), at(0), 0.0);
        let high = p.after_temp_failure(1, at(0), at(0), 0.999_999);
        assert_eq!(low, NextStep::RetryAt(at(54)));
        let NextStep::RetryAt(h) = high else { panic!() };
        let secs = h.duration_since(at(0)).unwrap().as_secs_f64();
        assert!((65.9..66.0).contains(&secs), "{secs}");
    }
}
