//! The input document, assembled from a `CheckRequest`'s attributes exactly
//! as opa-envoy-plugin v1.15 does (`envoyauth/request.go`), plus
//! `input.meshward`.
//!
//! Both the sidecar (which first describes its request as attributes, see
//! [`super::input`]) and the ext_authz server come through here, so a policy
//! sees one shape however the request arrived. What the plugin derives, and
//! how (its code, not its documentation, is the contract):
//!
//! - `parsed_path`: the path before `?`, percent-decoded as Go's
//!   `url.PathUnescape` does (`+` stays), leading slashes trimmed, split on
//!   `/`. An invalid escape refuses the request.
//! - `parsed_query`: Go's `url.ParseQuery` of what follows `?`: `+` is a
//!   space, a pair holding `;` or an invalid escape refuses the request.
//! - `parsed_body` (always present, `null` when nothing was parsed) and
//!   `truncated_body`: JSON when the content type *contains*
//!   `application/json` (so `+json` types are not parsed), form fields for
//!   `application/x-www-form-urlencoded` and `multipart/form-data`; the body is `body`, else
//!   `raw_body`. A `content-length` larger than the body, or
//!   `x-envoy-auth-partial-body: true`, means truncated (nothing parsed); a
//!   malformed length, JSON or form body refuses the request.
//! - `source_principal`: the caller's principal, when there is one.
//! - `version`: `{"ext_authz": "v3", "encoding": "protojson"}`.
//!
//! A refusal is a 400 whose body is the plugin's
//! (`request_parse_error: <reason>`).

use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use serde_json::{Map, Value, json};

use super::input::{CallerFacts, Checkpoint, ServiceFacts};
use super::multipart::{self, MultipartError};
use super::protomap;

/// Go's `urlmaxqueryparams` default.
const MAX_QUERY_PARAMS: usize = 10_000;

/// What only the mesh knows about a request: `input.meshward`.
#[derive(Debug, Clone, Copy)]
pub struct MeshFacts<'a> {
    pub checkpoint: Checkpoint,
    pub caller: Option<CallerFacts<'a>>,
    pub service: Option<ServiceFacts<'a>>,
    /// The path as it arrived, before canonicalization (the attributes hold
    /// the canonical one, which the policy judges).
    pub raw_path: &'a str,
}

/// Why a request has no input document. The texts are Go's, so the 400 a
/// client gets reads as the plugin's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The malformed escape: up to three bytes from its `%`.
    #[error("invalid URL escape {}", go_quote(.0))]
    Escape(Vec<u8>),
    #[error("invalid semicolon separator in query")]
    Semicolon,
    #[error("number of URL query parameters exceeded limit")]
    TooManyParams,
    #[error("strconv.ParseInt: parsing {0:?}: invalid syntax")]
    ContentLength(String),
    #[error("{0}")]
    Json(String),
    #[error("{0}")]
    Multipart(#[from] MultipartError),
}

impl InputError {
    /// The denied response's body, as the plugin writes it.
    pub fn body(&self) -> String {
        format!("request_parse_error: {self}")
    }

    /// The malformed escape whose `%` is at `at` in `s` (a path before its
    /// `?`, or a query key or value), as Go's `url.PathUnescape` reports it.
    pub fn escape_at(s: &[u8], at: usize) -> Self {
        let end = (at + 3).min(s.len());
        InputError::Escape(s.get(at..end).unwrap_or_default().to_vec())
    }
}

