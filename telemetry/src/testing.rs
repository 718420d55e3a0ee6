//! Tracing into memory, for tests in other crates (feature `testing`): the
//! control plane's tests check the spans of an xDS push without a
//! collector. Spans are kept, not exported; read them back with
//! [`InMemorySpanExporter::get_finished_spans`] after [`Tracing::flush`].

pub use opentelemetry::trace::{SpanId, Status, TraceId};
pub use opentelemetry::{KeyValue, Value};
pub use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

use std::time::Duration;

use crate::{Protocol, SamplerConfig, Tracing, TracingConfig};

/// Tracing for `component` that samples every span and keeps it in the
/// returned exporter. Call on a tokio runtime, like [`Tracing::start`].
pub fn in_memory(component: &str) -> (Tracing, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let config = TracingConfig {
        endpoint: "memory".into(),
        protocol: Protocol::Grpc,
        service_name: None,
        sampler: SamplerConfig::AlwaysOn,
        queue_size: 1024,
        batch_size: 64,
        batch_delay: Duration::from_millis(10),
        export_timeout: Duration::from_secs(1),
    };
    let tracing = Tracing::with_exporter(exporter.clone(), &config, component);
    (tracing, exporter)
}
