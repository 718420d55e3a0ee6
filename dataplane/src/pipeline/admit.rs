//! Stage 5, admit: the caller's rate limit and its breaker for this upstream.
//!
//! The outbound side enforces the agent's own egress limit and a breaker
//! keyed by (agent, service); the inbound side enforces the service's
//! `per_caller_limits` and a breaker keyed by (caller, service). Both key by
//! the caller's identity, so one agent never spends another's budget.

use std::sync::LazyLock;

use super::identify::Identity;
use super::refusal::Refusal;
use crate::breaker::{BreakerGuard, Breakers};
use crate::policy::{Checkpoint, Direction};
use crate::ratelimit::{Permit, RateLimitError, RateLimitSettings, RateLimiter, Scope};
use crate::state::Upstream;

/// An admitted request: its concurrency slot (held until the response body
/// is done) and its breaker report.
pub struct Admitted {
    pub permit: Permit,
    pub breaker: BreakerGuard,
}

/// The limit that applies at `checkpoint`, and its scope. A caller that is
/// not a registered agent has no egress limit of its own (the outbound
/// caller is always the sidecar's registered workload). An ext_authz check
/// stands where the service's inbound sidecar would: the service's
/// `per_caller_limits`.
pub fn limit_settings<'a>(
    checkpoint: Checkpoint,
    identity: &'a Identity,
    upstream: &'a Upstream,
) -> (Scope, &'a RateLimitSettings) {
    static UNLIMITED: LazyLock<RateLimitSettings> = LazyLock::new(RateLimitSettings::default);
    match checkpoint {
        Checkpoint::Sidecar(Direction::Inbound) | Checkpoint::ExtAuthz => {
            (Scope::Ingress, &upstream.service.per_caller_limits)
        }
        Checkpoint::Sidecar(Direction::Outbound) => (
            Scope::Egress,
            identity
                .caller
                .as_deref()
                .map(|c| &c.limits)
                .unwrap_or(&UNLIMITED),
        ),
    }
}

fn rate_limited(identity: &Identity, upstream: &Upstream, error: RateLimitError) -> Refusal {
    Refusal::RateLimited {
        caller: identity.caller_id.clone(),
        service: upstream.service.name.clone(),
        error,
    }
}

/// Takes a slot of the caller's limit and of its breaker, or refuses.
pub fn admit(
    limiter: &RateLimiter,
    breakers: &Breakers,
    checkpoint: Checkpoint,
    identity: &Identity,
    upstream: &Upstream,
) -> Result<Admitted, Refusal> {
    let service = &upstream.service;
    let (scope, settings) = limit_settings(checkpoint, identity, upstream);
    let permit = limiter
        .check(scope, Some(&identity.caller_id), &service.name, settings)
        .map_err(|e| rate_limited(identity, upstream, e))?;
    let breaker = breakers.acquire(&identity.caller_id, &service.name, &service.breaker)?;
    Ok(Admitted { permit, breaker })
}

/// Charges a denied request one token of the caller's limit (unless the
/// limit opts out with `count_denied: false`); an empty bucket is a 429.
pub fn charge_denied(
    limiter: &RateLimiter,
    checkpoint: Checkpoint,
    identity: &Identity,
    upstream: &Upstream,
) -> Result<(), Refusal> {
    let (scope, settings) = limit_settings(checkpoint, identity, upstream);
    limiter
        .charge(scope, &identity.caller_id, &upstream.service.name, settings)
        .map_err(|e| rate_limited(identity, upstream, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::VerifiedPeer;
    use crate::pipeline::identify::identify;
    use crate::pipeline::test_support::{AGENT, SERVICE, state};

    #[test]
    fn outbound_uses_the_agents_limit_inbound_the_services() {
        let out = identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap();
        let up = out.state.clusters["svc"].clone();
        assert_eq!(
            limit_settings(Direction::Outbound.into(), &out, &up)
                .1
                .burst,
            3
        );
        let peer = VerifiedPeer {
            spiffe_id: AGENT.into(),
            cert_sha256: String::new(),
        };
        let inb = identify(
            Ok(SERVICE.into()),
            Some(state()),
            Direction::Inbound,
            Some(&peer),
        )
        .unwrap();
        assert_eq!(
            limit_settings(Direction::Inbound.into(), &inb, &up).1.burst,
            2
        );
    }

    #[test]
    fn concurrency_and_breaker_refusals_are_typed() {
        let id = identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap();
        let up = id.state.clusters["svc"].clone();
        let limiter = RateLimiter::new();
        let breakers = Breakers::new();
        // max_concurrent 1: the second request while the first is in flight.
        let first = admit(&limiter, &breakers, Direction::Outbound.into(), &id, &up).unwrap();
        match admit(&limiter, &breakers, Direction::Outbound.into(), &id, &up) {
            Err(Refusal::RateLimited {
                caller,
                service,
                error,
            }) => {
                assert_eq!(caller, AGENT);
                assert_eq!(service, "svc");
                assert_eq!(error, RateLimitError::TooManyConcurrent { limit: 1 });
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("admitted over the concurrency cap"),
        }
        first.breaker.failure();
        drop(first.permit);
        // Four more failures open the (default, 5 failures) breaker; a
        // fresh limiter each time keeps the rate limit out of the way.
        for _ in 0..4 {
            let limiter = RateLimiter::new();
            let a = admit(&limiter, &breakers, Direction::Outbound.into(), &id, &up);
            let Ok(a) = a else {
                panic!("refused before the breaker opened")
            };
            a.breaker.failure();
        }
        let limiter = RateLimiter::new();
        assert!(matches!(
            admit(&limiter, &breakers, Direction::Outbound.into(), &id, &up),
            Err(Refusal::CircuitOpen(_))
        ));
    }
}
