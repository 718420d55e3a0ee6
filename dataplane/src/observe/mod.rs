//! What a dataplane tells its operator about each request: a span for the
//! trace, an access-log line and a decision-log event, all joined by the
//! request id, the trace id and the decision id.
//!
//! Each is off unless configured, and off costs nothing per request: no
//! record is kept, no body is wrapped. When any is on, the request's
//! [`Record`] collects what the stages learn (caller, service, paths, the
//! decision, timings) and is written once, when the response body ends, so
//! durations and byte counts cover the whole exchange.

pub mod access;
pub mod body;
pub mod decision;
pub mod record;
pub mod sink;

use meshward_telemetry::{Tracing, TracingConfig};

pub use access::AccessLog;
pub use decision::{DecisionEvent, DecisionLog};
pub use record::Record;
pub use sink::{LineSink, LogTarget, SinkError};

/// A dataplane's traces and logs.
#[derive(Debug, Clone, Default)]
pub struct Observability {
    pub tracing: Tracing,
    pub access_log: Option<AccessLog>,
    pub decision_log: Option<DecisionLog>,
}

impl Observability {
    /// Whether any per-request record is kept.
    pub fn is_on(&self) -> bool {
        self.tracing.is_on() || self.access_log.is_some() || self.decision_log.is_some()
    }
}

/// How a process observes its dataplanes: one tracing configuration and
/// at most one access and one decision log, shared by every dataplane in
/// the process (`meshward up` runs several; lines carry the dataplane).
#[derive(Debug, Clone, Default)]
pub struct ObserveSettings {
    pub tracing: Option<TracingConfig>,
    pub access_log: Option<LogTarget>,
    pub decision_log: Option<LogTarget>,
    /// JSON pointers erased from decision-log events.
    pub decision_log_mask: Vec<String>,
}

/// Why observability could not be set up; names the log, file or setting.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Mask(#[from] decision::MaskError),
    #[error(transparent)]
    Tracing(#[from] meshward_telemetry::TracingError),
}

/// The process's open log sinks, from which each dataplane's
/// [`Observability`] is made.
#[derive(Debug, Clone)]
pub struct Sinks {
    settings: ObserveSettings,
    access: Option<LineSink>,
    decision: Option<LineSink>,
}

impl Sinks {
    /// Opens the logs (a file that cannot be opened is an error naming it).
    pub fn open(settings: &ObserveSettings) -> Result<Self, ObserveError> {
        let open = |log, target: &Option<LogTarget>| -> Result<Option<LineSink>, SinkError> {
            target.as_ref().map(|t| LineSink::open(log, t)).transpose()
        };
        Ok(Self {
            access: open("access", &settings.access_log)?,
            decision: open("decision", &settings.decision_log)?,
            settings: settings.clone(),
        })
    }

    /// The observability of the dataplane named `name` (also its trace
    /// service name unless `OTEL_SERVICE_NAME` is set). Call on the tokio
    /// runtime: the span export task runs there.
    pub fn for_dataplane(&self, name: &str) -> Result<Observability, ObserveError> {
        Ok(Observability {
            tracing: Tracing::start(self.settings.tracing.as_ref(), name)?,
            access_log: self.access.clone().map(|s| AccessLog::new(s, name)),
            decision_log: self
                .decision
                .clone()
                .map(|s| DecisionLog::new(s, self.settings.decision_log_mask.clone(), name))
                .transpose()?,
        })
    }
}

/// Describes the families this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        sink::METRIC_DROPPED,
        "Access- or decision-log lines dropped because the writer was behind, by log."
    );
}
