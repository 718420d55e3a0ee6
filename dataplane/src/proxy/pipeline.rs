//! The request path, top to bottom: identify, route, canonicalize, authorize,
//! limit, break, forward. Outbound (agent-facing) and inbound (mTLS,
//! service-facing) share every step; they differ only in who the caller is,
//! which limits apply and where the request goes next.
//!
//! Everything the policy judges is what the upstream receives: the host is
//! checked for conflicts, the path is canonicalized ([`crate::canonical`])
//! and headers the mesh asserts are replaced, all before the input document
//! is built. A client's own error (a malformed request or body) is a 400 and
//! never a breaker event; a request denied by policy still costs a token of
//! the caller's rate limit, so denied paths cannot be probed at full speed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Shared;
use super::body::{self, ProxyBody, boxed, full};
use super::guard::GuardedBody;
use super::headers;
use super::refusal::Refusal;
use crate::breaker::BreakerGuard;
use crate::canonical::canonicalize;
use crate::policy::{CallerFacts, Direction, RequestFacts, ServiceFacts, build_input};
use crate::ratelimit::{Permit, RateLimitError, RateLimitSettings};
use crate::route;
use crate::state::{AgentInfo, MeshState, Upstream};

/// JSON bodies up to this size are buffered so policies can read
/// `input.parsed_body`; larger or non-JSON bodies stream untouched.
const MAX_POLICY_BODY: u64 = 64 * 1024;

/// Where the request arrived and who proved to be on the other end.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub direction: Direction,
    /// The verified peer (inbound); outbound callers are the sidecar's own
    /// workload and are identified by the dataplane's SVID.
    pub peer: Option<Arc<VerifiedPeer>>,
    pub remote_addr: SocketAddr,
    pub local_addr: SocketAddr,
}

/// What the inbound mTLS handshake proved about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    pub spiffe_id: String,
    /// Hex SHA-256 of the peer's leaf certificate (DER), for
    /// `x-forwarded-client-cert`'s `Hash`.
    pub cert_sha256: String,
}

/// Everything the request path decided before forwarding.
struct Admitted {
    permit: Permit,
    breaker: BreakerGuard,
}

/// Handles one request end to end and always answers.
pub async fn handle(
    shared: Arc<Shared>,
    arrival: Arrival,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let grpc = headers::is_grpc(req.headers());
    let request_id = match arrival.direction {
        Direction::Inbound => headers::inbound_request_id(req.headers()),
        _ => headers::new_request_id(),
    };
    let direction = arrival.direction;
    let result = handle_inner(&shared, arrival, req, &request_id, grpc).await;
    let response = match result {
        Ok(resp) => resp,
        Err(refusal) => {
            tracing::info!(
                dataplane = %shared.name,
                direction = ?direction,
                request_id = %request_id,
                outcome = refusal.kind(),
                "refused: {refusal}"
            );
            metrics::counter!(
                "meshward_requests_refused_total",
                "dataplane" => shared.name.clone(),
                "direction" => direction_label(direction),
                "reason" => refusal.kind(),
            )
            .increment(1);
            refusal.into_response(grpc, &request_id)
        }
    };
    metrics::histogram!(
        "meshward_request_duration_seconds",
        "dataplane" => shared.name.clone(),
        "direction" => direction_label(direction),
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "meshward_requests_total",
        "dataplane" => shared.name.clone(),
        "direction" => direction_label(direction),
        "code" => response.status().as_u16().to_string(),
    )
    .increment(1);
    response
}

fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
        Direction::ExtAuthz => "ext_authz",
    }
}

