//! Stage 4b, inspect: the JSON-RPC messages of a `protocol: mcp` service's
//! endpoint, parsed strictly ([`crate::mcp`]) and judged one by one, so a
//! policy can say "support-triage may call `get_customer` but not
//! `delete_customer`".
//!
//! The decision is only as good as the parse, so the body is read whole
//! (up to the service's inspection limit), parsed the same way whatever its
//! headers claim (`Content-Type`, `mcp-protocol-version`), refused when it
//! cannot be parsed strictly and completely, and forwarded byte for byte:
//! the server executes exactly what the policy judged. A body in an
//! encoding the mesh does not decode (`Content-Encoding`) is refused rather
//! than judged as opaque bytes.
//!
//! A refusal of a message that expects an answer is a JSON-RPC error (same
//! `id`, a Meshward error code, the reason), so MCP clients surface it; a
//! batch is refused whole, each request answered.

use bytes::Bytes;
use http::{HeaderMap, Method, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use meshward_contract::spec::McpSettings;
use serde_json::{Value, json};

use super::authorize::{Audit, judge};
use super::identify::Identity;
use super::refusal::{BadRequest, Refusal};
use crate::mcp::{self, Body, McpError, Message, Rejection};
use crate::policy::{Checkpoint, Decision, Direction};
use crate::ratelimit::{RateLimiter, Scope};
use crate::state::Upstream;

/// The service's MCP settings when `path_and_query` (canonical) is its MCP
/// endpoint; the query does not matter, the path must match exactly.
pub fn endpoint<'a>(upstream: &'a Upstream, path_and_query: &str) -> Option<&'a McpSettings> {
    let settings = upstream.service.mcp.as_ref()?;
    let path = path_and_query.split('?').next().unwrap_or_default();
    (path == settings.path).then_some(settings)
}

/// Reads the body of a request to an MCP endpoint, whole and bounded, and
/// parses it ([`parse`]).
pub async fn read(
    settings: &McpSettings,
    method: &Method,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<(Bytes, Option<Body>), Refusal> {
    let limit = settings.max_message_bytes as usize;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"));
    // Refused before the body is read: an encoded body is never judged.
    check_encoding(encoding)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(refuse(McpError::TooLarge { limit }));
    }
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(refuse(McpError::TooLarge { limit }));
        }
        Err(e) => return Err(BadRequest::Body(e.to_string()).into()),
    };
    let parsed = parse(settings, method.as_str(), encoding, &bytes, false)?;
    Ok((bytes, parsed))
}

/// Parses the body of a request to an MCP endpoint, the same way for the
/// sidecar and an ext_authz check. `None` for a bodiless request that is not
/// a POST (the SSE stream's GET, the session's DELETE): there is no message
/// to judge. `truncated`: only part of the body is here (an ext_authz check
/// of a larger body), which is refused like a body over the limit.
pub fn parse(
    settings: &McpSettings,
    method: &str,
    content_encoding: Option<&str>,
    body: &[u8],
    truncated: bool,
) -> Result<Option<Body>, Refusal> {
    check_encoding(content_encoding)?;
    if truncated {
        return Err(refuse(McpError::TooLarge {
            limit: settings.max_message_bytes as usize,
        }));
    }
    if method != Method::POST.as_str() {
        if body.is_empty() {
            return Ok(None);
        }
        return Err(refuse(McpError::Unsupported(format!(
            "a body on {method} (MCP messages are POSTed)"
        ))));
    }
    mcp::inspect(body, &limits(settings))
        .map(Some)
        .map_err(refuse)
}

fn refuse(e: McpError) -> Refusal {
    Refusal::BadRequest(BadRequest::Mcp(e))
}

/// A body in an encoding the mesh does not decode is refused, not judged
/// as opaque bytes the server would decode differently.
fn check_encoding(encoding: Option<&str>) -> Result<(), Refusal> {
    match encoding {
        None => Ok(()),
        Some(e) if e.trim().eq_ignore_ascii_case("identity") => Ok(()),
        Some(_) => Err(refuse(McpError::Unsupported(
            "a Content-Encoding other than identity".into(),
        ))),
    }
}

fn limits(settings: &McpSettings) -> mcp::Limits {
    mcp::Limits {
        max_bytes: settings.max_message_bytes as usize,
        ..mcp::Limits::default()
    }
}

