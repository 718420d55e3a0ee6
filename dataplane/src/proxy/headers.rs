//! Header hygiene at the trust boundary.
//!
//! Identity headers are facts the mesh asserts, so a copy sent by the client
//! is removed before the proxy sets its own: an agent must not be able to
//! claim another agent's identity with `x-agent-id: ...`. Hop-by-hop headers
//! are removed because each hop negotiates its own connection (an HTTP/1.1
//! agent may be forwarded over h2).

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The caller's SPIFFE ID, as the mesh verified it.
pub const AGENT_ID: &str = "x-agent-id";
/// Prefix of the caller's registry attributes (`x-agent-team`, ...).
pub const AGENT_ATTR_PREFIX: &str = "x-agent-";
pub const REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";

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

/// Removes every header the mesh asserts (`x-agent-*`), whoever sent it.
pub fn strip_identity(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(AGENT_ATTR_PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
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
        strip_identity(&mut h);
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