/// The input document for `attributes`.
pub fn document(attributes: &AttributeContext, mesh: &MeshFacts) -> Result<Value, InputError> {
    let http = attributes.request.as_ref().and_then(|r| r.http.as_ref());
    let path = http.map_or("", |h| h.path.as_str());
    let (raw_path, raw_query) = path.split_once('?').unwrap_or((path, ""));
    let parsed_path: Vec<Value> = unescape(raw_path.as_bytes(), false)?
        .trim_start_matches('/')
        .split('/')
        .map(|s| Value::String(s.to_string()))
        .collect();
    let parsed_query = parse_query(raw_query.as_bytes())?;
    let (parsed_body, truncated) = match http {
        Some(h) => parsed_body(&h.headers, &h.body, &h.raw_body)?,
        None => (Value::Null, false),
    };

    let mut input = Map::new();
    input.insert("attributes".into(), protomap::attributes(attributes));
    input.insert(
        "version".into(),
        json!({"ext_authz": "v3", "encoding": "protojson"}),
    );
    input.insert("parsed_path".into(), Value::Array(parsed_path));
    input.insert("parsed_query".into(), query_object(parsed_query));
    input.insert("parsed_body".into(), parsed_body);
    input.insert("truncated_body".into(), Value::Bool(truncated));
    if let Some(p) = attributes
        .source
        .as_ref()
        .map(|s| &s.principal)
        .filter(|p| !p.is_empty())
    {
        input.insert("source_principal".into(), Value::String(p.clone()));
    }
    input.insert("meshward".into(), meshward(mesh));
    Ok(Value::Object(input))
}

/// The refusals [`document`] gives a sidecar's request with this path (and
/// query), headers and buffered body, without building the document: what
/// a request answered from the decision cache must still pass, so a cache
/// hit never lets through what an evaluation would have refused as 400.
pub fn check_request(
    path: &str,
    headers: &http::HeaderMap,
    body: Option<&[u8]>,
) -> Result<(), InputError> {
    let (raw_path, raw_query) = path.split_once('?').unwrap_or((path, ""));
    unescape(raw_path.as_bytes(), false)?;
    parse_query(raw_query.as_bytes())?;
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return Ok(());
    };
    // The headers parsed_body reads, joined as the sidecar's attributes
    // join them (super::input).
    let mut read = std::collections::HashMap::new();
    for name in [
        "x-envoy-auth-partial-body",
        "content-type",
        "content-length",
    ] {
        let mut values = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        if let Some(first) = values.next() {
            let joined = values.fold(first.into_owned(), |mut all, v| {
                all.push(',');
                all.push_str(&v);
                all
            });
            read.insert(name.to_string(), joined);
        }
    }
    parsed_body(&read, "", body).map(|_| ())
}

fn meshward(m: &MeshFacts) -> Value {
    json!({
        "direction": m.checkpoint.as_str(),
        "raw_path": m.raw_path,
        "caller": m.caller.map(|c| json!({
            "spiffe_id": c.spiffe_id,
            "name": c.name,
            "attributes": c.attributes,
            "permissions": c.permissions,
        })),
        "service": m.service.map(|s| json!({
            "name": s.name,
            "spiffe_id": s.spiffe_id,
            "metadata": s.metadata,
        })),
    })
}

/// `parsed_body` and `truncated_body`.
fn parsed_body(
    headers: &std::collections::HashMap<String, String>,
    body: &str,
    raw_body: &[u8],
) -> Result<(Value, bool), InputError> {
    if headers
        .get("x-envoy-auth-partial-body")
        .is_some_and(|v| v == "true")
    {
        return Ok((Value::Null, true));
    }
    let Some(content_type) = headers.get("content-type") else {
        return Ok((Value::Null, false));
    };
    // The plugin's order: JSON, gRPC, form, multipart (substring tests).
    let json = content_type.contains("application/json");
    let grpc = !json && content_type.contains("application/grpc");
    let form = !json && !grpc && content_type.contains("application/x-www-form-urlencoded");
    let multipart = !json && !grpc && !form && content_type.contains("multipart/form-data");
    if !json && !form && !multipart {
        // gRPC needs descriptor sets (not configured, as in the plugin
        // without `proto-descriptor`).
        return Ok((Value::Null, false));
    }
    let payload: &[u8] = if !body.is_empty() {
        body.as_bytes()
    } else if !raw_body.is_empty() {
        raw_body
    } else {
        return Ok((Value::Null, false));
    };
    if let Some(length) = headers.get("content-length") {
        let declared: i64 = length
            .parse()
            .map_err(|_| InputError::ContentLength(length.clone()))?;
        if declared != -1 && declared > payload.len() as i64 {
            return Ok((Value::Null, true));
        }
    }
    if json {
        Ok((parse_json(payload)?, false))
    } else if form {
        Ok((query_object(parse_query(payload)?), false))
    } else {
        let Some(boundary) = multipart::boundary(content_type)? else {
            return Ok((Value::Null, false));
        };
        Ok((multipart::parse(payload, &boundary)?, false))
    }
}

