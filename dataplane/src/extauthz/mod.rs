//! Envoy's ext_authz v3 `Check`, answered by the sidecar's own stages.
//!
//! Existing Envoy, Istio and Envoy Gateway meshes point their `ext_authz`
//! filter here and get the mesh's policy, per-caller limits and breakers
//! with nothing else changed. A check runs what a service's inbound sidecar
//! runs, minus the forwarding:
//!
//! 1. fail closed without a usable SVID or a warm config;
//! 2. the caller: `attributes.source.principal`, or a trusted front proxy's
//!    `x-forwarded-client-cert` ([`caller`]); exactly one SPIFFE ID in the
//!    trust domain, or denied;
//! 3. the service: a `context_extensions` key, this listener's setting, or
//!    the `:authority` ([`ExtAuthzSettings`]);
//! 4. the path, canonicalized under the service's rules (the policy judges
//!    the canonical path; the raw one stays in `input.meshward.raw_path`);
//! 5. the policy, on opa-envoy-plugin's input document (built by
//!    [`crate::policy::document`], as for the sidecar) and decision
//!    ([`response`]), through the sidecar's own judge;
//! 6. the caller's limit at that service and its breaker.
//!
//! Every answer sets `status` (Envoy treats an unset one as OK) and carries
//! the decision id in `dynamic_metadata` and the decision log line.

mod caller;
pub mod outcomes;
mod response;

use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

pub use caller::CallerError;
use outcomes::{Outcomes, Pending};

use crate::canonical;
use crate::mcp::McpError;
use crate::pipeline::authorize::{Audit, judge};
use crate::pipeline::identify::Identity;
use crate::pipeline::refusal::{BadRequest, Denial, NotReady, Refusal};
use crate::pipeline::{admit, headers, inspect};
use crate::policy::{CallerFacts, Checkpoint, Decision, MeshFacts, ServiceFacts, document};
use crate::proxy::Shared;
use crate::state::{MeshState, PathRules, Upstream};
use meshward_telemetry::{HopSpan, SpanKind};

/// The `context_extensions` key that names the destination service (set it
/// per route or virtual host in Envoy's `ext_authz` per-route config).
pub const SERVICE_CONTEXT_KEY: &str = "meshward_service";

/// How one ext_authz listener reads its checks.
#[derive(Debug, Clone, Default)]
pub struct ExtAuthzSettings {
    /// Front proxies (by SPIFFE ID) whose `x-forwarded-client-cert` names
    /// the caller. Empty: the principal Envoy verified is always the caller.
    pub trusted_proxies: Vec<String>,
    /// The destination service when neither the check's context extension
    /// nor its `:authority` names one (an Envoy in front of one service).
    pub service: Option<String>,
    /// Log the real decision, then allow.
    pub dry_run: bool,
    /// Allow when the policy fails to evaluate (default: deny).
    pub allow_on_policy_error: bool,
    /// Hold each allowed check's breaker report and concurrency slot until
    /// Envoy's access log service reports the request ([`outcomes`]), at
    /// most this long. `None`: breakers are consulted but never fed, and
    /// `max_concurrent` does not apply.
    pub outcomes: Option<std::time::Duration>,
}

/// The tonic service: one per listener, sharing the dataplane's state,
/// limiter and breakers with its sidecar listeners.
#[derive(Clone)]
pub struct ExtAuthz {
    shared: Arc<Shared>,
    settings: Arc<ExtAuthzSettings>,
    pending: Option<Arc<Pending>>,
}

impl ExtAuthz {
    pub fn new(shared: Arc<Shared>, settings: ExtAuthzSettings) -> Self {
        let pending = settings.outcomes.map(|ttl| Arc::new(Pending::new(ttl)));
        Self {
            shared,
            settings: Arc::new(settings),
            pending,
        }
    }

    /// `Check`, and with outcomes on, the access log service that settles
    /// them (plus the task that abandons unreported ones, until `stop`).
    pub fn into_routes(self, stop: CancellationToken) -> Routes {
        let mut routes = Routes::new(AuthorizationServer::new(self.clone()));
        if let Some(pending) = &self.pending {
            routes = routes.add_service(Outcomes::new(pending.clone()).into_service());
            tokio::spawn(expire(pending.clone(), stop));
        }
        routes
    }