async fn handle_inner(
    shared: &Shared,
    arrival: Arrival,
    req: Request<Incoming>,
    request_id: &str,
    grpc: bool,
) -> Result<Response<ProxyBody>, Refusal> {
    // Fail closed without a usable SVID (none yet, or expired while the
    // Workload API is away), and until the config is warm: no policy means
    // no decisions.
    let own_spiffe_id = shared
        .own_spiffe_id()
        .map_err(|e| Refusal::NotReady(e.to_string()))?;
    let state = shared.current_state().ok_or_else(|| {
        Refusal::NotReady("configuration not received from the control plane yet".into())
    })?;

    // 1. Identify the caller and 2. route.
    check_host(&req)?;
    let (caller_id, upstream, raw_path) = match arrival.direction {
        Direction::Inbound => {
            let peer = arrival
                .peer
                .as_ref()
                .map(|p| p.spiffe_id.clone())
                .ok_or_else(|| Refusal::Forbidden {
                    reason: "no verified peer identity".into(),
                    status: None,
                    body: None,
                    headers: vec![],
                })?;
            let own = own_service(&state, &own_spiffe_id).ok_or_else(|| {
                Refusal::NotReady(format!(
                    "{own_spiffe_id} is not a registered service in the mesh config"
                ))
            })?;
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            (peer, own, pq)
        }
        _ => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            let r = route::route(req.uri(), host).map_err(|e| Refusal::NoRoute(e.to_string()))?;
            let upstream = state
                .clusters
                .get(&r.service)
                .cloned()
                .ok_or_else(|| Refusal::UnknownService(r.service.clone()))?;
            (own_spiffe_id.clone(), upstream, r.path_and_query)
        }
    };
    let caller: Option<Arc<AgentInfo>> = state.agents.get(&caller_id).cloned();

    // 3. Canonicalize: policy and upstream judge the same path.
    let path_and_query = canonicalize(&raw_path, upstream.paths)
        .map_err(|e| Refusal::BadRequest(format!("path {raw_path:?}: {e}")))?
        .into_string();
    if path_and_query != raw_path {
        tracing::debug!(dataplane = %shared.name, request_id, original = %raw_path,
            canonical = %path_and_query, "path canonicalized");
    }

    let (mut parts, body) = req.into_parts();
    let client_cert_header = headers::take_forwarded_client_cert(&mut parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_mesh_asserted(&mut parts.headers);
    headers::set_identity(
        &mut parts.headers,
        &caller_id,
        caller.as_ref().map(|c| &c.attributes),
    );
    headers::set_request_id(&mut parts.headers, request_id);
    if let Some(peer) = &arrival.peer {
        headers::set_forwarded_client_cert(
            &mut parts.headers,
            upstream.forward_client_cert,
            client_cert_header,
            &own_spiffe_id,
            peer,
        );
    }

    // 4. Authorize.
    let (body, buffered) = maybe_buffer(&parts.headers, body, grpc).await?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let facts = RequestFacts {
        direction: arrival.direction,
        method: parts.method.as_str(),
        path: &path_and_query,
        host: &host,
        scheme: if arrival.direction == Direction::Inbound {
            "https"
        } else {
            "http"
        },
        protocol: protocol_name(parts.version),
        headers: &parts.headers,
        body: buffered.as_deref(),
        request_id,
        source_principal: Some(&caller_id),
        destination_principal: Some(&upstream.spiffe_id),
        source_address: Some(arrival.remote_addr),
        destination_address: Some(arrival.local_addr),
        caller: caller.as_ref().map(|c| CallerFacts {
            spiffe_id: &c.spiffe_id,
            name: &c.name,
            attributes: &c.attributes,
            permissions: &c.permissions,
        }),
        service: Some(ServiceFacts {
            name: &upstream.name,
            spiffe_id: &upstream.spiffe_id,
            metadata: &upstream.metadata,
        }),
    };
    let input = build_input(&facts);
    let decision = state.policy.evaluate(&input).map_err(|e| {
        tracing::warn!(dataplane = %shared.name, request_id, "policy error, denying: {e}");
        Refusal::Forbidden {
            reason: format!("policy error: {e}"),
            status: None,
            body: None,
            headers: vec![],
        }
    })?;
    if !decision.allowed {
        // A denial costs a token too, so denied paths cannot be probed at
        // full speed; an empty bucket answers 429 like any other request.
        let settings = limit_settings(arrival.direction, caller.as_deref(), &upstream);
        shared
            .limiter
            .charge(&caller_id, &upstream.name, settings)
            .map_err(|e| rate_limited(&caller_id, &upstream.name, e))?;
        return Err(Refusal::Forbidden {
            reason: decision
                .reason
                .clone()
                .unwrap_or_else(|| "denied by policy".into()),
            status: decision.http_status,
            body: decision.body.clone(),
            headers: decision.response_headers_to_add.clone(),
        });
    }
    for name in &decision.request_headers_to_remove {
        parts.headers.remove(name.as_str());
    }
    for (k, v) in &decision.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::from_str(v),
        ) {
            parts.headers.insert(n, v);
        }
    }

    // 5. Limit and break.
    let admitted = admit(
        shared,
        arrival.direction,
        &caller_id,
        caller.as_deref(),
        &upstream,
    )?;

    // 6. Forward.
    let (body, client_body) = body::watch_errors(body);
    let response = forward(
        shared,
        arrival.direction,
        &upstream,
        parts,
        path_and_query,
        body,
        grpc,
        request_id,
    )
    .await;
    let Admitted { permit, breaker } = admitted;
    match response {
        Ok(mut resp) => {
            if is_failure(&resp) {
                breaker.failure();
            } else {
                breaker.success();
            }
            headers::strip_hop_by_hop(resp.headers_mut());
            if arrival.direction == Direction::Inbound {
                // Only the mesh speaks `x-meshward-*`: an app must not be
                // able to fake a mesh refusal to its callers.
                headers::strip_mesh_asserted(resp.headers_mut());
            }
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(parts, GuardedBody::wrap(body, permit)))
        }
        // The client's body broke (malformed chunking, a reset): its own
        // error, which says nothing about the upstream.
        Err(_) if client_body.failed() => {
            breaker.abandon();
            Err(Refusal::BadRequest(format!(
                "request body from the client is malformed or incomplete: {}",
                client_body.error().unwrap_or_default()
            )))
        }
        Err(refusal) => {
            breaker.failure();
            Err(refusal)
        }
    }
}

