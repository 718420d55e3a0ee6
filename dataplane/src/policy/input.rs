//! The policy input document.
//!
//! One builder serves the outbound and inbound sidecar paths (and is built to
//! serve an ext_authz server: it reads no body stream and no upstream), so a
//! policy sees the same shape however the request arrived. The
//! shape is a superset of opa-envoy-plugin's input (`attributes` as the
//! protojson of Envoy's `CheckRequest.attributes`, `parsed_path`,
//! `parsed_query`, `parsed_body`, `truncated_body`, `version`), so policies
//! written for OPA-Envoy run unchanged; `input.meshward` adds what only the
//! mesh knows: the direction and the caller's and service's registry facts.
//!
//! Paths: the outbound proxy strips the `/mcp://<service>` routing prefix
//! before building the input and sets [`ServiceFacts`], so a policy sees
//! `/say-hello` on both the caller's and the service's side.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

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
    pub direction: Direction,
    pub method: &'a str,
    /// Path and query as received (after the outbound `/mcp://<service>`
    /// prefix is stripped).
    pub path: &'a str,
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

/// Builds the input document for one request.
pub fn build_input(f: &RequestFacts) -> Value {
    let (path_only, query) = match f.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (f.path, None),
    };
    // A fragment never reaches a server, but strip it as url.Parse would.
    let path_only = path_only.split('#').next().unwrap_or(path_only);
    let query = query.map(|q| q.split('#').next().unwrap_or(q));

    let mut http = Map::new();
    http.insert("id".into(), json!(f.request_id));
    http.insert("method".into(), json!(f.method));
    http.insert("path".into(), json!(f.path));
    http.insert("host".into(), json!(f.host));
    http.insert("scheme".into(), json!(f.scheme));
    http.insert("protocol".into(), json!(f.protocol));
    http.insert("headers".into(), Value::Object(headers_object(f)));
    if let Some(body) = f.body {
        http.insert("size".into(), json!(body.len()));
        if let Ok(text) = std::str::from_utf8(body) {
            http.insert("body".into(), json!(text));
        }
    }

    let mut input = Map::new();
    input.insert(
        "attributes".into(),
        json!({
            "source": peer(f.source_address, f.source_principal),
            "destination": peer(f.destination_address, f.destination_principal),
            "request": {
                "time": rfc3339_now(),
                "http": Value::Object(http),
            },
        }),
    );
    input.insert("parsed_path".into(), parsed_path(path_only));
    input.insert("parsed_query".into(), parsed_query(query.unwrap_or("")));
    if let Some(body) = parsed_body(f) {
        input.insert("parsed_body".into(), body);
    }
    input.insert("truncated_body".into(), json!(false));
    input.insert(
        "version".into(),
        json!({"encoding": "protojson", "ext_authz": "v3"}),
    );
    input.insert(
        "meshward".into(),
        json!({
            "direction": f.direction.as_str(),
            "caller": f.caller.map(|c| json!({
                "spiffe_id": c.spiffe_id,
                "name": c.name,
                "attributes": c.attributes,
                "permissions": c.permissions,
            })),
            "service": f.service.map(|s| json!({
                "name": s.name,
                "spiffe_id": s.spiffe_id,
                "metadata": s.metadata,
            })),
        }),
    );
    Value::Object(input)
}

/// Envoy's `AttributeContext.Peer` in protojson; absent fields are omitted as
/// protojson omits defaults.
fn peer(address: Option<SocketAddr>, principal: Option<&str>) -> Value {
    let mut out = Map::new();
    if let Some(addr) = address {
        out.insert(
            "address".into(),
            json!({"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}}),
        );
    }
    if let Some(p) = principal {
        out.insert("principal".into(), json!(p));
    }
    Value::Object(out)
}

/// Lowercase names, repeated headers joined with "," (as Envoy does), plus
/// the HTTP/2 pseudo-headers Envoy includes in `CheckRequest`. Values that are
/// not valid UTF-8 are decoded lossily rather than dropped.
fn headers_object(f: &RequestFacts) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    for (name, value) in f.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        match out.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                out.insert(name.as_str().to_string(), Value::String(value.into_owned()));
            }
        }
    }
    out.insert(":method".into(), json!(f.method));
    out.insert(":path".into(), json!(f.path));
    out.insert(":authority".into(), json!(f.host));
    out.insert(":scheme".into(), json!(f.scheme));
    out
}

