//! The breakers' metrics: `meshward_breaker_state` and
//! `meshward_breaker_transitions_total`.
//!
//! Label values are bounded ([`crate::metrics::labels`]), so several
//! breakers can share one `(caller, service)` series: every unregistered
//! caller of a service, say. A gauge written by whichever breaker changed
//! last would then lie, so each series counts its breakers per state and
//! shows the worst state any of them is in (open over half-open over
//! closed); a series whose breakers are all gone reads closed, which is what
//! a forgotten breaker is when its identity returns.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use metrics::SharedString;

use super::BreakerState;
use crate::metrics::labels::LabelContext;
use crate::metrics::{BREAKER_STATE, BREAKER_TRANSITIONS};

/// The label values of one breaker, fixed when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SeriesKey {
    pub caller: SharedString,
    pub service: SharedString,
}

impl BreakerState {
    /// The gauge's encoding (documented in the family's HELP).
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// The `to` label of a transition.
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// Open over half-open over closed.
    pub(super) fn rank(self) -> u8 {
        self.index() as u8
    }

    fn index(self) -> usize {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Breakers per state, per series.
#[derive(Debug, Default)]
pub(super) struct Gauges {
    labels: LabelContext,
    series: Mutex<HashMap<SeriesKey, [u32; 3]>>,
}

impl Gauges {
    pub fn new(labels: LabelContext) -> Self {
        Self {
            labels,
            series: Mutex::default(),
        }
    }

    /// The series of the breaker of `caller` (a SPIFFE ID) at `service`.
    pub fn key(&self, caller: &str, service: &str) -> SeriesKey {
        SeriesKey {
            caller: self.labels.caller(caller),
            service: self.labels.service(service),
        }
    }

    /// A breaker was created (closed) in `key`'s series.
    pub fn added(&self, key: &SeriesKey) {
        self.update(key, |counts| counts[BreakerState::Closed.index()] += 1);
    }

    /// A breaker of `key`'s series went from `from` to `to`.
    pub fn moved(&self, key: &SeriesKey, from: BreakerState, to: BreakerState) {
        if from == to {
            return;
        }
        self.update(key, |counts| {
            let old = &mut counts[from.index()];
            *old = old.saturating_sub(1);
            counts[to.index()] += 1;
        });
        metrics::counter!(
            BREAKER_TRANSITIONS,
            "dataplane" => self.labels.dataplane(),
            "service" => key.service.clone(),
            "to" => to.label(),
        )
        .increment(1);
    }

    /// A breaker in state `state` was forgotten.
    pub fn removed(&self, key: &SeriesKey, state: BreakerState) {
        self.update(key, |counts| {
            let n = &mut counts[state.index()];
            *n = n.saturating_sub(1);
        });
    }

    fn update(&self, key: &SeriesKey, change: impl FnOnce(&mut [u32; 3])) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = series.entry(key.clone()).or_default();
        change(counts);
        let shown = worst(*counts);
        if counts.iter().all(|n| *n == 0) {
            series.remove(key);
        }
        // Set under the lock, so two updates of one series cannot land in
        // the wrong order.
        metrics::gauge!(
            BREAKER_STATE,
            "dataplane" => self.labels.dataplane(),
            "caller" => key.caller.clone(),
            "service" => key.service.clone(),
        )
        .set(shown.gauge_value());
    }
}

fn worst(counts: [u32; 3]) -> BreakerState {
    if counts[BreakerState::Open.index()] > 0 {
        BreakerState::Open
    } else if counts[BreakerState::HalfOpen.index()] > 0 {
        BreakerState::HalfOpen
    } else {
        BreakerState::Closed
    }
}
