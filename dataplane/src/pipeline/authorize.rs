//! Stage 4, authorize: the policy's decision on what the request looks like
//! after hygiene and canonicalization, i.e. exactly what the upstream would
//! receive.
//!
//! It reads a borrowed [`RequestView`] (no body stream, no upstream
//! connection), so an ext_authz server can build one from a `CheckRequest`
//! and reuse this stage unchanged. A denial still costs a token of the
//! caller's rate limit ([`admit::charge_denied`]): probing denied paths is
//! throttled like any other traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::HeaderMap;

use super::admit;
use super::identify::Identity;
use super::refusal::{BadRequest, Denial, Refusal};
use crate::observe::record::Verdict;
use crate::observe::{DecisionEvent, DecisionLog};
use crate::policy::{
    CallerFacts, Checkpoint, Decision, PolicyError, RequestFacts, ServiceFacts, build_input,
    check_request,
};
use crate::ratelimit::RateLimiter;
use crate::state::Upstream;

/// What the policy sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub checkpoint: Checkpoint,
    pub method: &'a str,
    /// Canonical path and query.
    pub path: &'a str,
    /// The path as it arrived.
    pub raw_path: &'a str,
    pub host: &'a str,
    pub scheme: &'a str,
    /// `"HTTP/1.1"` or `"HTTP/2"`.
    pub protocol: &'a str,
    pub headers: &'a HeaderMap,
    /// The body, when it was buffered for `input.parsed_body`.
    pub body: Option<&'a [u8]>,
    pub request_id: &'a str,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// The policy's decision for `view` if it allows the request; a denial (or
/// an evaluation error, which denies) is a refusal.
///
/// When the bundle declares a decision cache, a request whose declared
/// inputs were judged before in this revision gets that decision without
/// an input document or an evaluation; it still passes the input
/// document's 400 checks (path, query, body) and pays for a denial like any
/// other. Requests the decision log
/// records are always evaluated (the log holds each one's input).
pub fn authorize(
    identity: &Identity,
    upstream: &Upstream,
    view: &RequestView<'_>,
    limiter: &RateLimiter,
    audit: Option<&mut Audit<'_>>,
) -> Result<Decision, Refusal> {
    let facts = facts(identity, upstream, view);
    let logged = audit.as_ref().is_some_and(|a| a.log.is_some());
    let cache = identity.state.policy.decision_cache().filter(|_| !logged);
    let key = cache.map(|c| c.key(&facts));
    if let (Some(cache), Some(key)) = (cache, key.as_deref())
        && let Some(decision) = cache.get(key)
    {
        check_request(view.path, view.headers, view.body).map_err(BadRequest::Input)?;
        if let Some(audit) = audit {
            audit.record_cached(identity, &decision);
        }
        metrics::counter!(crate::metrics::POLICY_EVALUATIONS, "result" => outcome(&decision))
            .increment(1);
        return settle(
            identity,
            Some(upstream),
            view.checkpoint,
            Decision::clone(&decision),
            limiter,
        );
    }
    let input = build_input(&facts).map_err(BadRequest::Input)?;
    let decision = evaluate(identity, &input, audit)?;
    if let (Some(cache), Some(key)) = (cache, key) {
        cache.insert(key, Arc::new(decision.clone()));
    }
    settle(identity, Some(upstream), view.checkpoint, decision, limiter)
}

/// The input document for `view`, as the policy will see it.
pub fn input(
    identity: &Identity,
    upstream: &Upstream,
    view: &RequestView<'_>,
) -> Result<serde_json::Value, Refusal> {
    Ok(build_input(&facts(identity, upstream, view)).map_err(BadRequest::Input)?)
}

/// What the proxy knows about the request in `view`.
fn facts<'a>(
    identity: &'a Identity,
    upstream: &'a Upstream,
    view: &RequestView<'a>,
) -> RequestFacts<'a> {
    let service = &upstream.service;
    RequestFacts {
        checkpoint: view.checkpoint,
        method: view.method,
        path: view.path,
        raw_path: view.raw_path,
        host: view.host,
        scheme: view.scheme,
        protocol: view.protocol,
        headers: view.headers,
        body: view.body,
        request_id: view.request_id,
        source_principal: Some(&identity.caller_id),
        destination_principal: Some(&service.spiffe_id),
        source_address: Some(view.remote),
        destination_address: Some(view.local),
        caller: identity.caller.as_deref().map(|c| CallerFacts {
            spiffe_id: &c.spiffe_id,
            name: &c.name,
            attributes: &c.attributes,
            permissions: &c.permissions,
        }),
        service: Some(ServiceFacts {
            name: &service.name,
            spiffe_id: &service.spiffe_id,
            metadata: &service.metadata,
        }),
    }
}

fn outcome(decision: &Decision) -> &'static str {
    if decision.allowed { "allow" } else { "deny" }
}