/// A JSON body as OPA's `util.UnmarshalJSON` reads it (Go's
/// `encoding/json`): each byte that is not UTF-8 and each lone surrogate
/// escape is U+FFFD rather than an error, and after the value only
/// whitespace may follow, or a `null` token and then anything (Go reads
/// one more token and complains only about a non-null one).
fn parse_json(payload: &[u8]) -> Result<Value, InputError> {
    let text = go_lossy(payload);
    let text = replace_lone_surrogates(&text);
    let mut values = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
    let value = match values.next() {
        Some(Ok(value)) => value,
        Some(Err(e)) => return Err(InputError::Json(e.to_string())),
        None => return Err(InputError::Json("EOF".into())),
    };
    let rest = text
        .get(values.byte_offset()..)
        .unwrap_or_default()
        .trim_start_matches([' ', '\t', '\n', '\r']);
    if !rest.is_empty() && !rest.starts_with("null") {
        return Err(InputError::Json(
            "invalid character after top-level value".into(),
        ));
    }
    Ok(value)
}

/// `\uD800`-`\uDFFF` escapes that are not a high-low pair, as `\ufffd`
/// (what Go decodes them to; serde_json refuses them).
fn replace_lone_surrogates(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("\\u") {
        return text.into();
    }
    let b = text.as_bytes();
    let escape = |i: usize| -> Option<u32> {
        match b.get(i..i + 6)? {
            [b'\\', b'u', hex @ ..] if hex.iter().all(u8::is_ascii_hexdigit) => {
                u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
            }
            _ => None,
        }
    };
    let mut out = String::new();
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        match escape(i) {
            Some(0xD800..=0xDBFF)
                if escape(i + 6).is_some_and(|l| (0xDC00..=0xDFFF).contains(&l)) =>
            {
                i += 12;
            }
            Some(0xD800..=0xDFFF) => {
                out.push_str(&text[copied..i]);
                out.push_str("\\ufffd");
                i += 6;
                copied = i;
            }
            // Any other escape is skipped whole: in `\\\\ud800` the
            // backslash is escaped and no escape starts at `\\ud800`.
            _ => i += 2,
        }
    }
    if copied == 0 {
        return text.into();
    }
    out.push_str(&text[copied..]);
    out.into()
}

/// Go's `url.ParseQuery`, failing where it reports an error: more than
/// 10,000 pairs; pairs split on `&`, empty ones skipped, `+` is a space; a
/// pair holding `;` is an error (reported over any other), an invalid
/// escape is one (the first reported). Keys keep their first-seen order.
fn parse_query(query: &[u8]) -> Result<Vec<(String, Vec<String>)>, InputError> {
    if query.iter().filter(|&&b| b == b'&').count() + 1 > MAX_QUERY_PARAMS {
        return Err(InputError::TooManyParams);
    }
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut error = None;
    for pair in query.split(|&b| b == b'&') {
        if pair.contains(&b';') {
            error = Some(InputError::Semicolon);
            continue;
        }
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let (k, v) = match (unescape(k, true), unescape(v, true)) {
            (Ok(k), Ok(v)) => (k, v),
            (Err(e), _) | (_, Err(e)) => {
                error.get_or_insert(e);
                continue;
            }
        };
        match out.iter_mut().find(|(key, _)| *key == k) {
            Some((_, values)) => values.push(v),
            None => out.push((k, vec![v])),
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn query_object(pairs: Vec<(String, Vec<String>)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, vs)| (k, Value::Array(vs.into_iter().map(Value::String).collect())))
            .collect::<Map<_, _>>(),
    )
}

