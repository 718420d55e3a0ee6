//! Per-identity rate limits: a GCRA token bucket plus a concurrency cap.
//!
//! Limits are keyed by the caller's SPIFFE ID (optionally together with the
//! destination service), so one agent exhausting its budget never slows
//! another. A request without an identity is refused outright rather than
//! sharing some anonymous bucket, which any unauthenticated client could
//! drain for everyone.
//!
//! GCRA keeps one timestamp per key (the theoretical arrival time), so a
//! bucket costs a few dozen bytes and needs no refill task. State lives in a
//! sharded [`DashMap`]; all updates for one key happen under that key's shard
//! lock, so a check is atomic per identity.
//!
//! # Memory
//!
//! A key whose bucket has refilled completely and that has no request in
//! flight is indistinguishable from a key never seen, so removing it never
//! changes a decision. [`RateLimiter::evict_idle`] removes such keys once
//! they have also been untouched for `idle_for`; the dataplane calls it
//! periodically. Between sweeps, when the map reaches its key capacity
//! ([`DEFAULT_MAX_KEYS`], see [`RateLimiter::with_max_keys`]), the request that
//! adds a new key first sweeps every at-rest key (at most once per second),
//! so memory is bounded by the keys that are genuinely active, not by every
//! identity ever seen. Active keys are never dropped to make room: that
//! would hand their owners a fresh burst.
//!
//! # Metrics
//!
//! Every refusal, whichever way the limiter is asked (sidecar, ext_authz,
//! rate-limit service), counts in `meshward_limiter_refusals_total` by
//! scope, service and reason; the service label is bounded by the registry
//! ([`crate::metrics::labels`]).

mod clock;
pub mod service;

pub use clock::{Clock, ManualClock, SystemClock};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::metrics::LIMITER_REFUSALS;
use crate::metrics::labels::LabelContext;

/// Keys kept before an inline sweep is attempted.
pub const DEFAULT_MAX_KEYS: usize = 1 << 20;

/// Minimum spacing of inline sweeps triggered by a full map.
const INLINE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub use meshward_contract::spec::RateLimitSettings;

/// Which budget a limit is: the caller's own, or the caller's at one
/// service. They are kept apart so that a dataplane enforcing both (an
/// ext_authz backend that also answers rate-limit descriptors) never mixes
/// an agent's egress budget with its budget at a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The agent's own limit (its sidecar's outbound side), keyed by its
    /// identity, or by identity and destination with `per_destination`.
    Egress,
    /// A service's `per_caller_limits`: always keyed by (caller, service).
    Ingress,
}

impl Scope {
    /// The `scope` label.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Egress => "egress",
            Scope::Ingress => "ingress",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateLimitError {
    /// Limits are per identity; a request without one is never admitted.
    #[error("request has no verified identity; rate limits are per identity")]
    NoIdentity,
    /// The identity's bucket is empty; a request succeeds after `retry_after`.
    #[error("rate limit exceeded for this identity; retry after {retry_after:?}")]
    RateExceeded { retry_after: Duration },
    /// The identity already has `limit` requests in flight.
    #[error("too many concurrent requests for this identity (limit {limit})")]
    TooManyConcurrent { limit: u32 },
}

impl RateLimitError {
    /// The `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            RateLimitError::NoIdentity => "no_identity",
            RateLimitError::RateExceeded { .. } => "rate",
            RateLimitError::TooManyConcurrent { .. } => "concurrency",
        }
    }
}

/// A bucket after a rate-limit service call took from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests still admitted right now.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub full_after: Duration,
}

