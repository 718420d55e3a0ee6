//! The parts of a dataplane's `/config_dump` that answer an operator's
//! "why was this refused?": the limits it enforces right now, the state of
//! its breakers, and the last xDS update it rejected.
//!
//! These are what the dataplane holds and does, not what `mesh.yaml` says:
//! a rejected update or one still in flight makes the two differ, and this
//! is the side that decides requests.

use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use crate::breaker::{BreakerInfo, BreakerSettings, BreakersSnapshot};
use crate::ratelimit::RateLimitSettings;
use crate::state::{ListenerLimits, MeshState};
use crate::xds::rejected::Rejection;

/// Breakers listed one by one (all are counted).
pub const BREAKERS_LISTED: usize = 200;

/// The limits this dataplane enforces: its listeners', its workload's own
/// egress limit (if it is a registered agent), and per service the
/// per-caller limit, breaker thresholds and upstream timeouts it applies.
pub fn effective_limits(state: &MeshState, own_spiffe_id: Option<&str>) -> Value {
    let egress = own_spiffe_id
        .and_then(|id| state.agents.get(id))
        .map(|a| json!({ "agent": a.name, "limit": rate_limit(&a.limits) }));
    let mut services: Vec<_> = state.clusters.values().collect();
    services.sort_by(|a, b| a.service.name.cmp(&b.service.name));
    json!({
        "listeners": listener_limits(&state.listeners),
        "egress": egress,
        "services": services.iter().map(|u| json!({
            "name": u.service.name,
            "per_caller_limits": rate_limit(&u.service.per_caller_limits),
            "breaker": breaker_settings(&u.service.breaker),
            "timeouts": timeouts(&u.service.timeouts.default),
            "routes": u.service.timeouts.routes.iter().map(|r| json!({
                "prefix": r.prefix,
                "timeouts": timeouts(&r.timeouts),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn listener_limits(l: &ListenerLimits) -> Value {
    json!({
        "header_read_timeout_ms": l.header_read_timeout.as_millis() as u64,
        "idle_timeout_ms": l.idle_timeout.as_millis() as u64,
        "max_connections": l.max_connections,
        "max_connections_per_client_ip": l.max_connections_per_client_ip,
        "max_request_headers_bytes": l.max_request_headers_bytes,
        "max_concurrent_streams": l.max_concurrent_streams,
        "admin_max_connections": l.admin_max_connections,
    })
}

fn rate_limit(l: &RateLimitSettings) -> Value {
    json!({
        "unlimited": l.is_unlimited(),
        "requests_per_second": l.rate_limited().then_some(l.requests_per_second),
        "burst": l.burst,
        "max_concurrent": l.max_concurrent,
        "per_destination": l.per_destination,
        "count_denied": l.count_denied,
    })
}

fn timeouts(t: &meshward_contract::spec::Timeouts) -> Value {
    json!({
        "response_ms": t.response.as_millis() as u64,
        "idle_ms": t.idle.as_millis() as u64,
        "total_ms": t.total.map(|d| d.as_millis() as u64),
    })
}

fn breaker_settings(b: &BreakerSettings) -> Value {
    json!({
        "enabled": b.consecutive_failures > 0,
        "consecutive_failures": b.consecutive_failures,
        "open_for_ms": b.open_for.as_millis() as u64,
        "half_open_probes": b.probes(),
    })
}

/// Breakers by state, and the first [`BREAKERS_LISTED`] (open first).
pub fn breakers(snapshot: &BreakersSnapshot) -> Value {
    let listed = snapshot.breakers.len();
    let total = snapshot.closed + snapshot.half_open + snapshot.open;
    json!({
        "counts": {
            "closed": snapshot.closed,
            "half_open": snapshot.half_open,
            "open": snapshot.open,
        },
        "truncated": listed < total,
        "breakers": snapshot.breakers.iter().map(breaker).collect::<Vec<_>>(),
    })
}

fn breaker(b: &BreakerInfo) -> Value {
    json!({
        "caller": b.caller,
        "service": b.service,
        "state": b.state.label(),
        "consecutive_failures": b.failures,
        "probes_admitted": b.probes_admitted,
        "probes_succeeded": b.probes_succeeded,
        "in_flight": b.in_flight,
        "retry_after_ms": b.retry_after.map(|d| d.as_millis() as u64),
    })
}

/// The last NACKed update, or `null`.
pub fn rejection(r: Option<&Rejection>) -> Value {
    match r {
        None => Value::Null,
        Some(r) => json!({
            "type_url": r.type_url,
            "error": r.error,
            "at": meshward_spire::identity::rfc3339(r.at),
            "at_unix": r.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::breaker::BreakerState;
    use crate::pipeline::test_support::{AGENT, SERVICE, state};

    #[test]
    fn limits_are_the_ones_in_force_for_this_workload() {
        let s = state();
        let agent = effective_limits(&s, Some(AGENT));
        assert_eq!(agent["egress"]["agent"], "agent");
        assert_eq!(agent["egress"]["limit"]["burst"], 3);
        assert_eq!(agent["egress"]["limit"]["max_concurrent"], 1);
        assert_eq!(agent["egress"]["limit"]["requests_per_second"], 1.0);
        let svc = &agent["services"][0];
        assert_eq!(svc["name"], "svc");
        assert_eq!(svc["per_caller_limits"]["burst"], 2);
        assert_eq!(svc["breaker"]["consecutive_failures"], 5);
        assert_eq!(svc["breaker"]["open_for_ms"], 10_000);
        assert_eq!(svc["timeouts"]["response_ms"], 30_000);
        assert_eq!(svc["timeouts"]["idle_ms"], 300_000);
        assert_eq!(svc["timeouts"]["total_ms"], Value::Null);
        assert_eq!(svc["routes"], serde_json::json!([]));
        assert_eq!(
            agent["listeners"]["max_connections"],
            s.listeners.max_connections
        );
        // A service's dataplane has no egress limit of its own.
        assert_eq!(effective_limits(&s, Some(SERVICE))["egress"], Value::Null);
        assert_eq!(effective_limits(&s, None)["egress"], Value::Null);
    }

    #[test]
    fn breakers_show_counts_and_truncation() {
        let snapshot = BreakersSnapshot {
            closed: 4,
            half_open: 0,
            open: 1,
            breakers: vec![BreakerInfo {
                caller: AGENT.into(),
                service: "svc".into(),
                state: BreakerState::Open,
                failures: 0,
                probes_admitted: 0,
                probes_succeeded: 0,
                in_flight: 0,
                retry_after: Some(Duration::from_millis(1500)),
            }],
        };
        let v = breakers(&snapshot);
        assert_eq!(v["counts"]["open"], 1);
        assert_eq!(v["counts"]["closed"], 4);
        assert_eq!(v["truncated"], true);
        assert_eq!(v["breakers"][0]["state"], "open");
        assert_eq!(v["breakers"][0]["caller"], AGENT);
        assert_eq!(v["breakers"][0]["retry_after_ms"], 1500);
        assert_eq!(breakers(&BreakersSnapshot::default())["truncated"], false);
    }

    #[test]
    fn rejection_names_type_error_and_time() {
        assert_eq!(rejection(None), Value::Null);
        let r = Rejection {
            type_url: "type.googleapis.com/meshward.v1.PolicyBundle".into(),
            error: "authz.rego:3: unexpected token".into(),
            at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let v = rejection(Some(&r));
        assert_eq!(v["type_url"], r.type_url);
        assert_eq!(v["error"], r.error);
        assert_eq!(v["at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["at_unix"], 1_700_000_000);
        assert!(SystemTime::now() > r.at);
    }
}
