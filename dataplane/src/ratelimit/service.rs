//! Envoy's rate-limit v3 service (`ShouldRateLimit`, envoyproxy/ratelimit's
//! port 8081), answered from the dataplane's own limiter.
//!
//! Each descriptor is judged on its own and gets one status, in order:
//!
//! - `caller` (a SPIFFE ID of the trust domain) is required: a descriptor
//!   without one, or with one that is not a SPIFFE ID of the mesh, is
//!   OVER_LIMIT. A request without an identity never falls into a shared
//!   budget.
//! - `caller` alone: the agent's own limit (`agents[].limits`), the budget
//!   its sidecar's outbound side spends.
//! - `caller` and `service`: that service's `per_caller_limits` for the
//!   caller, the budget the service's inbound side and an ext_authz check
//!   spend: one budget however it is enforced.
//! - Other entries are ignored: limits come from `mesh.yaml`, not from what
//!   Envoy sends. An unknown service is OVER_LIMIT (nothing to meter it by,
//!   and a typo must not mean "unlimited").
//!
//! `overall_code` is OVER_LIMIT when any descriptor is, else OK, never
//! UNKNOWN. Statuses carry `current_limit`, `limit_remaining` and
//! `duration_until_reset`; the response adds `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` (the IETF draft's headers)
//! for the most constrained descriptor, and `retry-after` when over.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use meshward_contract::rules;
use tonic::{Request, Response, Status};

use super::{RateLimitError, RateLimitSettings, Scope};
use crate::proxy::Shared;

/// The descriptor entry naming the caller's SPIFFE ID.
pub const CALLER_KEY: &str = "caller";
/// The descriptor entry naming the destination service.
pub const SERVICE_KEY: &str = "service";

/// The tonic service, sharing the dataplane's limiter and state.
#[derive(Clone)]
pub struct RateLimitServer {
    shared: Arc<Shared>,
}

impl RateLimitServer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub fn into_service(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self)
    }
}

/// One descriptor's verdict.
struct Verdict {
    over: bool,
    limit: Option<RateLimitSettings>,
    remaining: u32,
    reset: Duration,
    /// Why it is over, for the log.
    why: Option<String>,
}

impl Verdict {
    fn over(why: impl Into<String>) -> Self {
        Verdict {
            over: true,
            limit: None,
            remaining: 0,
            reset: Duration::ZERO,
            why: Some(why.into()),
        }
    }
}