/// Go's `unescape`: `%XX` decoded, anything else after `%` is an error
/// naming up to three bytes from the `%`; `+` is a space only in queries.
/// Invalid UTF-8 becomes U+FFFD, as it does when OPA prints the input.
fn unescape(bytes: &[u8], query: bool) -> Result<String, InputError> {
    let plus = query && bytes.contains(&b'+');
    if !plus && !bytes.contains(&b'%') {
        return Ok(go_lossy(bytes).into_owned());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i += 3;
                    continue;
                }
                _ => return Err(InputError::escape_at(bytes, i)),
            },
            b'+' if query => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Ok(go_lossy(&out).into_owned())
}

/// Bytes as text the way Go's `encoding/json` writes a string (so OPA's
/// `json.marshal`, decision logs and form bodies): *each* byte of an
/// invalid UTF-8 sequence is one U+FFFD, where `String::from_utf8_lossy`
/// replaces a truncated sequence with a single one.
fn go_lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let mut rest = match std::str::from_utf8(bytes) {
        Ok(text) => return text.into(),
        Err(_) => bytes,
    };
    let mut out = String::with_capacity(bytes.len() + 8);
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                out.push_str(text);
                return out.into();
            }
            Err(e) => {
                let (valid, invalid) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                out.push('\u{FFFD}');
                rest = invalid.get(1..).unwrap_or_default();
            }
        }
    }
}

