//! MCP (Model Context Protocol) request bodies, read strictly so that policy
//! decides on exactly what the MCP server will run.
//!
//! For a service marked `protocol: mcp`, the dataplane reads each Streamable
//! HTTP POST body as JSON-RPC 2.0 and gives policy the method, the tool and
//! its arguments (`input.meshward.mcp`, from [`Message::to_input`]). That
//! decision is only as good as the parse: if the mesh and the server can read
//! one body two ways, a client can show policy one tool and run another. The
//! official Python SDK's server reads far more than strict JSON — duplicate
//! keys with the last one winning (also when spelled with `\u` escapes, so
//! `"na\u006de"` overrides `"name"`), NaN and Infinity, integers of any
//! size, deep nesting, a BOM, UTF-16. So [`inspect`] reads strictly and
//! completely and refuses everything it cannot read one way only:
//!
//! - a body larger than [`Limits::max_bytes`], not UTF-8, or starting with a
//!   byte order mark (UTF-8, UTF-16 or UTF-32);
//! - anything but one JSON value (RFC 8259) with whitespace around it:
//!   NaN/Infinity or any other token, trailing data (`{}{}`), control
//!   characters in strings, lone surrogates in `\u` escapes;
//! - duplicate object keys, compared after unescaping;
//! - integers (no fraction, no exponent) outside `i64`/`u64`, and floats
//!   that are not finite (`1e400` is refused, never rounded to infinity;
//!   `1e-400` is 0.0, as every parser reads it);
//! - nesting deeper than [`Limits::max_depth`] containers;
//! - a body that is not a message object or a batch (array) of
//!   1..=[`Limits::max_batch`] message objects, and any message that breaks
//!   the JSON-RPC rules that [`Message`] checks.
//!
//! The JSON is parsed by a small hand-written parser (`json.rs` says why
//! serde_json alone is not enough) into [`serde_json::Value`]s, and whatever
//! it accepts serde_json reads as the same value (a property test checks
//! this). Refusals become JSON-RPC error responses with [`McpError::code`]
//! and [`McpError::to_response`]; refusals decided later (policy, limits)
//! with [`rejection_response`].

mod error;
mod json;
mod message;

#[cfg(test)]
mod tests;

pub use error::{
    ECHO_LIMIT, FORBIDDEN, INVALID_REQUEST, McpError, PARSE_ERROR, RATE_LIMITED, Rejection,
    UNAVAILABLE, error_response, rejection_response,
};
pub use message::{Id, Kind, Message};

use serde_json::Value;

/// The deepest nesting [`inspect`] reads, whatever [`Limits::max_depth`]
/// says. Parsing, dropping and serializing a `serde_json::Value` all recurse
/// once per level, so a deeper value could overflow a worker's stack; and
/// serde_json's own recursion limit lets it read 127 levels, so whatever
/// `inspect` accepts, serde_json (and code that re-reads the value with it)
/// reads too.
pub const DEPTH_CEILING: usize = 127;

/// Bounds on what [`inspect`] reads; each is refused beyond, never cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Body size in bytes (default 64 KiB). MCP requests are small; the
    /// Python SDK reads up to 4 MiB, which the mesh has no need to parse.
    pub max_bytes: usize,
    /// Nesting of objects and arrays, the top level counting as 1 (default
    /// 64); capped at [`DEPTH_CEILING`].
    pub max_depth: usize,
    /// Messages in one batch (default 32).
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 * 1024,
            max_depth: 64,
            max_batch: 32,
        }
    }
}

/// A checked body: one message, or a batch of at least one.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Single(Message),
    Batch(Vec<Message>),
}

impl Body {
    /// Every message, in the order sent.
    pub fn messages(&self) -> &[Message] {
        match self {
            Body::Single(message) => std::slice::from_ref(message),
            Body::Batch(messages) => messages,
        }
    }

    /// Whether the server will answer: any message is a request (has a
    /// method and an id). A body of only notifications and responses gets
    /// `202 Accepted` and no JSON-RPC response.
    pub fn expects_response(&self) -> bool {
        self.messages().iter().any(Message::is_request)
    }
}

/// Reads an MCP request body, strictly (see the module docs), into its
/// messages.
pub fn inspect(body: &[u8], limits: &Limits) -> Result<Body, McpError> {
    if body.len() > limits.max_bytes {
        return Err(McpError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    // UTF-8, UTF-16 BE, UTF-16 LE and UTF-32 LE (its first two bytes), UTF-32 BE.
    const BOMS: [&[u8]; 4] = [b"\xEF\xBB\xBF", b"\xFE\xFF", b"\xFF\xFE", b"\0\0\xFE\xFF"];
    if BOMS.iter().any(|bom| body.starts_with(bom)) {
        return Err(McpError::Bom);
    }
    let text = std::str::from_utf8(body).map_err(|_| McpError::NotUtf8)?;
    let value = json::parse(text, limits.max_depth.min(DEPTH_CEILING))?;
    match value {
        Value::Object(_) => Message::from_value(value).map(Body::Single),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(McpError::EmptyBatch);
            }
            if items.len() > limits.max_batch {
                return Err(McpError::BatchTooLarge {
                    limit: limits.max_batch,
                });
            }
            let mut messages = Vec::with_capacity(items.len());
            for (index, item) in items.into_iter().enumerate() {
                let message = Message::from_value(item).map_err(|e| match e {
                    McpError::InvalidMessage(reason) => {
                        McpError::InvalidMessage(format!("batch element {index}: {reason}"))
                    }
                    McpError::Unsupported(reason) => {
                        McpError::Unsupported(format!("batch element {index}: {reason}"))
                    }
                    other => other,
                })?;
                messages.push(message);
            }
            Ok(Body::Batch(messages))
        }
        _ => Err(McpError::InvalidMessage(
            "the body must be a JSON object or array".to_owned(),
        )),
    }
}
