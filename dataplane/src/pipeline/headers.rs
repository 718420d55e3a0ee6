//! Header hygiene at the trust boundary.
//!
//! Identity headers are facts the mesh asserts, so a copy sent by the client
//! is removed before the proxy sets its own: an agent must not be able to
//! claim another agent's identity with `x-agent-id: ...`. That holds however
//! the name is written: CGI and WSGI backends read `x_agent_id` and
//! `x-agent-id` both as `HTTP_X_AGENT_ID`, so names are compared with `_`
//! read as `-`. `x-forwarded-client-cert` is asserted by the mesh too (or
//! not at all, per service: [`ForwardClientCert`]). Hop-by-hop headers are
//! removed because each hop negotiates its own connection (an HTTP/1.1 agent
//! may be forwarded over h2).

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::VerifiedPeer;
use super::identify::Identity;
use super::refusal::BadRequest;
use crate::state::{ForwardClientCert, Upstream};

/// The caller's SPIFFE ID, as the mesh verified it.
pub const AGENT_ID: &str = "x-agent-id";
/// Prefix of the caller's registry attributes (`x-agent-team`, ...).
pub const AGENT_ATTR_PREFIX: &str = "x-agent-";
pub const REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";
/// The decision-log id of the decision a response carries (when decision
/// logging is on), so a caller can quote it.
pub const DECISION_ID: &str = "x-meshward-decision-id";
/// The kind of a mesh refusal (`forbidden`, `rate_limited`, ...).
pub const REFUSAL: &str = "x-meshward-refusal";
/// Envoy's header for the client certificate the proxy verified.
pub const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";
/// Prefix of headers only the mesh may send (`x-meshward-refusal`, ...).
pub const MESHWARD_PREFIX: &str = "x-meshward-";

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named by `Connection`.
/// `te: trailers` survives: gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    let keep_te = headers
        .get(http::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(http::header::TE);
    if keep_te {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether `name` is one the mesh asserts, however it is spelled: `_` is
/// read as `-` (names are already lower-case), as CGI-style backends do.
pub(crate) fn is_mesh_asserted(name: &str) -> bool {
    let normalized = name.replace('_', "-");
    normalized.starts_with(AGENT_ATTR_PREFIX)
        || normalized.starts_with(MESHWARD_PREFIX)
        || normalized == FORWARDED_CLIENT_CERT
        || normalized == REQUEST_ID
}

/// Removes every header the mesh asserts (`x-agent-*`, `x-meshward-*`,
/// `x-forwarded-client-cert`, `x-request-id`, in any spelling), whoever sent
/// it; the mesh then sets its own.
pub fn strip_mesh_asserted(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_mesh_asserted(k.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Removes and returns the peer's `x-forwarded-client-cert` (joined with
/// `,` when repeated), for [`ForwardClientCert::AppendForward`].
pub fn take_forwarded_client_cert(headers: &mut HeaderMap) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(FORWARDED_CLIENT_CERT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    headers.remove(FORWARDED_CLIENT_CERT);
    (!values.is_empty()).then(|| values.join(","))
}

/// Sets `x-forwarded-client-cert` on the inbound side as the service chose:
/// nothing (`sanitize`), this hop's element only (`sanitize_set`), or the
/// verified peer's header with this hop's element appended
/// (`append_forward`). The element is Envoy's: `By=` this workload's SPIFFE
/// ID, `Hash=` the SHA-256 of the peer's certificate, `URI=` its SPIFFE ID.
pub fn set_forwarded_client_cert(
    headers: &mut HeaderMap,
    mode: ForwardClientCert,
    from_peer: Option<String>,
    own_spiffe_id: &str,
    peer: &VerifiedPeer,
) {
    let element = format!(
        "By={own_spiffe_id};Hash={};URI={}",
        peer.cert_sha256, peer.spiffe_id
    );
    let value = match (mode, from_peer) {
        (ForwardClientCert::Sanitize, _) => return,
        (ForwardClientCert::SanitizeSet, _) | (ForwardClientCert::AppendForward, None) => element,
        (ForwardClientCert::AppendForward, Some(previous)) => format!("{previous},{element}"),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(FORWARDED_CLIENT_CERT, v);
    }
}

/// The whole hygiene stage for a request about to be judged and forwarded:
/// hop-by-hop and mesh-asserted headers out, the verified identity, request
/// id and (inbound, per service) `x-forwarded-client-cert` in.
pub fn sanitize_request(
    headers: &mut HeaderMap,
    identity: &Identity,
    upstream: &Upstream,
    peer: Option<&VerifiedPeer>,
    request_id: &str,
) {
    let from_peer = take_forwarded_client_cert(headers);
    strip_hop_by_hop(headers);
    strip_mesh_asserted(headers);
    set_identity(
        headers,
        &identity.caller_id,
        identity.caller.as_ref().map(|c| &c.attributes),
    );
    set_request_id(headers, request_id);
    if let Some(peer) = peer {
        set_forwarded_client_cert(
            headers,
            upstream.service.forward_client_cert,
            from_peer,
            &identity.own_spiffe_id,
            peer,
        );
    }
}

/// One `Host` at most, and when the request line or `:authority` names an
/// authority too, the same one: a proxy that routes by one and a backend
/// that reads the other would disagree about where the request goes.
pub fn check_host<B>(req: &http::Request<B>) -> Result<(), BadRequest> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::MultipleHosts);
    }
    let (Some(host), Some(authority)) = (host, req.uri().authority()) else {
        return Ok(());
    };
    let host = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .ok_or(BadRequest::MalformedHost)?;
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
        Err(BadRequest::HostMismatch {
            host: host.to_string(),
            authority: authority.to_string(),
        })
    }
}

