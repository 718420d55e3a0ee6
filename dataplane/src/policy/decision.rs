//! The decision document, read with opa-envoy-plugin's contract.
//!
//! Users who wrote policies for OPA-Envoy return either a bool or an object
//! (`allowed`, `headers`, `body`, `http_status`, `response_headers_to_add`,
//! `request_headers_to_remove`, `dynamic_metadata`); Meshward additionally
//! reads `reason`. Reading is strict: a field of the wrong type is an error,
//! never silently ignored, because a misspelt policy must not quietly allow.
//! Unknown fields are ignored so policies may return extra context.

use serde_json::{Map, Value};

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Status for a denial (opa-envoy-plugin: `http_status`); the edge uses
    /// 403 when absent.
    pub http_status: Option<u16>,
    /// Body for a denial response.
    pub body: Option<String>,
    /// Human-readable reason (Meshward extension), shown in the deny body and
    /// access log.
    pub reason: Option<String>,
    /// Headers added to the upstream request when allowed, or to the denial
    /// response when denied (opa-envoy-plugin's `headers`).
    pub headers: Vec<(String, String)>,
    pub response_headers_to_add: Vec<(String, String)>,
    pub request_headers_to_remove: Vec<String>,
    /// Query parameters set on the upstream request (object: name → string
    /// or array of strings, as opa-envoy-plugin reads it).
    pub query_parameters_to_set: Vec<(String, String)>,
    pub query_parameters_to_remove: Vec<String>,
    /// Passed through to ext_authz `dynamic_metadata`; `Null` when absent.
    pub dynamic_metadata: Value,
    /// The policy's result as it returned it, for the decision log; `Null`
    /// when the decision was undefined.
    pub result: Value,
}

/// Reason used when the decision rule is undefined for the input.
pub const UNDEFINED_REASON: &str = "policy decision undefined";

impl Decision {
    /// A plain allow (what a `true` decision means).
    pub fn allow() -> Self {
        Self::plain(true, None)
    }

    /// A plain deny with a reason.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self::plain(false, Some(reason.into()))
    }

    fn plain(allowed: bool, reason: Option<String>) -> Self {
        Self {
            result: if reason.is_some() {
                Value::Null
            } else {
                Value::Bool(allowed)
            },
            allowed,
            http_status: None,
            body: None,
            reason,
            headers: Vec::new(),
            response_headers_to_add: Vec::new(),
            request_headers_to_remove: Vec::new(),
            query_parameters_to_set: Vec::new(),
            query_parameters_to_remove: Vec::new(),
            dynamic_metadata: Value::Null,
        }
    }

    /// Reads a decision value. `Err` carries a message naming the field.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bool(allowed) => Ok(Self::plain(*allowed, None)),
            Value::Object(obj) => Ok(Self {
                result: value.clone(),
                ..Self::from_object(obj)?
            }),
            other => Err(format!(
                "must be a bool or an object, got {}",
                type_name(other)
            )),
        }
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Self, String> {
        let allowed = match obj.get("allowed") {
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(format!(
                    "field \"allowed\" must be a bool, got {}",
                    type_name(other)
                ));
            }
            None => return Err("object has no \"allowed\" field".to_string()),
        };
        let http_status = match obj.get("http_status") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                let status = n
                    .as_u64()
                    .filter(|s| (100..=599).contains(s))
                    .ok_or_else(|| {
                        format!("field \"http_status\" must be an integer in 100..=599, got {n}")
                    })?;
                Some(status as u16)
            }
            Some(other) => {
                return Err(format!(
                    "field \"http_status\" must be an integer, got {}",
                    type_name(other)
                ));
            }
        };
        let dynamic_metadata = match obj.get("dynamic_metadata") {
            None | Some(Value::Null) => Value::Null,
            Some(v @ Value::Object(_)) => v.clone(),
            Some(other) => {
                return Err(format!(
                    "field \"dynamic_metadata\" must be an object, got {}",
                    type_name(other)
                ));
            }
        };
        Ok(Self {
            allowed,
            http_status,
            body: opt_string(obj, "body")?,
            reason: opt_string(obj, "reason")?,
            headers: header_map(obj, "headers")?,
            response_headers_to_add: header_map(obj, "response_headers_to_add")?,
            request_headers_to_remove: string_array(obj, "request_headers_to_remove")?,
            query_parameters_to_set: header_map(obj, "query_parameters_to_set")?,
            query_parameters_to_remove: string_array(obj, "query_parameters_to_remove")?,
            dynamic_metadata,
            result: Value::Null,
        })
    }
}

