//! The request path, composed here from top to bottom:
//!
//! 1. [`identify`]: who is calling (this workload outbound, the verified
//!    peer inbound); fail closed without an SVID or a warm config.
//!    Outbound, [`whoami`] then answers the sidecar's own endpoints
//!    (`/.meshward/identity`) instead of routing them.
//! 2. [`target::route`]: which service (`/mcp://<service>` or `Host`).
//! 3. [`target::canonicalize`]: the one path policy and service both see.
//! 4. [`headers`]: hygiene, so the policy judges what the service receives.
//!    Then [`inspect`], for `protocol: mcp` services only: the MCP
//!    endpoint's JSON-RPC messages, parsed strictly.
//! 5. [`authorize`]: the Rego decision (a denial still costs a token); one
//!    per MCP message.
//! 6. [`admit`]: the caller's rate limit and breaker.
//! 7. [`forward`]: to the next hop, settling the breaker by the answer.
//!
//! Every stage refuses with a typed [`Refusal`], turned into a
//! protocol-shaped answer in one place ([`Refusal::into_response`]).
//! Identify, authorize and admit read no body stream and no upstream, so an
//! ext_authz server can run them on a `CheckRequest`.

pub mod admit;
pub mod authorize;
pub mod forward;
pub mod headers;
pub mod identify;
pub mod inspect;
pub mod refusal;
pub mod target;
#[cfg(test)]
pub(crate) mod test_support;
pub mod tools_list;
pub mod whoami;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::metrics::labels as metric_labels;
use crate::observe::Record;
use crate::observe::body::ObservedBody;
use crate::policy::Direction;
use crate::proxy::Shared;
use crate::proxy::body::{ProxyBody, boxed, full};
use authorize::Audit;
use authorize::RequestView;
use forward::Outgoing;
use meshward_telemetry::SpanKind;
use metrics::SharedString;
use refusal::{BadRequest, Refusal};

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
        Direction::Outbound => headers::new_request_id(),
    };
    let direction = arrival.direction.as_str();
    let mut record = shared
        .observe
        .is_on()
        .then(|| observed(&shared, &arrival, &req, &request_id));
    let mut labels = Labels::default();
    let response = match stages(
        &shared,
        &arrival,
        req,
        &request_id,
        grpc,
        &mut labels,
        record.as_mut(),
    )
    .await
    {
        Ok(resp) => resp,
        Err(refusal) => {
            tracing::info!(
                dataplane = %shared.name,
                direction,
                request_id = %request_id,
                outcome = refusal.kind(),
                "refused: {refusal}"
            );
            metrics::counter!(
                "meshward_requests_refused_total",
                "dataplane" => shared.name.clone(),
                "direction" => direction,
                "reason" => refusal.kind(),
                "caller" => labels.caller.clone(),
                "service" => labels.service.clone(),
            )
            .increment(1);
            if let Some(r) = record.as_mut() {
                r.refusal = Some(refusal.kind());
                r.refusal_reason = Some(refusal.to_string());
            }
            refusal.into_response(grpc, &request_id)
        }
    };
    metrics::histogram!(
        "meshward_request_duration_seconds",
        "dataplane" => shared.name.clone(),
        "direction" => direction,
        "service" => labels.service.clone(),
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "meshward_requests_total",
        "dataplane" => shared.name.clone(),
        "direction" => direction,
        "code" => response.status().as_u16().to_string(),
        "caller" => labels.caller,
        "service" => labels.service,
    )
    .increment(1);
    match record {
        None => response,
        Some(record) => finish(&shared, record, response),
    }
}

/// The request's `caller` and `service` metric labels, bounded
/// ([`crate::metrics::labels`]); `none` until the stage that learns them.
struct Labels {
    caller: SharedString,
    service: SharedString,
}

impl Default for Labels {
    fn default() -> Self {
        Self {
            caller: SharedString::const_str(metric_labels::NONE),
            service: SharedString::const_str(metric_labels::NONE),
        }
    }
}

/// The record of an observed request, with its hop's span: a client span
/// for the agent's outbound hop, a server span for the inbound one, each
/// the child of the trace context the request arrived with.
fn observed(
    shared: &Shared,
    arrival: &Arrival,
    req: &Request<Incoming>,
    request_id: &str,
) -> Record {
    let (kind, hop) = match arrival.direction {
        Direction::Outbound => (SpanKind::Client, "outbound"),
        Direction::Inbound => (SpanKind::Server, "inbound"),
    };
    let span = shared
        .observe
        .tracing
        .hop(kind, format!("{hop} {}", req.method()), req.headers());
    Record::new(
        arrival.direction,
        request_id,
        arrival.remote_addr,
        req.method().as_str(),
        protocol_name(req.version()),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        span,
    )
}

/// Marks the response with the decision id and hands the record to the
/// body, which writes it when the response has been sent.
fn finish(
    shared: &Shared,
    mut record: Record,
    mut response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    record.status = response.status().as_u16();
    // A refusal by a later hop keeps the id of the decision that refused.
    let refused_downstream = record.refusal.is_none()
        && response.headers().contains_key(headers::REFUSAL)
        && response.headers().contains_key(headers::DECISION_ID);
    if let Some(id) = record
        .decision
        .as_ref()
        .and_then(|d| d.decision_id.as_deref())
        && !refused_downstream
        && let Ok(v) = http::HeaderValue::from_str(id)
    {
        response.headers_mut().insert(headers::DECISION_ID, v);
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        ObservedBody::wrap(body, record, shared.observe.clone()),
    )
}