/// Sets the verified caller identity and its registry attributes.
pub fn set_identity(
    headers: &mut HeaderMap,
    spiffe_id: &str,
    attributes: Option<&BTreeMap<String, String>>,
) {
    if let Ok(v) = HeaderValue::from_str(spiffe_id) {
        headers.insert(AGENT_ID, v);
    }
    for (key, value) in attributes.into_iter().flatten() {
        let name = format!(
            "{AGENT_ATTR_PREFIX}{}",
            key.to_ascii_lowercase().replace('_', "-")
        );
        if name == AGENT_ID {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
            headers.insert(n, v);
        }
    }
}

/// A fresh request id (UUID v4).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The request id to use on the inbound side: the outbound dataplane's, if it
/// sent a well-formed one (so a request keeps one id across both hops), else new.
pub fn inbound_request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| uuid::Uuid::parse_str(v).is_ok())
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// Sets `x-request-id` and, when absent or malformed, a W3C `traceparent`
/// whose trace id is derived from the request id (so logs and traces join).
pub fn set_request_id(headers: &mut HeaderMap, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, v);
    }
    let valid_traceparent = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_valid_traceparent);
    if !valid_traceparent {
        let trace_id: String = request_id.chars().filter(|c| *c != '-').collect();
        let trace_id = if trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()) {
            trace_id
        } else {
            uuid::Uuid::new_v4().simple().to_string()
        };
        let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
        if let Ok(v) = HeaderValue::from_str(&format!("00-{trace_id}-{span_id}-01")) {
            headers.insert(TRACEPARENT, v);
        }
    }
}

fn is_valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 4
        && parts[0].len() == 2
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
        && parts[1] != "00000000000000000000000000000000"
}