/// An admitted request. Holding it occupies one concurrency slot of its
/// identity; dropping it (when the response completes) frees the slot.
#[derive(Debug)]
#[must_use = "dropping the permit immediately releases the concurrency slot"]
pub struct Permit {
    inflight: Option<Arc<AtomicU32>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(counter) = self.inflight.take() {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[derive(Debug)]
struct KeyState {
    /// GCRA theoretical arrival time: when the bucket is full again.
    tat: Instant,
    last_seen: Instant,
    settings: RateLimitSettings,
    /// Shared with outstanding [`Permit`]s.
    inflight: Arc<AtomicU32>,
}

impl KeyState {
    fn at_rest(&self, now: Instant) -> bool {
        self.tat <= now && self.inflight.load(Ordering::Acquire) == 0
    }
}

/// Per-identity limiter shared by all connections of a dataplane.
#[derive(Debug)]
pub struct RateLimiter {
    clock: Arc<dyn Clock>,
    keys: DashMap<String, KeyState>,
    max_keys: usize,
    /// Clock reading (nanos since `epoch`) of the last inline sweep.
    last_inline_sweep: AtomicU64,
    epoch: Instant,
    labels: LabelContext,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let epoch = clock.now();
        Self {
            clock,
            keys: DashMap::new(),
            max_keys: DEFAULT_MAX_KEYS,
            last_inline_sweep: AtomicU64::new(0),
            epoch,
            labels: LabelContext::default(),
        }
    }

    /// Names this dataplane in the refusal metric and labels services from
    /// its registry.
    pub fn with_labels(mut self, labels: LabelContext) -> Self {
        self.labels = labels;
        self
    }

    /// Counts a refusal.
    fn refused(&self, scope: Scope, destination: &str, error: &RateLimitError) {
        metrics::counter!(
            LIMITER_REFUSALS,
            "dataplane" => self.labels.dataplane(),
            "scope" => scope.label(),
            "service" => self.labels.service(destination),
            "reason" => error.label(),
        )
        .increment(1);
    }

    /// Sets the key count at which adding a key triggers an inline sweep.
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// Admits or refuses one request of `identity` to `destination`.
    ///
    /// Concurrency is checked before the bucket so that a request refused for
    /// concurrency does not also spend a token. A settings change for a key
    /// (new xDS config) restarts its bucket full under the new settings;
    /// requests in flight keep counting against the cap.
    pub fn check(
        &self,
        scope: Scope,
        identity: Option<&str>,
        destination: &str,
        settings: &RateLimitSettings,
    ) -> Result<Permit, RateLimitError> {
        self.take(scope, identity, destination, settings, true)
            .inspect_err(|e| self.refused(scope, destination, e))
    }

    /// One token of the bucket and, when `hold_slot`, one concurrency slot.
    fn take(
        &self,
        scope: Scope,
        identity: Option<&str>,
        destination: &str,
        settings: &RateLimitSettings,
        hold_slot: bool,
    ) -> Result<Permit, RateLimitError> {
        let identity = identity
            .filter(|id| !id.is_empty())
            .ok_or(RateLimitError::NoIdentity)?;
        if settings.is_unlimited() {
            return Ok(Permit { inflight: None });
        }
        let now = self.clock.now();
        let key = Self::key(scope, identity, destination, settings);
        let mut state = self.entry(key, now, settings);

        let reserved = if hold_slot && settings.max_concurrent > 0 {
            let previous = state.inflight.fetch_add(1, Ordering::AcqRel);
            if previous >= settings.max_concurrent {
                state.inflight.fetch_sub(1, Ordering::AcqRel);
                return Err(RateLimitError::TooManyConcurrent {
                    limit: settings.max_concurrent,
                });
            }
            Some(state.inflight.clone())
        } else {
            None
        };
        // From here on, `permit` releases the reserved slot on every exit.
        let permit = Permit { inflight: reserved };

        if settings.rate_limited() {
            let interval = settings.emission_interval();
            let burst = settings.burst.max(1);
            let tolerance = interval.saturating_mul(burst);
            let new_tat = state.tat.max(now) + interval;
            let ahead = new_tat.saturating_duration_since(now);
            if ahead > tolerance {
                return Err(RateLimitError::RateExceeded {
                    retry_after: ahead - tolerance,
                });
            }
            state.tat = new_tat;
        }
        Ok(permit)
    }

    /// Takes `hits` tokens for a rate-limit service call (Envoy's `ratelimit`
    /// filter): no concurrency slot (the service never hears when a request
    /// ends), and the state of the bucket afterwards, for
    /// `limit_remaining` and `duration_until_reset`. A refusal takes
    /// nothing. `None` when the settings set no rate.
    pub fn take_hits(
        &self,
        scope: Scope,
        identity: &str,
        destination: &str,
        settings: &RateLimitSettings,
        hits: u32,
    ) -> Result<Option<Quota>, RateLimitError> {
        self.take_hits_uncounted(scope, identity, destination, settings, hits)
            .inspect_err(|e| self.refused(scope, destination, e))
    }

    fn take_hits_uncounted(
        &self,
        scope: Scope,
        identity: &str,
        destination: &str,
        settings: &RateLimitSettings,
        hits: u32,
    ) -> Result<Option<Quota>, RateLimitError> {
        if identity.is_empty() {
            return Err(RateLimitError::NoIdentity);
        }
        if !settings.rate_limited() {
            return Ok(None);
        }
        let now = self.clock.now();
        let key = Self::key(scope, identity, destination, settings);
        let mut state = self.entry(key, now, settings);
        let interval = settings.emission_interval();
        let tolerance = interval.saturating_mul(settings.burst.max(1));
        let new_tat = state.tat.max(now) + interval.saturating_mul(hits.max(1));
        let ahead = new_tat.saturating_duration_since(now);
        if ahead > tolerance {
            return Err(RateLimitError::RateExceeded {
                retry_after: ahead - tolerance,
            });
        }
        state.tat = new_tat;
        let left = (tolerance - ahead).as_nanos() / interval.as_nanos().max(1);
        Ok(Some(Quota {
            remaining: u32::try_from(left).unwrap_or(u32::MAX),
            full_after: ahead,
        }))
    }

    /// Takes one token of `identity`'s bucket for a request that will not be
    /// forwarded (denied by policy), so probing denied paths drains the same
    /// budget as ordinary requests. Holds no concurrency slot. Free when the
    /// settings do not count denials or set no rate.
    pub fn charge(
        &self,
        scope: Scope,
        identity: &str,
        destination: &str,
        settings: &RateLimitSettings,
    ) -> Result<(), RateLimitError> {
        if !settings.count_denied || !settings.rate_limited() {
            return Ok(());
        }
        self.take(scope, Some(identity), destination, settings, false)
            .map(drop)
            .inspect_err(|e| self.refused(scope, destination, e))
    }

    /// The bucket's key. SPIFFE IDs and service names hold no newline, so
    /// keys of the two scopes never meet.
    fn key(
        scope: Scope,
        identity: &str,
        destination: &str,
        settings: &RateLimitSettings,
    ) -> String {
        match scope {
            Scope::Ingress => format!("ingress\n{identity}\n{destination}"),
            Scope::Egress if settings.per_destination => format!("{identity}\n{destination}"),
            Scope::Egress => identity.to_string(),
        }
    }

    /// The key's state, created full; a settings change (new xDS config)
    /// restarts it full under the new settings.
    fn entry(
        &self,
        key: String,
        now: Instant,
        settings: &RateLimitSettings,
    ) -> dashmap::mapref::one::RefMut<'_, String, KeyState> {
        if self.keys.len() >= self.max_keys && !self.keys.contains_key(&key) {
            self.inline_sweep(now);
        }
        let mut state = self.keys.entry(key).or_insert_with(|| KeyState {
            tat: now,
            last_seen: now,
            settings: *settings,
            inflight: Arc::new(AtomicU32::new(0)),
        });
        if state.settings != *settings {
            state.settings = *settings;
            state.tat = now;
        }
        state.last_seen = now;
        state
    }

