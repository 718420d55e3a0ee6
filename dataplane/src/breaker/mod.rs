//! Circuit breakers per (caller identity, upstream).
//!
//! Envoy breaks per cluster, so one agent hammering a failing service trips
//! the breaker for every caller. Meshward keys breakers by the caller's
//! SPIFFE ID as well: the misbehaving agent gets fast 503s from its own open
//! breaker while other agents keep reaching the service.
//!
//! The state machine is the usual one:
//!
//! - **closed**: requests flow; `consecutive_failures` failures in a row
//!   open the breaker (a success resets the count). `0` disables breaking.
//! - **open**: requests are refused without being sent, for `open_for`.
//! - **half-open**: after `open_for`, up to `half_open_probes` requests are
//!   admitted as probes (others are refused). If all of them succeed the
//!   breaker closes; any probe failure re-opens it for another `open_for`.
//!
//! Outcomes are reported through the [`BreakerGuard`] returned by
//! [`Breakers::acquire`]. Dropping a guard without reporting is neutral for a
//! request admitted while closed (a cancelled request says nothing about the
//! upstream) but counts as a failure for a half-open probe, so an abandoned
//! probe cannot wedge the breaker half-open. Reports from requests admitted
//! before the last state change are ignored: a slow response from before
//! the breaker opened must not close it.
//!
//! Time comes from the same [`Clock`] as the rate limiter, so tests drive it.
//! Idle identities are evicted like the limiter's keys.
//!
//! Each breaker is metered ([`gauges`]): `meshward_breaker_state` shows its
//! state and `meshward_breaker_transitions_total` counts its changes. The
//! open-to-half-open change happens lazily (on the next request), so the
//! gauge shows it then, or at the next [`Breakers::evict_idle`] sweep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::metrics::labels::LabelContext;
use crate::ratelimit::{Clock, SystemClock};

mod gauges;

use gauges::{Gauges, SeriesKey};

pub use meshward_contract::spec::BreakerSettings;

/// Observable state of one breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Refusal: the caller's breaker for this upstream is open (or half-open
/// with all probes out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open for {identity} -> {upstream}; retry after {retry_after:?}")]
pub struct BreakerOpen {
    pub retry_after: Duration,
    pub identity: String,
    pub upstream: String,
}

/// Upper bound of `retry_after` while half-open probes are outstanding.
const PROBE_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

#[derive(Debug)]
struct Entry {
    phase: Phase,
    /// Bumped on every state change; guards from older generations are
    /// ignored when they report.
    generation: u64,
    settings: BreakerSettings,
    /// Guards not yet reported; an entry with guards out is never evicted.
    outstanding: u32,
    last_seen: Instant,
    /// Its metric series (labels fixed at creation).
    series: SeriesKey,
    /// The state its series counts it in.
    shown: BreakerState,
}

impl Entry {
    fn transition(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Brings the metrics up to the state as of `now`.
    fn report(&mut self, gauges: &Gauges, now: Instant) {
        let state = observed(self.phase, now);
        gauges.moved(&self.series, self.shown, state);
        self.shown = state;
    }
}

/// The state a phase is in at `now` (an open breaker whose time is up
/// admits probes: half-open).
fn observed(phase: Phase, now: Instant) -> BreakerState {
    match phase {
        Phase::Closed { .. } => BreakerState::Closed,
        Phase::Open { until } if now < until => BreakerState::Open,
        Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

#[derive(Debug)]
struct Shared {
    clock: Arc<dyn Clock>,
    entries: DashMap<String, Entry>,
    gauges: Gauges,
}

/// One breaker as `/config_dump` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerInfo {
    /// The caller's SPIFFE ID.
    pub caller: String,
    pub service: String,
    pub state: BreakerState,
    /// Consecutive failures so far (closed).
    pub failures: u32,
    /// Probes admitted and succeeded (half-open).
    pub probes_admitted: u32,
    pub probes_succeeded: u32,
    /// Requests admitted and not yet reported.
    pub in_flight: u32,
    /// Until it admits probes (open).
    pub retry_after: Option<Duration>,
}

/// Every breaker's state, for `/config_dump`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BreakersSnapshot {
    /// Breakers by state: closed, half-open, open.
    pub closed: usize,
    pub half_open: usize,
    pub open: usize,
    /// Up to the limit asked for, open ones first, then half-open, then
    /// closed; by caller and service within a state.
    pub breakers: Vec<BreakerInfo>,
}

/// All breakers of one dataplane.
#[derive(Debug, Clone)]
pub struct Breakers {
    shared: Arc<Shared>,
}

impl Default for Breakers {
    fn default() -> Self {
        Self::new()
    }
}

fn key(identity: &str, upstream: &str) -> String {
    format!("{identity}\n{upstream}")
}

impl Breakers {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::with_clock_and_labels(clock, LabelContext::default())
    }

