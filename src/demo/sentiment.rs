//! sentiment-analysis: `POST /analyze {"text": ...}` scores text with a small
//! word list: `{"score": -1..1, "label": "positive|negative|neutral",
//! "words": {word: weight}}`.
//!
//! Deterministic on purpose: a demo (and its tests) must give the same
//! answer every time. A negator (`not`, `never`, `no`, `don't`, ...) right
//! before a scored word flips it: "not happy" counts as negative.

use std::collections::BTreeMap;

use http::Method;
use serde_json::json;

use super::request::{DemoRequest, Reply, kind_of};

/// Longest text analyzed, in bytes.
pub const MAX_TEXT_BYTES: usize = 8 * 1024;

/// Scores above this are positive, below its negation negative.
const NEUTRAL_BAND: f64 = 0.2;

const POSITIVE: &[(&str, i32)] = &[
    ("good", 1),
    ("great", 2),
    ("excellent", 2),
    ("love", 2),
    ("happy", 1),
    ("thanks", 1),
    ("thank", 1),
    ("helpful", 1),
    ("fixed", 1),
    ("works", 1),
    ("fast", 1),
    ("resolved", 1),
    ("perfect", 2),
    ("amazing", 2),
];

const NEGATIVE: &[(&str, i32)] = &[
    ("bad", -1),
    ("terrible", -2),
    ("awful", -2),
    ("hate", -2),
    ("angry", -2),
    ("broken", -1),
    ("slow", -1),
    ("wrong", -1),
    ("error", -1),
    ("fails", -1),
    ("failed", -1),
    ("refund", -1),
    ("overcharged", -2),
    ("unacceptable", -2),
    ("frustrated", -2),
    ("cancel", -1),
];

const NEGATORS: &[&str] = &[
    "not", "no", "never", "don't", "doesn't", "didn't", "isn't", "wasn't", "can't", "won't",
];

/// Serves `/analyze`; `None` for any other path.
pub fn handle(req: &DemoRequest) -> Option<Reply> {
    if req.path != "/analyze" {
        return None;
    }
    if req.method != Method::POST {
        return Some(Reply::method_not_allowed(req, "POST"));
    }
    Some(analyze_request(req).unwrap_or_else(|e| e))
}

fn analyze_request(req: &DemoRequest) -> Result<Reply, Reply> {
    let body = req.json_object()?;
    let text = match body.get("text") {
        Some(serde_json::Value::String(t)) => t,
        None | Some(serde_json::Value::Null) => {
            return Err(Reply::bad_request("field \"text\" is required"));
        }
        Some(other) => {
            return Err(Reply::bad_request(format!(
                "field \"text\" must be a string, not {}",
                kind_of(other)
            )));
        }
    };
    if text.len() > MAX_TEXT_BYTES {
        return Err(Reply::bad_request(format!(
            "field \"text\" is {} bytes; at most {MAX_TEXT_BYTES} are analyzed",
            text.len()
        )));
    }
    let a = analyze(text);
    Ok(Reply::ok(json!({
        "score": a.score,
        "label": a.label,
        "words": a.words,
    })))
}

/// The outcome of [`analyze`].
#[derive(Debug, PartialEq)]
pub struct Analysis {
    /// Sum of the weights over the sum of their magnitudes, rounded to two
    /// decimals: -1 (all negative) to 1 (all positive), 0 without scored words.
    pub score: f64,
    pub label: &'static str,
    /// Each scored word with its total weight in this text.
    pub words: BTreeMap<String, i32>,
}

pub fn analyze(text: &str) -> Analysis {
    let lower = text.to_lowercase();
    let tokens = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|t| !t.is_empty());
    let mut words: BTreeMap<String, i32> = BTreeMap::new();
    let (mut sum, mut magnitude) = (0i64, 0i64);
    let mut negate = false;
    for token in tokens {
        let token = token.trim_matches('\'');
        let weight = POSITIVE
            .iter()
            .chain(NEGATIVE)
            .find(|(w, _)| *w == token)
            .map(|(_, weight)| *weight);
        if let Some(mut weight) = weight {
            if negate {
                weight = -weight;
            }
            *words.entry(token.to_string()).or_default() += weight;
            sum += i64::from(weight);
            magnitude += i64::from(weight.abs());
        }
        negate = NEGATORS.contains(&token);
    }
    let score = if magnitude == 0 {
        0.0
    } else {
        ((sum as f64 / magnitude as f64) * 100.0).round() / 100.0
    };
    let label = if score > NEUTRAL_BAND {
        "positive"
    } else if score < -NEUTRAL_BAND {
        "negative"
    } else {
        "neutral"
    };
    Analysis {
        score,
        label,
        words,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &str) -> Reply {
        handle(&DemoRequest::new(
            Method::POST,
            "/analyze",
            body.to_string(),
        ))
        .expect("served")
    }

    #[test]
    fn scores_and_labels() {
        let a = analyze("Thanks, that fixed it. Great support!");
        assert_eq!(a.score, 1.0);
        assert_eq!(a.label, "positive");
        assert_eq!(a.words["great"], 2);
        let a = analyze("I was overcharged and the app is broken. Unacceptable.");
        assert_eq!(a.score, -1.0);
        assert_eq!(a.label, "negative");
        let a = analyze("The invoice arrived on Tuesday.");
        assert_eq!((a.score, a.label), (0.0, "neutral"));
        assert!(a.words.is_empty());
        // 2 - 1 over 3: 0.33.
        let a = analyze("great, but slow");
        assert_eq!((a.score, a.label), (0.33, "positive"));
    }

    #[test]
    fn negators_flip_the_next_word() {
        let a = analyze("I am not happy, this is NOT good");
        assert_eq!(a.words["happy"], -1);
        assert_eq!(a.words["good"], -1);
        assert_eq!(a.label, "negative");
        let a = analyze("it doesn't fail, it's never broken");
        assert_eq!(a.words["broken"], 1);
    }

    #[test]
    fn the_endpoint_answers_json() {
        let r = post(r#"{"text": "this is terrible"}"#);
        assert_eq!(r.status, 200);
        assert_eq!(r.body["label"], "negative");
        assert_eq!(r.body["score"], -1.0);
        assert_eq!(r.body["words"]["terrible"], -2);
    }

    #[test]
    fn bad_input_is_400() {
        for body in [
            "",
            "{}",
            r#"{"text": 3}"#,
            r#"{"text": null}"#,
            r#"{"text": ["a"]}"#,
            "text=hi",
        ] {
            let r = post(body);
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            assert!(r.body["message"].as_str().unwrap().contains("text") || body == "text=hi");
        }
        let big = serde_json::json!({"text": "a".repeat(MAX_TEXT_BYTES + 1)}).to_string();
        let r = post(&big);
        assert_eq!(r.status, 400);
        assert!(r.body["message"].as_str().unwrap().contains("8192"));
        let exactly = serde_json::json!({"text": "a".repeat(MAX_TEXT_BYTES)}).to_string();
        assert_eq!(post(&exactly).status, 200);
    }

    #[test]
    fn other_methods_and_paths() {
        let r = handle(&DemoRequest::new(Method::GET, "/analyze", "")).unwrap();
        assert_eq!(r.status, 405);
        assert!(handle(&DemoRequest::new(Method::POST, "/x", "")).is_none());
    }
}