    /// Removes keys untouched for `idle_for` whose bucket is full and that
    /// have nothing in flight. Returns how many were removed.
    pub fn evict_idle(&self, idle_for: Duration) -> usize {
        let now = self.clock.now();
        let before = self.keys.len();
        self.keys.retain(|_, s| {
            !(s.at_rest(now) && now.saturating_duration_since(s.last_seen) >= idle_for)
        });
        before.saturating_sub(self.keys.len())
    }

    /// Number of keys currently tracked.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn inline_sweep(&self, now: Instant) {
        let now_nanos =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_inline_sweep.load(Ordering::Acquire);
        let due = last == 0
            || now_nanos.saturating_sub(last)
                >= u64::try_from(INLINE_SWEEP_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
        if due
            && self
                .last_inline_sweep
                .compare_exchange(last, now_nanos.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let removed = self.evict_idle(Duration::ZERO);
            tracing::debug!(
                removed,
                keys = self.keys.len(),
                "rate limiter at capacity: swept at-rest keys"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "spiffe://example.org/agent/alice";
    const BOB: &str = "spiffe://example.org/agent/bob";

    fn limiter() -> (Arc<ManualClock>, RateLimiter) {
        let clock = Arc::new(ManualClock::new());
        (clock.clone(), RateLimiter::with_clock(clock))
    }

    fn rate(rps: f64, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            requests_per_second: rps,
            burst,
            ..Default::default()
        }
    }

    #[test]
    fn refusals_are_counted_by_scope_service_and_reason() {
        use crate::metrics::test_support::{capture, sample};
        let (_tx, rx) = tokio::sync::watch::channel(Some(crate::pipeline::test_support::state()));
        let clock = Arc::new(ManualClock::new());
        let l = RateLimiter::with_clock(clock).with_labels(LabelContext::new("dp", rx));
        let s = RateLimitSettings {
            max_concurrent: 1,
            ..rate(1.0, 1)
        };
        let text = capture(|| {
            let held = l.check(Scope::Egress, Some(ALICE), "svc", &s).unwrap();
            let _ = l.check(Scope::Egress, Some(ALICE), "svc", &s);
            drop(held);
            let _ = l.check(Scope::Egress, Some(ALICE), "svc", &s);
            let _ = l.charge(Scope::Egress, ALICE, "svc", &s);
            let _ = l.take_hits(Scope::Ingress, BOB, "made-up", &s, 5);
            let _ = l.check(Scope::Ingress, None, "svc", &s);
            let _ = l.take_hits(Scope::Egress, BOB, "", &s, 1);
            let _ = l.take_hits(Scope::Egress, BOB, "", &s, 1);
        });
        let count = |labels: &[(&str, &str)]| {
            sample(&text, "meshward_limiter_refusals_total", labels).unwrap_or(0.0)
        };
        let egress_svc = [("dataplane", "dp"), ("scope", "egress"), ("service", "svc")];
        assert_eq!(
            count(&[egress_svc.as_slice(), &[("reason", "concurrency")]].concat()),
            1.0
        );
        assert_eq!(
            count(&[egress_svc.as_slice(), &[("reason", "rate")]].concat()),
            2.0
        );
        assert_eq!(
            count(&[
                ("scope", "ingress"),
                ("service", "unregistered"),
                ("reason", "rate")
            ]),
            1.0,
            "a service outside the registry is not a label value"
        );
        assert_eq!(
            count(&[("scope", "ingress"), ("reason", "no_identity")]),
            1.0
        );
        assert_eq!(count(&[("scope", "egress"), ("service", "none")]), 1.0);
        assert!(!text.contains("made-up"), "{text}");
    }

    #[test]
    fn burst_then_refused_with_retry_after() {
        let (_clock, l) = limiter();
        let s = rate(5.0, 10);
        for i in 0..10 {
            assert!(
                l.check(Scope::Egress, Some(ALICE), "svc", &s).is_ok(),
                "request {i}"
            );
        }
        match l.check(Scope::Egress, Some(ALICE), "svc", &s) {
            Err(RateLimitError::RateExceeded { retry_after }) => {
                assert!(retry_after > Duration::ZERO);
                assert!(retry_after <= Duration::from_millis(200), "{retry_after:?}");
            }
            other => panic!("expected RateExceeded, got {other:?}"),
        }
        // Another identity has its own bucket.
        assert!(l.check(Scope::Egress, Some(BOB), "svc", &s).is_ok());
    }

    #[test]
    fn denied_requests_drain_the_same_bucket_without_resetting_it() {
        let (_clock, l) = limiter();
        let s = RateLimitSettings {
            max_concurrent: 1,
            ..rate(5.0, 4)
        };
        // A held slot does not block charging, and charging holds no slot.
        let held = l
            .check(Scope::Egress, Some(ALICE), "svc", &s)
            .expect("first request");
        for i in 0..3 {
            assert_eq!(
                l.charge(Scope::Egress, ALICE, "svc", &s),
                Ok(()),
                "denial {i}"
            );
        }
        assert!(matches!(
            l.charge(Scope::Egress, ALICE, "svc", &s),
            Err(RateLimitError::RateExceeded { .. })
        ));
        drop(held);
        // Alternating admitted and denied requests never refills the bucket.
        assert!(matches!(
            l.check(Scope::Egress, Some(ALICE), "svc", &s),
            Err(RateLimitError::RateExceeded { .. })
        ));
        // Opted out: denials are free.
        let free = RateLimitSettings {
            count_denied: false,
            ..s
        };
        assert_eq!(l.charge(Scope::Egress, BOB, "svc", &free), Ok(()));
        for _ in 0..10 {
            assert_eq!(l.charge(Scope::Egress, BOB, "svc", &free), Ok(()));
        }
        assert!(l.check(Scope::Egress, Some(BOB), "svc", &free).is_ok());
    }

    #[test]
    fn refills_over_time() {
        let (clock, l) = limiter();
        let s = rate(5.0, 2);
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &s).is_ok());
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &s).is_ok());
        let retry = match l.check(Scope::Egress, Some(ALICE), "svc", &s) {
            Err(RateLimitError::RateExceeded { retry_after }) => retry_after,
            other => panic!("{other:?}"),
        };
        clock.advance(retry - Duration::from_millis(1));
        assert!(
            l.check(Scope::Egress, Some(ALICE), "svc", &s).is_err(),
            "not yet"
        );
        clock.advance(Duration::from_millis(1));
        assert!(
            l.check(Scope::Egress, Some(ALICE), "svc", &s).is_ok(),
            "one token back"
        );
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &s).is_err());
        // A long pause refills the burst, never more.
        clock.advance(Duration::from_secs(60));
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &s).is_ok());
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &s).is_ok());
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &s).is_err());
    }

    #[test]
    fn concurrency_cap_and_release_on_drop() {
        let (_clock, l) = limiter();
        let s = RateLimitSettings {
            max_concurrent: 2,
            ..Default::default()
        };
        let a = l.check(Scope::Egress, Some(ALICE), "svc", &s).unwrap();
        let b = l.check(Scope::Egress, Some(ALICE), "svc", &s).unwrap();
        assert_eq!(
            l.check(Scope::Egress, Some(ALICE), "svc", &s).unwrap_err(),
            RateLimitError::TooManyConcurrent { limit: 2 }
        );
        assert!(l.check(Scope::Egress, Some(BOB), "svc", &s).is_ok());
        drop(a);
        let c = l.check(Scope::Egress, Some(ALICE), "svc", &s).unwrap();
        drop((b, c));
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &s).is_ok());
    }

    #[test]
    fn concurrency_refusal_spends_no_token() {
        let (_clock, l) = limiter();
        let s = RateLimitSettings {
            requests_per_second: 1.0,
            burst: 2,
            max_concurrent: 1,
            per_destination: false,
            count_denied: true,
        };
        let held = l.check(Scope::Egress, Some(ALICE), "svc", &s).unwrap();
        for _ in 0..5 {
            assert!(matches!(
                l.check(Scope::Egress, Some(ALICE), "svc", &s),
                Err(RateLimitError::TooManyConcurrent { .. })
            ));
        }
        drop(held);
        assert!(
            l.check(Scope::Egress, Some(ALICE), "svc", &s).is_ok(),
            "second token left"
        );
    }

    #[test]
    fn rate_refusal_frees_concurrency_slot() {
        let (_clock, l) = limiter();
        let s = RateLimitSettings {
            requests_per_second: 1.0,
            burst: 1,
            max_concurrent: 1,
            per_destination: false,
            count_denied: true,
        };
        drop(l.check(Scope::Egress, Some(ALICE), "svc", &s).unwrap());
        assert!(matches!(
            l.check(Scope::Egress, Some(ALICE), "svc", &s),
            Err(RateLimitError::RateExceeded { .. })
        ));
        assert!(matches!(
            l.check(Scope::Egress, Some(ALICE), "svc", &s),
            Err(RateLimitError::RateExceeded { .. })
        ));
    }

    #[test]
    fn per_destination_separates_keys() {
        let (_clock, l) = limiter();
        let mut s = rate(1.0, 1);
        s.per_destination = true;
        assert!(l.check(Scope::Egress, Some(ALICE), "a", &s).is_ok());
        assert!(l.check(Scope::Egress, Some(ALICE), "a", &s).is_err());
        assert!(l.check(Scope::Egress, Some(ALICE), "b", &s).is_ok());
        s.per_destination = false;
        let s2 = s;
        assert!(l.check(Scope::Egress, Some(ALICE), "a", &s2).is_ok());
        assert!(
            l.check(Scope::Egress, Some(ALICE), "b", &s2).is_err(),
            "shared across destinations"
        );
    }

    #[test]
    fn no_identity_refused() {
        let (_clock, l) = limiter();
        for s in [RateLimitSettings::default(), rate(1000.0, 1000)] {
            assert_eq!(
                l.check(Scope::Egress, None, "svc", &s).unwrap_err(),
                RateLimitError::NoIdentity
            );
            assert_eq!(
                l.check(Scope::Egress, Some(""), "svc", &s).unwrap_err(),
                RateLimitError::NoIdentity
            );
        }
        assert!(l.is_empty());
    }

    #[test]
    fn unlimited_keeps_no_state() {
        let (_clock, l) = limiter();
        for _ in 0..1000 {
            let _ = l
                .check(
                    Scope::Egress,
                    Some(ALICE),
                    "svc",
                    &RateLimitSettings::default(),
                )
                .unwrap();
        }
        assert!(l.is_empty());
    }

    #[test]
    fn settings_change_takes_effect() {
        let (_clock, l) = limiter();
        let tight = rate(1.0, 1);
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &tight).is_ok());
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &tight).is_err());
        let loose = rate(100.0, 3);
        for _ in 0..3 {
            assert!(l.check(Scope::Egress, Some(ALICE), "svc", &loose).is_ok());
        }
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &loose).is_err());
    }

    #[test]
    fn eviction_bounds_memory() {
        let (clock, l) = limiter();
        let s = RateLimitSettings {
            requests_per_second: 10.0,
            burst: 5,
            max_concurrent: 4,
            per_destination: false,
            count_denied: true,
        };
        let held = l
            .check(
                Scope::Egress,
                Some("spiffe://example.org/agent/busy"),
                "svc",
                &s,
            )
            .unwrap();
        for i in 0..100_000 {
            let id = format!("spiffe://example.org/agent/{i}");
            drop(l.check(Scope::Egress, Some(&id), "svc", &s).unwrap());
        }
        assert_eq!(l.len(), 100_001);
        // Not idle long enough yet: nothing goes.
        assert_eq!(l.evict_idle(Duration::from_secs(300)), 0);
        clock.advance(Duration::from_secs(300));
        assert_eq!(l.evict_idle(Duration::from_secs(300)), 100_000);
        assert_eq!(l.len(), 1, "a key with a request in flight stays");
        drop(held);
        assert_eq!(l.evict_idle(Duration::from_secs(300)), 1);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn eviction_never_resets_a_draining_bucket() {
        let (clock, l) = limiter();
        let s = rate(0.01, 1); // one request per 100 s
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &s).is_ok());
        clock.advance(Duration::from_secs(50));
        assert_eq!(l.evict_idle(Duration::from_secs(10)), 0);
        assert!(l.check(Scope::Egress, Some(ALICE), "svc", &s).is_err());
    }

    #[test]
    fn capacity_triggers_inline_sweep() {
        let (clock, l) = limiter();
        let l = l.with_max_keys(100);
        let s = rate(10.0, 1);
        for i in 0..100 {
            drop(
                l.check(Scope::Egress, Some(&format!("id-{i}")), "svc", &s)
                    .unwrap(),
            );
        }
        assert_eq!(l.len(), 100);
        clock.advance(Duration::from_secs(1));
        assert!(l.check(Scope::Egress, Some("newcomer"), "svc", &s).is_ok());
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn rate_limit_service_calls_report_what_is_left_and_share_the_checks_bucket() {
        let (clock, l) = limiter();
        let s = rate(1.0, 3);
        let q = l
            .take_hits(Scope::Ingress, ALICE, "svc", &s, 1)
            .unwrap()
            .unwrap();
        assert_eq!(q.remaining, 2);
        assert_eq!(q.full_after, Duration::from_secs(1));
        let q = l
            .take_hits(Scope::Ingress, ALICE, "svc", &s, 2)
            .unwrap()
            .unwrap();
        assert_eq!((q.remaining, q.full_after), (0, Duration::from_secs(3)));
        match l.take_hits(Scope::Ingress, ALICE, "svc", &s, 1) {
            Err(RateLimitError::RateExceeded { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        // One budget however it is enforced: a check at the same scope
        // spends the same tokens.
        clock.advance(Duration::from_secs(1));
        assert!(l.check(Scope::Ingress, Some(ALICE), "svc", &s).is_ok());
        assert!(l.take_hits(Scope::Ingress, ALICE, "svc", &s, 1).is_err());
        // The agent's own (egress) budget is another bucket.
        assert!(l.take_hits(Scope::Egress, ALICE, "svc", &s, 3).is_ok());
        assert_eq!(
            l.take_hits(Scope::Egress, "", "svc", &s, 1),
            Err(RateLimitError::NoIdentity)
        );
        assert_eq!(
            l.take_hits(Scope::Egress, BOB, "svc", &rate(0.0, 0), 1),
            Ok(None)
        );
    }
}
