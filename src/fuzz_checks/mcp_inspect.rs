//! `mcp_inspect`: the strict MCP body parser, on any bytes.
//!
//! `inspect` reads the bodies clients POST to MCP services, and policy
//! decides on what it reads, so the properties are the ones that make that
//! decision sound: no panic; what it accepts, serde_json reads as the same
//! JSON (no parser differential on the accepted subset); the accepted value,
//! written back out, is accepted again as the same messages; every
//! `tools/call` names a string tool; every refusal is a well-formed JSON-RPC
//! error response of bounded size (no echo of unbounded input).
//!
//! Input: byte 0 picks the limits (even: the defaults; odd: 512 bytes, depth
//! 4, batch 2, so the limits are reached), the rest is the body.

use meshward_dataplane::mcp::{Body, Kind, Limits, McpError, inspect};
use serde_json::Value;

use super::Verdict;

/// The most an error response may be: fixed text plus a few quoted names,
/// each at most `ECHO_LIMIT` characters of at most 10 bytes escaped.
const MAX_ERROR_RESPONSE: usize = 2048;

pub fn mcp_inspect(data: &[u8]) -> Verdict {
    let Some((&selector, body)) = data.split_first() else {
        return Verdict::Skipped;
    };
    let limits = if selector % 2 == 0 {
        Limits::default()
    } else {
        Limits {
            max_bytes: 512,
            max_depth: 4,
            max_batch: 2,
        }
    };
    match inspect(body, &limits) {
        Ok(parsed) => {
            check_accepted(body, &limits, &parsed);
            Verdict::Accepted
        }
        Err(error) => {
            check_refusal(&error);
            Verdict::Rejected
        }
    }
}

fn check_accepted(body: &[u8], limits: &Limits, parsed: &Body) {
    let ours = match parsed {
        Body::Single(message) => message.value().clone(),
        Body::Batch(messages) => Value::Array(messages.iter().map(|m| m.value().clone()).collect()),
    };
    let theirs: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => panic!("serde_json refused an accepted body {body:?}: {e}"),
    };
    assert!(
        same(&ours, &theirs),
        "serde_json reads {body:?} differently: ours {ours}, theirs {theirs}"
    );

    let count = parsed.messages().len();
    assert!(
        count >= 1 && count <= limits.max_batch.max(1),
        "{count} messages"
    );
    let mut any_request = false;
    for message in parsed.messages() {
        let input = message.to_input();
        assert!(input.is_object(), "to_input is not an object: {input}");
        any_request |= message.kind() == Kind::Request;
        assert_eq!(
            message.is_notification(),
            message.kind() == Kind::Notification
        );
        if message.method() == Some("tools/call") {
            assert_eq!(input["tool"].as_str(), message.tool(), "{input}");
            assert!(
                message.tool().is_some() && input["arguments"].is_object(),
                "{input}"
            );
        }
    }
    assert_eq!(parsed.expects_response(), any_request);

    let written = ours.to_string();
    let limits = Limits {
        max_bytes: usize::MAX,
        ..*limits
    };
    match inspect(written.as_bytes(), &limits) {
        Ok(again) => assert_eq!(&again, parsed, "written back as {written}"),
        Err(e) => panic!("{body:?} written back as {written} is refused: {e}"),
    }
}

fn check_refusal(error: &McpError) {
    let response = error.to_response();
    assert!(
        response.len() <= MAX_ERROR_RESPONSE,
        "error response of {} bytes: {response}",
        response.len()
    );
    let value: Value = match serde_json::from_str(&response) {
        Ok(value) => value,
        Err(e) => panic!("error response {response} is not JSON: {e}"),
    };
    assert_eq!(value["jsonrpc"], "2.0", "{response}");
    assert!(value["id"].is_null(), "{response}");
    assert_eq!(
        value["error"]["code"].as_i64(),
        Some(error.code()),
        "{response}"
    );
}

/// Equal as JSON; floats may differ in the last bits by the rounding of
/// serde_json's default float parser, which is not correctly rounded
/// (`inspect`'s is).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ulps_apart(x, y) <= 2,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// How many representable doubles lie between `x` and `y` (same sign).
fn ulps_apart(x: f64, y: f64) -> u64 {
    if x.is_sign_negative() != y.is_sign_negative() {
        return u64::MAX;
    }
    x.to_bits().abs_diff(y.to_bits())
}
