//! One JSON-RPC 2.0 message of an MCP body, checked, and the policy
//! document made from it.
//!
//! The checks are those that decide what the MCP server will run: a message
//! with `"method"` is a request or notification whatever else it carries, so
//! one that also has `result` or `error` is refused rather than left for the
//! server to classify; `tools/call`, `resources/read` and `prompts/get` must
//! name their target with a string, because a policy that sees no tool
//! cannot decide about the tool the server then finds. Members the checks do
//! not name (`_meta`, extensions) are kept and passed through.

use serde_json::{Map, Value};

use super::error::{McpError, bounded};

/// A JSON-RPC id. `null` is refused: a request needs an id its response can
/// be matched with, and a response to a request the server could not read
/// is the server's to send, not a client's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    /// An integer id; the range is `i64` (a larger one is refused as
    /// [`McpError::Unsupported`]), fractions are refused.
    Number(i64),
    String(String),
}

impl Id {
    /// The id as it appears in JSON.
    pub fn to_value(&self) -> Value {
        match self {
            Id::Number(n) => Value::from(*n),
            Id::String(s) => Value::from(s.as_str()),
        }
    }
}

/// What a message is, by JSON-RPC 2.0 §4 and §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `method` and `id`: the server answers.
    Request,
    /// `method`, no `id`: the server does not answer.
    Notification,
    /// `result` or `error`, with `id`: a client answering a server's request.
    Response,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Notification => "notification",
            Kind::Response => "response",
        }
    }
}

/// What a method acts on, for the methods policy decides per target.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    None,
    /// `tools/call`: `params.name`, `params.arguments` (absent is `{}`).
    Tool {
        name: String,
        arguments: Value,
    },
    /// `resources/read`: `params.uri`.
    Resource {
        uri: String,
    },
    /// `prompts/get`: `params.name`, `params.arguments` (absent is `{}`).
    Prompt {
        name: String,
        arguments: Value,
    },
}

/// A checked JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    kind: Kind,
    method: Option<String>,
    id: Option<Id>,
    params: Option<Value>,
    target: Target,
    value: Value,
}

