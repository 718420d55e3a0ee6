//! `policy_input`: the policy input document, built from any request.
//!
//! Every request the proxy authorizes goes through `build_input`, with
//! method, path, host, headers and body straight from the client. The
//! properties: no panic, the result is a JSON object that serializes, and it
//! reports the request as it came (`attributes.request.http` has the method,
//! path and host given, every header sent, the body size; `parsed_path` is a
//! list), since policies decide on those values.
//!
//! Input, in order: a checkpoint byte (modulo 3: outbound, inbound, ext_authz); method, path and host, each
//! a length byte and that many bytes (UTF-8, invalid bytes replaced); a
//! header count byte (modulo 16) and that many name/value pairs, each a
//! length byte and bytes, kept only where `http` accepts them; a byte whose
//! low bit says whether a body follows; the rest is the body.

use http::{HeaderMap, HeaderName, HeaderValue};
use meshward_dataplane::policy::{Checkpoint, Direction, RequestFacts, build_input};
use serde_json::Value;

use super::Verdict;
use super::input::Input;

pub fn policy_input(data: &[u8]) -> Verdict {
    let mut input = Input::new(data);
    let checkpoint = match input.byte().map(|b| b % 3) {
        None => return Verdict::Skipped,
        Some(0) => Checkpoint::Sidecar(Direction::Outbound),
        Some(1) => Checkpoint::Sidecar(Direction::Inbound),
        Some(_) => Checkpoint::ExtAuthz,
    };
    let method = String::from_utf8_lossy(input.prefixed8());
    let path = String::from_utf8_lossy(input.prefixed8());
    let host = String::from_utf8_lossy(input.prefixed8());
    let mut headers = HeaderMap::new();
    for _ in 0..input.byte().map_or(0, |n| n % 16) {
        let name = input.prefixed8();
        let value = input.prefixed8();
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    let has_body = input.byte().is_some_and(|b| b & 1 == 1);
    let body = has_body.then(|| input.rest());

    let built = build_input(&RequestFacts {
        checkpoint,
        method: &method,
        path: &path,
        raw_path: &path,
        host: &host,
        scheme: "https",
        protocol: "HTTP/2",
        headers: &headers,
        body,
        request_id: "fuzz",
        source_principal: Some("spiffe://example.org/agent/a"),
        destination_principal: None,
        source_address: None,
        destination_address: None,
        caller: None,
        service: None,
    });
    let shown = || format!("method {method:?} path {path:?} host {host:?}");
    let doc = match built {
        Ok(doc) => doc,
        // What Go's parsers refuse: the plugin answers 400 with this text.
        Err(e) => {
            assert!(
                e.body().starts_with("request_parse_error: "),
                "refusal {e:?} for {}",
                shown()
            );
            return Verdict::Rejected;
        }
    };

    assert!(doc.is_object(), "input is not an object for {}", shown());
    let http = &doc["attributes"]["request"]["http"];
    // Empty strings are left out, as the plugin leaves out unset fields.
    let field = |name: &str| http[name].as_str().unwrap_or_default().to_string();
    assert_eq!(field("path"), *path, "{}", shown());
    assert_eq!(field("method"), *method, "{}", shown());
    assert_eq!(field("host"), *host, "{}", shown());
    for name in headers.keys() {
        assert!(
            http["headers"][name.as_str()].is_string(),
            "header {name} missing for {}",
            shown()
        );
    }
    assert_eq!(http["headers"][":path"].as_str(), Some(&*path));
    assert_eq!(
        http["size"].as_u64(),
        body.map(|b| b.len() as u64).filter(|n| *n > 0),
        "body size for {}",
        shown()
    );
    assert!(doc["parsed_path"].is_array(), "{}", shown());
    assert!(doc["parsed_query"].is_object(), "{}", shown());
    let text = serde_json::to_string(&doc)
        .unwrap_or_else(|e| panic!("input does not serialize for {}: {e}", shown()));
    assert!(
        serde_json::from_str::<Value>(&text).is_ok(),
        "serialized input does not parse back for {}",
        shown()
    );
    Verdict::Accepted
}
