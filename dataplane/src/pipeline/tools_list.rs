//! `tools/list` answers filtered to the tools the caller may call (a
//! service's `mcp.filter_tools_list`), so an agent never sees tools it
//! cannot use.
//!
//! This is a courtesy, not the enforcement: every `tools/call` is judged on
//! its own. Each listed tool is kept when the policy would allow calling it
//! (a `tools/call` with no arguments, `listing: true`); a tool without a
//! string name is dropped. The answer is a JSON body, or the event of an
//! SSE stream that carries it: events before it and after it pass through
//! as they arrive, only the answering event is held (up to
//! [`MAX_ANSWER`]). An answer that cannot be filtered is replaced by a
//! JSON-RPC error rather than passed through unfiltered.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::inspect::with_message;
use crate::mcp::{self, Id};
use crate::policy::CompiledPolicy;
use crate::proxy::body::{BoxError, ProxyBody, full};

/// The largest answer (JSON body or SSE event) held for filtering.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// What judging a listed tool needs: the policy and the request's input.
pub struct ToolsFilter {
    pub policy: Arc<CompiledPolicy>,
    /// The `tools/list` request's input document.
    pub base: Value,
    /// The request's JSON-RPC id: only the answer to it is filtered.
    pub id: Id,
}

impl ToolsFilter {
    /// `response` with its `tools/list` answer filtered.
    pub async fn apply(self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        if response.status() != http::StatusCode::OK {
            return response;
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_default();
        if content_type.starts_with("text/event-stream") {
            let (parts, body) = response.into_parts();
            return Response::from_parts(parts, self.events(body));
        }
        if !content_type.starts_with("application/json") {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let text = match collect(body, MAX_ANSWER).await {
            Some(bytes) => self.filter_json(&bytes),
            None => self.unfilterable(),
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len() as u64));
        Response::from_parts(parts, full(text))
    }

    /// The SSE stream, with the answering event filtered as it passes.
    fn events(self, mut body: ProxyBody) -> ProxyBody {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
        tokio::spawn(async move {
            let mut pending = BytesMut::new();
            let mut answered = false;
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let data = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        if tx.send(Ok(frame)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                if answered {
                    if tx.send(Ok(Frame::data(data))).await.is_err() {
                        return;
                    }
                    continue;
                }
                pending.extend_from_slice(&data);
                while let Some(end) = event_end(&pending) {
                    let event = pending.split_to(end).freeze();
                    let (out, was_answer) = self.filter_event(&event);
                    answered |= was_answer;
                    if tx.send(Ok(Frame::data(out))).await.is_err() {
                        return;
                    }
                    if answered {
                        break;
                    }
                }
                if answered && !pending.is_empty() {
                    let rest = pending.split().freeze();
                    if tx.send(Ok(Frame::data(rest))).await.is_err() {
                        return;
                    }
                }
                if pending.len() > MAX_ANSWER {
                    let _ = tx
                        .send(Err("SSE event too large to filter tools/list".into()))
                        .await;
                    return;
                }
            }
            if !pending.is_empty() {
                let _ = tx.send(Ok(Frame::data(pending.freeze()))).await;
            }
        });
        StreamBody::new(ReceiverStream::new(rx)).boxed()
    }

    /// One SSE event (with its blank line); filtered when its data is the
    /// answer to the request.
    fn filter_event(&self, event: &Bytes) -> (Bytes, bool) {
        let Ok(text) = std::str::from_utf8(event) else {
            return (event.clone(), false);
        };
        let mut data = String::new();
        let mut other = Vec::new();
        for line in text.lines() {
            match line.strip_prefix("data:") {
                Some(d) => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
                None if line.is_empty() => {}
                None => other.push(line),
            }
        }
        let Ok(message) = serde_json::from_str::<Value>(&data) else {
            return (event.clone(), false);
        };
        if message.get("id") != Some(&self.id.to_value()) {
            return (event.clone(), false);
        }
        let filtered = self.filter_message(message);
        let mut out = String::new();
        for line in other {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("data: ");
        out.push_str(&filtered);
        out.push_str("\n\n");
        (Bytes::from(out), true)
    }

    fn filter_json(&self, bytes: &[u8]) -> String {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(message) if message.get("id") == Some(&self.id.to_value()) => {
                self.filter_message(message)
            }
            _ => self.unfilterable(),
        }
    }

    /// The answer with only the tools the caller may call.
    fn filter_message(&self, mut message: Value) -> String {
        if message.get("error").is_some() {
            return message.to_string();
        }
        let Some(tools) = message
            .get_mut("result")
            .and_then(|r| r.get_mut("tools"))
            .and_then(Value::as_array_mut)
        else {
            return self.unfilterable();
        };
        tools.retain(|tool| {
            tool.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| self.may_call(name))
        });
        message.to_string()
    }

    fn may_call(&self, tool: &str) -> bool {
        let call = json!({
            "kind": "request",
            "method": "tools/call",
            "id": self.id.to_value(),
            "params": { "name": tool, "arguments": {} },
            "tool": tool,
            "arguments": {},
            "listing": true,
        });
        self.policy
            .evaluate(&with_message(&self.base, call))
            .is_ok_and(|d| d.allowed)
    }

    fn unfilterable(&self) -> String {
        mcp::error_response(
            Some(&self.id),
            mcp::UNAVAILABLE,
            "the tools/list answer could not be filtered by the mesh",
        )
    }
}

/// The whole body, if it ends without error within `limit` bytes.
async fn collect(mut body: ProxyBody, limit: usize) -> Option<Bytes> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if out.len() + data.len() > limit {
                return None;
            }
            out.extend_from_slice(&data);
        }
    }
    Some(out.freeze())
}

/// The end (exclusive, blank line included) of the first complete SSE
/// event in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_the_first_blank_line() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2\n\n"), Some(9));
        assert_eq!(event_end(b"data: 1\r\n\r\nx"), Some(11));
        assert_eq!(event_end(b"data: 1\n"), None);
    }
}
