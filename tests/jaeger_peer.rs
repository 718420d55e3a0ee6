//! The Jaeger harness (`tests/common/jaeger.rs`) against the real binary,
//! without Meshward: a trace sent by hand over OTLP/HTTP JSON comes back
//! from the query API with its parent/child link and service name, and a
//! restart serves again on the same ports.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use common::jaeger::{self, Jaeger};
use common::net::get;

const SERVICE: &str = "jaeger-peer-selftest";

/// How long Jaeger may take to make a received span queryable.
const STORED: Duration = Duration::from_secs(5);

/// Ids unique to this run, so a stale Jaeger on a reused port could not
/// pass the test: a 32-hex trace id and two 16-hex span ids.
fn ids(salt: u64) -> (String, String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    let pid = u64::from(std::process::id());
    // The top bit set keeps every id at full width and non-zero.
    let high = (nanos ^ salt) | (1 << 63);
    let low = ((pid << 32) | salt) | (1 << 63);
    (
        format!("{high:016x}{low:016x}"),
        format!("{:016x}", high.rotate_left(13) | (1 << 63)),
        format!("{:016x}", low.rotate_left(29) | (1 << 63)),
    )
}

/// An OTLP/HTTP JSON export request: one resource (`service.name` =
/// [`SERVICE`]) with a server span `parent` and a client span `child` under it.
fn export_request(trace_id: &str, parent_id: &str, child_id: &str) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    let (start, end) = (now - 50_000_000, now - 10_000_000);
    json!({
        "resourceSpans": [{
            "resource": {
                "attributes": [
                    {"key": "service.name", "value": {"stringValue": SERVICE}}
                ]
            },
            "scopeSpans": [{
                "scope": {"name": "meshward-tests"},
                "spans": [
                    {
                        "traceId": trace_id,
                        "spanId": parent_id,
                        "name": "parent",
                        "kind": 2,
                        "startTimeUnixNano": start.to_string(),
                        "endTimeUnixNano": end.to_string(),
                        "attributes": [
                            {"key": "meshward.test", "value": {"stringValue": "parent"}}
                        ]
                    },
                    {
                        "traceId": trace_id,
                        "spanId": child_id,
                        "parentSpanId": parent_id,
                        "name": "child",
                        "kind": 3,
                        "startTimeUnixNano": (start + 10_000_000).to_string(),
                        "endTimeUnixNano": (end - 10_000_000).to_string()
                    }
                ]
            }]
        }]
    })
}

/// Sends one parent/child trace and waits until the query API has both spans.
async fn send_and_read(jaeger: &Jaeger, salt: u64) -> (String, Value) {
    let (trace_id, parent_id, child_id) = ids(salt);
    jaeger
        .send_otlp_json(&export_request(&trace_id, &parent_id, &child_id))
        .await;
    let trace = common::wait::poll(STORED, "the trace in the query API", || {
        let trace_id = &trace_id;
        async move {
            match jaeger.trace(trace_id).await {
                Some(t) if jaeger::spans(&t).len() == 2 => Ok(t),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    assert_eq!(trace["traceID"], trace_id.as_str());
    let parent = jaeger::span(&trace, "parent").expect("span `parent`");
    let child = jaeger::span(&trace, "child").expect("span `child`");
    assert_eq!(parent["spanID"], parent_id.as_str());
    assert_eq!(child["spanID"], child_id.as_str());
    assert_eq!(jaeger::parent_of(parent), None, "{parent}");
    assert_eq!(
        jaeger::parent_of(child),
        Some(parent_id.as_str()),
        "{child}"
    );
    assert_eq!(jaeger::service_of(&trace, parent), Some(SERVICE));
    assert_eq!(jaeger::service_of(&trace, child), Some(SERVICE));
    assert_eq!(
        jaeger::tag(parent, "meshward.test"),
        Some(&json!("parent")),
        "{parent}"
    );
    assert_eq!(
        jaeger::tag(parent, "span.kind"),
        Some(&json!("server")),
        "{parent}"
    );
    assert_eq!(
        jaeger::tag(child, "span.kind"),
        Some(&json!("client")),
        "{child}"
    );
    (trace_id, trace)
}

#[tokio::test]
async fn a_trace_sent_over_otlp_http_reads_back_and_a_restart_serves_again() {
    let Some(mut jaeger) = Jaeger::start().await else {
        return;
    };
    let endpoints = (
        jaeger.otlp_grpc_endpoint(),
        jaeger.otlp_http_endpoint(),
        jaeger.query_url(),
    );
    for endpoint in [&endpoints.0, &endpoints.1, &endpoints.2] {
        let addr = endpoint.strip_prefix("http://127.0.0.1:");
        assert!(addr.is_some(), "{endpoint} is not a loopback URL");
    }
    // The OTLP/gRPC receiver listens too.
    let grpc = endpoints.0.trim_start_matches("http://");
    assert!(
        tokio::net::TcpStream::connect(grpc).await.is_ok(),
        "nothing listens on {grpc}"
    );

    let (first, _) = send_and_read(&jaeger, 1).await;
    assert!(
        jaeger.services().await.iter().any(|s| s == SERVICE),
        "{SERVICE} not in /api/services: {:?}",
        jaeger.services().await
    );
    let listed = jaeger.traces(SERVICE).await;
    assert!(
        listed.iter().any(|t| t["traceID"] == first.as_str()),
        "/api/traces?service={SERVICE} lacks {first}: {listed:?}"
    );
    let found = jaeger
        .wait_for_trace(|t| t["traceID"] == first.as_str(), STORED)
        .await;
    assert_eq!(jaeger::spans(&found).len(), 2);
    assert_eq!(
        jaeger.trace("0123456789abcdef0123456789abcdef").await,
        None,
        "an unknown trace id is not found"
    );

    jaeger.stop();
    assert!(
        get(&format!("{}/api/services", endpoints.2)).await.is_err(),
        "the query API still answers after stop()"
    );

    jaeger.restart().await;
    assert_eq!(
        (
            jaeger.otlp_grpc_endpoint(),
            jaeger.otlp_http_endpoint(),
            jaeger.query_url()
        ),
        endpoints,
        "a restart keeps the ports"
    );
    // Memory storage: the restart forgot the first trace, and takes a new one.
    assert_eq!(jaeger.trace(&first).await, None);
    let (second, _) = send_and_read(&jaeger, 2).await;
    assert_ne!(first, second);
}