/// The stages, in order; the first refusal ends the request.
async fn stages(
    shared: &Shared,
    arrival: &Arrival,
    req: Request<Incoming>,
    request_id: &str,
    grpc: bool,
    labels: &mut Labels,
    mut record: Option<&mut Record>,
) -> Result<Response<ProxyBody>, Refusal> {
    let direction = arrival.direction;
    let peer = arrival.peer.as_deref();
    let identity = identify::identify(
        shared.own_spiffe_id(),
        shared.current_state(),
        direction,
        peer,
    )?;
    labels.caller = metric_labels::caller_label_of(&identity);
    if let Some(r) = record.as_deref_mut() {
        r.caller = Some(identity.caller_id.clone());
    }
    if direction == Direction::Outbound
        && let Some(answer) = whoami::serve(&identity, &req)
    {
        return answer;
    }
    headers::check_host(&req)?;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let (upstream, raw_path) = target::route(&identity, direction, req.uri(), host)?;
    labels.service = metric_labels::service_label(Some(&identity.state), &upstream.service.name);
    if let Some(r) = record.as_deref_mut() {
        r.service = Some(upstream.service.name.clone());
        r.raw_path.clone_from(&raw_path);
    }
    let path_and_query = target::canonicalize(&upstream, &raw_path)?;
    if path_and_query != raw_path {
        tracing::debug!(dataplane = %shared.name, request_id, original = %raw_path,
            canonical = %path_and_query, "path canonicalized");
    }
    if let Some(r) = record.as_deref_mut() {
        r.path = Some(path_and_query.clone());
    }

    let (mut parts, body) = req.into_parts();
    headers::sanitize_request(&mut parts.headers, &identity, &upstream, peer, request_id);
    if let Some(r) = record.as_deref() {
        // The next hop's span is this one's child.
        r.span.inject(&mut parts.headers);
    }
    let mcp_endpoint = inspect::endpoint(&upstream, &path_and_query);
    let (body, buffered, messages) = match mcp_endpoint {
        Some(settings) => {
            let (bytes, messages) =
                inspect::read(settings, &parts.method, &parts.headers, body).await?;
            let buffered = messages.is_some().then(|| bytes.clone());
            (full(bytes), buffered, messages)
        }
        None => {
            let (body, buffered) = maybe_buffer(&parts.headers, body, grpc).await?;
            (body, buffered, None)
        }
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let view = RequestView {
        checkpoint: direction.into(),
        method: parts.method.as_str(),
        path: &path_and_query,
        raw_path: &raw_path,
        host: &host,
        scheme: match direction {
            Direction::Inbound => "https",
            Direction::Outbound => "http",
        },
        protocol: protocol_name(parts.version),
        headers: &parts.headers,
        body: buffered.as_deref(),
        request_id,
        remote: arrival.remote_addr,
        local: arrival.local_addr,
    };
    let mut audit = record
        .as_deref()
        .map(|_| Audit::new(shared.observe.decision_log.as_ref(), arrival.remote_addr));
    let mut tools_filter = None;
    let decided = match &messages {
        None => authorize::authorize(&identity, &upstream, &view, &shared.limiter, audit.as_mut())
            .map(|d| vec![d]),
        Some(body) => authorize::input(&identity, &upstream, &view).and_then(|base| {
            let decided = inspect::judge_messages(
                &identity,
                &upstream,
                view.checkpoint,
                &base,
                body,
                &shared.limiter,
                audit.as_mut(),
                request_id,
            );
            if let (Ok(_), Some(list)) = (&decided, inspect::tools_list_request(body))
                && mcp_endpoint.is_some_and(|s| s.filter_tools_list)
                && let Some(id) = list.id()
            {
                tools_filter = Some(tools_list::ToolsFilter {
                    policy: identity.state.policy.clone(),
                    base,
                    id: id.clone(),
                });
            }
            decided
        }),
    };
    if let (Some(r), Some(audit)) = (record.as_deref_mut(), audit) {
        r.decision = audit.verdict;
    }
    for decision in &decided? {
        authorize::apply(decision, &mut parts.headers);
    }

    let admitted = admit::admit(
        &shared.limiter,
        &shared.breakers,
        direction.into(),
        &identity,
        &upstream,
    )
    .map_err(|refusal| match &messages {
        // An MCP client is answered the JSON-RPC way, whatever refused.
        Some(body) => inspect::answer(body, None, refusal, request_id),
        None => refusal,
    })?;
    let body = match record.as_deref() {
        None => body,
        Some(r) => count_bytes(body, r.bytes_received.clone()),
    };
    let out = Outgoing {
        parts,
        path_and_query,
        body,
        grpc,
    };
    let sent = Instant::now();
    let response = forward::forward(shared, direction, &upstream, out, admitted, request_id).await;
    if let Some(r) = record {
        r.upstream = Some(sent.elapsed());
    }
    match tools_filter {
        Some(filter) => Ok(filter.apply(response?).await),
        None => response,
    }
}

/// Counts the request body's bytes as they stream to the next hop.
fn count_bytes(body: ProxyBody, counter: Arc<AtomicU64>) -> ProxyBody {
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    })
    .boxed()
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
        .map_err(|e| BadRequest::Body(e.to_string()))?
        .to_bytes();
    Ok((full(bytes.clone()), Some(bytes)))
}