/// Where a decision is reported when the request is observed: the decision
/// log (if any) gets an event, and the request's record a [`Verdict`].
#[derive(Debug)]
pub struct Audit<'a> {
    pub log: Option<&'a DecisionLog>,
    /// The peer that asked (OPA's `requested_by`).
    pub requested_by: SocketAddr,
    /// The decision id to use (ext_authz has one already); a new one is
    /// made when the log is on and this is `None`.
    pub decision_id: Option<String>,
    pub verdict: Option<Verdict>,
}

impl<'a> Audit<'a> {
    pub fn new(log: Option<&'a DecisionLog>, requested_by: SocketAddr) -> Self {
        Self {
            log,
            requested_by,
            decision_id: None,
            verdict: None,
        }
    }

    fn record(
        &mut self,
        identity: &Identity,
        input: &serde_json::Value,
        evaluated: &Result<Decision, PolicyError>,
        started: (Instant, SystemTime),
    ) {
        let eval = started.0.elapsed();
        let policy = &identity.state.policy;
        let decision_id = match (self.log, self.decision_id.take()) {
            (_, Some(id)) => Some(id),
            (Some(_), None) => Some(uuid::Uuid::new_v4().to_string()),
            (None, None) => None,
        };
        if let (Some(log), Some(id)) = (self.log, &decision_id) {
            let error = evaluated.as_ref().err().map(|e| e.to_string());
            let result = evaluated
                .as_ref()
                .ok()
                .map(|d| &d.result)
                .filter(|r| !r.is_null());
            log.log(&DecisionEvent {
                decision_id: id,
                rule: policy.decision_rule(),
                bundle: policy.name(),
                revision: policy.revision(),
                input,
                result,
                error: error.as_deref(),
                requested_by: self.requested_by,
                eval,
                timestamp: started.1,
            });
        }
        self.verdict = Some(Verdict {
            allowed: evaluated.as_ref().is_ok_and(|d| d.allowed),
            decision_id,
            revision: policy.revision().to_string(),
            eval,
        });
    }

    /// Reports a decision the cache answered (never with a decision log:
    /// logged requests are evaluated).
    fn record_cached(&mut self, identity: &Identity, decision: &Decision) {
        self.verdict = Some(Verdict {
            allowed: decision.allowed,
            decision_id: self.decision_id.take(),
            revision: identity.state.policy.revision().to_string(),
            eval: std::time::Duration::ZERO,
        });
    }
}

/// The policy's decision on an input document, for the sidecar and the
/// ext_authz server alike: an allow is returned, a denial (or an evaluation
/// error, which denies) is a refusal, and a denial costs the caller a token
/// at `upstream` (none when the service is unknown to the mesh).
pub fn judge(
    identity: &Identity,
    upstream: Option<&Upstream>,
    checkpoint: Checkpoint,
    input: &serde_json::Value,
    limiter: &RateLimiter,
    audit: Option<&mut Audit<'_>>,
) -> Result<Decision, Refusal> {
    let decision = evaluate(identity, input, audit)?;
    settle(identity, upstream, checkpoint, decision, limiter)
}

/// Evaluates the policy on `input`, reporting to `audit`.
fn evaluate(
    identity: &Identity,
    input: &serde_json::Value,
    audit: Option<&mut Audit<'_>>,
) -> Result<Decision, PolicyError> {
    match audit {
        None => identity.state.policy.evaluate(input),
        Some(audit) => {
            let started = (Instant::now(), SystemTime::now());
            let evaluated = identity.state.policy.evaluate(input);
            audit.record(identity, input, &evaluated, started);
            evaluated
        }
    }
}

/// An allow is returned; a denial is a refusal that costs the caller a
/// token at `upstream`.
fn settle(
    identity: &Identity,
    upstream: Option<&Upstream>,
    checkpoint: Checkpoint,
    decision: Decision,
    limiter: &RateLimiter,
) -> Result<Decision, Refusal> {
    if decision.allowed {
        return Ok(decision);
    }
    if let Some(upstream) = upstream {
        admit::charge_denied(limiter, checkpoint, identity, upstream)?;
    }
    Err(Refusal::Forbidden(Denial {
        reason: decision
            .reason
            .clone()
            .unwrap_or_else(|| "denied by policy".into()),
        status: decision.http_status,
        body: decision.body,
        // opa-envoy-plugin answers a denial with the decision's `headers`.
        headers: decision.headers,
    }))
}

