//! The decision log, in OPA's decision-log event shape, so the tools that
//! read OPA's decision logs (and the people who know them) read ours.
//!
//! One event per policy evaluation, written as a JSON line: `decision_id`
//! (also returned to the caller as `x-meshward-decision-id` and written in
//! the access log), `path` (the decision rule as OPA names it,
//! `envoy/authz/allow`), `input` after masking, `result`, the bundle
//! revision, `timestamp`, `requested_by` and `metrics`
//! (`timer_rego_query_eval_ns`). Masking erases JSON pointers before the
//! line leaves the process, so credentials in headers never reach a log;
//! the erased pointers are listed under `erased`, as OPA does.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::sink::LineSink;

/// Pointers erased unless configured otherwise: credentials a caller may
/// send in headers.
pub const DEFAULT_MASK: &[&str] = &[
    "/input/attributes/request/http/headers/authorization",
    "/input/attributes/request/http/headers/proxy-authorization",
    "/input/attributes/request/http/headers/cookie",
];

/// A decision-log writer and its masking rules.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    sink: LineSink,
    mask: Vec<String>,
    labels: Value,
}

/// One evaluation, as the decision log needs it.
#[derive(Debug)]
pub struct DecisionEvent<'a> {
    pub decision_id: &'a str,
    /// The decision rule, e.g. `data.envoy.authz.allow`.
    pub rule: &'a str,
    pub bundle: &'a str,
    pub revision: &'a str,
    pub input: &'a Value,
    /// The policy's result; `None` when undefined or on an error.
    pub result: Option<&'a Value>,
    pub error: Option<&'a str>,
    pub requested_by: SocketAddr,
    pub eval: Duration,
    pub timestamp: SystemTime,
}

/// A mask pointer that is not a JSON pointer under `/input` or `/result`.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("decision log mask {pointer:?}: {why}")]
pub struct MaskError {
    pub pointer: String,
    pub why: &'static str,
}

impl DecisionLog {
    /// Writes to `sink`, erasing each of `mask` (JSON pointers such as
    /// `/input/parsed_body`) from every event; `dataplane` labels the events.
    pub fn new(sink: LineSink, mask: Vec<String>, dataplane: &str) -> Result<Self, MaskError> {
        for pointer in &mask {
            if !(pointer.starts_with("/input/") || pointer.starts_with("/result/")) {
                return Err(MaskError {
                    pointer: pointer.clone(),
                    why: "must start with /input/ or /result/",
                });
            }
        }
        Ok(Self {
            sink,
            mask,
            labels: json!({
                "id": dataplane,
                "app": "meshward",
                "version": env!("CARGO_PKG_VERSION"),
            }),
        })
    }

    /// The default masks.
    pub fn default_mask() -> Vec<String> {
        DEFAULT_MASK.iter().map(|s| s.to_string()).collect()
    }

    /// Writes one event.
    pub fn log(&self, event: &DecisionEvent<'_>) {
        self.sink.write_json(&self.event(event));
    }

    fn event(&self, e: &DecisionEvent<'_>) -> Value {
        let mut doc = json!({ "input": e.input });
        if let Some(result) = e.result {
            doc["result"] = result.clone();
        }
        let erased: Vec<&str> = self
            .mask
            .iter()
            .filter(|p| erase(&mut doc, p))
            .map(String::as_str)
            .collect();
        let Value::Object(doc) = doc else {
            unreachable!("built as an object above")
        };
        let mut event = Map::new();
        event.insert("labels".into(), self.labels.clone());
        event.insert("decision_id".into(), e.decision_id.into());
        event.insert(
            "bundles".into(),
            json!({ e.bundle: { "revision": e.revision } }),
        );
        event.insert("path".into(), opa_path(e.rule).into());
        event.extend(doc);
        if let Some(error) = e.error {
            event.insert(
                "error".into(),
                json!({ "code": "eval_error", "message": error }),
            );
        }
        event.insert("requested_by".into(), e.requested_by.to_string().into());
        event.insert("timestamp".into(), rfc3339(e.timestamp).into());
        event.insert(
            "metrics".into(),
            json!({ "timer_rego_query_eval_ns": e.eval.as_nanos() as u64 }),
        );
        if !erased.is_empty() {
            event.insert("erased".into(), erased.into());
        }
        Value::Object(event)
    }
}