    /// Breakers whose metrics name this dataplane and label callers and
    /// services from its registry.
    pub fn with_labels(labels: LabelContext) -> Self {
        Self::with_clock_and_labels(Arc::new(SystemClock), labels)
    }

    pub fn with_clock_and_labels(clock: Arc<dyn Clock>, labels: LabelContext) -> Self {
        Self {
            shared: Arc::new(Shared {
                clock,
                entries: DashMap::new(),
                gauges: Gauges::new(labels),
            }),
        }
    }

    /// Admits a request of `identity` to `upstream`, or refuses it without
    /// calling the upstream. A settings change for an upstream (new xDS
    /// config) starts its breakers over, closed.
    pub fn acquire(
        &self,
        identity: &str,
        upstream: &str,
        settings: &BreakerSettings,
    ) -> Result<BreakerGuard, BreakerOpen> {
        let now = self.shared.clock.now();
        let key = key(identity, upstream);
        let gauges = &self.shared.gauges;
        let mut entry = self.shared.entries.entry(key.clone()).or_insert_with(|| {
            let series = gauges.key(identity, upstream);
            gauges.added(&series);
            Entry {
                phase: Phase::Closed { failures: 0 },
                generation: 0,
                settings: *settings,
                outstanding: 0,
                last_seen: now,
                series,
                shown: BreakerState::Closed,
            }
        });
        if entry.settings != *settings {
            entry.settings = *settings;
            entry.transition(Phase::Closed { failures: 0 });
        }
        entry.last_seen = now;

        if let Phase::Open { until } = entry.phase {
            if now < until {
                return Err(BreakerOpen {
                    retry_after: until - now,
                    identity: identity.to_string(),
                    upstream: upstream.to_string(),
                });
            }
            entry.transition(Phase::HalfOpen {
                admitted: 0,
                succeeded: 0,
            });
            tracing::debug!(identity, upstream, "circuit breaker half-open");
        }
        entry.report(gauges, now);
        let probe = match &mut entry.phase {
            Phase::Closed { .. } => false,
            Phase::HalfOpen { admitted, .. } => {
                if *admitted >= settings.probes() {
                    return Err(BreakerOpen {
                        retry_after: PROBE_RETRY_AFTER.min(settings.open_for),
                        identity: identity.to_string(),
                        upstream: upstream.to_string(),
                    });
                }
                *admitted += 1;
                true
            }
            // Handled above: an open breaker either refused or became half-open.
            Phase::Open { .. } => false,
        };
        entry.outstanding += 1;
        Ok(BreakerGuard {
            shared: self.shared.clone(),
            key,
            generation: entry.generation,
            probe,
            outcome: None,
        })
    }

    /// The breaker's state as the next `acquire` would see it.
    pub fn state(&self, identity: &str, upstream: &str) -> BreakerState {
        let now = self.shared.clock.now();
        match self.shared.entries.get(&key(identity, upstream)) {
            None => BreakerState::Closed,
            Some(e) => observed(e.phase, now),
        }
    }

    /// Every breaker's state and counts, listing at most `limit` of them.
    pub fn snapshot(&self, limit: usize) -> BreakersSnapshot {
        let now = self.shared.clock.now();
        let mut snapshot = BreakersSnapshot::default();
        let mut all = Vec::with_capacity(self.shared.entries.len());
        for e in self.shared.entries.iter() {
            let state = observed(e.phase, now);
            match state {
                BreakerState::Closed => snapshot.closed += 1,
                BreakerState::HalfOpen => snapshot.half_open += 1,
                BreakerState::Open => snapshot.open += 1,
            }
            let (caller, service) = e.key().split_once('\n').unwrap_or((e.key().as_str(), ""));
            let (failures, probes_admitted, probes_succeeded, retry_after) = match e.phase {
                Phase::Closed { failures } => (failures, 0, 0, None),
                Phase::HalfOpen {
                    admitted,
                    succeeded,
                } => (0, admitted, succeeded, None),
                Phase::Open { until } => (0, 0, 0, Some(until.saturating_duration_since(now))),
            };
            all.push(BreakerInfo {
                caller: caller.to_string(),
                service: service.to_string(),
                state,
                failures,
                probes_admitted,
                probes_succeeded,
                in_flight: e.outstanding,
                retry_after,
            });
        }
        all.sort_by(|a, b| {
            b.state
                .rank()
                .cmp(&a.state.rank())
                .then_with(|| a.caller.cmp(&b.caller))
                .then_with(|| a.service.cmp(&b.service))
        });
        all.truncate(limit);
        snapshot.breakers = all;
        snapshot
    }