/// The policy's decision on every message of `body`: each is judged with
/// `input.meshward.mcp` added to `base` (the request's input document).
/// The first refusal refuses the whole body; the decisions of an allowed
/// body are returned in order, for their header changes.
#[allow(clippy::too_many_arguments)]
pub fn judge_messages(
    identity: &Identity,
    upstream: &Upstream,
    checkpoint: Checkpoint,
    base: &Value,
    body: &Body,
    limiter: &RateLimiter,
    mut audit: Option<&mut Audit<'_>>,
    request_id: &str,
) -> Result<Vec<Decision>, Refusal> {
    let messages = body.messages();
    let mut decisions = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let input = with_message(base, message.to_input());
        match judge(
            identity,
            Some(upstream),
            checkpoint,
            &input,
            limiter,
            audit.as_deref_mut(),
        ) {
            Ok(decision) => decisions.push(decision),
            Err(refusal) => return Err(answer(body, Some(i), refusal, request_id)),
        }
    }
    admit_tools(identity, upstream, checkpoint, body, limiter, request_id)?;
    Ok(decisions)
}

/// `base` with `meshward.mcp` set to `message`.
pub fn with_message(base: &Value, message: Value) -> Value {
    let mut input = base.clone();
    if let Some(mesh) = input.get_mut("meshward").and_then(Value::as_object_mut) {
        mesh.insert("mcp".into(), message);
    }
    input
}

/// Per-tool rates, at the service's side (its inbound sidecar, or an
/// ext_authz check standing where it would): one token per `tools/call` of
/// a limited tool, keyed by (caller, service, tool).
fn admit_tools(
    identity: &Identity,
    upstream: &Upstream,
    checkpoint: Checkpoint,
    body: &Body,
    limiter: &RateLimiter,
    request_id: &str,
) -> Result<(), Refusal> {
    if checkpoint == Checkpoint::Sidecar(Direction::Outbound) {
        return Ok(());
    }
    let service = &upstream.service;
    let Some(settings) = service.mcp.as_ref() else {
        return Ok(());
    };
    for (i, message) in body.messages().iter().enumerate() {
        let Some(tool) = message
            .tool()
            .filter(|_| message.method() == Some("tools/call"))
        else {
            continue;
        };
        let Some(limit) = settings.tool_limits.get(tool) else {
            continue;
        };
        let key = format!("{}/tools/{tool}", service.name);
        // A rate-only limit: the permit holds no slot and can go at once.
        if let Err(error) = limiter.check(Scope::Ingress, Some(&identity.caller_id), &key, limit) {
            let refusal = Refusal::RateLimited {
                caller: identity.caller_id.clone(),
                service: format!("{} tool {tool}", service.name),
                error,
            };
            return Err(answer(body, Some(i), refusal, request_id));
        }
    }
    Ok(())
}

/// `refusal` of message `index` (or of the whole body: `None`), as the
/// JSON-RPC answer the body expects: an error for that message's request
/// and, in a batch, for every other request (none of them is forwarded). A
/// body of notifications and responses expects no answer and gets the
/// plain HTTP refusal.
pub fn answer(body: &Body, index: Option<usize>, refusal: Refusal, request_id: &str) -> Refusal {
    if !body.expects_response() {
        return refusal;
    }
    let rejection = Rejection {
        code: code_of(&refusal),
        message: refusal.to_string(),
        data: Some(json!({ "refusal": refusal.kind(), "request_id": request_id })),
    };
    let answer = match body {
        Body::Single(message) => mcp::rejection_response(message.id(), &rejection),
        Body::Batch(messages) => {
            let others = Rejection {
                message: match index {
                    Some(index) => format!(
                        "not executed: message {index} of the batch was refused: {}",
                        rejection.message
                    ),
                    None => rejection.message.clone(),
                },
                ..rejection.clone()
            };
            let answers: Vec<String> = messages
                .iter()
                .enumerate()
                .filter(|(_, m)| m.is_request())
                .map(|(i, m)| {
                    let r = if Some(i) == index || index.is_none() {
                        &rejection
                    } else {
                        &others
                    };
                    mcp::rejection_response(m.id(), r)
                })
                .collect();
            format!("[{}]", answers.join(","))
        }
    };
    Refusal::JsonRpc {
        refusal: Box::new(refusal),
        answer,
    }
}

