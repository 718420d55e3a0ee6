use std::time::Duration;

use http::HeaderMap;
use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::InMemorySpanExporter;

use super::*;
use crate::config::TracingConfig;

fn config(sampler: SamplerConfig) -> TracingConfig {
    TracingConfig {
        endpoint: "http://127.0.0.1:1".into(),
        protocol: Protocol::Grpc,
        service_name: None,
        sampler,
        queue_size: 16,
        batch_size: 4,
        batch_delay: Duration::from_millis(10),
        export_timeout: Duration::from_secs(1),
    }
}

fn traced(sampler: SamplerConfig) -> (Tracing, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let t = Tracing::with_exporter(exporter.clone(), &config(sampler), "test-component");
    (t, exporter)
}

#[test]
fn off_makes_no_span_and_leaves_headers_alone() {
    let t = Tracing::off();
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    let before = headers.clone();
    let mut span = t.hop(SpanKind::Server, "GET", &headers);
    span.set("meshward.caller", "spiffe://x/a");
    span.inject(&mut headers);
    assert!(!span.is_recording());
    assert_eq!(span.trace_id(), None);
    assert_eq!(headers, before);
}

#[tokio::test]
async fn two_hops_are_one_trace_parented_through_the_headers() {
    let (t, exporter) = traced(SamplerConfig::default());
    // The agent sent a trace context.
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    headers.insert("tracestate", "vendor=abc".parse().unwrap());
    let mut outbound = t.hop(SpanKind::Client, "POST hello-skill", &headers);
    outbound.set("meshward.caller", "spiffe://mesh.local/agent/a");
    outbound.inject(&mut headers);
    // The next hop reads what the first wrote.
    let inbound = t.hop(SpanKind::Server, "POST hello-skill", &headers);
    assert_eq!(
        headers["tracestate"], "vendor=abc",
        "tracestate travels with the context"
    );
    let out_ctx = outbound.context().unwrap().clone();
    let in_ctx = inbound.context().unwrap().clone();
    drop(inbound);
    drop(outbound);
    assert!(t.flush(Duration::from_secs(5)).await);
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let trace = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let out = spans.iter().find(|s| s.span_context == out_ctx).unwrap();
    let inb = spans.iter().find(|s| s.span_context == in_ctx).unwrap();
    assert_eq!(out.span_context.trace_id(), trace);
    assert_eq!(inb.span_context.trace_id(), trace);
    assert_eq!(out.parent_span_id.to_string(), "b7ad6b7169203331");
    assert_eq!(inb.parent_span_id, out.span_context.span_id());
    assert!(
        out.attributes
            .iter()
            .any(|kv| kv.key.as_str() == "meshward.caller"),
        "{:?}",
        out.attributes
    );
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let (t, _) = traced(SamplerConfig::default());
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    let span = t.hop(SpanKind::Server, "GET", &headers);
    let ctx = span.context().unwrap();
    assert!(ctx.is_valid());
    assert_ne!(ctx.trace_id(), TraceId::INVALID);
}

#[tokio::test]
async fn an_unsampled_parent_keeps_the_next_hop_unsampled() {
    let (t, exporter) = traced(SamplerConfig::default());
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
            .parse()
            .unwrap(),
    );
    let span = t.hop(SpanKind::Client, "GET", &headers);
    assert!(!span.is_recording());
    span.inject(&mut headers);
    let tp = headers["traceparent"].to_str().unwrap().to_string();
    assert!(tp.ends_with("-00"), "{tp}");
    assert!(tp.contains("0af7651916cd43dd8448eb211c80319c"), "{tp}");
    drop(span);
    assert!(t.flush(Duration::from_secs(5)).await);
    assert!(exporter.get_finished_spans().unwrap().is_empty());
}

#[tokio::test]
async fn ratio_zero_records_nothing_but_still_propagates() {
    let (t, exporter) = traced(SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(0.0)));
    let mut headers = HeaderMap::new();
    let span = t.hop(SpanKind::Client, "GET", &headers);
    span.inject(&mut headers);
    assert!(headers.contains_key("traceparent"));
    drop(span);
    assert!(t.flush(Duration::from_secs(5)).await);
    assert!(exporter.get_finished_spans().unwrap().is_empty());
}

/// An exporter that never answers: the queue fills, spans are dropped and
/// counted, and ending a span never blocks.
#[derive(Debug)]
struct Stuck;

impl opentelemetry_sdk::trace::SpanExporter for Stuck {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_stuck_collector_never_blocks_a_span() {
    let mut cfg = config(SamplerConfig::AlwaysOn);
    cfg.export_timeout = Duration::from_secs(3600);
    let t = Tracing::with_exporter(Stuck, &cfg, "stuck");
    let started = std::time::Instant::now();
    for _ in 0..10_000 {
        t.root(SpanKind::Server, "GET").end();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ending spans waited on the collector: {:?}",
        started.elapsed()
    );
    assert!(
        !t.flush(Duration::from_millis(50)).await,
        "a stuck export cannot flush"
    );
}
