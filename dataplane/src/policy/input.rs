//! What the sidecar knows about a request, as the policy input.
//!
//! The sidecar describes its request the way Envoy's ext_authz filter
//! describes one (a `CheckRequest`'s attributes) and hands it to the same
//! [`document`] builder the ext_authz server uses, so the input is
//! opa-envoy-plugin's document (policies written for OPA-Envoy run
//! unchanged) plus `input.meshward`, whichever way the request arrived.
//!
//! Paths: the outbound proxy strips the `/mcp://<service>` routing prefix
//! and canonicalizes before building the input, and sets [`ServiceFacts`],
//! so a policy sees `/say-hello` on both the caller's and the service's
//! side; the path as it arrived is `input.meshward.raw_path`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
use envoy_types::pb::google::protobuf::Timestamp;
use serde_json::Value;

use super::document::{InputError, MeshFacts, document};

/// Where the request is being authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The caller's own sidecar, before the request leaves the pod.
    Outbound,
    /// The service's sidecar, after the peer's mTLS identity was verified.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Where a decision is made: one of a sidecar's two sides, or an Envoy's
/// `ext_authz` filter asking (the caller is then the principal that Envoy
/// verified). `input.meshward.direction` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    Sidecar(Direction),
    ExtAuthz,
}

impl Checkpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Checkpoint::Sidecar(d) => d.as_str(),
            Checkpoint::ExtAuthz => "ext_authz",
        }
    }
}

impl From<Direction> for Checkpoint {
    fn from(d: Direction) -> Self {
        Checkpoint::Sidecar(d)
    }
}

/// Registry facts about the calling agent (from its `meshward.v1.Agent`).
#[derive(Debug, Clone, Copy)]
pub struct CallerFacts<'a> {
    pub spiffe_id: &'a str,
    pub name: &'a str,
    pub attributes: &'a BTreeMap<String, String>,
    pub permissions: &'a [String],
}

/// Registry facts about the destination service.
#[derive(Debug, Clone, Copy)]
pub struct ServiceFacts<'a> {
    pub name: &'a str,
    pub spiffe_id: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
}

/// Everything the proxy knows about one request, borrowed.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    pub checkpoint: Checkpoint,
    pub method: &'a str,
    /// Path and query as received (after the outbound `/mcp://<service>`
    /// prefix is stripped).
    pub path: &'a str,
    /// The path as it arrived, before canonicalization.
    pub raw_path: &'a str,
    pub host: &'a str,
    pub scheme: &'a str,
    /// `"HTTP/1.1"` or `"HTTP/2"`.
    pub protocol: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: Option<&'a [u8]>,
    pub request_id: &'a str,
    pub source_principal: Option<&'a str>,
    pub destination_principal: Option<&'a str>,
    pub source_address: Option<SocketAddr>,
    pub destination_address: Option<SocketAddr>,
    pub caller: Option<CallerFacts<'a>>,
    pub service: Option<ServiceFacts<'a>>,
}

/// Builds the input document for one request: the request described as
/// Envoy's `CheckRequest` attributes would describe it, then assembled by
/// [`document`] exactly as for an ext_authz check.
pub fn build_input(f: &RequestFacts) -> Result<Value, InputError> {
    let attributes = attributes(f);
    document(
        &attributes,
        &MeshFacts {
            checkpoint: f.checkpoint,
            caller: f.caller,
            service: f.service,
            raw_path: f.raw_path,
        },
    )
}

