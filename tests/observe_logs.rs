//! The access log and the decision log, read as an operator would: a denied
//! agent call's response names a decision id, the decision log has that
//! decision in OPA's shape (with the caller's credentials erased), and the
//! access log line for the call has the same id, the caller, the service,
//! the refusal and the policy revision: "who, to what, why, under which
//! revision" in one lookup.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::TestMesh;
use common::wait::poll;
use meshward_dataplane::observe::{DecisionLog, LogTarget};

/// The JSON lines of `path` once one satisfies `pick`.
async fn line_where(path: &Path, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    poll(Duration::from_secs(10), what, || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        lines
            .iter()
            .find(|l| pick(l))
            .cloned()
            .ok_or_else(|| format!("{} lines, none matching", lines.len()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_one_decision_id_in_the_response_and_both_logs() {
    let logs = tempfile::tempdir().unwrap();
    let access = logs.path().join("access.log");
    let decisions = logs.path().join("decisions.log");
    let (a, d) = (access.clone(), decisions.clone());
    let mesh = TestMesh::start_with_options(
        |_| {},
        move |o| {
            o.observe.access_log = Some(LogTarget::File(a));
            o.observe.decision_log = Some(LogTarget::File(d));
            o.observe.decision_log_mask = DecisionLog::default_mask();
        },
    )
    .await;

    let denied = mesh
        .call_with(
            "support-triage",
            "GET",
            "/mcp://billing-system/invoices",
            "",
            &[("authorization", "Bearer agent-secret-token")],
        )
        .await;
    assert_eq!(denied.status, 403);
    let decision_id = denied
        .headers
        .get("x-meshward-decision-id")
        .expect("the refusal names its decision")
        .to_str()
        .unwrap()
        .to_string();

    let event = line_where(&decisions, "the decision-log event", |l| {
        l["decision_id"] == decision_id.as_str()
    })
    .await;
    // OPA's decision-log shape.
    assert!(
        event["path"].as_str().is_some_and(|p| !p.contains('.')),
        "{event}"
    );
    assert!(
        event["bundles"]
            .as_object()
            .is_some_and(|b| b.values().all(|v| v["revision"].is_string())),
        "{event}"
    );
    assert!(
        event["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{event}"
    );
    assert!(
        event["metrics"]["timer_rego_query_eval_ns"]
            .as_u64()
            .is_some(),
        "{event}"
    );
    assert!(event["requested_by"].is_string(), "{event}");
    assert_eq!(
        event["input"]["attributes"]["request"]["http"]["method"],
        "GET"
    );
    let allowed = match &event["result"] {
        Value::Bool(b) => *b,
        Value::Object(o) => o["allowed"].as_bool().unwrap(),
        other => panic!("result {other}"),
    };
    assert!(!allowed, "the logged result is the denial: {event}");
    // The caller's credential never reaches the log.
    assert!(!event.to_string().contains("agent-secret-token"), "{event}");
    assert!(
        event["erased"].as_array().is_some_and(|e| e
            .iter()
            .any(|p| p.as_str().unwrap().ends_with("/authorization"))),
        "{event}"
    );

    let line = line_where(&access, "the access-log line", |l| {
        l["decision_id"] == decision_id.as_str()
    })
    .await;
    assert_eq!(line["caller"], "spiffe://example.org/agent/support-triage");
    assert_eq!(line["service"], "billing-system");
    assert_eq!(line["status"], 403);
    assert_eq!(line["refusal"], "forbidden");
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/invoices");
    assert!(
        line["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{line}"
    );
    let revision = event["bundles"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["revision"]
        .clone();
    assert_eq!(
        line["policy_revision"], revision,
        "the same revision in both logs"
    );
    assert!(
        line["request_id"].is_string() && line["duration_ms"].is_number(),
        "{line}"
    );

    // An allowed call: one line per hop, each with its own decision, the
    // bytes counted, one request id across both hops.
    let ok = mesh
        .call(
            "support-triage",
            "POST",
            "/mcp://hello-skill/say-hello",
            "{\"name\":\"x\"}",
        )
        .await;
    assert_eq!(ok.status, 200);
    let outbound = line_where(&access, "the outbound line", |l| {
        l["status"] == 200 && l["direction"] == "outbound"
    })
    .await;
    let inbound = line_where(&access, "the inbound line", |l| {
        l["request_id"] == outbound["request_id"] && l["direction"] == "inbound"
    })
    .await;
    assert_eq!(inbound["dataplane"], "hello-skill-inbound");
    assert_eq!(outbound["bytes_received"], 12);
    assert_eq!(inbound["bytes_received"], 12);
    assert_eq!(outbound["bytes_sent"], ok.body.len());
    assert_ne!(outbound["decision_id"], inbound["decision_id"]);
    assert!(outbound["upstream_ms"].as_f64().is_some(), "{outbound}");
    mesh.shutdown().await;
}