/// Applies an allowing decision's header changes to the upstream request.
/// Names or values that are not valid HTTP are skipped: the request is
/// allowed either way, and a typo must not add a malformed header.
pub fn apply(decision: &Decision, headers: &mut HeaderMap) {
    for name in &decision.request_headers_to_remove {
        headers.remove(name.as_str());
    }
    for (k, v) in &decision.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::from_str(v),
        ) {
            headers.insert(n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::identify::identify;
    use crate::pipeline::test_support::{AGENT, state, state_with_cache, state_with_policy};

    /// Allows everything, reading no input.
    const ALLOW_ALL: &str = "package meshward.authz\ndefault decision := {\"allowed\": true}\n";
    use crate::policy::Direction;

    fn view<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            checkpoint: Direction::Outbound.into(),
            method: "GET",
            path,
            raw_path: path,
            host: "svc",
            scheme: "http",
            protocol: "HTTP/1.1",
            headers,
            body: None,
            request_id: "r",
            remote: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:2".parse().unwrap(),
        }
    }

    #[test]
    fn allows_and_denies_with_the_policy_reason_and_charges_denials() {
        let id = identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap();
        let up = id.state.clusters["svc"].clone();
        let limiter = RateLimiter::new();
        let headers = HeaderMap::new();
        assert!(authorize(&id, &up, &view("/ok", &headers), &limiter, None).is_ok());
        // The agent's burst is 3: denials drain it, then they are 429s.
        for _ in 0..3 {
            match authorize(&id, &up, &view("/denied", &headers), &limiter, None) {
                Err(Refusal::Forbidden(d)) => assert_eq!(d.reason, "denied path"),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            authorize(&id, &up, &view("/denied", &headers), &limiter, None),
            Err(Refusal::RateLimited { .. })
        ));
    }

    #[test]
    fn cached_decisions_are_the_policys_and_denials_still_cost_tokens() {
        let cached = state_with_cache(&["attributes.request.http.path", "meshward.mcp"]);
        let id = identify(Ok(AGENT.into()), Some(cached), Direction::Outbound, None).unwrap();
        let up = id.state.clusters["svc"].clone();
        let cache = id.state.policy.decision_cache().expect("declared");
        let limiter = RateLimiter::new();
        let headers = HeaderMap::new();
        for _ in 0..3 {
            assert!(authorize(&id, &up, &view("/ok", &headers), &limiter, None).is_ok());
        }
        // One entry for /ok, evaluated once and then served.
        assert_eq!(cache.len(), 1);
        for _ in 0..3 {
            match authorize(&id, &up, &view("/denied", &headers), &limiter, None) {
                Err(Refusal::Forbidden(d)) => assert_eq!(d.reason, "denied path"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(cache.len(), 2);
        // A cached denial drains the burst like an evaluated one.
        assert!(matches!(
            authorize(&id, &up, &view("/denied", &headers), &limiter, None),
            Err(Refusal::RateLimited { .. })
        ));
    }

    #[test]
    fn a_cache_hit_still_refuses_what_the_input_document_refuses() {
        // The path is not a key here: /%zz would hit /ok's entry, but the
        // input document refuses its escape, and so does the cached path.
        let cached = state_with_policy(ALLOW_ALL, &["meshward.mcp"]);
        let id = identify(Ok(AGENT.into()), Some(cached), Direction::Outbound, None).unwrap();
        let up = id.state.clusters["svc"].clone();
        let limiter = RateLimiter::new();
        let headers = HeaderMap::new();
        assert!(authorize(&id, &up, &view("/ok", &headers), &limiter, None).is_ok());
        for bad in ["/%zz", "/ok?a=1;b=2"] {
            assert!(
                matches!(
                    authorize(&id, &up, &view(bad, &headers), &limiter, None),
                    Err(Refusal::BadRequest(BadRequest::Input(_)))
                ),
                "{bad}"
            );
        }
        // A malformed JSON body, too.
        let mut json = HeaderMap::new();
        json.insert("content-type", "application/json".parse().unwrap());
        let mut with_body = view("/ok", &json);
        with_body.body = Some(b"{\"a\":");
        assert!(matches!(
            authorize(&id, &up, &with_body, &limiter, None),
            Err(Refusal::BadRequest(BadRequest::Input(_)))
        ));
        with_body.body = Some(b"{\"a\":1}");
        assert!(authorize(&id, &up, &with_body, &limiter, None).is_ok());
    }

    #[test]
    fn another_identity_never_hits_an_entry() {
        let cached = state_with_policy(ALLOW_ALL, &["meshward.mcp"]);
        let id = identify(
            Ok(AGENT.into()),
            Some(cached.clone()),
            Direction::Outbound,
            None,
        )
        .unwrap();
        let up = id.state.clusters["svc"].clone();
        let limiter = RateLimiter::new();
        let headers = HeaderMap::new();
        assert!(authorize(&id, &up, &view("/ok", &headers), &limiter, None).is_ok());
        let cache = cached.policy.decision_cache().expect("declared");
        assert_eq!(cache.len(), 1);
        let stranger = identify(
            Ok("spiffe://example.org/agent/stranger".into()),
            Some(cached.clone()),
            Direction::Outbound,
            None,
        )
        .unwrap();
        assert!(authorize(&stranger, &up, &view("/ok", &headers), &limiter, None).is_ok());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn decision_headers_are_applied_and_invalid_ones_skipped() {
        let mut decision = Decision::allow();
        decision.headers = vec![
            ("x-added".into(), "1".into()),
            ("bad name".into(), "x".into()),
        ];
        decision.request_headers_to_remove = vec!["x-secret".into()];
        let mut h = HeaderMap::new();
        h.insert("x-secret", "s".parse().unwrap());
        apply(&decision, &mut h);
        assert_eq!(h["x-added"], "1");
        assert!(h.get("x-secret").is_none());
        assert_eq!(h.len(), 1);
    }
}