    /// The decision for one check: allowed with the policy's decision, or
    /// a refusal. `decision_id` names it in the logs.
    fn decide(
        &self,
        attributes: &AttributeContext,
        request_id: &str,
        decision_id: &str,
        audit: Option<&mut Audit<'_>>,
        span: &mut HopSpan,
    ) -> Result<Decision, Refusal> {
        let own = self.shared.own_spiffe_id().map_err(NotReady::Identity)?;
        let state = self.shared.current_state().ok_or(NotReady::NoConfig)?;
        let trust_domain = own
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_string();
        let caller_id = caller::caller(attributes, &self.settings.trusted_proxies, &trust_domain)
            .map_err(|e| Refusal::Forbidden(Denial::plain(e.to_string())))?;
        span.set("meshward.caller", caller_id.clone());
        let http = attributes.request.as_ref().and_then(|r| r.http.as_ref());
        let upstream = self.service(attributes, &state);
        if let Some(u) = &upstream {
            span.set("meshward.service", u.service.name.clone());
        }
        let raw_path = http.map_or("", |h| h.path.as_str());
        let rules = upstream
            .as_ref()
            .map_or_else(PathRules::default, |u| u.service.paths);
        let path = canonical::canonicalize(raw_path, rules)
            .map_err(|error| {
                Refusal::BadRequest(BadRequest::Path {
                    path: raw_path.to_string(),
                    error,
                })
            })?
            .into_string();
        let identity = Identity {
            caller: state.agents.get(&caller_id).cloned(),
            state,
            own_spiffe_id: own,
            caller_id,
            own_service: upstream.clone(),
        };
        let doc = input(attributes, &path, raw_path, &identity, upstream.as_deref())?;
        let messages = match upstream.as_deref() {
            Some(u) => mcp_messages(u, &path, http)?,
            None => None,
        };
        let judged = match (&messages, upstream.as_deref()) {
            (Some(body), Some(u)) => inspect::judge_messages(
                &identity,
                u,
                Checkpoint::ExtAuthz,
                &doc,
                body,
                &self.shared.limiter,
                audit,
                request_id,
            )
            .map_err(Refusal::into_plain)
            .and_then(|decisions| {
                decisions
                    .into_iter()
                    .next()
                    .ok_or_else(|| Refusal::Forbidden(Denial::plain("no MCP message to judge")))
            }),
            _ => judge(
                &identity,
                upstream.as_deref(),
                Checkpoint::ExtAuthz,
                &doc,
                &self.shared.limiter,
                audit,
            ),
        };
        let mut decision = match judged {
            // Allowed by configuration, but still metered and still
            // stripped of forged identity headers below.
            Err(Refusal::PolicyError(e)) if self.settings.allow_on_policy_error => {
                tracing::warn!(dataplane = %self.shared.name, request_id,
                    "ext_authz: policy error, allowed by configuration: {e}");
                Decision::allow()
            }
            other => other?,
        };
        if let Some(upstream) = &upstream {
            let admitted = admit::admit(
                &self.shared.limiter,
                &self.shared.breakers,
                Checkpoint::ExtAuthz,
                &identity,
                upstream,
            )?;
            match &self.pending {
                Some(pending) if !self.settings.dry_run => {
                    pending.hold(decision_id.to_string(), admitted);
                }
                // Without outcomes the breaker is consulted (an open one
                // refuses above) but hears nothing, and the concurrency
                // slot ends with the check.
                _ => admitted.breaker.abandon(),
            }
        }
        assert_identity(&mut decision, attributes, Some(&identity));
        Ok(decision)
    }

    /// The destination service: the check's context extension, else this
    /// listener's setting, else the `:authority` (`svc`, `svc:port`,
    /// `svc.anything`). `None` when it names no service the mesh knows;
    /// the policy then sees `input.meshward.service: null`.
    fn service(&self, attributes: &AttributeContext, state: &MeshState) -> Option<Arc<Upstream>> {
        service(attributes, self.settings.service.as_deref(), state)
    }
}