impl Message {
    /// Checks one message (`value`, a batch element or the whole body).
    pub(crate) fn from_value(value: Value) -> Result<Message, McpError> {
        let Value::Object(object) = &value else {
            return Err(invalid("a message must be a JSON object"));
        };
        match object.get("jsonrpc") {
            Some(Value::String(v)) if v == "2.0" => {}
            _ => return Err(invalid("\"jsonrpc\" must be \"2.0\"")),
        }
        let id = match object.get("id") {
            None => None,
            Some(id) => Some(parse_id(id)?),
        };
        let (kind, method, params, target) = match object.get("method") {
            Some(method) => {
                let Value::String(method) = method else {
                    return Err(invalid("\"method\" must be a string"));
                };
                if object.contains_key("result") || object.contains_key("error") {
                    return Err(invalid(
                        "a message with \"method\" must not have \"result\" or \"error\"",
                    ));
                }
                let params = match object.get("params") {
                    None => None,
                    Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p.clone()),
                    Some(_) => return Err(invalid("\"params\" must be an object or an array")),
                };
                let kind = if id.is_some() {
                    Kind::Request
                } else {
                    Kind::Notification
                };
                let target = target(method, object.get("params"))?;
                (kind, Some(method.clone()), params, target)
            }
            None => {
                check_response(object, id.is_some())?;
                (Kind::Response, None, None, Target::None)
            }
        };
        Ok(Message {
            kind,
            method,
            id,
            params,
            target,
            value,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The id of a request or response.
    pub fn id(&self) -> Option<&Id> {
        self.id.as_ref()
    }

    /// A method without an id: the server sends no response.
    pub fn is_notification(&self) -> bool {
        self.kind == Kind::Notification
    }

    /// A method with an id: the server sends a response.
    pub fn is_request(&self) -> bool {
        self.kind == Kind::Request
    }

    /// `params.name` of `tools/call`, unescaped: the tool the server runs.
    pub fn tool(&self) -> Option<&str> {
        match &self.target {
            Target::Tool { name, .. } => Some(name),
            _ => None,
        }
    }

    /// `params.uri` of `resources/read`.
    pub fn resource(&self) -> Option<&str> {
        match &self.target {
            Target::Resource { uri } => Some(uri),
            _ => None,
        }
    }

    /// `params.name` of `prompts/get`.
    pub fn prompt(&self) -> Option<&str> {
        match &self.target {
            Target::Prompt { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The `params` of a request or notification, as parsed.
    pub fn params(&self) -> Option<&Value> {
        self.params.as_ref()
    }

    /// The whole message as parsed, with every member.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The policy document (`input.meshward.mcp`): `kind`, `method`, `id`
    /// and `params` always (`null` when absent), plus `tool` and `arguments`
    /// for `tools/call`, `resource` for `resources/read`, `prompt` and
    /// `arguments` for `prompts/get`.
    pub fn to_input(&self) -> Value {
        let mut input = Map::new();
        input.insert("kind".into(), Value::from(self.kind.as_str()));
        input.insert(
            "method".into(),
            self.method.as_deref().map_or(Value::Null, Value::from),
        );
        input.insert(
            "id".into(),
            self.id.as_ref().map_or(Value::Null, Id::to_value),
        );
        input.insert("params".into(), self.params.clone().unwrap_or(Value::Null));
        match &self.target {
            Target::None => {}
            Target::Tool { name, arguments } => {
                input.insert("tool".into(), Value::from(name.as_str()));
                input.insert("arguments".into(), arguments.clone());
            }
            Target::Resource { uri } => {
                input.insert("resource".into(), Value::from(uri.as_str()));
            }
            Target::Prompt { name, arguments } => {
                input.insert("prompt".into(), Value::from(name.as_str()));
                input.insert("arguments".into(), arguments.clone());
            }
        }
        Value::Object(input)
    }
}

fn invalid(reason: &str) -> McpError {
    McpError::InvalidMessage(reason.to_owned())
}

fn parse_id(id: &Value) -> Result<Id, McpError> {
    match id {
        Value::String(s) => Ok(Id::String(s.clone())),
        Value::Number(n) => {
            if let Some(n) = n.as_i64() {
                Ok(Id::Number(n))
            } else if n.is_u64() {
                Err(McpError::Unsupported(
                    "integer \"id\" larger than 2^63-1".to_owned(),
                ))
            } else {
                Err(invalid(
                    "\"id\" must be an integer or a string, not a fraction",
                ))
            }
        }
        Value::Null => Err(invalid("\"id\" must not be null")),
        _ => Err(invalid("\"id\" must be an integer or a string")),
    }
}

/// A response: `id`, and exactly one of `result` and `error`, where `error`
/// is `{"code": integer, "message": string, ...}`.
fn check_response(object: &Map<String, Value>, has_id: bool) -> Result<(), McpError> {
    let result = object.contains_key("result");
    let error = object.get("error");
    match (result, error) {
        (false, None) => {
            return Err(invalid(
                "a message needs \"method\", \"result\" or \"error\"",
            ));
        }
        (true, Some(_)) => {
            return Err(invalid(
                "a response must not have both \"result\" and \"error\"",
            ));
        }
        (true, None) => {}
        (false, Some(error)) => {
            let code_ok = error.get("code").is_some_and(Value::is_i64);
            let message_ok = error.get("message").is_some_and(Value::is_string);
            if !error.is_object() || !code_ok || !message_ok {
                return Err(invalid(
                    "\"error\" must be an object with an integer \"code\" and a string \"message\"",
                ));
            }
        }
    }
    if !has_id {
        return Err(invalid("a response must have an \"id\""));
    }
    Ok(())
}

/// The target of the methods policy decides per target; required and a
/// string, so policy never sees `null` where the server would run something.
fn target(method: &str, params: Option<&Value>) -> Result<Target, McpError> {
    let field = |name: &str| -> Result<String, McpError> {
        match params.and_then(|p| p.get(name)) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(McpError::InvalidMessage(format!(
                "{} needs a string \"params.{name}\"",
                bounded(method)
            ))),
        }
    };
    let arguments = || -> Result<Value, McpError> {
        match params.and_then(|p| p.get("arguments")) {
            None => Ok(Value::Object(Map::new())),
            Some(a @ Value::Object(_)) => Ok(a.clone()),
            Some(_) => Err(McpError::InvalidMessage(format!(
                "{} \"params.arguments\" must be an object",
                bounded(method)
            ))),
        }
    };
    Ok(match method {
        "tools/call" => Target::Tool {
            name: field("name")?,
            arguments: arguments()?,
        },
        "resources/read" => Target::Resource { uri: field("uri")? },
        "prompts/get" => Target::Prompt {
            name: field("name")?,
            arguments: arguments()?,
        },
        _ => Target::None,
    })
}
