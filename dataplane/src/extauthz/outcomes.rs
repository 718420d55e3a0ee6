//! Upstream outcomes for ext_authz mode, from Envoy's access log service.
//!
//! A `Check` happens before the upstream answers, so on its own it can
//! consult a breaker but never feed it, and it cannot hold a concurrency
//! slot for the request's lifetime. With outcomes on, an allowed check
//! keeps its breaker report and its slot, keyed by the `decision_id` it put
//! in Envoy's dynamic metadata; Envoy's gRPC access logger
//! (`envoy.access_loggers.http_grpc`, pointed at the same listener) then
//! reports each finished request with that metadata, and the entry settles:
//! a 5xx or an upstream failure flag (reset, connection failure, timeout,
//! no healthy upstream, overflow) is a failure, anything else a success,
//! and the slot is freed. A request Envoy never reports (no access logger
//! configured, a log entry dropped) is abandoned after `ttl`: its slot is
//! freed and the breaker hears nothing, as when the sidecar's client goes
//! away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use envoy_types::pb::envoy::data::accesslog::v3::{HttpAccessLogEntry, ResponseFlags};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::{Request, Response, Status, Streaming};

use crate::pipeline::admit::Admitted;

/// The dynamic-metadata namespace Envoy's ext_authz filter writes under.
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// Admitted checks waiting for their outcome, by decision id.
pub struct Pending {
    held: DashMap<String, (Admitted, Instant)>,
    ttl: Duration,
}

impl Pending {
    pub fn new(ttl: Duration) -> Self {
        Self {
            held: DashMap::new(),
            ttl,
        }
    }

    /// Keeps `admitted` until its outcome arrives or `ttl` passes.
    pub fn hold(&self, decision_id: String, admitted: Admitted) {
        self.held
            .insert(decision_id, (admitted, Instant::now() + self.ttl));
    }

    /// Settles one request; false when nothing waited for it.
    pub fn settle(&self, decision_id: &str, failed: bool) -> bool {
        let Some((_, (admitted, _))) = self.held.remove(decision_id) else {
            return false;
        };
        if failed {
            admitted.breaker.failure();
        } else {
            admitted.breaker.success();
        }
        true
    }