fn opt_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "field {field:?} must be a string, got {}",
            type_name(other)
        )),
    }
}

/// A header object, or an array of them (opa-envoy-plugin accepts both):
/// values are strings or arrays of strings (one header line each).
fn header_map(obj: &Map<String, Value>, field: &str) -> Result<Vec<(String, String)>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => header_object(map, field),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::Object(map) => out.extend(header_object(map, field)?),
                    other => {
                        return Err(format!(
                            "field {field:?} must hold objects, got {}",
                            type_name(other)
                        ));
                    }
                }
            }
            Ok(out)
        }
        Some(other) => Err(format!(
            "field {field:?} must be an object, got {}",
            type_name(other)
        )),
    }
}

fn header_object(map: &Map<String, Value>, field: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        match value {
            Value::String(s) => out.push((name.clone(), s.clone())),
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::String(s) => out.push((name.clone(), s.clone())),
                        other => {
                            return Err(format!(
                                "field {field:?}: header {name:?} values must be strings, got {}",
                                type_name(other)
                            ));
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                    "field {field:?}: header {name:?} must be a string or array of strings, got {}",
                    type_name(other)
                ));
            }
        }
    }
    Ok(out)
}

fn string_array(obj: &Map<String, Value>, field: &str) -> Result<Vec<String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "field {field:?} must hold strings, got {}",
                    type_name(other)
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "field {field:?} must be an array of strings, got {}",
            type_name(other)
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bool_decisions() {
        assert_eq!(Decision::from_value(&json!(true)), Ok(Decision::allow()));
        let d = Decision::from_value(&json!(false)).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reason, None);
    }

    #[test]
    fn full_object() {
        let d = Decision::from_value(&json!({
            "allowed": false,
            "http_status": 401,
            "body": "nope",
            "reason": "because",
            "headers": {"x-a": "1", "x-b": ["2", "3"]},
            "response_headers_to_add": {"x-c": "4"},
            "request_headers_to_remove": ["authorization"],
            "dynamic_metadata": {"k": 1},
            "extra": "ignored"
        }))
        .unwrap();
        assert!(!d.allowed);
        assert_eq!(d.http_status, Some(401));
        assert_eq!(d.body.as_deref(), Some("nope"));
        assert_eq!(d.reason.as_deref(), Some("because"));
        assert_eq!(
            d.headers,
            vec![
                ("x-a".into(), "1".into()),
                ("x-b".into(), "2".into()),
                ("x-b".into(), "3".into())
            ]
        );
        assert_eq!(d.response_headers_to_add, vec![("x-c".into(), "4".into())]);
        assert_eq!(
            d.request_headers_to_remove,
            vec!["authorization".to_string()]
        );
        assert_eq!(d.dynamic_metadata, json!({"k": 1}));
    }

    #[test]
    fn wrong_types_are_errors() {
        for bad in [
            json!("allow"),
            json!(1),
            json!(null),
            json!([true]),
            json!({}),
            json!({"allowed": "true"}),
            json!({"allowed": true, "http_status": "403"}),
            json!({"allowed": true, "http_status": 42}),
            json!({"allowed": true, "http_status": 403.5}),
            json!({"allowed": true, "headers": ["x"]}),
            json!({"allowed": true, "headers": {"x": 1}}),
            json!({"allowed": true, "request_headers_to_remove": "x"}),
            json!({"allowed": true, "reason": 7}),
            json!({"allowed": true, "dynamic_metadata": []}),
        ] {
            assert!(
                Decision::from_value(&bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }
}
