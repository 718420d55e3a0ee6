//! Per-identity rate limits and per-(caller, upstream) breaker thresholds:
//! what `mesh.yaml`'s `limits` / `per_caller_limits` / `breaker` mean, with
//! their defaults, and their wire form.

use std::time::Duration;

use crate::pb::v1 as pb;

/// A GCRA token bucket plus a concurrency cap, per identity.
///
/// Zero means "no limit" for that dimension: `requests_per_second <= 0`
/// (or not finite) disables the bucket, `max_concurrent == 0` disables the
/// cap. With a rate set, `burst == 0` is treated as a burst of 1 (`mesh.yaml`
/// requires a burst of at least 1 with a rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitSettings {
    pub requests_per_second: f64,
    pub burst: u32,
    pub max_concurrent: u32,
    /// Key the bucket by (identity, destination service) instead of identity.
    pub per_destination: bool,
    /// A request denied by policy costs a token, so denied paths cannot be
    /// probed at full speed.
    pub count_denied: bool,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 0.0,
            burst: 0,
            max_concurrent: 0,
            per_destination: false,
            count_denied: true,
        }
    }
}

impl RateLimitSettings {
    /// Whether a token bucket applies (a positive, finite rate).
    pub fn rate_limited(&self) -> bool {
        self.requests_per_second.is_finite() && self.requests_per_second > 0.0
    }

    /// Time between two requests at the sustained rate.
    pub fn emission_interval(&self) -> Duration {
        Duration::try_from_secs_f64(1.0 / self.requests_per_second).unwrap_or(Duration::MAX)
    }

    /// Neither a bucket nor a concurrency cap.
    pub fn is_unlimited(&self) -> bool {
        !self.rate_limited() && self.max_concurrent == 0
    }

    /// Why a rate is unusable, if it is (the one rule for `mesh.yaml` and
    /// the wire).
    pub fn check_rate(rate: f64) -> Result<(), String> {
        if rate.is_finite() && rate >= 0.0 {
            Ok(())
        } else {
            Err(format!(
                "requests_per_second {rate} is not a finite, non-negative number"
            ))
        }
    }
}

impl From<&RateLimitSettings> for pb::RateLimit {
    fn from(l: &RateLimitSettings) -> Self {
        pb::RateLimit {
            requests_per_second: l.requests_per_second,
            burst: l.burst,
            max_concurrent: l.max_concurrent,
            per_destination: l.per_destination,
            count_denied: Some(l.count_denied),
        }
    }
}

impl TryFrom<Option<&pb::RateLimit>> for RateLimitSettings {
    type Error = String;

    /// Absent means "no limit" (every dimension zero).
    fn try_from(l: Option<&pb::RateLimit>) -> Result<Self, String> {
        let Some(l) = l else {
            return Ok(RateLimitSettings::default());
        };
        RateLimitSettings::check_rate(l.requests_per_second)?;
        Ok(RateLimitSettings {
            requests_per_second: l.requests_per_second,
            burst: l.burst,
            max_concurrent: l.max_concurrent,
            per_destination: l.per_destination,
            count_denied: l.count_denied.unwrap_or(true),
        })
    }
}

/// Circuit-breaker thresholds for one upstream, per caller identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker; `0` disables it.
    pub consecutive_failures: u32,
    /// How long the breaker stays open before admitting probes.
    pub open_for: Duration,
    /// Probes admitted while half-open (`0` is treated as 1).
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        }
    }
}

impl BreakerSettings {
    /// Probes admitted while half-open.
    pub fn probes(&self) -> u32 {
        self.half_open_probes.max(1)
    }
}

impl From<&BreakerSettings> for pb::CircuitBreaker {
    fn from(b: &BreakerSettings) -> Self {
        pb::CircuitBreaker {
            consecutive_failures: b.consecutive_failures,
            open_for_ms: u64::try_from(b.open_for.as_millis()).unwrap_or(u64::MAX),
            half_open_probes: b.half_open_probes,
        }
    }
}

impl From<Option<&pb::CircuitBreaker>> for BreakerSettings {
    /// Absent means the defaults; zero values keep the meaning the fields
    /// document (`consecutive_failures == 0` disables breaking).
    fn from(b: Option<&pb::CircuitBreaker>) -> Self {
        match b {
            Some(b) => BreakerSettings {
                consecutive_failures: b.consecutive_failures,
                open_for: Duration::from_millis(b.open_for_ms),
                half_open_probes: b.half_open_probes,
            },
            None => BreakerSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_trip_and_bad_rates_are_refused() {
        let l = RateLimitSettings {
            requests_per_second: 2.5,
            burst: 3,
            max_concurrent: 4,
            per_destination: true,
            count_denied: false,
        };
        assert_eq!(
            RateLimitSettings::try_from(Some(&pb::RateLimit::from(&l))),
            Ok(l)
        );
        assert_eq!(
            RateLimitSettings::try_from(None),
            Ok(RateLimitSettings::default())
        );
        // An older control plane that does not send count_denied: counted.
        let old = pb::RateLimit {
            count_denied: None,
            ..pb::RateLimit::from(&l)
        };
        assert!(
            RateLimitSettings::try_from(Some(&old))
                .unwrap()
                .count_denied
        );
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let wire = pb::RateLimit {
                requests_per_second: bad,
                ..Default::default()
            };
            assert!(RateLimitSettings::try_from(Some(&wire)).is_err(), "{bad}");
            assert!(RateLimitSettings::check_rate(bad).is_err());
        }
    }

    #[test]
    fn breaker_round_trips_and_defaults_when_absent() {
        let b = BreakerSettings {
            consecutive_failures: 2,
            open_for: Duration::from_millis(1500),
            half_open_probes: 3,
        };
        assert_eq!(
            BreakerSettings::from(Some(&pb::CircuitBreaker::from(&b))),
            b
        );
        assert_eq!(BreakerSettings::from(None), BreakerSettings::default());
        assert_eq!(
            BreakerSettings {
                half_open_probes: 0,
                ..b
            }
            .probes(),
            1
        );
    }
}