    /// Forgets breakers untouched for `idle_for` that have no request in
    /// flight and are not currently open. Such an identity starts over
    /// closed when it returns. Returns how many were removed.
    pub fn evict_idle(&self, idle_for: Duration) -> usize {
        let now = self.shared.clock.now();
        let before = self.shared.entries.len();
        let gauges = &self.shared.gauges;
        self.shared.entries.retain(|_, e| {
            let open = matches!(e.phase, Phase::Open { until } if now < until);
            let keep =
                open || e.outstanding > 0 || now.saturating_duration_since(e.last_seen) < idle_for;
            if keep {
                e.report(gauges, now);
            } else {
                gauges.removed(&e.series, e.shown);
            }
            keep
        });
        before.saturating_sub(self.shared.entries.len())
    }

    /// Number of (identity, upstream) breakers tracked.
    pub fn len(&self) -> usize {
        self.shared.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.entries.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    /// Says nothing about the upstream ([`BreakerGuard::abandon`]).
    Abandoned,
}

/// One admitted request; report how it went with [`success`](Self::success)
/// or [`failure`](Self::failure) (5xx, connect error, timeout).
#[derive(Debug)]
#[must_use = "report the outcome with success() or failure()"]
pub struct BreakerGuard {
    shared: Arc<Shared>,
    key: String,
    generation: u64,
    probe: bool,
    outcome: Option<Outcome>,
}

impl BreakerGuard {
    pub fn success(mut self) {
        self.outcome = Some(Outcome::Success);
    }

    pub fn failure(mut self) {
        self.outcome = Some(Outcome::Failure);
    }

    /// The request never tested the upstream (the client's own error, such
    /// as a malformed body): no outcome, and a half-open probe slot is
    /// handed back for the next request.
    pub fn abandon(mut self) {
        self.outcome = Some(Outcome::Abandoned);
    }

    /// Whether this request is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for BreakerGuard {
    fn drop(&mut self) {
        let outcome = match self.outcome {
            Some(o) => Some(o),
            None if self.probe => Some(Outcome::Failure),
            None => None,
        };
        let now = self.shared.clock.now();
        let Some(mut entry) = self.shared.entries.get_mut(&self.key) else {
            return;
        };
        entry.outstanding = entry.outstanding.saturating_sub(1);
        if entry.generation != self.generation {
            return;
        }
        let settings = entry.settings;
        match (entry.phase, outcome) {
            (
                Phase::HalfOpen {
                    admitted,
                    succeeded,
                },
                Some(Outcome::Abandoned),
            ) => {
                entry.phase = Phase::HalfOpen {
                    admitted: admitted.saturating_sub(1),
                    succeeded,
                };
            }
            (_, None | Some(Outcome::Abandoned)) => {}
            (Phase::Closed { .. }, Some(Outcome::Success)) => {
                entry.phase = Phase::Closed { failures: 0 };
            }
            (Phase::Closed { failures }, Some(Outcome::Failure)) => {
                let failures = failures.saturating_add(1);
                if settings.consecutive_failures > 0 && failures >= settings.consecutive_failures {
                    entry.transition(Phase::Open {
                        until: now + settings.open_for,
                    });
                    tracing::info!(
                        breaker = %self.key.replace('\n', " -> "),
                        failures,
                        "circuit breaker opened"
                    );
                } else {
                    entry.phase = Phase::Closed { failures };
                }
            }
            (
                Phase::HalfOpen {
                    admitted,
                    succeeded,
                },
                Some(Outcome::Success),
            ) => {
                let succeeded = succeeded + 1;
                if succeeded >= settings.probes() {
                    entry.transition(Phase::Closed { failures: 0 });
                    tracing::info!(breaker = %self.key.replace('\n', " -> "), "circuit breaker closed");
                } else {
                    entry.phase = Phase::HalfOpen {
                        admitted,
                        succeeded,
                    };
                }
            }
            (Phase::HalfOpen { .. }, Some(Outcome::Failure)) => {
                entry.transition(Phase::Open {
                    until: now + settings.open_for,
                });
                tracing::info!(breaker = %self.key.replace('\n', " -> "), "circuit breaker re-opened: probe failed");
            }
            // Guards are never issued while open, and a transition to open
            // bumps the generation, so this cannot match.
            (Phase::Open { .. }, Some(_)) => {}
        }
        entry.report(&self.shared.gauges, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::ManualClock;

    const A: &str = "spiffe://example.org/agent/a";
    const B: &str = "spiffe://example.org/agent/b";
    const UP: &str = "billing-system";

    fn breakers() -> (Arc<ManualClock>, Breakers) {
        let clock = Arc::new(ManualClock::new());
        (clock.clone(), Breakers::with_clock(clock))
    }

    fn settings(failures: u32, probes: u32) -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: failures,
            open_for: Duration::from_secs(10),
            half_open_probes: probes,
        }
    }

