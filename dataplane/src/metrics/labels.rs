//! Bounded `caller` and `service` label values.
//!
//! Every distinct label value is a time series kept for the life of the
//! process, by this recorder and by every Prometheus that scrapes it. A
//! caller's SPIFFE ID or a `service` descriptor comes from the network, so a
//! stranger presenting a new ID per request (or an Envoy sending made-up
//! service names) would otherwise grow the series without bound. The bound
//! has two parts:
//!
//! 1. **Registry only.** A value is used only if it names a member of the
//!    verified registry this dataplane holds (mesh.yaml's `agents` and
//!    `services`, as received over xDS): a registered caller is labelled by
//!    its registry `name` (an agent's, or a service's when a service calls),
//!    a registered service by its name. Anything else is
//!    [`UNREGISTERED`]; so is everything before the first configuration.
//! 2. **A budget per label.** At most [`DEFAULT_MAX_VALUES`] distinct values
//!    per label name per process (a registry can be large too); the first
//!    values seen keep their series, later ones are [`OTHER`].
//!
//! A family with `caller` and `service` labels therefore has at most
//! `(200 + 2) × (200 + 2)` series per other label combination, whatever
//! arrives. Values never leave the budget once admitted: their series
//! exist in the recorder anyway.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use metrics::SharedString;
use tokio::sync::watch;

use crate::pipeline::identify::Identity;
use crate::state::MeshState;

/// The label value of a caller or service that is not in the registry.
pub const UNREGISTERED: &str = "unregistered";
/// The label value of a registered caller or service beyond the budget.
pub const OTHER: &str = "other";
/// The label value for "no service" (a rate-limit descriptor that names
/// only the caller).
pub const NONE: &str = "none";
/// Distinct values admitted per label name per process.
pub const DEFAULT_MAX_VALUES: usize = 200;

/// At most `max` distinct values of one label; later values are [`OTHER`].
#[derive(Debug)]
pub struct LabelBudget {
    max: usize,
    admitted: RwLock<HashSet<String>>,
}

impl LabelBudget {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            admitted: RwLock::new(HashSet::new()),
        }
    }

    /// `value` if it is already admitted or there is room for it, else
    /// [`OTHER`].
    pub fn admit(&self, value: &str) -> SharedString {
        let admitted = self.admitted.read().unwrap_or_else(PoisonError::into_inner);
        if admitted.contains(value) {
            return SharedString::from(value.to_string());
        }
        drop(admitted);
        let mut admitted = self
            .admitted
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if admitted.contains(value) || admitted.len() < self.max {
            admitted.insert(value.to_string());
            SharedString::from(value.to_string())
        } else {
            SharedString::const_str(OTHER)
        }
    }

    /// Values admitted so far.
    pub fn len(&self) -> usize {
        self.admitted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

static CALLERS: LazyLock<LabelBudget> = LazyLock::new(|| LabelBudget::new(DEFAULT_MAX_VALUES));
static SERVICES: LazyLock<LabelBudget> = LazyLock::new(|| LabelBudget::new(DEFAULT_MAX_VALUES));

/// The registry name of `spiffe_id` as a caller: a registered agent's
/// name, or a registered service's (a service calling another).
fn registered_caller<'a>(state: &'a MeshState, spiffe_id: &str) -> Option<&'a str> {
    state
        .agents
        .get(spiffe_id)
        .map(|a| a.name.as_str())
        .or_else(|| {
            state
                .service_by_spiffe_id(spiffe_id)
                .map(|u| u.service.name.as_str())
        })
}

/// The `caller` label of the caller with SPIFFE ID `spiffe_id`, judged
/// against `state`'s registry (none yet: [`UNREGISTERED`]), within `budget`.
pub fn caller_in(budget: &LabelBudget, state: Option<&MeshState>, spiffe_id: &str) -> SharedString {
    match state.and_then(|s| registered_caller(s, spiffe_id)) {
        Some(name) => budget.admit(name),
        None => SharedString::const_str(UNREGISTERED),
    }
}

/// The `service` label of service `name`, judged against `state`'s
/// registry, within `budget`. An empty name is [`NONE`].
pub fn service_in(budget: &LabelBudget, state: Option<&MeshState>, name: &str) -> SharedString {
    if name.is_empty() {
        return SharedString::const_str(NONE);
    }
    match state.filter(|s| s.clusters.contains_key(name)) {
        Some(_) => budget.admit(name),
        None => SharedString::const_str(UNREGISTERED),
    }
}

