//! The handle components trace through, and the span of one hop.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

pub use opentelemetry::trace::SpanKind;

use crate::config::{ParentRoot, Protocol, SamplerConfig, TracingConfig};
use crate::export::{QueueProcessor, QueueSettings};

/// Tracing could not start (the exporter could not be built).
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {message}")]
pub struct TracingError {
    pub endpoint: String,
    pub message: String,
}

/// A component's tracer; empty (and free) when tracing is off.
#[derive(Clone, Default)]
pub struct Tracing(Option<Arc<Inner>>);

struct Inner {
    tracer: SdkTracer,
    queue: QueueProcessor,
    // Kept so the tracer's provider lives as long as the handle.
    _provider: SdkTracerProvider,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Tracing(on)"
        } else {
            "Tracing(off)"
        })
    }
}

impl Tracing {
    /// No tracing: every span is [`HopSpan::none`].
    pub fn off() -> Self {
        Self(None)
    }

    /// Tracing for `component` (its service name unless
    /// `OTEL_SERVICE_NAME` says otherwise), or off when `config` is `None`.
    /// Must be called on a tokio runtime: the export task runs there.
    pub fn start(config: Option<&TracingConfig>, component: &str) -> Result<Self, TracingError> {
        let Some(config) = config else {
            return Ok(Self::off());
        };
        let error = |message: String| TracingError {
            endpoint: config.endpoint.clone(),
            message,
        };
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match config.protocol {
            Protocol::Grpc => builder
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.export_timeout)
                .build(),
            Protocol::HttpProtobuf => builder
                .with_http()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.export_timeout)
                .build(),
        }
        .map_err(|e| error(e.to_string()))?;
        Ok(Self::with_exporter(exporter, config, component))
    }

    /// Tracing through any exporter (the OTLP one, or an in-memory one in
    /// tests).
    pub(crate) fn with_exporter<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
        mut exporter: E,
        config: &TracingConfig,
        component: &str,
    ) -> Self {
        let service = config
            .service_name
            .clone()
            .unwrap_or_else(|| component.to_string());
        let resource = Resource::builder_empty()
            .with_service_name(service)
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("meshward.component", component.to_string()),
            ])
            .build();
        exporter.set_resource(&resource);
        let queue = QueueProcessor::spawn(
            exporter,
            QueueSettings {
                capacity: config.queue_size,
                batch_size: config.batch_size,
                batch_delay: config.batch_delay,
                export_timeout: config.export_timeout,
            },
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue.clone())
            .with_sampler(sampler(config.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("meshward");
        Self(Some(Arc::new(Inner {
            tracer,
            queue,
            _provider: provider,
        })))
    }

    /// Whether spans are being made at all.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// A span for one hop, the child of the W3C trace context in `headers`
    /// (`traceparent`, `tracestate`) when there is a valid one, else the
    /// root of a new trace.
    pub fn hop(
        &self,
        kind: SpanKind,
        name: impl Into<Cow<'static, str>>,
        headers: &HeaderMap,
    ) -> HopSpan {
        let Some(inner) = &self.0 else {
            return HopSpan::none();
        };
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        HopSpan::started(inner, kind, name.into(), &parent)
    }

    /// A span with no parent.
    pub fn root(&self, kind: SpanKind, name: impl Into<Cow<'static, str>>) -> HopSpan {
        let Some(inner) = &self.0 else {
            return HopSpan::none();
        };
        HopSpan::started(inner, kind, name.into(), &Context::new())
    }

    /// A span under `parent` (a none span has no children).
    pub fn child(
        &self,
        parent: &HopSpan,
        kind: SpanKind,
        name: impl Into<Cow<'static, str>>,
    ) -> HopSpan {
        let (Some(inner), Some(p)) = (&self.0, &parent.0) else {
            return HopSpan::none();
        };
        let cx = Context::new().with_remote_span_context(p.span_context().clone());
        HopSpan::started(inner, kind, name.into(), &cx)
    }

    /// Waits (up to `within`) until the spans ended so far were handed to
    /// the collector; false when that did not happen in time. For shutdown
    /// and tests; requests never wait on it.
    pub async fn flush(&self, within: Duration) -> bool {
        match &self.0 {
            Some(inner) => inner.queue.flush(within).await,
            None => true,
        }
    }
}

fn sampler(config: SamplerConfig) -> Sampler {
    let root = |r: ParentRoot| match r {
        ParentRoot::AlwaysOn => Sampler::AlwaysOn,
        ParentRoot::AlwaysOff => Sampler::AlwaysOff,
        ParentRoot::TraceIdRatio(x) => Sampler::TraceIdRatioBased(x),
    };
    match config {
        SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
        SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
        SamplerConfig::TraceIdRatio(x) => Sampler::TraceIdRatioBased(x),
        SamplerConfig::ParentBased(r) => Sampler::ParentBased(Box::new(root(r))),
    }
}

/// One hop's span, ended when dropped. Boxed, so a hop without tracing
/// carries one null pointer.
#[derive(Default)]
pub struct HopSpan(Option<Box<opentelemetry_sdk::trace::Span>>);

impl std::fmt::Debug for HopSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.trace_id() {
            Some(t) => write!(f, "HopSpan({t})"),
            None => f.write_str("HopSpan(none)"),
        }
    }
}

impl HopSpan {
    /// No span (tracing is off).
    pub fn none() -> Self {
        Self(None)
    }

    fn started(inner: &Inner, kind: SpanKind, name: Cow<'static, str>, parent: &Context) -> Self {
        let builder = inner.tracer.span_builder(name).with_kind(kind);
        Self(Some(Box::new(
            inner.tracer.build_with_context(builder, parent),
        )))
    }

    /// Whether this span will be exported (tracing on and sampled).
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_recording())
    }

    /// Sets an attribute (a no-op when not recording).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(s) = self.0.as_mut().filter(|s| s.is_recording()) {
            s.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with a message.
    pub fn set_error(&mut self, message: impl Into<Cow<'static, str>>) {
        if let Some(s) = self.0.as_mut() {
            s.set_status(Status::error(message));
        }
    }

    /// Writes this span's context as `traceparent` (and `tracestate`) so the
    /// next hop's span is its child. Without a span the headers are left
    /// alone.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(s) = &self.0 {
            let cx = Context::new().with_remote_span_context(s.span_context().clone());
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
        }
    }

    /// The span's context (trace and span id, sampled flag).
    pub fn context(&self) -> Option<&SpanContext> {
        self.0.as_ref().map(|s| s.span_context())
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> Option<String> {
        self.context().map(|c| c.trace_id().to_string())
    }

    /// Ends the span now (dropping it does the same).
    pub fn end(self) {
        drop(self)
    }

    /// Ends the span with `time` as its end, for a span whose work was over
    /// before it could be ended (the xDS push ends when its last node
    /// answered, which is known only later).
    pub fn end_at(mut self, time: SystemTime) {
        if let Some(s) = self.0.as_mut() {
            s.end_with_timestamp(time);
        }
    }
}

#[cfg(test)]
mod tests;