    fn trip(b: &Breakers, id: &str, s: &BreakerSettings) {
        for _ in 0..s.consecutive_failures {
            b.acquire(id, UP, s).unwrap().failure();
        }
        assert_eq!(b.state(id, UP), BreakerState::Open);
    }

    #[test]
    fn identities_are_isolated() {
        let (_c, b) = breakers();
        let s = settings(3, 1);
        trip(&b, A, &s);
        assert!(b.acquire(A, UP, &s).is_err());
        assert_eq!(b.state(B, UP), BreakerState::Closed);
        b.acquire(B, UP, &s).unwrap().success();
        // A's breaker on another upstream is independent too.
        assert!(b.acquire(A, "hello-skill", &s).is_ok());
    }

    #[test]
    fn success_resets_consecutive_count() {
        let (_c, b) = breakers();
        let s = settings(3, 1);
        for _ in 0..2 {
            b.acquire(A, UP, &s).unwrap().failure();
        }
        b.acquire(A, UP, &s).unwrap().success();
        for _ in 0..2 {
            b.acquire(A, UP, &s).unwrap().failure();
        }
        assert_eq!(b.state(A, UP), BreakerState::Closed);
    }

    #[test]
    fn open_rejects_with_retry_after_and_names_parties() {
        let (clock, b) = breakers();
        let s = settings(2, 1);
        trip(&b, A, &s);
        clock.advance(Duration::from_secs(4));
        let err = b.acquire(A, UP, &s).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(6));
        let msg = err.to_string();
        assert!(msg.contains(A) && msg.contains(UP), "{msg}");
    }

    #[test]
    fn half_open_probe_success_closes() {
        let (clock, b) = breakers();
        let s = settings(2, 1);
        trip(&b, A, &s);
        clock.advance(Duration::from_secs(10));
        assert_eq!(b.state(A, UP), BreakerState::HalfOpen);
        let probe = b.acquire(A, UP, &s).unwrap();
        assert!(probe.is_probe());
        probe.success();
        assert_eq!(b.state(A, UP), BreakerState::Closed);
        assert!(!b.acquire(A, UP, &s).unwrap().is_probe());
    }