    /// Abandons entries past their deadline; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let expired: Vec<String> = self
            .held
            .iter()
            .filter(|e| e.value().1 <= now)
            .map(|e| e.key().clone())
            .collect();
        let mut n = 0;
        for id in expired {
            if let Some((_, (admitted, _))) = self.held.remove(&id) {
                admitted.breaker.abandon();
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The access log service, settling [`Pending`] entries.
#[derive(Clone)]
pub struct Outcomes {
    pending: Arc<Pending>,
}

impl Outcomes {
    pub fn new(pending: Arc<Pending>) -> Self {
        Self { pending }
    }

    pub fn into_service(self) -> AccessLogServiceServer<Self> {
        AccessLogServiceServer::new(self)
    }
}

/// The decision id and whether the upstream failed, for one access log
/// entry that came through Meshward's ext_authz.
pub fn outcome(entry: &HttpAccessLogEntry) -> Option<(String, bool)> {
    let common = entry.common_properties.as_ref()?;
    let id = common
        .metadata
        .as_ref()?
        .filter_metadata
        .get(EXT_AUTHZ_NAMESPACE)?
        .fields
        .get("decision_id")?;
    let Some(Kind::StringValue(id)) = &id.kind else {
        return None;
    };
    let code = entry
        .response
        .as_ref()
        .and_then(|r| r.response_code.as_ref())
        .map_or(0, |c| c.value);
    let flagged = common.response_flags.as_ref().is_some_and(upstream_failed);
    Some((id.clone(), code >= 500 || flagged))
}

fn upstream_failed(f: &ResponseFlags) -> bool {
    f.upstream_connection_failure
        || f.upstream_remote_reset
        || f.upstream_connection_termination
        || f.upstream_request_timeout
        || f.no_healthy_upstream
        || f.upstream_overflow
        || f.upstream_protocol_error
}

#[tonic::async_trait]
impl AccessLogService for Outcomes {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut stream = request.into_inner();
        while let Some(message) = stream.message().await? {
            let Some(LogEntries::HttpLogs(logs)) = message.log_entries else {
                continue;
            };
            for entry in &logs.log_entry {
                if let Some((id, failed)) = outcome(entry) {
                    self.pending.settle(&id, failed);
                }
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{BreakerState, Breakers};
    use crate::ratelimit::{RateLimitSettings, RateLimiter, Scope};
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::data::accesslog::v3::{AccessLogCommon, HttpResponseProperties};
    use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value};
    use meshward_contract::spec::BreakerSettings;

    fn entry(id: &str, code: u32) -> HttpAccessLogEntry {
        let mut fields = Struct::default();
        fields.fields.insert(
            "decision_id".into(),
            Value {
                kind: Some(Kind::StringValue(id.into())),
            },
        );
        let mut metadata = Metadata::default();
        metadata
            .filter_metadata
            .insert(EXT_AUTHZ_NAMESPACE.into(), fields);
        HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                metadata: Some(metadata),
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(UInt32Value { value: code }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn entries_name_their_decision_and_5xx_or_upstream_flags_fail() {
        assert_eq!(outcome(&entry("a", 200)), Some(("a".into(), false)));
        assert_eq!(outcome(&entry("b", 503)), Some(("b".into(), true)));
        let mut reset = entry("c", 200);
        reset.common_properties.as_mut().unwrap().response_flags = Some(ResponseFlags {
            upstream_remote_reset: true,
            ..Default::default()
        });
        assert_eq!(outcome(&reset), Some(("c".into(), true)));
        assert_eq!(outcome(&HttpAccessLogEntry::default()), None);
    }

    #[test]
    fn held_checks_feed_the_breaker_and_free_their_slot() {
        let limiter = RateLimiter::new();
        let breakers = Breakers::new();
        let settings = BreakerSettings {
            consecutive_failures: 2,
            ..Default::default()
        };
        let limit = RateLimitSettings {
            max_concurrent: 1,
            ..Default::default()
        };
        let pending = Pending::new(Duration::from_secs(60));
        let admit = |n: &str| Admitted {
            permit: limiter
                .check(Scope::Ingress, Some("spiffe://td/a"), "svc", &limit)
                .unwrap_or_else(|e| panic!("{n}: {e}")),
            breaker: breakers.acquire("spiffe://td/a", "svc", &settings).unwrap(),
        };
        pending.hold("1".into(), admit("first"));
        // The slot is held until the outcome arrives.
        assert!(
            limiter
                .check(Scope::Ingress, Some("spiffe://td/a"), "svc", &limit)
                .is_err()
        );
        assert!(pending.settle("1", true));
        assert!(!pending.settle("1", true), "settled once");
        pending.hold("2".into(), admit("second"));
        assert!(pending.settle("2", true));
        assert_eq!(breakers.state("spiffe://td/a", "svc"), BreakerState::Open);
        // Unreported entries are abandoned at their deadline.
        let short = Pending::new(Duration::ZERO);
        let limiter2 = RateLimiter::new();
        short.hold(
            "3".into(),
            Admitted {
                permit: limiter2
                    .check(Scope::Ingress, Some("spiffe://td/b"), "svc", &limit)
                    .unwrap(),
                breaker: breakers.acquire("spiffe://td/b", "svc", &settings).unwrap(),
            },
        );
        assert_eq!(short.expire(Instant::now() + Duration::from_millis(1)), 1);
        assert!(short.is_empty());
        assert!(
            limiter2
                .check(Scope::Ingress, Some("spiffe://td/b"), "svc", &limit)
                .is_ok()
        );
    }
}