/// `data.envoy.authz.allow` → `envoy/authz/allow`, as OPA's `path` reads.
fn opa_path(rule: &str) -> String {
    rule.strip_prefix("data.").unwrap_or(rule).replace('.', "/")
}

/// An RFC 3339 UTC timestamp with nanoseconds, as OPA writes them.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Removes the value at a JSON pointer; true when something was removed.
fn erase(doc: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&key).is_some(),
        Some(Value::Array(items)) => match key.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::sink::LogTarget;

    fn log_with(mask: Vec<String>) -> DecisionLog {
        let sink = LineSink::open("decision", &LogTarget::Stderr).unwrap();
        DecisionLog::new(sink, mask, "hello-skill").unwrap()
    }

    fn sample<'a>(input: &'a Value, result: Option<&'a Value>) -> DecisionEvent<'a> {
        DecisionEvent {
            decision_id: "5f3c1e0c-7d2b-4a51-9d55-1f1a1c8e2b10",
            rule: "data.envoy.authz.allow",
            bundle: "meshward",
            revision: "rev-7",
            input,
            result,
            error: None,
            requested_by: "127.0.0.1:5555".parse().unwrap(),
            eval: Duration::from_micros(12),
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn events_have_opas_shape() {
        let input = json!({ "attributes": { "request": { "http": { "method": "GET" } } } });
        let result = json!({ "allowed": false, "reason": "no" });
        let e = log_with(vec![]).event(&sample(&input, Some(&result)));
        assert_eq!(e["decision_id"], "5f3c1e0c-7d2b-4a51-9d55-1f1a1c8e2b10");
        assert_eq!(e["path"], "envoy/authz/allow");
        assert_eq!(e["bundles"]["meshward"]["revision"], "rev-7");
        assert_eq!(e["input"], input);
        assert_eq!(e["result"], result);
        assert_eq!(e["requested_by"], "127.0.0.1:5555");
        assert_eq!(e["timestamp"], "2023-11-14T22:13:20.000000000Z");
        assert_eq!(e["metrics"]["timer_rego_query_eval_ns"], 12_000);
        assert_eq!(e["labels"]["id"], "hello-skill");
        assert!(e.get("erased").is_none());
    }

    #[test]
    fn credentials_are_erased_by_default_and_listed() {
        let input = json!({ "attributes": { "request": { "http": { "headers": {
            "authorization": "Bearer secret", "cookie": "s=1", "accept": "*/*"
        } } } } });
        let e = log_with(DecisionLog::default_mask()).event(&sample(&input, None));
        let headers = &e["input"]["attributes"]["request"]["http"]["headers"];
        assert_eq!(headers, &json!({ "accept": "*/*" }));
        assert!(!e.to_string().contains("secret"));
        assert_eq!(
            e["erased"],
            json!([
                "/input/attributes/request/http/headers/authorization",
                "/input/attributes/request/http/headers/cookie"
            ])
        );
        assert!(e.get("result").is_none(), "undefined has no result");
        // The caller's input is not modified.
        assert!(input.to_string().contains("secret"));
    }

    #[test]
    fn bodies_can_be_masked_and_pointers_unescape() {
        let input = json!({ "parsed_body": { "card": "4111" }, "a/b": { "x": 1 } });
        let e = log_with(vec!["/input/parsed_body".into(), "/input/a~1b/x".into()])
            .event(&sample(&input, Some(&json!(true))));
        assert!(e["input"].get("parsed_body").is_none());
        assert_eq!(e["input"]["a/b"], json!({}));
        assert_eq!(e["result"], true);
    }

    #[test]
    fn masks_outside_input_and_result_are_refused() {
        let sink = LineSink::open("decision", &LogTarget::Stderr).unwrap();
        let e = DecisionLog::new(sink, vec!["/labels/id".into()], "x").unwrap_err();
        assert_eq!(e.pointer, "/labels/id");
    }
}
