use std::time::Duration;

use meshward_telemetry::testing::{InMemorySpanExporter, SpanData, Status, in_memory};

use super::*;
use crate::snapshot::{tests as fixtures, type_url};

const AGENT_A: &str = "spiffe://example.org/agent/triage";
const SERVICE_B: &str = "spiffe://example.org/service/hello";
const WAIT: Duration = Duration::from_secs(10);

fn node(spiffe_id: &str, node_id: &str) -> NodeIdentity {
    NodeIdentity {
        node_id: node_id.to_string(),
        ..fixtures::node(spiffe_id)
    }
}

fn sent<'a>(type_url: &'a str, nonce: &'a str) -> Sent<'a> {
    Sent {
        type_url,
        nonce,
        version: "v1",
        resources: 2,
    }
}

/// The spans ended so far.
async fn finished(tracing: &Tracing, exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    assert!(
        tracing.flush(WAIT).await,
        "spans not exported within {WAIT:?}"
    );
    exporter
        .get_finished_spans()
        .unwrap_or_else(|e| panic!("in-memory exporter: {e}"))
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn delivery_of<'a>(spans: &'a [SpanData], node_id: &str) -> &'a SpanData {
    named(spans, "xds.deliver")
        .into_iter()
        .find(|s| attr(s, "meshward.node").as_deref() == Some(node_id))
        .unwrap_or_else(|| panic!("no delivery to {node_id} in {spans:#?}"))
}

#[tokio::test]
async fn a_push_to_two_streams_is_one_trace_with_a_delivery_each() {
    let (tracing, exporter) = in_memory("controlplane");
    let tracer = PushTracer::new(tracing.clone());
    let mesh = Arc::new(fixtures::mesh());
    let latest = || Arc::clone(&mesh);
    let (mut a, mut b) = (Deliveries::new("delta"), Deliveries::new("sotw"));

    let push = tracer.push(&mesh, latest).expect("tracing is on");
    a.sent(Some(&push), &node(AGENT_A, "a"), sent(type_url::AGENT, "1"));
    let same = tracer.push(&mesh, latest).expect("the push is open");
    assert!(Arc::ptr_eq(&push, &same), "one push per model");
    b.sent(
        Some(&same),
        &node(SERVICE_B, "b"),
        sent(type_url::AGENT, "7"),
    );
    a.answered(type_url::AGENT, "1", None);
    b.answered(type_url::AGENT, "7", Some("agent triage: bad permission"));
    let answered = SystemTime::now();

    // Nothing ends the root while the model is current...
    assert!(named(&finished(&tracing, &exporter).await, "xds.push").is_empty());
    // ... until the next model supersedes it.
    let next = Arc::new(fixtures::mesh());
    assert!(tracer.push(&next, || Arc::clone(&next)).is_some());

    let spans = finished(&tracing, &exporter).await;
    let roots = named(&spans, "xds.push");
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = roots[0];
    assert_eq!(attr(root, "meshward.config_revision").as_deref(), Some("1"));
    assert_eq!(
        attr(root, "meshward.policy_revision"),
        Some(mesh.policy.revision.clone())
    );
    assert_eq!(attr(root, "xds.push.ended").as_deref(), Some("superseded"));
    assert_eq!(attr(root, "xds.deliveries").as_deref(), Some("2"));
    assert_eq!(attr(root, "xds.nacks").as_deref(), Some("1"));
    assert_eq!(attr(root, "xds.unanswered").as_deref(), Some("0"));

    let (ack, nack) = (delivery_of(&spans, "a"), delivery_of(&spans, "b"));
    for d in [ack, nack] {
        assert_eq!(d.span_context.trace_id(), root.span_context.trace_id());
        assert_eq!(d.parent_span_id, root.span_context.span_id());
        assert_eq!(attr(d, "xds.type_url").as_deref(), Some(type_url::AGENT));
        assert_eq!(attr(d, "xds.version").as_deref(), Some("v1"));
        assert!(d.end_time <= root.end_time, "a child outlived the root");
    }
    // The root's end is the last answer, not the moment it was superseded.
    assert!(root.end_time <= answered);
    assert_eq!(attr(ack, "xds.result").as_deref(), Some("ack"));
    assert_eq!(attr(ack, "xds.protocol").as_deref(), Some("delta"));
    assert_eq!(
        attr(ack, "meshward.node_spiffe_id").as_deref(),
        Some(AGENT_A)
    );
    assert_eq!(ack.status, Status::Unset);
    assert_eq!(attr(nack, "xds.result").as_deref(), Some("nack"));
    assert_eq!(attr(nack, "xds.protocol").as_deref(), Some("sotw"));
    assert_eq!(
        attr(nack, "xds.error").as_deref(),
        Some("agent triage: bad permission")
    );
    assert_eq!(nack.status, Status::error("agent triage: bad permission"));
}

#[tokio::test]
async fn a_stream_that_closes_before_answering_abandons_its_deliveries() {
    let (tracing, exporter) = in_memory("controlplane");
    let tracer = PushTracer::new(tracing.clone());
    let mesh = Arc::new(fixtures::mesh());
    let push = tracer.push(&mesh, || Arc::clone(&mesh)).expect("on");
    let mut a = Deliveries::new("delta");
    a.sent(
        Some(&push),
        &node(AGENT_A, "a"),
        sent(type_url::CLUSTER, "1"),
    );
    a.sent(Some(&push), &node(AGENT_A, "a"), sent(type_url::AGENT, "2"));
    drop(a);

    let spans = finished(&tracing, &exporter).await;
    let deliveries = named(&spans, "xds.deliver");
    assert_eq!(deliveries.len(), 2, "{spans:#?}");
    for d in deliveries {
        assert_eq!(attr(d, "xds.result").as_deref(), Some("abandoned"));
    }
}