/// The MCP messages of a check on a `protocol: mcp` service's endpoint,
/// parsed as the sidecar parses them. Envoy must send the body
/// (`with_request_body`); a check without it, or with a truncated one, is
/// refused rather than allowed on the service-level rules alone.
fn mcp_messages(
    upstream: &Upstream,
    path: &str,
    http: Option<&HttpRequest>,
) -> Result<Option<crate::mcp::Body>, Refusal> {
    let Some(settings) = inspect::endpoint(upstream, path) else {
        return Ok(None);
    };
    let Some(http) = http else {
        return Err(BadRequest::Mcp(McpError::Unsupported(
            "a check without an HTTP request".into(),
        ))
        .into());
    };
    let body: &[u8] = if http.body.is_empty() {
        &http.raw_body
    } else {
        http.body.as_bytes()
    };
    let declared = http
        .headers
        .get("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    let truncated = http
        .headers
        .get("x-envoy-auth-partial-body")
        .is_some_and(|v| v == "true")
        || declared.is_some_and(|n| n > body.len() as u64);
    if http.method == "POST" && body.is_empty() && !truncated {
        return Err(BadRequest::Mcp(McpError::Unsupported(
            "an MCP message without its body (set with_request_body on Envoy's ext_authz filter)"
                .into(),
        ))
        .into());
    }
    let encoding = http.headers.get("content-encoding").map(String::as_str);
    inspect::parse(settings, &http.method, encoding, body, truncated)
}

/// See [`ExtAuthz::service`]; `configured` is the listener's setting.
fn service(
    attributes: &AttributeContext,
    configured: Option<&str>,
    state: &MeshState,
) -> Option<Arc<Upstream>> {
    {
        let host = attributes
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .map(|h| h.host.as_str());
        let name = attributes
            .context_extensions
            .get(SERVICE_CONTEXT_KEY)
            .map(String::as_str)
            .or(configured)
            .or_else(|| host.and_then(crate::route::service_of_host))?;
        state.clusters.get(name).cloned()
    }
}

/// The W3C trace context of the request being checked: the check's span
/// joins the agent's trace (Envoy forwards `traceparent` in the request's
/// headers).
fn trace_context(attributes: &AttributeContext) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let Some(http) = attributes.request.as_ref().and_then(|r| r.http.as_ref()) else {
        return headers;
    };
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = http
            .headers
            .get(name)
            .and_then(|v| http::HeaderValue::from_str(v).ok())
        {
            headers.insert(name, v);
        }
    }
    headers
}

/// The check span's RPC attributes and what was decided.
fn span_attributes(
    span: &mut HopSpan,
    request_id: &str,
    verdict: Option<crate::observe::record::Verdict>,
    outcome: &Result<Decision, Refusal>,
) {
    span.set("rpc.system", "grpc");
    span.set("rpc.service", "envoy.service.auth.v3.Authorization");
    span.set("rpc.method", "Check");
    span.set("meshward.direction", "ext_authz");
    span.set("meshward.request_id", request_id.to_string());
    if let Some(v) = verdict {
        span.set(
            "meshward.decision",
            if v.allowed { "allow" } else { "deny" },
        );
        span.set("meshward.policy_revision", v.revision);
        if let Some(id) = v.decision_id {
            span.set("meshward.decision_id", id);
        }
    }
    if let Err(refusal) = outcome {
        span.set("meshward.refusal", refusal.kind());
        span.set("meshward.refusal_reason", refusal.to_string());
    }
}

