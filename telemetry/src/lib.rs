//! Traces for Meshward: OpenTelemetry spans exported over OTLP, W3C trace
//! context across hops, and nothing at all when tracing is off.
//!
//! Every component that can appear in a trace (a dataplane hop, an
//! ext_authz check, the control plane's xDS push) holds a [`Tracing`]
//! handle. Off, the handle is empty and every call on it returns at once:
//! no span, no allocation, no id generation, and the request headers are
//! left exactly as the dataplane writes them without tracing. On, spans go
//! through a bounded queue to a background export task, so a slow or dead
//! collector never blocks a request: a full queue drops the span and counts
//! it (`meshward_trace_spans_dropped_total`).
//!
//! Configuration is the OpenTelemetry SDK's standard environment
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_SDK_DISABLED`),
//! with `mesh.yaml`'s `telemetry.tracing` as the defaults under it.

#![forbid(unsafe_code)]

mod config;
mod export;
mod span;

pub use config::{ConfigError, ParentRoot, Protocol, SamplerConfig, TracingConfig, TracingFile};
pub use export::describe_metrics;
pub use span::{HopSpan, SpanKind, Tracing, TracingError};

#[cfg(feature = "testing")]
pub mod testing;
