//! Traces in a real Jaeger: one agent call through both dataplanes is one
//! trace, the outbound span the child of the agent's context and the
//! inbound span the child of the outbound one, with the HTTP and Meshward
//! attributes; a denied call's trace says who was refused, by which
//! revision and why; and a collector that goes away costs spans, never
//! requests. The control plane's push of the config is a trace of its own,
//! a delivery span per node until its ACK.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::TestMesh;
use common::jaeger::{self, Jaeger};
use common::wait::poll;
use meshward_telemetry::{Protocol, SamplerConfig, TracingConfig};

/// How long a finished span may take to be queryable (batch delay, export,
/// Jaeger's storage).
const STORED: Duration = Duration::from_secs(20);

fn tracing(endpoint: String, protocol: Protocol) -> TracingConfig {
    TracingConfig {
        endpoint,
        protocol,
        service_name: None,
        sampler: SamplerConfig::default(),
        queue_size: 2048,
        batch_size: 512,
        batch_delay: Duration::from_millis(100),
        export_timeout: Duration::from_secs(2),
    }
}

/// A trace id and span id of the "agent", unique to this call.
fn agent_context() -> (String, String) {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    (a, b[..16].to_string())
}

/// The trace `trace_id` once it holds `n` spans.
async fn trace_with(jaeger: &Jaeger, trace_id: &str, n: usize) -> Value {
    poll(
        STORED,
        &format!("trace {trace_id} with {n} spans"),
        || async {
            match jaeger.trace(trace_id).await {
                Some(t) if jaeger::spans(&t).len() >= n => Ok(t),
                Some(t) => Err(format!("{} spans: {t}", jaeger::spans(&t).len())),
                None => Err("not found".into()),
            }
        },
    )
    .await
}

fn tag_str<'a>(span: &'a Value, key: &str) -> &'a str {
    jaeger::tag(span, key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| {
            panic!(
                "span {} has no string tag {key}: {span}",
                span["operationName"]
            )
        })
}