    #[test]
    fn half_open_probe_failure_reopens() {
        let (clock, b) = breakers();
        let s = settings(2, 1);
        trip(&b, A, &s);
        clock.advance(Duration::from_secs(10));
        b.acquire(A, UP, &s).unwrap().failure();
        assert_eq!(b.state(A, UP), BreakerState::Open);
        assert_eq!(
            b.acquire(A, UP, &s).unwrap_err().retry_after,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn probes_beyond_limit_rejected_and_all_must_succeed() {
        let (clock, b) = breakers();
        let s = settings(1, 2);
        trip(&b, A, &s);
        clock.advance(Duration::from_secs(10));
        let p1 = b.acquire(A, UP, &s).unwrap();
        let p2 = b.acquire(A, UP, &s).unwrap();
        let err = b.acquire(A, UP, &s).unwrap_err();
        assert!(err.retry_after > Duration::ZERO);
        p1.success();
        assert_eq!(b.state(A, UP), BreakerState::HalfOpen, "one of two probes");
        assert!(b.acquire(A, UP, &s).is_err(), "still no third probe");
        p2.success();
        assert_eq!(b.state(A, UP), BreakerState::Closed);
    }

    #[test]
    fn dropped_probe_counts_as_failure_dropped_request_is_neutral() {
        let (clock, b) = breakers();
        let s = settings(2, 1);
        b.acquire(A, UP, &s).unwrap().failure();
        drop(b.acquire(A, UP, &s).unwrap());
        assert_eq!(b.state(A, UP), BreakerState::Closed, "neutral while closed");
        b.acquire(A, UP, &s).unwrap().failure();
        assert_eq!(b.state(A, UP), BreakerState::Open);
        clock.advance(Duration::from_secs(10));
        drop(b.acquire(A, UP, &s).unwrap());
        assert_eq!(b.state(A, UP), BreakerState::Open);
    }

    #[test]
    fn abandoned_requests_are_neutral_and_return_the_probe_slot() {
        let (clock, b) = breakers();
        let s = settings(2, 1);
        b.acquire(A, UP, &s).unwrap().failure();
        b.acquire(A, UP, &s).unwrap().abandon();
        b.acquire(A, UP, &s).unwrap().abandon();
        assert_eq!(b.state(A, UP), BreakerState::Closed, "no failure counted");
        b.acquire(A, UP, &s).unwrap().failure();
        assert_eq!(b.state(A, UP), BreakerState::Open);
        clock.advance(Duration::from_secs(10));
        // A malformed request as the only probe neither re-opens the
        // breaker nor uses up the probe.
        let probe = b.acquire(A, UP, &s).unwrap();
        assert!(probe.is_probe());
        probe.abandon();
        assert_eq!(b.state(A, UP), BreakerState::HalfOpen);
        let probe = b
            .acquire(A, UP, &s)
            .expect("the probe slot was handed back");
        assert!(probe.is_probe());
        probe.success();
        assert_eq!(b.state(A, UP), BreakerState::Closed);
    }

    #[test]
    fn stale_reports_are_ignored() {
        let (clock, b) = breakers();
        let s = settings(2, 1);
        let slow = b.acquire(A, UP, &s).unwrap();
        trip(&b, A, &s);
        clock.advance(Duration::from_secs(10));
        let probe = b.acquire(A, UP, &s).unwrap();
        // The request from before the breaker opened finally succeeds: it
        // must not count as the probe.
        slow.success();
        assert_eq!(b.state(A, UP), BreakerState::HalfOpen);
        probe.failure();
        assert_eq!(b.state(A, UP), BreakerState::Open);
    }

    #[test]
    fn zero_threshold_never_opens() {
        let (_c, b) = breakers();
        let s = settings(0, 1);
        for _ in 0..100 {
            b.acquire(A, UP, &s).unwrap().failure();
        }
        assert_eq!(b.state(A, UP), BreakerState::Closed);
    }

    #[test]
    fn settings_change_starts_over() {
        let (_c, b) = breakers();
        let s = settings(2, 1);
        trip(&b, A, &s);
        assert!(b.acquire(A, UP, &settings(5, 1)).is_ok());
    }

    #[test]
    fn eviction() {
        let (clock, b) = breakers();
        let s = settings(2, 1);
        for i in 0..10_000 {
            b.acquire(&format!("id-{i}"), UP, &s).unwrap().success();
        }
        let held = b.acquire("busy", UP, &s).unwrap();
        trip(&b, A, &s);
        assert_eq!(b.evict_idle(Duration::from_secs(60)), 0);
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            b.evict_idle(Duration::from_secs(60)),
            10_001,
            "all idle closed + expired open"
        );
        assert_eq!(b.len(), 1, "busy has a request in flight");
        held.success();
        assert_eq!(b.evict_idle(Duration::from_secs(60)), 1);
        assert!(b.is_empty());
    }

    fn labelled() -> (Arc<ManualClock>, Breakers) {
        let clock = Arc::new(ManualClock::new());
        let (_tx, rx) = tokio::sync::watch::channel(Some(crate::pipeline::test_support::state()));
        let labels = LabelContext::new("dp", rx);
        (
            clock.clone(),
            Breakers::with_clock_and_labels(clock, labels),
        )
    }

    #[test]
    fn gauge_follows_every_transition() {
        use crate::metrics::test_support::{Recording, sample};
        use crate::pipeline::test_support::AGENT;
        let series = [("caller", "agent"), ("service", "svc"), ("dataplane", "dp")];
        let state = |rec: &Recording| sample(&rec.render(), "meshward_breaker_state", &series);
        let moves = |rec: &Recording, to: &str| {
            sample(
                &rec.render(),
                "meshward_breaker_transitions_total",
                &[("service", "svc"), ("to", to)],
            )
        };
        let (clock, b) = labelled();
        let s = settings(2, 1);
        let rec = Recording::new();
        rec.run(|| b.acquire(AGENT, "svc", &s).unwrap().success());
        assert_eq!(state(&rec), Some(0.0), "a new breaker shows closed");
        rec.run(|| {
            for _ in 0..2 {
                b.acquire(AGENT, "svc", &s).unwrap().failure();
            }
        });
        assert_eq!(state(&rec), Some(2.0));
        assert_eq!(moves(&rec, "open"), Some(1.0));
        // Time alone makes it half-open; the sweep shows it.
        clock.advance(Duration::from_secs(10));
        rec.run(|| b.evict_idle(Duration::from_secs(600)));
        assert_eq!(state(&rec), Some(1.0));
        assert_eq!(moves(&rec, "half_open"), Some(1.0));
        rec.run(|| b.acquire(AGENT, "svc", &s).unwrap().success());
        assert_eq!(state(&rec), Some(0.0));
        assert_eq!(moves(&rec, "closed"), Some(1.0));
        assert_eq!(moves(&rec, "half_open"), Some(1.0), "counted once");
        // A settings change closes an open breaker, and says so.
        rec.run(|| {
            for _ in 0..2 {
                b.acquire(AGENT, "svc", &s).unwrap().failure();
            }
        });
        assert_eq!(state(&rec), Some(2.0));
        rec.run(|| b.acquire(AGENT, "svc", &settings(5, 1)).unwrap().success());
        assert_eq!(state(&rec), Some(0.0));
        assert_eq!(moves(&rec, "closed"), Some(2.0));
    }

    #[test]
    fn a_shared_series_shows_the_worst_state_and_forgets_evicted_breakers() {
        use crate::metrics::test_support::{Recording, sample};
        let (clock, b) = labelled();
        let s = settings(1, 1);
        // Two strangers share the "unregistered" caller series.
        let series = [("caller", "unregistered"), ("service", "svc")];
        let rec = Recording::new();
        let state = || sample(&rec.render(), "meshward_breaker_state", &series);
        rec.run(|| {
            b.acquire(A, "svc", &s).unwrap().failure();
            b.acquire(B, "svc", &s).unwrap().success();
        });
        assert_eq!(state(), Some(2.0));
        // B's success after A opened must not show the series closed.
        rec.run(|| b.acquire(B, "svc", &s).unwrap().success());
        assert_eq!(state(), Some(2.0));
        clock.advance(Duration::from_secs(60));
        rec.run(|| assert_eq!(b.evict_idle(Duration::from_secs(30)), 2));
        assert_eq!(state(), Some(0.0));
    }

    #[test]
    fn snapshot_lists_open_first_with_counts() {
        let (clock, b) = breakers();
        let s = settings(2, 1);
        b.acquire(B, UP, &s).unwrap().failure();
        trip(&b, A, &s);
        clock.advance(Duration::from_secs(3));
        let held = b.acquire(B, "other", &s).unwrap();
        let snap = b.snapshot(10);
        assert_eq!((snap.closed, snap.half_open, snap.open), (2, 0, 1));
        assert_eq!(snap.breakers[0].caller, A);
        assert_eq!(snap.breakers[0].service, UP);
        assert_eq!(snap.breakers[0].state, BreakerState::Open);
        assert_eq!(snap.breakers[0].retry_after, Some(Duration::from_secs(7)));
        let b_up = snap
            .breakers
            .iter()
            .find(|i| i.caller == B && i.service == UP);
        assert_eq!(b_up.map(|i| i.failures), Some(1));
        let b_other = snap.breakers.iter().find(|i| i.service == "other");
        assert_eq!(b_other.map(|i| i.in_flight), Some(1));
        held.success();
        let limited = b.snapshot(1);
        assert_eq!(limited.breakers.len(), 1);
        assert_eq!(
            limited.open + limited.closed,
            3,
            "counts cover every breaker"
        );
    }

    #[test]
    fn open_breaker_not_evicted() {
        let (clock, b) = breakers();
        let s = BreakerSettings {
            open_for: Duration::from_secs(600),
            ..settings(1, 1)
        };
        trip(&b, A, &s);
        clock.advance(Duration::from_secs(300));
        assert_eq!(b.evict_idle(Duration::from_secs(60)), 0);
        assert!(b.acquire(A, UP, &s).is_err());
    }
}