/// Upstream failures count against the breaker: 5xx, and for gRPC the
/// trailers-only statuses that mean "the server could not do it"
/// (DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE).
fn is_failure(resp: &Response<ProxyBody>) -> bool {
    resp.status().is_server_error()
        || resp
            .headers()
            .get("grpc-status")
            .is_some_and(|v| matches!(v.as_bytes(), b"4" | b"13" | b"14"))
}

fn own_service(state: &MeshState, own_id: &str) -> Option<Arc<Upstream>> {
    state
        .clusters
        .values()
        .find(|u| u.spiffe_id == own_id)
        .cloned()
}

/// The limit that applies to this request: outbound enforces the agent's
/// own egress limit; inbound enforces the service's limit for each caller.
/// Both are keyed by the caller identity.
fn limit_settings<'a>(
    direction: Direction,
    caller: Option<&'a AgentInfo>,
    upstream: &'a Upstream,
) -> &'a RateLimitSettings {
    static UNLIMITED: std::sync::LazyLock<RateLimitSettings> =
        std::sync::LazyLock::new(RateLimitSettings::default);
    match direction {
        Direction::Inbound => &upstream.per_caller_limits,
        _ => caller.map(|c| &c.limits).unwrap_or(&UNLIMITED),
    }
}

fn rate_limited(caller_id: &str, service: &str, e: RateLimitError) -> Refusal {
    let retry_after = match &e {
        RateLimitError::RateExceeded { retry_after } => *retry_after,
        _ => Duration::from_secs(1),
    };
    Refusal::RateLimited {
        reason: format!("{caller_id} -> {service}: {e}"),
        retry_after,
    }
}

fn admit(
    shared: &Shared,
    direction: Direction,
    caller_id: &str,
    caller: Option<&AgentInfo>,
    upstream: &Upstream,
) -> Result<Admitted, Refusal> {
    let settings = limit_settings(direction, caller, upstream);
    let permit = shared
        .limiter
        .check(Some(caller_id), &upstream.name, settings)
        .map_err(|e| rate_limited(caller_id, &upstream.name, e))?;
    let breaker = shared
        .breakers
        .acquire(caller_id, &upstream.name, &upstream.breaker)
        .map_err(|open| Refusal::CircuitOpen {
            reason: open.to_string(),
            retry_after: open.retry_after,
        })?;
    Ok(Admitted { permit, breaker })
}