/// Go's `strconv.Quote`, for the bytes an escape error names: printable
/// characters as they are, `"` and `\\` escaped, C escapes for the usual
/// controls, `\\xHH` for other ASCII controls and for bytes that are not
/// UTF-8, `\\u`/`\\U` for other unprintable characters.
fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                // Go prints letters, marks, numbers, punctuation, symbols
                // and the ASCII space; other spaces and controls escaped.
                c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                    if (c as u32) < 0x10000 {
                        out.push_str(&format!("\\u{:04x}", c as u32));
                    } else {
                        out.push_str(&format!("\\U{:08x}", c as u32));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Direction, RequestFacts, build_input};

    /// A cache hit refuses exactly what building the sidecar's input refuses.
    #[test]
    fn check_request_refuses_what_the_input_refuses() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a [u8]>);
        let cases: &[Case] = &[
            ("/ok", &[], None),
            ("/%zz", &[], None),
            ("/a%2", &[], None),
            ("/a?x=%zz", &[], None),
            ("/a?x=1;y=2", &[], None),
            ("/a?x=1&y=2+3", &[], None),
            (
                "/a",
                &[("content-type", "application/json")],
                Some(b"{\"a\":1}"),
            ),
            (
                "/a",
                &[("content-type", "application/json")],
                Some(b"{\"a\":"),
            ),
            ("/a", &[("content-type", "application/json")], Some(b"")),
            ("/a", &[("content-type", "text/plain")], Some(b"{\"a\":")),
            (
                "/a",
                &[
                    ("content-type", "application/json"),
                    ("content-length", "x"),
                ],
                Some(b"{}"),
            ),
            (
                "/a",
                &[
                    ("content-type", "application/json"),
                    ("content-length", "99"),
                ],
                Some(b"{"),
            ),
            (
                "/a",
                &[
                    ("content-type", "application/json"),
                    ("content-type", "text/plain"),
                ],
                Some(b"{"),
            ),
            (
                "/a",
                &[
                    ("content-type", "application/json"),
                    ("x-envoy-auth-partial-body", "true"),
                ],
                Some(b"{"),
            ),
            (
                "/a",
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(b"a=1;b=2"),
            ),
            (
                "/a",
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(b"a=1&b=%zz"),
            ),
            (
                "/a",
                &[(
                    "content-type",
                    "multipart/form-data; boundary=\"unterminated",
                )],
                Some(b"--x"),
            ),
            (
                "/a",
                &[("content-type", "application/json")],
                Some(b"\xff\xfe"),
            ),
        ];
        let mut refused = 0;
        for (path, headers, body) in cases {
            let mut map = http::HeaderMap::new();
            for (k, v) in *headers {
                map.append(*k, v.parse().unwrap());
            }
            let facts = RequestFacts {
                checkpoint: Direction::Inbound.into(),
                method: "POST",
                path,
                raw_path: path,
                host: "h",
                scheme: "https",
                protocol: "HTTP/2",
                headers: &map,
                body: *body,
                request_id: "r",
                source_principal: None,
                destination_principal: None,
                source_address: None,
                destination_address: None,
                caller: None,
                service: None,
            };
            let built = build_input(&facts).err();
            assert_eq!(
                check_request(path, &map, *body).err(),
                built,
                "{path} {headers:?} {body:?}"
            );
            refused += usize::from(built.is_some());
        }
        assert!(
            refused >= 8,
            "only {refused} refusals: the table tests too little"
        );
    }
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};

    fn attrs(path: &str, headers: &[(&str, &str)], body: &str) -> AttributeContext {
        AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    body: body.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn doc(path: &str, headers: &[(&str, &str)], body: &str) -> Result<Value, InputError> {
        let mesh = MeshFacts {
            checkpoint: Checkpoint::Sidecar(Direction::Inbound),
            caller: None,
            service: None,
            raw_path: path,
        };
        document(&attrs(path, headers, body), &mesh)
    }

    #[test]
    fn path_and_query_follow_go() {
        let d = doc("//a/b%20c+d/?x=1&x=2&n=J%C3%BCrgen+K&flag&&e=", &[], "").unwrap();
        assert_eq!(d["parsed_path"], json!(["a", "b c+d", ""]));
        assert_eq!(
            d["parsed_query"],
            json!({"x": ["1", "2"], "n": ["Jürgen K"], "flag": [""], "e": [""]})
        );
        assert_eq!(doc("/", &[], "").unwrap()["parsed_path"], json!([""]));
        assert_eq!(doc("", &[], "").unwrap()["parsed_query"], json!({}));
        // An escaped slash is a slash once decoded, as in the plugin.
        assert_eq!(
            doc("/a%2Fb", &[], "").unwrap()["parsed_path"],
            json!(["a", "b"])
        );
    }

    #[test]
    fn malformed_paths_and_queries_are_refused_with_gos_words() {
        let e = doc("/a%zzb", &[], "").unwrap_err();
        assert_eq!(e.body(), "request_parse_error: invalid URL escape \"%zz\"");
        assert_eq!(
            doc("/a%4", &[], "").unwrap_err(),
            InputError::Escape(b"%4".to_vec())
        );
        assert_eq!(
            doc("/?a=1;b=2", &[], "").unwrap_err(),
            InputError::Semicolon
        );
        assert_eq!(
            doc("/?a=%", &[], "").unwrap_err(),
            InputError::Escape(b"%".to_vec())
        );
    }

    #[test]
    fn bodies_are_parsed_by_content_type_and_truncation_is_reported() {
        let json_ct = [("content-type", "application/json; charset=utf-8")];
        let d = doc("/", &json_ct, r#"{"a":[1,2]}"#).unwrap();
        assert_eq!(d["parsed_body"], json!({"a": [1, 2]}));
        assert_eq!(d["truncated_body"], false);
        // `+json` does not contain "application/json": not parsed.
        let d = doc("/", &[("content-type", "application/vnd.api+json")], "{}").unwrap();
        assert_eq!(d["parsed_body"], Value::Null);
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let d = doc("/", &form, "a=1&b=x+y&a=2").unwrap();
        assert_eq!(d["parsed_body"], json!({"a": ["1", "2"], "b": ["x y"]}));
        let long = [
            ("content-type", "application/json"),
            ("content-length", "100"),
        ];
        let d = doc("/", &long, "{}").unwrap();
        assert_eq!(
            (d["parsed_body"].clone(), d["truncated_body"].clone()),
            (Value::Null, json!(true))
        );
        let partial = [
            ("content-type", "application/json"),
            ("x-envoy-auth-partial-body", "true"),
        ];
        assert_eq!(doc("/", &partial, "{}").unwrap()["truncated_body"], true);
        assert!(matches!(
            doc("/", &json_ct, "{nope").unwrap_err(),
            InputError::Json(_)
        ));
        let bad_len = [
            ("content-type", "application/json"),
            ("content-length", "x"),
        ];
        assert_eq!(
            doc("/", &bad_len, "{}").unwrap_err().body(),
            "request_parse_error: strconv.ParseInt: parsing \"x\": invalid syntax"
        );
        // No content type, nothing parsed; the key is still there.
        assert_eq!(doc("/", &[], "{}").unwrap()["parsed_body"], Value::Null);
    }

    #[test]
    fn each_byte_that_is_not_utf8_is_one_replacement_character_as_in_go() {
        // `%E2%82` is a euro sign cut short. The plugin keeps the raw bytes
        // and Go's JSON encoding (OPA's json.marshal, its logs, its form
        // bodies) writes one U+FFFD per byte, where from_utf8_lossy would
        // write one for the whole sequence.
        let d = doc("/a%E2%82/%FF?k=%E2%82x", &[], "").unwrap();
        assert_eq!(d["parsed_path"], json!(["a\u{FFFD}\u{FFFD}", "\u{FFFD}"]));
        assert_eq!(d["parsed_query"], json!({"k": ["\u{FFFD}\u{FFFD}x"]}));
        let form = parse_query(b"a=x\xffy&b=%E2%82&c=\xe2\x82").unwrap();
        assert_eq!(
            query_object(form),
            json!({"a": ["x\u{FFFD}y"], "b": ["\u{FFFD}\u{FFFD}"], "c": ["\u{FFFD}\u{FFFD}"]})
        );
    }

    #[test]
    fn json_bodies_are_read_as_gos_decoder_reads_them() {
        // Bytes that are not UTF-8 and lone surrogate escapes are U+FFFD;
        // a pair, and an escaped backslash before `ud800`, are kept.
        assert_eq!(
            parse_json(b"{\"s\":\"a\xffb\xe2\x82\"}").unwrap(),
            json!({"s": "a\u{FFFD}b\u{FFFD}\u{FFFD}"})
        );
        let escapes = br#"{"s":"\ud800\u0041\udc00","p":"\ud83d\ude00","e":"\\ud800"}"#;
        assert_eq!(
            parse_json(escapes).unwrap(),
            json!({"s": "\u{FFFD}A\u{FFFD}", "p": "\u{1F600}", "e": "\\ud800"})
        );
        // Go reads one more token: a `null` one is fine, whatever follows.
        assert_eq!(parse_json(b"{\"a\":1} null").unwrap(), json!({"a": 1}));
        assert_eq!(parse_json(b"{}null]").unwrap(), json!({}));
        for bad in [&b"{} {}"[..], b"{} true", b"{} x", b"{} \x0c", b"{\"a\":"] {
            assert!(parse_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            parse_json(b" \n").unwrap_err(),
            InputError::Json("EOF".into())
        );
    }

    #[test]
    fn escape_errors_quote_the_bytes_as_go_does() {
        // The three bytes from `%` cut `é` in half: strconv.Quote writes
        // the stray byte as \xc3, a control as \x7f.
        assert_eq!(
            doc("/%a\u{e9}", &[], "").unwrap_err().body(),
            "request_parse_error: invalid URL escape \"%a\\xc3\""
        );
        assert_eq!(
            InputError::escape_at(b"/%\x7f\"x", 1).to_string(),
            "invalid URL escape \"%\\x7f\\\"\""
        );
        assert_eq!(
            InputError::escape_at("/%\u{e9}".as_bytes(), 1).to_string(),
            "invalid URL escape \"%\u{e9}\""
        );
    }

    #[test]
    fn multipart_bodies_are_form_fields() {
        let ct = [("content-type", "multipart/form-data; boundary=zz")];
        let body = "--zz\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nhi\r\n--zz--\r\n";
        let d = doc("/", &ct, body).unwrap();
        assert_eq!(d["parsed_body"], json!({"q": ["hi"]}));
        let no_boundary = [("content-type", "multipart/form-data")];
        assert_eq!(
            doc("/", &no_boundary, body).unwrap()["parsed_body"],
            Value::Null
        );
        assert!(matches!(
            doc("/", &ct, "garbage").unwrap_err(),
            InputError::Multipart(_)
        ));
    }
}