/// Abandons held checks Envoy never reported, once a second.
async fn expire(pending: Arc<Pending>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let n = pending.expire(std::time::Instant::now());
                if n > 0 {
                    tracing::debug!(abandoned = n, "ext_authz: checks without an access log entry");
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// What the upstream learns from the mesh, as on the sidecar's inbound
/// side: `x-agent-id` (the caller) and `x-agent-<attribute>` from the
/// registry, set after the policy's own headers so they win; and every
/// mesh-asserted header the client sent (`x-agent-*`, `x-meshward-*`, any
/// spelling) removed. A rate-limit action can then read the caller from
/// `x-agent-id`. `x-request-id` is Envoy's and stays. Without an identity
/// (a dry-run allow of a request the mesh refused) only the stripping
/// happens.
fn assert_identity(
    decision: &mut Decision,
    attributes: &AttributeContext,
    identity: Option<&Identity>,
) {
    let mut set = http::HeaderMap::new();
    if let Some(identity) = identity {
        headers::set_identity(
            &mut set,
            &identity.caller_id,
            identity.caller.as_deref().map(|c| &c.attributes),
        );
    }
    let sent = attributes
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .map(|h| h.headers.keys())
        .into_iter()
        .flatten();
    for name in sent {
        let name = name.to_ascii_lowercase();
        if headers::is_mesh_asserted(&name)
            && name != "x-request-id"
            && name != "x-forwarded-client-cert"
            && !set.contains_key(name.as_str())
        {
            decision.request_headers_to_remove.push(name);
        }
    }
    decision
        .headers
        .retain(|(k, _)| !set.contains_key(k.to_ascii_lowercase().as_str()));
    for (k, v) in &set {
        if let Ok(v) = v.to_str() {
            decision
                .headers
                .push((k.as_str().to_string(), v.to_string()));
        }
    }
}

/// The input document: the check's attributes with the canonical path in
/// place of the one Envoy sent (kept as `input.meshward.raw_path`).
fn input(
    attributes: &AttributeContext,
    path: &str,
    raw_path: &str,
    identity: &Identity,
    upstream: Option<&Upstream>,
) -> Result<serde_json::Value, Refusal> {
    let mut canonical = attributes.clone();
    if let Some(http) = canonical.request.as_mut().and_then(|r| r.http.as_mut()) {
        http.path = path.to_string();
    }
    // Behind a trusted front proxy the principal Envoy saw is the proxy's;
    // the policy judges the caller, as if it had connected directly.
    if let Some(source) = canonical.source.as_mut() {
        source.principal.clone_from(&identity.caller_id);
    }
    let caller = identity.caller.as_deref().map(|c| CallerFacts {
        spiffe_id: &c.spiffe_id,
        name: &c.name,
        attributes: &c.attributes,
        permissions: &c.permissions,
    });
    let service = upstream.map(|u| ServiceFacts {
        name: &u.service.name,
        spiffe_id: &u.service.spiffe_id,
        metadata: &u.service.metadata,
    });
    let mesh = MeshFacts {
        checkpoint: Checkpoint::ExtAuthz,
        caller,
        service,
        raw_path,
    };
    document(&canonical, &mesh).map_err(|e| Refusal::BadRequest(BadRequest::Input(e)))
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let requested_by = request
            .remote_addr()
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let check = request.into_inner();
        let attributes = check.attributes.unwrap_or_default();
        let request_id = attributes
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.headers.get("x-request-id").or(Some(&h.id)))
            .filter(|id| !id.is_empty())
            .cloned()
            .unwrap_or_else(headers::new_request_id);
        let decision_id = uuid::Uuid::new_v4().to_string();
        let observe = &self.shared.observe;
        let mut span = observe.tracing.hop(
            SpanKind::Server,
            "envoy.service.auth.v3.Authorization/Check",
            &trace_context(&attributes),
        );
        let mut audit = observe.is_on().then(|| Audit {
            decision_id: Some(decision_id.clone()),
            ..Audit::new(observe.decision_log.as_ref(), requested_by)
        });
        let outcome = self.decide(
            &attributes,
            &request_id,
            &decision_id,
            audit.as_mut(),
            &mut span,
        );
        if span.is_recording() {
            span_attributes(
                &mut span,
                &request_id,
                audit.and_then(|a| a.verdict),
                &outcome,
            );
        }
        let kind = match &outcome {
            Ok(_) => "allowed",
            Err(refusal) => refusal.kind(),
        };
        match &outcome {
            Ok(_) => {
                tracing::debug!(dataplane = %self.shared.name, request_id, decision_id, "ext_authz: allowed")
            }
            Err(refusal) => tracing::info!(dataplane = %self.shared.name, request_id, decision_id,
                outcome = kind, dry_run = self.settings.dry_run, "ext_authz: refused: {refusal}"),
        }
        metrics::counter!(
            "meshward_ext_authz_checks_total",
            "dataplane" => self.shared.name.clone(),
            "outcome" => kind,
        )
        .increment(1);
        let outcome = match outcome {
            // Dry run lets it through, but never with forged mesh headers.
            Err(_) if self.settings.dry_run => {
                let mut allow = Decision::allow();
                assert_identity(&mut allow, &attributes, None);
                Ok(allow)
            }
            other => other,
        };
        Ok(Response::new(response::render(
            outcome,
            &request_id,
            &decision_id,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::identify::identify;
    use crate::pipeline::test_support::{AGENT, state};
    use crate::policy::Direction;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{Peer, Request};

    const PROXY: &str = "spiffe://example.org/gateway/front";

    fn attrs(host: &str, path: &str, principal: &str) -> AttributeContext {
        AttributeContext {
            source: Some(Peer {
                principal: principal.into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    host: host.into(),
                    path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_service_comes_from_the_context_extension_then_the_setting_then_the_host() {
        let state = state();
        let name = |a: &AttributeContext, configured: Option<&str>| {
            service(a, configured, &state).map(|u| u.service.name.clone())
        };
        let mut a = attrs("svc.ns.svc.cluster.local:8080", "/", AGENT);
        assert_eq!(name(&a, None).as_deref(), Some("svc"));
        assert_eq!(
            name(&a, Some("other")),
            None,
            "the setting wins over the host"
        );
        a.context_extensions
            .insert(SERVICE_CONTEXT_KEY.into(), "svc".into());
        assert_eq!(name(&a, Some("other")).as_deref(), Some("svc"));
        assert_eq!(name(&attrs("unknown", "/", AGENT), None), None);
    }

    #[test]
    fn the_policy_judges_the_canonical_path_and_the_caller_not_the_proxy() {
        let mut identity =
            identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap();
        identity.own_service = None;
        let a = attrs("svc", "/x/../ok?q=1", PROXY);
        let up = identity.state.clusters["svc"].clone();
        let doc = input(&a, "/ok?q=1", "/x/../ok?q=1", &identity, Some(&up)).unwrap();
        assert_eq!(doc["attributes"]["request"]["http"]["path"], "/ok?q=1");
        assert_eq!(doc["parsed_path"], serde_json::json!(["ok"]));
        assert_eq!(doc["meshward"]["raw_path"], "/x/../ok?q=1");
        assert_eq!(doc["meshward"]["direction"], "ext_authz");
        assert_eq!(doc["attributes"]["source"]["principal"], AGENT);
        assert_eq!(doc["source_principal"], AGENT);
        assert_eq!(doc["meshward"]["service"]["name"], "svc");
    }

    #[test]
    fn the_upstream_learns_the_verified_caller_and_forged_mesh_headers_go() {
        let identity =
            identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap();
        let mut a = attrs("svc", "/", AGENT);
        let http = a.request.as_mut().unwrap().http.as_mut().unwrap();
        for (k, v) in [
            ("x-agent-id", "spiffe://example.org/agent/someone-else"),
            ("x-agent_role", "admin"),
            ("x-meshward-refusal", "none"),
            ("x-request-id", "r-1"),
        ] {
            http.headers.insert(k.into(), v.into());
        }
        let mut d = Decision::allow();
        d.headers = vec![("x-agent-id".into(), "policy-says".into())];
        assert_identity(&mut d, &a, Some(&identity));
        let set: Vec<_> = d
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(set, [("x-agent-id", AGENT), ("x-agent-team", "t")]);
        let mut removed = d.request_headers_to_remove.clone();
        removed.sort();
        assert_eq!(removed, ["x-agent_role", "x-meshward-refusal"]);

        // No identity (a dry-run allow of a refused request): every forged
        // mesh header goes, nothing is set.
        let mut d = Decision::allow();
        assert_identity(&mut d, &a, None);
        assert!(d.headers.is_empty());
        let mut removed = d.request_headers_to_remove.clone();
        removed.sort();
        assert_eq!(
            removed,
            ["x-agent-id", "x-agent_role", "x-meshward-refusal"]
        );
    }

    #[test]
    fn mcp_checks_are_parsed_like_the_sidecar_and_need_the_whole_body() {
        let mut upstream = state().clusters["svc"].as_ref().clone();
        upstream.service.mcp = Some(meshward_contract::spec::McpSettings::default());
        let call =
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete\u005fx"}}"#;
        let check = |method: &str, body: &str, headers: &[(&str, &str)]| {
            let http = HttpRequest {
                method: method.into(),
                body: body.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            };
            mcp_messages(&upstream, "/mcp", Some(&http))
        };
        let parsed = check("POST", call, &[]).unwrap().expect("a message");
        assert_eq!(parsed.messages()[0].tool(), Some("delete_x"));
        assert!(check("GET", "", &[]).unwrap().is_none(), "the SSE stream");
        assert!(
            mcp_messages(&upstream, "/other", None).unwrap().is_none(),
            "not the endpoint"
        );
        let refused = |r: Result<Option<crate::mcp::Body>, Refusal>| match r {
            Err(Refusal::BadRequest(BadRequest::Mcp(e))) => e,
            other => panic!("not refused: {other:?}"),
        };
        assert!(matches!(
            refused(check("POST", "", &[])),
            McpError::Unsupported(m) if m.contains("with_request_body")
        ));
        assert!(matches!(
            refused(check(
                "POST",
                &call[..20],
                &[("x-envoy-auth-partial-body", "true")]
            )),
            McpError::TooLarge { .. }
        ));
        assert!(matches!(
            refused(check("POST", &call[..20], &[("content-length", "400")])),
            McpError::TooLarge { .. }
        ));
        assert!(matches!(
            refused(check("POST", call, &[("content-encoding", "gzip")])),
            McpError::Unsupported(_)
        ));
        assert!(matches!(
            refused(check("POST", &format!("{call} {call}"), &[])),
            McpError::TrailingData
        ));
    }
}