/// True for gRPC requests (any `application/grpc*` content type).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_sent_identity_headers_are_removed_and_replaced() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-agent-id",
            HeaderValue::from_static("spiffe://example.org/agent/evil"),
        );
        h.insert("x-agent-team", HeaderValue::from_static("finance"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        strip_mesh_asserted(&mut h);
        assert!(h.get("x-agent-id").is_none());
        assert!(h.get("x-agent-team").is_none());
        let attrs = BTreeMap::from([("team".to_string(), "customer-success".to_string())]);
        set_identity(
            &mut h,
            "spiffe://example.org/agent/support-triage",
            Some(&attrs),
        );
        assert_eq!(h["x-agent-id"], "spiffe://example.org/agent/support-triage");
        assert_eq!(h["x-agent-team"], "customer-success");
        assert_eq!(h["x-other"], "kept");
    }

    #[test]
    fn mesh_headers_are_stripped_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "x_agent_id",
            "x-agent_id",
            "x_agent-team",
            "x-meshward-refusal",
            "x_meshward_refusal",
            "x-forwarded-client-cert",
            "x_forwarded_client_cert",
            "x_request_id",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("forged"),
            );
        }
        h.insert("x-agentish", HeaderValue::from_static("kept"));
        h.insert("x_other", HeaderValue::from_static("kept"));
        strip_mesh_asserted(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(h["x-agentish"], "kept");
        assert_eq!(h["x_other"], "kept");
    }

    #[test]
    fn forwarded_client_cert_modes() {
        let peer = VerifiedPeer {
            spiffe_id: "spiffe://example.org/agent/a".into(),
            cert_sha256: "ab12".into(),
        };
        let own = "spiffe://example.org/service/s";
        let element =
            "By=spiffe://example.org/service/s;Hash=ab12;URI=spiffe://example.org/agent/a";
        let run = |mode, previous: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(p) = previous {
                h.append(FORWARDED_CLIENT_CERT, HeaderValue::from_str(p).unwrap());
                h.append(FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=x"));
            }
            let taken = take_forwarded_client_cert(&mut h);
            set_forwarded_client_cert(&mut h, mode, taken, own, &peer);
            h.get(FORWARDED_CLIENT_CERT)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(run(ForwardClientCert::Sanitize, Some("By=forged")), None);
        assert_eq!(
            run(ForwardClientCert::SanitizeSet, Some("By=forged")).as_deref(),
            Some(element)
        );
        assert_eq!(
            run(ForwardClientCert::AppendForward, Some("By=prev")).as_deref(),
            Some(format!("By=prev,By=x,{element}").as_str())
        );
        assert_eq!(
            run(ForwardClientCert::AppendForward, None).as_deref(),
            Some(element)
        );
    }

    #[test]
    fn host_checks() {
        let req = |uri: &str, hosts: &[&str]| {
            let mut b = http::Request::get(uri);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(()).unwrap()
        };
        assert_eq!(check_host(&req("/x", &["a"])), Ok(()));
        assert_eq!(check_host(&req("/x", &[])), Ok(()));
        assert_eq!(
            check_host(&req("/x", &["a", "b"])),
            Err(BadRequest::MultipleHosts)
        );
        assert_eq!(check_host(&req("http://a/x", &["A:80"])), Ok(()));
        assert_eq!(check_host(&req("https://a/x", &["a:443"])), Ok(()));
        assert!(matches!(
            check_host(&req("http://a/x", &["b"])),
            Err(BadRequest::HostMismatch { .. })
        ));
        assert!(matches!(
            check_host(&req("http://a:8080/x", &["a"])),
            Err(BadRequest::HostMismatch { .. })
        ));
        assert_eq!(
            check_host(&req("http://a/x", &["a b"])),
            Err(BadRequest::MalformedHost)
        );
    }

    #[test]
    fn hop_by_hop_removed_but_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("connection").is_none());
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn request_id_and_traceparent() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("client-chosen"));
        let rid = new_request_id();
        set_request_id(&mut h, &rid);
        assert_eq!(h["x-request-id"], rid.as_str());
        let tp = h["traceparent"].to_str().unwrap();
        assert!(is_valid_traceparent(tp), "{tp}");
        assert!(tp.contains(&rid.replace('-', "")));
        // A valid incoming traceparent is preserved.
        let mut h2 = HeaderMap::new();
        h2.insert("traceparent", HeaderValue::from_str(tp).unwrap());
        set_request_id(&mut h2, &new_request_id());
        assert_eq!(h2["traceparent"], tp);
    }

    #[test]
    fn inbound_keeps_only_well_formed_request_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("not-a-uuid"));
        assert_ne!(inbound_request_id(&h), "not-a-uuid");
        let id = new_request_id();
        h.insert("x-request-id", HeaderValue::from_str(&id).unwrap());
        assert_eq!(inbound_request_id(&h), id);
    }
}
