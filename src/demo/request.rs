//! What a demo service sees of a request and what it answers, without
//! sockets: handlers are plain functions from [`DemoRequest`] to [`Reply`],
//! so each service's unit tests call them directly.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Version};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A request with its body already read (and bounded) by the server.
#[derive(Debug, Clone)]
pub struct DemoRequest {
    pub method: Method,
    /// The path without the query, as the inbound dataplane forwarded it.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub version: Version,
    pub body: Bytes,
}

impl DemoRequest {
    /// A request for tests and callers that have no socket: `target` is a
    /// path with an optional query.
    pub fn new(method: Method, target: &str, body: impl Into<Bytes>) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        Self {
            method,
            path,
            query,
            headers: HeaderMap::new(),
            version: Version::HTTP_11,
            body: body.into(),
        }
    }

    /// The path and query, as the echo reports them.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The path's segments, without the leading empty one: `/a/b` is
    /// `["a", "b"]`, `/` is `[""]`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.trim_start_matches('/').split('/').collect()
    }

    /// The SPIFFE ID the mesh asserted for the caller, when present.
    pub fn agent_id(&self) -> Option<&str> {
        self.headers
            .get("x-agent-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    }

    /// The first value of query parameter `key`, percent-decoded (`+` is a
    /// space). A malformed escape or invalid UTF-8 in that value is a 400.
    pub fn query_param(&self, key: &str) -> Result<Option<String>, Reply> {
        let Some(query) = &self.query else {
            return Ok(None);
        };
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if decode_component(k).as_deref() == Some(key) {
                return decode_component(v).map(Some).ok_or_else(|| {
                    Reply::bad_request(format!(
                        "query parameter {key:?} is not valid percent-encoded UTF-8"
                    ))
                });
            }
        }
        Ok(None)
    }

    /// The body as JSON of type `T`. An empty body is `null`, which an
    /// `Option` field or `T = Value` accepts; anything else that does not
    /// parse is a 400 naming serde's complaint.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Reply> {
        let body: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &self.body
        };
        serde_json::from_slice(body)
            .map_err(|e| Reply::bad_request(format!("request body is not the expected JSON: {e}")))
    }

    /// The body as a JSON object (an empty body is an empty object).
    pub fn json_object(&self) -> Result<serde_json::Map<String, Value>, Reply> {
        match self.json::<Value>()? {
            Value::Null => Ok(serde_json::Map::new()),
            Value::Object(map) => Ok(map),
            other => Err(Reply::bad_request(format!(
                "request body must be a JSON object, not {}",
                kind_of(&other)
            ))),
        }
    }
}

/// A demo service's answer: a status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// For 405: the methods the path does take (the `allow` header).
    pub allow: Option<&'static str>,
}

impl Reply {
    pub fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            allow: None,
        }
    }

    pub fn ok(body: Value) -> Self {
        Self::new(StatusCode::OK, body)
    }

    /// An error: `{"error": <kind>, "message": <why>}`. The kind is the
    /// status's reason phrase in snake case, so a client can branch on it
    /// without parsing the message.
    pub fn error(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace([' ', '-'], "_");
        Self::new(status, json!({"error": kind, "message": message.into()}))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::error(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::error(StatusCode::NOT_FOUND, message)
    }

    /// 405 for a path this service serves with other methods.
    pub fn method_not_allowed(req: &DemoRequest, allow: &'static str) -> Self {
        let mut r = Self::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {} takes {allow}", req.method, req.path),
        );
        r.allow = Some(allow);
        r
    }
}

/// A JSON value's kind, for error messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field `key` of `body` as a string: `Ok(None)` when absent or null, a 400
/// when another type or longer than `max_chars`.
pub fn optional_str<'a>(
    body: &'a serde_json::Map<String, Value>,
    key: &str,
    max_chars: usize,
) -> Result<Option<&'a str>, Reply> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max_chars => Err(Reply::bad_request(
            format!("field {key:?} is longer than {max_chars} characters"),
        )),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Reply::bad_request(format!(
            "field {key:?} must be a string, not {}",
            kind_of(other)
        ))),
    }
}

/// Field `key` of `body` as a non-empty string of at most `max_chars`.
pub fn required_str<'a>(
    body: &'a serde_json::Map<String, Value>,
    key: &str,
    max_chars: usize,
) -> Result<&'a str, Reply> {
    match optional_str(body, key, max_chars)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(Reply::bad_request(format!("field {key:?} is empty"))),
        None => Err(Reply::bad_request(format!("field {key:?} is required"))),
    }
}

/// True for the ids the demo fixtures use (`c-1001`, `inv-2001`, `t-7`):
/// 1-32 of `a-z`, `0-9`, `-`.
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Decodes one `application/x-www-form-urlencoded` component; `None` for a
/// malformed escape or invalid UTF-8.
fn decode_component(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded_and_malformed_ones_refused() {
        let r = DemoRequest::new(Method::GET, "/x?a=1&name=Ada+L%C3%B6&b", "");
        assert_eq!(r.query_param("name").unwrap().as_deref(), Some("Ada Lö"));
        assert_eq!(r.query_param("b").unwrap().as_deref(), Some(""));
        assert_eq!(r.query_param("zz").unwrap(), None);
        let bad = DemoRequest::new(Method::GET, "/x?name=%g1", "");
        assert_eq!(bad.query_param("name").unwrap_err().status, 400);
        let bad = DemoRequest::new(Method::GET, "/x?name=%ff", "");
        assert!(bad.query_param("name").is_err());
        let bad = DemoRequest::new(Method::GET, "/x?name=%4", "");
        assert!(bad.query_param("name").is_err());
    }

    #[test]
    fn bodies_parse_or_give_a_400() {
        let empty = DemoRequest::new(Method::POST, "/x", " \n");
        assert!(empty.json_object().unwrap().is_empty());
        let not_json = DemoRequest::new(Method::POST, "/x", "name=Ada");
        let e = not_json.json_object().unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.body["error"], "bad_request");
        let array = DemoRequest::new(Method::POST, "/x", "[1]");
        assert!(
            array.json_object().unwrap_err().body["message"]
                .as_str()
                .unwrap()
                .contains("an array")
        );
    }

    #[test]
    fn string_fields_are_typed_and_bounded() {
        let body = serde_json::from_str::<serde_json::Map<String, Value>>(
            r#"{"a": "x", "n": 1, "e": " ", "long": "abcdef"}"#,
        )
        .unwrap();
        assert_eq!(required_str(&body, "a", 5).unwrap(), "x");
        assert!(required_str(&body, "n", 5).is_err());
        assert!(required_str(&body, "e", 5).is_err());
        assert!(required_str(&body, "missing", 5).is_err());
        assert!(optional_str(&body, "long", 5).is_err());
        assert_eq!(optional_str(&body, "missing", 5).unwrap(), None);
    }

    #[test]
    fn ids_are_short_lowercase_tokens() {
        assert!(is_id("c-1001"));
        assert!(!is_id(""));
        assert!(!is_id("C-1001"));
        assert!(!is_id("c 1"));
        assert!(!is_id(&"a".repeat(33)));
    }
}