fn by_service<'a>(trace: &'a Value, service: &str) -> &'a Value {
    jaeger::spans(trace)
        .into_iter()
        .find(|s| jaeger::service_of(trace, s) == Some(service))
        .unwrap_or_else(|| panic!("no span of {service} in {trace}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_call_is_one_trace_across_both_hops() {
    let Some(mut jaeger) = Jaeger::start().await else {
        return;
    };
    let config = tracing(jaeger.otlp_grpc_endpoint(), Protocol::Grpc);
    let mesh = TestMesh::start_with_options(|_| {}, |o| o.observe.tracing = Some(config)).await;

    // An allowed call, inside the agent's own trace.
    let (trace_id, agent_span) = agent_context();
    let traceparent = format!("00-{trace_id}-{agent_span}-01");
    let ok = mesh
        .call_with(
            "support-triage",
            "POST",
            "/mcp://hello-skill/say-hello",
            "{}",
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let trace = trace_with(&jaeger, &trace_id, 2).await;
    let outbound = by_service(&trace, "support-triage");
    let inbound = by_service(&trace, "hello-skill-inbound");
    assert_eq!(
        jaeger::parent_of(outbound),
        Some(agent_span.as_str()),
        "the outbound span is the child of the agent's: {outbound}"
    );
    assert_eq!(
        jaeger::parent_of(inbound),
        outbound["spanID"].as_str(),
        "the inbound span is the child of the outbound one: {inbound}"
    );
    for span in [outbound, inbound] {
        assert_eq!(
            tag_str(span, "meshward.caller"),
            "spiffe://example.org/agent/support-triage"
        );
        assert_eq!(tag_str(span, "meshward.service"), "hello-skill");
        assert_eq!(tag_str(span, "meshward.decision"), "allow");
        assert!(!tag_str(span, "meshward.policy_revision").is_empty());
        assert_eq!(tag_str(span, "http.request.method"), "POST");
        assert_eq!(
            jaeger::tag(span, "http.response.status_code").and_then(Value::as_i64),
            Some(200),
            "{span}"
        );
    }
    assert_eq!(tag_str(outbound, "span.kind"), "client");
    assert_eq!(tag_str(inbound, "span.kind"), "server");
    assert_eq!(tag_str(inbound, "url.path"), "/say-hello");

    // A denied call's trace says who, to what, why, under which revision.
    let (trace_id, agent_span) = agent_context();
    let traceparent = format!("00-{trace_id}-{agent_span}-01");
    let denied = mesh
        .call_with(
            "support-triage",
            "GET",
            "/mcp://billing-system/invoices",
            "",
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(denied.status, 403);
    let trace = trace_with(&jaeger, &trace_id, 1).await;
    let refused = jaeger::spans(&trace)
        .into_iter()
        .find(|s| jaeger::tag(s, "meshward.refusal").is_some())
        .unwrap_or_else(|| panic!("no span says it refused: {trace}"));
    assert_eq!(tag_str(refused, "meshward.refusal"), "forbidden");
    assert_eq!(tag_str(refused, "meshward.decision"), "deny");
    assert_eq!(tag_str(refused, "meshward.service"), "billing-system");
    assert_eq!(
        tag_str(refused, "meshward.caller"),
        "spiffe://example.org/agent/support-triage"
    );
    assert!(!tag_str(refused, "meshward.refusal_reason").is_empty());
    assert!(!tag_str(refused, "meshward.policy_revision").is_empty());

    // The collector goes away: every request still succeeds.
    jaeger.stop();
    for i in 0..50 {
        let a = mesh
            .call("billing-bot", "POST", "/mcp://hello-skill/say-hello", "{}")
            .await;
        assert_eq!(a.status, 200, "request {i} with the collector down");
    }
    // And tracing recovers when it is back.
    jaeger.restart().await;
    let (trace_id, agent_span) = agent_context();
    let traceparent = format!("00-{trace_id}-{agent_span}-01");
    let ok = mesh
        .call_with(
            "billing-bot",
            "POST",
            "/mcp://hello-skill/say-hello",
            "{}",
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(ok.status, 200);
    trace_with(&jaeger, &trace_id, 2).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_and_a_trace_that_starts_at_the_sidecar() {
    let Some(jaeger) = Jaeger::start().await else {
        return;
    };
    let config = tracing(
        format!("{}/v1/traces", jaeger.otlp_http_endpoint()),
        Protocol::HttpProtobuf,
    );
    let mesh = TestMesh::start_with_options(|_| {}, |o| o.observe.tracing = Some(config)).await;
    // No traceparent from the agent: the outbound span is the root, and
    // the request id is on both spans.
    let ok = mesh
        .call(
            "support-triage",
            "POST",
            "/mcp://hello-skill/say-hello",
            "{}",
        )
        .await;
    assert_eq!(ok.status, 200);
    let trace = jaeger
        .wait_for_trace(
            |t| {
                jaeger::spans(t).len() == 2
                    && jaeger::spans(t)
                        .iter()
                        .any(|s| jaeger::service_of(t, s) == Some("hello-skill-inbound"))
            },
            STORED,
        )
        .await;
    let outbound = by_service(&trace, "support-triage");
    let inbound = by_service(&trace, "hello-skill-inbound");
    assert_eq!(jaeger::parent_of(outbound), None, "a root span: {outbound}");
    assert_eq!(jaeger::parent_of(inbound), outbound["spanID"].as_str());
    assert_eq!(
        tag_str(outbound, "meshward.request_id"),
        tag_str(inbound, "meshward.request_id"),
        "one request id across the hops"
    );

    // The control plane's push of a config change is a trace too: the
    // push, and under it each node's delivery until its ACK.
    common::rewrite(&mesh.config_path(), |t| {
        t.replacen("type: analysis", "type: analysis\n      region: eu", 1)
    });
    let push = jaeger
        .wait_for_trace(
            |t| {
                let spans = jaeger::spans(t);
                let Some(root) = spans.iter().find(|s| s["operationName"] == "xds.push") else {
                    return false;
                };
                // The edited agent's sidecar and a service's inbound
                // dataplane (which knows every agent) both ACKed it.
                ["billing-bot", "hello-skill-inbound"].iter().all(|node| {
                    spans.iter().any(|s| {
                        s["operationName"] == "xds.deliver"
                            && jaeger::parent_of(s) == root["spanID"].as_str()
                            && jaeger::tag(s, "meshward.node").and_then(Value::as_str) == Some(node)
                            && jaeger::tag(s, "xds.result").and_then(Value::as_str) == Some("ack")
                    })
                })
            },
            STORED,
        )
        .await;
    let root = jaeger::spans(&push)
        .into_iter()
        .find(|s| s["operationName"] == "xds.push")
        .unwrap();
    assert_eq!(jaeger::service_of(&push, root), Some("controlplane"));
    assert!(!tag_str(root, "meshward.policy_revision").is_empty());
    mesh.shutdown().await;
}