/// The `caller` label of the caller with SPIFFE ID `spiffe_id`, within the
/// process's caller budget.
pub fn caller_label(state: Option<&MeshState>, spiffe_id: &str) -> SharedString {
    caller_in(&CALLERS, state, spiffe_id)
}

/// The `service` label of service `name`, within the process's service
/// budget.
pub fn service_label(state: Option<&MeshState>, name: &str) -> SharedString {
    service_in(&SERVICES, state, name)
}

/// The `caller` label of an identified request (the request path's entry
/// point: the identity carries the registry it was judged under).
pub fn caller_label_of(identity: &Identity) -> SharedString {
    match &identity.caller {
        Some(agent) => CALLERS.admit(&agent.name),
        None => caller_label(Some(&identity.state), &identity.caller_id),
    }
}

/// What the breakers and the limiter label their series with: this
/// dataplane's name and its registry, read when a label is needed so a
/// registry update is honoured.
#[derive(Debug, Clone)]
pub struct LabelContext {
    dataplane: SharedString,
    registry: Option<watch::Receiver<Option<Arc<MeshState>>>>,
}

impl Default for LabelContext {
    /// No dataplane name and no registry: every caller and service is
    /// [`UNREGISTERED`].
    fn default() -> Self {
        Self {
            dataplane: SharedString::const_str(""),
            registry: None,
        }
    }
}

impl LabelContext {
    pub fn new(dataplane: &str, registry: watch::Receiver<Option<Arc<MeshState>>>) -> Self {
        Self {
            dataplane: SharedString::from(dataplane.to_string()),
            registry: Some(registry),
        }
    }

    /// The `dataplane` label.
    pub fn dataplane(&self) -> SharedString {
        self.dataplane.clone()
    }

    fn state(&self) -> Option<Arc<MeshState>> {
        self.registry.as_ref().and_then(|r| r.borrow().clone())
    }

    /// [`caller_label`] against the current registry.
    pub fn caller(&self, spiffe_id: &str) -> SharedString {
        caller_label(self.state().as_deref(), spiffe_id)
    }

    /// [`service_label`] against the current registry.
    pub fn service(&self, name: &str) -> SharedString {
        service_label(self.state().as_deref(), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::identify::identify;
    use crate::pipeline::test_support::{AGENT, SERVICE, state};
    use crate::policy::Direction;

    #[test]
    fn registered_names_only() {
        let budget = LabelBudget::new(10);
        let s = state();
        assert_eq!(&*caller_in(&budget, Some(&s), AGENT), "agent");
        assert_eq!(
            &*caller_in(&budget, Some(&s), SERVICE),
            "svc",
            "a service calling"
        );
        assert_eq!(
            &*caller_in(&budget, Some(&s), "spiffe://example.org/agent/stranger"),
            UNREGISTERED
        );
        assert_eq!(
            &*caller_in(&budget, None, AGENT),
            UNREGISTERED,
            "no registry yet"
        );
        assert_eq!(&*service_in(&budget, Some(&s), "svc"), "svc");
        assert_eq!(&*service_in(&budget, Some(&s), "made-up"), UNREGISTERED);
        assert_eq!(&*service_in(&budget, Some(&s), ""), NONE);
        // Unregistered values never spend the budget.
        assert_eq!(budget.len(), 2);
    }

    #[test]
    fn budget_overflows_to_other_and_keeps_admitted_values() {
        let budget = LabelBudget::new(2);
        assert_eq!(&*budget.admit("a"), "a");
        assert_eq!(&*budget.admit("b"), "b");
        assert_eq!(&*budget.admit("c"), OTHER);
        assert_eq!(&*budget.admit("a"), "a", "admitted values stay");
        assert_eq!(&*budget.admit("c"), OTHER);
        assert_eq!(budget.len(), 2);
    }

    #[test]
    fn identity_label_uses_its_registry() {
        let id = identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap();
        assert_eq!(&*caller_label_of(&id), "agent");
    }

    #[test]
    fn context_follows_registry_updates() {
        let (tx, rx) = watch::channel(None);
        let ctx = LabelContext::new("dp", rx);
        assert_eq!(&*ctx.caller(AGENT), UNREGISTERED);
        tx.send_replace(Some(state()));
        assert_eq!(&*ctx.caller(AGENT), "agent");
        assert_eq!(&*ctx.service("svc"), "svc");
        assert_eq!(&*ctx.dataplane(), "dp");
        assert_eq!(&*LabelContext::default().service("svc"), UNREGISTERED);
    }
}