/// Meshward's JSON-RPC error code for a refusal (in the range JSON-RPC
/// leaves to server implementations).
fn code_of(refusal: &Refusal) -> i64 {
    match refusal {
        Refusal::Forbidden(_) | Refusal::PolicyError(_) => mcp::FORBIDDEN,
        Refusal::RateLimited { .. } => mcp::RATE_LIMITED,
        Refusal::BadRequest(BadRequest::Mcp(e)) => e.code(),
        _ => mcp::UNAVAILABLE,
    }
}

/// The single `tools/list` request of `body`, when there is one to filter.
pub fn tools_list_request(body: &Body) -> Option<&Message> {
    match body {
        Body::Single(m) if m.method() == Some("tools/list") && m.id().is_some() => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::identify::identify;
    use crate::pipeline::test_support::{AGENT, state};

    fn body(text: &str) -> Body {
        mcp::inspect(text.as_bytes(), &mcp::Limits::default()).unwrap()
    }

    #[test]
    fn refusals_of_requests_are_json_rpc_errors_with_the_same_id() {
        let refusal = Refusal::Forbidden(super::super::refusal::Denial::plain("no tool for you"));
        let single =
            body(r#"{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{"name":"x"}}"#);
        let Refusal::JsonRpc {
            answer: text,
            refusal,
        } = answer(&single, Some(0), refusal, "rid")
        else {
            panic!("not a JSON-RPC answer");
        };
        assert_eq!(refusal.kind(), "forbidden");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "a-1");
        assert_eq!(v["error"]["code"], mcp::FORBIDDEN);
        assert_eq!(v["error"]["message"], "no tool for you");
        assert_eq!(v["error"]["data"]["request_id"], "rid");
    }

    #[test]
    fn a_refused_batch_answers_every_request_and_notifications_get_http() {
        let batch = body(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
                {"jsonrpc":"2.0","method":"notifications/initialized"},
                {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x"}}]"#,
        );
        let refusal = Refusal::Forbidden(super::super::refusal::Denial::plain("no"));
        let Refusal::JsonRpc { answer: text, .. } = answer(&batch, Some(2), refusal, "rid") else {
            panic!("not a JSON-RPC answer");
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        let answers = v.as_array().unwrap();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0]["id"], 1);
        assert!(
            answers[0]["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("not executed")
        );
        assert_eq!(answers[1]["id"], 2);
        assert_eq!(answers[1]["error"]["message"], "no");

        let notification = body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        let refusal = Refusal::Forbidden(super::super::refusal::Denial::plain("no"));
        assert!(matches!(
            answer(&notification, None, refusal, "rid"),
            Refusal::Forbidden(_)
        ));
    }

    #[test]
    fn the_endpoint_is_the_exact_canonical_path() {
        let id = identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap();
        let mut up = id.state.clusters["svc"].as_ref().clone();
        assert!(endpoint(&up, "/mcp").is_none(), "not an MCP service");
        up.service.mcp = Some(McpSettings::default());
        assert!(endpoint(&up, "/mcp").is_some());
        assert!(endpoint(&up, "/mcp?session=1").is_some());
        for other in ["/mcp/", "/mcpx", "/MCP", "/other"] {
            assert!(endpoint(&up, other).is_none(), "{other}");
        }
    }

    #[test]
    fn each_message_is_judged_and_a_denied_tool_refuses_the_body() {
        let id = identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap();
        let up = id.state.clusters["svc"].clone();
        let base = json!({"meshward": {"direction": "inbound"}});
        let limiter = RateLimiter::new();
        let judge = |text: &str| {
            judge_messages(
                &id,
                &up,
                Checkpoint::ExtAuthz,
                &base,
                &body(text),
                &limiter,
                None,
                "rid",
            )
        };
        let ok = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fine"}},
                     {"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
        assert_eq!(judge(ok).unwrap().len(), 2);
        let hidden = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fine"}},
                         {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"denied\u005ftool"}}]"#;
        match judge(hidden) {
            Err(Refusal::JsonRpc { refusal, answer }) => {
                assert!(matches!(*refusal, Refusal::Forbidden(ref d) if d.reason == "denied tool"));
                assert!(answer.contains("not executed"), "{answer}");
            }
            other => panic!("not refused the JSON-RPC way: {other:?}"),
        }
    }
}