/// `"/a/b%20c/"` → `["a", "b c", ""]`, like opa-envoy-plugin (leading slashes
/// trimmed, the rest split on "/", each segment percent-decoded).
fn parsed_path(path: &str) -> Value {
    let trimmed = path.trim_start_matches('/');
    Value::Array(
        trimmed
            .split('/')
            .map(|seg| Value::String(percent_decode(seg, false)))
            .collect(),
    )
}

/// `"a=1&a=2&b"` → `{"a": ["1", "2"], "b": [""]}` with form decoding (`+` is
/// a space), like Go's `url.ParseQuery`.
fn parsed_query(query: &str) -> Value {
    let mut out: Map<String, Value> = Map::new();
    for pair in query.split(['&', ';']).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k, true);
        let value = Value::String(percent_decode(v, true));
        match out.get_mut(&key) {
            Some(Value::Array(values)) => values.push(value),
            _ => {
                out.insert(key, Value::Array(vec![value]));
            }
        }
    }
    Value::Object(out)
}

/// The JSON-decoded body when the request says it is JSON and it parses.
fn parsed_body(f: &RequestFacts) -> Option<Value> {
    let body = f.body.filter(|b| !b.is_empty())?;
    let content_type = f.headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        serde_json::from_slice(body).ok()
    } else {
        None
    }
}

/// Percent-decodes; invalid escapes are kept literally, invalid UTF-8 is
/// replaced (policies compare strings, they never see raw bytes).
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match (hex_val(bytes.get(i + 1)), hex_val(bytes.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: Option<&u8>) -> Option<u8> {
    match b? {
        b @ b'0'..=b'9' => Some(b - b'0'),
        b @ b'a'..=b'f' => Some(b - b'a' + 10),
        b @ b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Now as an RFC 3339 UTC timestamp with nanoseconds (protojson `Timestamp`).
fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(headers: &'a http::HeaderMap, body: Option<&'a [u8]>) -> RequestFacts<'a> {
        RequestFacts {
            direction: Direction::Inbound,
            method: "POST",
            path: "/say-hello/a%20b?x=1&x=2&name=J%C3%BCrgen+K&flag",
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
        let input = build_input(&f);

        let http = &input["attributes"]["request"]["http"];
        assert_eq!(http["method"], "POST");
        assert_eq!(http["id"], "req-1");
        assert_eq!(http["protocol"], "HTTP/2");
        assert_eq!(http["headers"]["x-multi"], "a,b");
        assert_eq!(http["headers"]["content-type"], "application/json");
        assert_eq!(http["headers"][":authority"], "hello-skill");
        assert_eq!(http["size"], 14);
        assert_eq!(
            input["attributes"]["source"]["address"]["socketAddress"],
            json!({"address": "127.0.0.1", "portValue": 40000})
        );
        assert_eq!(
            input["attributes"]["source"]["principal"],
            "spiffe://example.org/agent/support-triage"
        );
        assert!(input["attributes"]["destination"].get("address").is_none());
        assert!(
            input["attributes"]["request"]["time"]
                .as_str()
                .unwrap()
                .ends_with('Z')
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
        f.direction = Direction::Inbound;
        let input = build_input(&f);
        assert_eq!(input["parsed_path"], json!([""]));
        assert_eq!(input["parsed_query"], json!({}));
        assert!(input.get("parsed_body").is_none());
        assert_eq!(input["meshward"]["direction"], "inbound");
        assert_eq!(input["meshward"]["caller"], Value::Null);
        assert_eq!(input["meshward"]["service"], Value::Null);
    }

    #[test]
    fn json_body_needs_json_content_type() {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().unwrap());
        let input = build_input(&facts(&headers, Some(b"{}")));
        assert!(input.get("parsed_body").is_none());
        headers.insert(
            "content-type",
            "application/vnd.api+json; charset=utf-8".parse().unwrap(),
        );
        let input = build_input(&facts(&headers, Some(b"{}")));
        assert_eq!(input["parsed_body"], json!({}));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb", false), "a/b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_735_689_599, 0), "2024-12-31T23:59:59.000000000Z");
    }
}