/// One `Host` at most, and when the request line or `:authority` names an
/// authority too, the same one: a proxy that routes by one and a backend
/// that reads the other would disagree about where the request goes.
fn check_host<B>(req: &Request<B>) -> Result<(), Refusal> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("more than one Host header".into()));
    }
    let (Some(host), Some(authority)) = (host, req.uri().authority()) else {
        return Ok(());
    };
    let host = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .ok_or_else(|| Refusal::BadRequest("malformed Host header".into()))?;
    let default_port = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    let same = host.host().eq_ignore_ascii_case(authority.host())
        && host.port_u16().unwrap_or(default_port) == authority.port_u16().unwrap_or(default_port);
    if same {
        Ok(())
    } else {
        Err(Refusal::BadRequest(format!(
            "Host {host} does not match the request authority {authority}"
        )))
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Shared,
    direction: Direction,
    upstream: &Upstream,
    mut parts: http::request::Parts,
    path_and_query: String,
    body: ProxyBody,
    grpc: bool,
    request_id: &str,
) -> Result<Response<ProxyBody>, Refusal> {
    let send = async {
        match direction {
            Direction::Inbound => {
                let local = shared.local_upstream.ok_or_else(|| {
                    Refusal::Unavailable(format!("{}: no local upstream configured", upstream.name))
                })?;
                parts.uri = build_uri("http", &local.to_string(), &path_and_query)?;
                parts.version = if grpc {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                };
                if !grpc {
                    set_host(&mut parts.headers, &upstream.name);
                } else {
                    parts.headers.remove(header::HOST);
                }
                let req = Request::from_parts(parts, body);
                shared
                    .local_client
                    .get(grpc)
                    .request(req)
                    .await
                    .map_err(|e| Refusal::Unavailable(format!("{} ({local}): {e}", upstream.name)))
            }
            _ => {
                let endpoint = shared.pick_endpoint(upstream).ok_or_else(|| {
                    Refusal::Unavailable(format!("{} has no endpoints", upstream.name))
                })?;
                let client = shared
                    .mesh_client
                    .for_peer(&upstream.spiffe_id)
                    .map_err(|e| Refusal::Unavailable(format!("{}: {e}", upstream.name)))?;
                parts.uri = build_uri("https", &endpoint.to_string(), &path_and_query)?;
                parts.version = Version::HTTP_2;
                parts.headers.remove(header::HOST);
                let req = Request::from_parts(parts, body);
                client.request(req).await.map_err(|e| {
                    Refusal::Unavailable(format!(
                        "{} ({endpoint}): {}",
                        upstream.name,
                        meshward_spire::identity::error_chain(&e)
                    ))
                })
            }
        }
    };
    let resp = tokio::time::timeout(shared.request_timeout, send)
        .await
        .map_err(|_| {
            Refusal::Unavailable(format!(
                "{} did not answer within {:?} (request {request_id})",
                upstream.name, shared.request_timeout
            ))
        })??;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, boxed(body)))
}

fn build_uri(scheme: &str, authority: &str, path_and_query: &str) -> Result<Uri, Refusal> {
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Refusal::BadRequest(format!("cannot build upstream uri: {e}")))
}

fn set_host(headers: &mut HeaderMap, host: &str) {
    if let Ok(v) = http::HeaderValue::from_str(host) {
        headers.insert(header::HOST, v);
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Buffers small JSON bodies for `input.parsed_body`; streams everything else.
async fn maybe_buffer(
    headers: &HeaderMap,
    body: Incoming,
    grpc: bool,
) -> Result<(ProxyBody, Option<Bytes>), Refusal> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= MAX_POLICY_BODY);
    if grpc || !is_json || !small {
        return Ok((boxed(body), None));
    }
    let bytes = http_body_util::Limited::new(body, MAX_POLICY_BODY as usize)
        .collect()
        .await
        .map_err(|e| Refusal::BadRequest(format!("reading request body: {e}")))?
        .to_bytes();
    Ok((full(bytes.clone()), Some(bytes)))
}
