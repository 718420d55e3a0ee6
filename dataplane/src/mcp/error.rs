//! Why a body was refused, and the JSON-RPC error responses the mesh sends.
//!
//! Every refusal becomes a JSON-RPC error response in one place
//! ([`McpError::to_response`], [`rejection_response`]), so the client of an
//! MCP server sees the mesh's answer in the protocol it speaks, not an HTML
//! error page. Messages never echo unbounded client input: keys and names
//! are cut to [`ECHO_LIMIT`] characters and control characters escaped, so
//! a refusal cannot be used to amplify or to inject into logs.

use serde_json::{Map, Value};

use super::message::Id;

/// JSON-RPC 2.0: invalid JSON was received (and every other failure to read
/// the body as exactly one JSON value).
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC 2.0: the JSON is not a valid request object (or batch).
pub const INVALID_REQUEST: i64 = -32600;
/// Meshward: policy denied the call. JSON-RPC reserves -32000..=-32099 for
/// implementation-defined server errors; Meshward uses -32090..=-32099.
pub const FORBIDDEN: i64 = -32090;
/// Meshward: the caller's rate limit is exhausted.
pub const RATE_LIMITED: i64 = -32091;
/// Meshward: the service is unavailable (circuit open, no healthy endpoint).
pub const UNAVAILABLE: i64 = -32092;

/// How many characters of client input an error message may quote.
pub const ECHO_LIMIT: usize = 64;

/// Why [`inspect`](super::inspect) refused a body. Each is the client's
/// error; [`McpError::code`] says which JSON-RPC code it answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("body starts with a byte order mark")]
    Bom,
    #[error("invalid JSON at byte {at}: {reason}")]
    Syntax { at: usize, reason: &'static str },
    /// The key as unescaped, cut to [`ECHO_LIMIT`] characters.
    #[error("duplicate object key {key}")]
    DuplicateKey { key: String },
    #[error("JSON nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("number out of range (integers must fit i64 or u64, floats must be finite)")]
    NumberOutOfRange,
    #[error("data after the JSON value")]
    TrailingData,
    #[error("invalid JSON-RPC message: {0}")]
    InvalidMessage(String),
    #[error("unsupported JSON-RPC message: {0}")]
    Unsupported(String),
    #[error("empty batch")]
    EmptyBatch,
    #[error("batch of more than {limit} messages")]
    BatchTooLarge { limit: usize },
}

impl McpError {
    /// The JSON-RPC error code: [`PARSE_ERROR`] when the body is not exactly
    /// one strict JSON value, [`INVALID_REQUEST`] when it is JSON but not an
    /// acceptable message or batch. An oversized body is `INVALID_REQUEST`:
    /// it was never read, so nothing says its JSON is bad.
    pub fn code(&self) -> i64 {
        match self {
            McpError::NotUtf8
            | McpError::Bom
            | McpError::Syntax { .. }
            | McpError::DuplicateKey { .. }
            | McpError::TooDeep { .. }
            | McpError::NumberOutOfRange
            | McpError::TrailingData => PARSE_ERROR,
            McpError::TooLarge { .. }
            | McpError::InvalidMessage(_)
            | McpError::Unsupported(_)
            | McpError::EmptyBatch
            | McpError::BatchTooLarge { .. } => INVALID_REQUEST,
        }
    }

    /// A JSON-RPC error response body with `"id": null`: a refused body has
    /// no id the mesh may trust (JSON-RPC 2.0 §5).
    pub fn to_response(&self) -> String {
        error_response(None, self.code(), &self.to_string())
    }
}

/// A refusal decided after parsing (policy, rate limit, breaker), to be sent
/// as a JSON-RPC error response for the message it refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: i64,
    pub message: String,
    /// The `error.data` member, omitted when `None`.
    pub data: Option<Value>,
}

/// `{"jsonrpc":"2.0","id":<id or null>,"error":{"code","message","data"?}}`.
pub fn rejection_response(id: Option<&Id>, rejection: &Rejection) -> String {
    let mut error = Map::new();
    error.insert("code".into(), Value::from(rejection.code));
    error.insert("message".into(), Value::from(rejection.message.as_str()));
    if let Some(data) = &rejection.data {
        error.insert("data".into(), data.clone());
    }
    let mut body = Map::new();
    body.insert("jsonrpc".into(), Value::from("2.0"));
    body.insert("id".into(), id.map_or(Value::Null, Id::to_value));
    body.insert("error".into(), Value::Object(error));
    Value::Object(body).to_string()
}

/// [`rejection_response`] without `error.data`.
pub fn error_response(id: Option<&Id>, code: i64, message: &str) -> String {
    rejection_response(
        id,
        &Rejection {
            code,
            message: message.to_owned(),
            data: None,
        },
    )
}

/// Client input as it may appear in an error message: at most
/// [`ECHO_LIMIT`] characters, control and other unprintable characters
/// escaped, quoted.
pub(crate) fn bounded(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(ECHO_LIMIT) + 8);
    out.push('"');
    let mut chars = text.chars();
    for c in chars.by_ref().take(ECHO_LIMIT) {
        out.extend(c.escape_debug());
    }
    out.push('"');
    if chars.next().is_some() {
        out.push('…');
    }
    out
}