/// One open delivery per stream and type: a newer response of the type
/// (a push or not) ends it as superseded; other types are untouched, and
/// an answer to another nonce is ignored.
#[tokio::test]
async fn a_newer_response_of_a_type_supersedes_its_open_delivery() {
    let (tracing, exporter) = in_memory("controlplane");
    let tracer = PushTracer::new(tracing.clone());
    let mesh = Arc::new(fixtures::mesh());
    let push = tracer.push(&mesh, || Arc::clone(&mesh)).expect("on");
    let n = node(AGENT_A, "a");
    let mut a = Deliveries::new("sotw");
    a.sent(Some(&push), &n, sent(type_url::CLUSTER, "1"));
    a.sent(Some(&push), &n, sent(type_url::AGENT, "2"));
    a.sent(None, &n, sent(type_url::CLUSTER, "3"));
    a.answered(type_url::AGENT, "1", None);
    assert!(
        named(&finished(&tracing, &exporter).await, "xds.deliver")
            .iter()
            .all(|d| attr(d, "xds.type_url").as_deref() == Some(type_url::CLUSTER)),
        "an answer to another nonce ended the agent delivery"
    );
    a.answered(type_url::AGENT, "2", None);

    let spans = finished(&tracing, &exporter).await;
    let result = |t: &str| {
        named(&spans, "xds.deliver")
            .into_iter()
            .find(|d| attr(d, "xds.type_url").as_deref() == Some(t))
            .and_then(|d| attr(d, "xds.result"))
    };
    assert_eq!(result(type_url::CLUSTER).as_deref(), Some("superseded"));
    assert_eq!(result(type_url::AGENT).as_deref(), Some("ack"));
    assert_eq!(named(&spans, "xds.deliver").len(), 2, "{spans:#?}");
}

/// A model nobody replaces still ends its root after the window; a
/// delivery still open then ends on its own, in the same trace, and a
/// stream that picks the model up later is not traced.
#[tokio::test]
async fn the_root_ends_after_the_window_without_a_newer_model() {
    let (tracing, exporter) = in_memory("controlplane");
    let tracer = PushTracer::with_window(tracing.clone(), Duration::from_millis(20));
    let mesh = Arc::new(fixtures::mesh());
    let push = tracer.push(&mesh, || Arc::clone(&mesh)).expect("on");
    let mut a = Deliveries::new("delta");
    a.sent(Some(&push), &node(AGENT_A, "a"), sent(type_url::AGENT, "1"));
    drop(push);

    let timer = tracer
        .current
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .timer
        .take()
        .expect("a push has a timer");
    match tokio::time::timeout(WAIT, timer).await {
        Ok(Ok(())) => {}
        other => panic!("the window timer did not finish: {other:?}"),
    }
    let spans = finished(&tracing, &exporter).await;
    let roots = named(&spans, "xds.push");
    assert_eq!(roots.len(), 1, "{spans:#?}");
    assert_eq!(attr(roots[0], "xds.push.ended").as_deref(), Some("window"));
    assert_eq!(attr(roots[0], "xds.unanswered").as_deref(), Some("1"));
    assert!(
        tracer.push(&mesh, || Arc::clone(&mesh)).is_none(),
        "a late stream joined an ended push"
    );

    a.answered(type_url::AGENT, "1", None);
    let spans = finished(&tracing, &exporter).await;
    let d = delivery_of(&spans, "a");
    assert_eq!(d.parent_span_id, roots[0].span_context.span_id());
    assert_eq!(attr(d, "xds.result").as_deref(), Some("ack"));
}

/// The stream that saw the model first may have nothing to send; the push
/// is still there for the streams after it.
#[tokio::test]
async fn a_push_outlives_the_stream_that_began_it() {
    let (tracing, _exporter) = in_memory("controlplane");
    let tracer = PushTracer::new(tracing);
    let mesh = Arc::new(fixtures::mesh());
    let first = tracer.push(&mesh, || Arc::clone(&mesh)).expect("on");
    let root = first
        .state()
        .root
        .as_ref()
        .and_then(|r| r.context().cloned());
    drop(first);
    let later = tracer
        .push(&mesh, || Arc::clone(&mesh))
        .expect("still open");
    let same = later
        .state()
        .root
        .as_ref()
        .and_then(|r| r.context().cloned());
    assert!(root.is_some());
    assert_eq!(same, root, "the later stream got another push");
}

/// A stream that saw a model after a newer one was published must not
/// supersede the newer model's push.
#[tokio::test]
async fn a_stream_behind_the_latest_model_starts_no_push() {
    let (tracing, exporter) = in_memory("controlplane");
    let tracer = PushTracer::new(tracing.clone());
    let old = Arc::new(fixtures::mesh());
    let new = Arc::new(fixtures::mesh());
    let current = tracer.push(&new, || Arc::clone(&new)).expect("on");
    assert!(tracer.push(&old, || Arc::clone(&new)).is_none());
    assert!(!current.ended());
    assert!(named(&finished(&tracing, &exporter).await, "xds.push").is_empty());
}

#[tokio::test]
async fn tracing_off_makes_no_push_and_tracks_nothing() {
    let tracer = PushTracer::new(Tracing::off());
    let mesh = Arc::new(fixtures::mesh());
    assert!(tracer.push(&mesh, || Arc::clone(&mesh)).is_none());
    let mut a = Deliveries::new("delta");
    a.sent(None, &node(AGENT_A, "a"), sent(type_url::AGENT, "1"));
    a.answered(type_url::AGENT, "1", None);
    assert!(a.open.is_empty());
}