impl RateLimitServer {
    fn judge(&self, d: &RateLimitDescriptor, hits: u32, trust_domain: &str) -> Verdict {
        let entry = |key: &str| {
            d.entries
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.as_str())
        };
        let Some(caller) = entry(CALLER_KEY) else {
            return Verdict::over("descriptor has no caller entry");
        };
        if rules::spiffe_id(caller, Some(trust_domain)).is_err() {
            return Verdict::over(format!(
                "caller {caller:?} is not a SPIFFE ID of {trust_domain}"
            ));
        }
        let Some(state) = self.shared.current_state() else {
            return Verdict::over("configuration not received from the control plane yet");
        };
        let (scope, destination, settings) = match entry(SERVICE_KEY) {
            Some(service) => match state.clusters.get(service) {
                Some(u) => (Scope::Ingress, service, u.service.per_caller_limits),
                None => return Verdict::over(format!("unknown service {service:?}")),
            },
            None => match state.agents.get(caller) {
                Some(agent) => (Scope::Egress, "", agent.limits),
                // Not a registered agent: no limit of its own, as in its
                // sidecar.
                None => (Scope::Egress, "", RateLimitSettings::default()),
            },
        };
        match self
            .shared
            .limiter
            .take_hits(scope, caller, destination, &settings, hits)
        {
            Ok(quota) => Verdict {
                over: false,
                limit: quota.map(|_| settings),
                remaining: quota.map_or(u32::MAX, |q| q.remaining),
                reset: quota.map_or(Duration::ZERO, |q| q.full_after),
                why: None,
            },
            Err(RateLimitError::RateExceeded { retry_after }) => Verdict {
                over: true,
                limit: Some(settings),
                remaining: 0,
                reset: retry_after,
                why: Some(format!(
                    "{caller} over its limit; retry after {retry_after:?}"
                )),
            },
            Err(e) => Verdict::over(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitServer {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let hits = request.hits_addend.max(1);
        let trust_domain = self
            .shared
            .own_spiffe_id()
            .ok()
            .and_then(|id| {
                id.strip_prefix("spiffe://")
                    .and_then(|r| r.split('/').next())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let verdicts: Vec<Verdict> = request
            .descriptors
            .iter()
            .map(|d| {
                let hits = d
                    .hits_addend
                    .filter(|h| h.value > 0)
                    .map_or(hits, |h| h.value as u32);
                self.judge(d, hits, &trust_domain)
            })
            .collect();
        for v in verdicts.iter().filter(|v| v.over) {
            tracing::info!(dataplane = %self.shared.name, domain = %request.domain,
                "rate limit: over: {}", v.why.as_deref().unwrap_or_default());
        }
        let over = verdicts.iter().any(|v| v.over);
        metrics::counter!(
            "meshward_rate_limit_calls_total",
            "dataplane" => self.shared.name.clone(),
            "code" => if over { "over_limit" } else { "ok" },
        )
        .increment(1);
        Ok(Response::new(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            response_headers_to_add: headers(&verdicts, over),
            statuses: verdicts.iter().map(status).collect(),
            ..Default::default()
        }))
    }
}

fn status(v: &Verdict) -> DescriptorStatus {
    DescriptorStatus {
        code: if v.over { Code::OverLimit } else { Code::Ok } as i32,
        current_limit: v.limit.as_ref().map(rate_limit),
        limit_remaining: if v.limit.is_some() { v.remaining } else { 0 },
        duration_until_reset: v.limit.map(|_| duration(v.reset)),
        ..Default::default()
    }
}

/// A rate as Envoy's `RateLimit`: the largest unit in which it is a whole
/// number of requests (so 0.5/s is 30 per minute).
fn rate_limit(s: &RateLimitSettings) -> RateLimit {
    let rps = s.requests_per_second;
    let (per_unit, unit) = [
        (1.0, Unit::Second),
        (60.0, Unit::Minute),
        (3600.0, Unit::Hour),
        (86_400.0, Unit::Day),
    ]
    .into_iter()
    .map(|(secs, unit)| (rps * secs, unit))
    .find(|(n, _)| *n >= 1.0 && n.fract() == 0.0)
    .unwrap_or(((rps * 86_400.0).round().max(1.0), Unit::Day));
    RateLimit {
        name: String::new(),
        requests_per_unit: per_unit.min(f64::from(u32::MAX)) as u32,
        unit: unit as i32,
    }
}

fn duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// `RateLimit-*` for the most constrained metered descriptor, and
/// `retry-after` when over.
fn headers(verdicts: &[Verdict], over: bool) -> Vec<HeaderValue> {
    let tightest = verdicts
        .iter()
        .filter(|v| v.limit.is_some())
        .min_by_key(|v| (!v.over, v.remaining));
    let mut out = Vec::new();
    let mut push = |k: &str, v: String| {
        out.push(HeaderValue {
            key: k.into(),
            value: v,
            ..Default::default()
        })
    };
    if let Some(v) = tightest {
        let burst = v.limit.map_or(0, |l| l.burst.max(1));
        let reset = v.reset.as_secs() + u64::from(v.reset.subsec_nanos() > 0);
        push("ratelimit-limit", burst.to_string());
        push("ratelimit-remaining", v.remaining.to_string());
        push("ratelimit-reset", reset.to_string());
        if over && v.over {
            push("retry-after", reset.max(1).to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rps: f64) -> RateLimitSettings {
        RateLimitSettings {
            requests_per_second: rps,
            burst: 5,
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_whole_requests_per_the_largest_unit_that_fits() {
        let r = rate_limit(&settings(5.0));
        assert_eq!((r.requests_per_unit, r.unit), (5, Unit::Second as i32));
        let r = rate_limit(&settings(0.5));
        assert_eq!((r.requests_per_unit, r.unit), (30, Unit::Minute as i32));
        let r = rate_limit(&settings(1.5));
        assert_eq!((r.requests_per_unit, r.unit), (90, Unit::Minute as i32));
        let r = rate_limit(&settings(1e-9));
        assert_eq!((r.requests_per_unit, r.unit), (1, Unit::Day as i32));
    }

    #[test]
    fn headers_follow_the_most_constrained_descriptor() {
        let ok = Verdict {
            over: false,
            limit: Some(settings(1.0)),
            remaining: 4,
            reset: Duration::from_millis(1500),
            why: None,
        };
        let tight = Verdict {
            remaining: 1,
            ..Verdict {
                over: false,
                limit: Some(settings(1.0)),
                remaining: 0,
                reset: Duration::from_secs(4),
                why: None,
            }
        };
        let h = headers(&[ok, tight], false);
        let get = |k: &str| h.iter().find(|h| h.key == k).map(|h| h.value.clone());
        assert_eq!(get("ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(get("ratelimit-remaining").as_deref(), Some("1"));
        assert_eq!(get("ratelimit-reset").as_deref(), Some("4"));
        assert_eq!(get("retry-after"), None);
        let over = Verdict::over("x");
        // An unmetered refusal (no caller) sets no RateLimit-* headers.
        assert!(headers(&[over], true).is_empty());
    }
}