/// The request as Envoy's ext_authz filter reports one: headers joined
/// with `,` per name (and the pseudo-headers), the body as text when it is
/// UTF-8 (else as bytes), addresses and principals as the peers'.
fn attributes(f: &RequestFacts) -> AttributeContext {
    let mut headers: HashMap<String, String> = HashMap::with_capacity(f.headers.len() + 4);
    for (name, value) in f.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    for (k, v) in [
        (":method", f.method),
        (":path", f.path),
        (":authority", f.host),
        (":scheme", f.scheme),
    ] {
        headers.insert(k.to_string(), v.to_string());
    }
    let (body, raw_body) = match f.body.map(std::str::from_utf8) {
        Some(Ok(text)) => (text.to_string(), Vec::new()),
        Some(Err(_)) => (String::new(), f.body.unwrap_or_default().to_vec()),
        None => (String::new(), Vec::new()),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    AttributeContext {
        source: Some(peer(f.source_address, f.source_principal)),
        destination: Some(peer(f.destination_address, f.destination_principal)),
        request: Some(attribute_context::Request {
            time: Some(Timestamp {
                seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
            }),
            http: Some(attribute_context::HttpRequest {
                id: f.request_id.to_string(),
                method: f.method.to_string(),
                headers,
                path: f.path.to_string(),
                host: f.host.to_string(),
                scheme: f.scheme.to_string(),
                size: f
                    .body
                    .map_or(0, |b| i64::try_from(b.len()).unwrap_or(i64::MAX)),
                protocol: f.protocol.to_string(),
                body,
                raw_body,
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn peer(address: Option<SocketAddr>, principal: Option<&str>) -> attribute_context::Peer {
    attribute_context::Peer {
        address: address.map(|a| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: a.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    a.port(),
                ))),
                ..Default::default()
            })),
        }),
        principal: principal.unwrap_or_default().to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts<'a>(headers: &'a http::HeaderMap, body: Option<&'a [u8]>) -> RequestFacts<'a> {
        RequestFacts {
            checkpoint: Direction::Inbound.into(),
            method: "POST",
            path: "/say-hello/a%20b?x=1&x=2&name=J%C3%BCrgen+K&flag",
            raw_path: "/x/../say-hello/a%20b?x=1&x=2&name=J%C3%BCrgen+K&flag",
            host: "hello-skill",
            scheme: "https",
            protocol: "HTTP/2",
            headers,
            body,
            request_id: "req-1",
            source_principal: Some("spiffe://example.org/agent/support-triage"),
            destination_principal: Some("spiffe://example.org/service/hello-skill"),
            source_address: Some("127.0.0.1:40000".parse().unwrap()),
            destination_address: None,
            caller: None,
            service: None,
        }
    }

    #[test]
    fn opa_envoy_shape() {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.append("X-Multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        let attrs = BTreeMap::from([("team".to_string(), "customer-success".to_string())]);
        let perms = vec!["skills:invoke".to_string()];
        let meta = BTreeMap::from([("environment".to_string(), "production".to_string())]);
        let mut f = facts(&headers, Some(br#"{"name":"Ada"}"#));
        f.caller = Some(CallerFacts {
            spiffe_id: "spiffe://example.org/agent/support-triage",
            name: "support-triage",
            attributes: &attrs,
            permissions: &perms,
        });
        f.service = Some(ServiceFacts {
            name: "hello-skill",
            spiffe_id: "spiffe://example.org/service/hello-skill",
            metadata: &meta,
        });
        let input = build_input(&f).unwrap();

        let http = &input["attributes"]["request"]["http"];
        assert_eq!(http["method"], "POST");
        assert_eq!(http["id"], "req-1");
        assert_eq!(http["protocol"], "HTTP/2");
        assert_eq!(http["headers"]["x-multi"], "a,b");
        assert_eq!(http["headers"]["content-type"], "application/json");
        assert_eq!(http["headers"][":authority"], "hello-skill");
        assert_eq!(http["body"], r#"{"name":"Ada"}"#);
        assert_eq!(http["size"], 14);
        assert_eq!(
            input["attributes"]["source"]["address"]["socketAddress"],
            json!({"address": "127.0.0.1", "portValue": 40000})
        );
        assert_eq!(
            input["attributes"]["source"]["principal"],
            "spiffe://example.org/agent/support-triage"
        );
        assert_eq!(
            input["source_principal"],
            "spiffe://example.org/agent/support-triage"
        );
        assert!(input["attributes"]["destination"].get("address").is_none());
        // Like the plugin: a Timestamp message, not an RFC 3339 string.
        assert!(
            input["attributes"]["request"]["time"]["seconds"]
                .as_i64()
                .unwrap()
                > 1_700_000_000
        );
        assert_eq!(input["parsed_path"], json!(["say-hello", "a b"]));
        assert_eq!(
            input["parsed_query"],
            json!({"x": ["1", "2"], "name": ["Jürgen K"], "flag": [""]})
        );
        assert_eq!(input["parsed_body"], json!({"name": "Ada"}));
        assert_eq!(input["truncated_body"], false);
        assert_eq!(
            input["version"],
            json!({"encoding": "protojson", "ext_authz": "v3"})
        );
        assert_eq!(input["meshward"]["direction"], "inbound");
        assert_eq!(
            input["meshward"]["raw_path"],
            "/x/../say-hello/a%20b?x=1&x=2&name=J%C3%BCrgen+K&flag"
        );
        assert_eq!(input["meshward"]["caller"]["name"], "support-triage");
        assert_eq!(
            input["meshward"]["caller"]["attributes"]["team"],
            "customer-success"
        );
        assert_eq!(
            input["meshward"]["caller"]["permissions"],
            json!(["skills:invoke"])
        );
        assert_eq!(
            input["meshward"]["service"]["metadata"]["environment"],
            "production"
        );
    }

    #[test]
    fn absent_facts() {
        let headers = http::HeaderMap::new();
        let mut f = facts(&headers, Some(b"not json"));
        f.path = "/";
        f.checkpoint = Direction::Inbound.into();
        let input = build_input(&f).unwrap();
        assert_eq!(input["parsed_path"], json!([""]));
        assert_eq!(input["parsed_query"], json!({}));
        assert_eq!(input["parsed_body"], Value::Null);
        assert_eq!(input["meshward"]["direction"], "inbound");
        assert_eq!(input["meshward"]["caller"], Value::Null);
        assert_eq!(input["meshward"]["service"], Value::Null);
    }

    #[test]
    fn a_body_that_is_not_utf8_travels_as_bytes() {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "application/octet-stream".parse().unwrap());
        let input = build_input(&facts(&headers, Some(b"\xff\x00"))).unwrap();
        let http = &input["attributes"]["request"]["http"];
        assert!(http.get("body").is_none());
        assert_eq!(http["rawBody"], "/wA=");
    }

    #[test]
    fn a_query_go_cannot_parse_has_no_input() {
        let headers = http::HeaderMap::new();
        let mut f = facts(&headers, None);
        f.path = "/a?x=1;y=2";
        assert_eq!(build_input(&f), Err(InputError::Semicolon));
    }
}
