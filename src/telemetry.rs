//! Process-wide telemetry: tracing to stderr and one Prometheus recorder.
//!
//! A metrics recorder is global to a process, while `meshward up` (and the
//! integration tests) run many components in one process, so the recorder is
//! installed once here and its handle is handed to every admin endpoint.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use.
/// `None` if another recorder was installed first (metrics then go there).
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE.get_or_init(install).clone()
}

/// Request durations are histograms (aggregatable across instances, unlike
/// summaries) with buckets for a sub-millisecond hop up to a slow upstream.
const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".into()),
            DURATION_BUCKETS,
        )
        .map_err(|e| tracing::warn!("histogram buckets: {e}"))
        .ok()?;
    match builder.install_recorder() {
        Ok(h) => {
            meshward_dataplane::metrics::describe();
            meshward_controlplane::xds::describe_metrics();
            meshward_spire::identity::describe_metrics();
            meshward_dataplane::observe::describe_metrics();
            meshward_telemetry::describe_metrics();
            Some(h)
        }
        Err(e) => {
            tracing::warn!("metrics recorder not installed: {e}");
            None
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
pub fn init_tracing(default: &str) {
    init_logging(None, LogFormat::Text, default);
}

/// Logs to stderr at `level` (an `EnvFilter` directive such as `info` or
/// `meshward_dataplane=debug,info`), else `RUST_LOG`, else `default`, in
/// `format`. Colour codes are written only to a terminal, so a log file or
/// a collector never sees escape sequences.
pub fn init_logging(level: Option<&str>, format: LogFormat, default: &str) {
    use std::io::IsTerminal;
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::try_new(l).unwrap_or_else(|e| {
            eprintln!("meshward: --log-level {l:?}: {e}; using {default:?}");
            tracing_subscriber::EnvFilter::new(default)
        }),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Traces and request logs, on `meshward up` and `meshward dataplane`.
/// Traces follow the OpenTelemetry environment (`OTEL_EXPORTER_OTLP_ENDPOINT`
/// and friends); the logs follow these flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ObserveArgs {
    /// Access log, one JSON line per request: `stdout`, `stderr` or a file
    /// (appended to).
    #[arg(long, value_name = "stdout|stderr|PATH")]
    access_log: Option<meshward_dataplane::observe::LogTarget>,
    /// Decision log in OPA's decision-log format, one JSON line per policy
    /// decision: `stdout`, `stderr` or a file (appended to).
    #[arg(long, value_name = "stdout|stderr|PATH")]
    decision_log: Option<meshward_dataplane::observe::LogTarget>,
    /// A JSON pointer erased from every decision-log event, such as
    /// `/input/parsed_body` (repeat for more). Replaces the default, which
    /// erases the `authorization`, `proxy-authorization` and `cookie`
    /// headers; `none` erases nothing.
    #[arg(long = "decision-log-mask", value_name = "POINTER")]
    decision_log_mask: Vec<String>,
}

impl ObserveArgs {
    /// The settings these flags and the environment describe; a bad
    /// `OTEL_*` variable is an error naming it.
    pub fn settings(&self) -> anyhow::Result<meshward_dataplane::observe::ObserveSettings> {
        use meshward_dataplane::observe::DecisionLog;
        let mask = match self.decision_log_mask.as_slice() {
            [] => DecisionLog::default_mask(),
            [none] if none == "none" => Vec::new(),
            given => given.to_vec(),
        };
        Ok(meshward_dataplane::observe::ObserveSettings {
            tracing: meshward_telemetry::TracingConfig::resolve(None)?,
            access_log: self.access_log.clone(),
            decision_log: self.decision_log.clone(),
            decision_log_mask: mask,
        })
    }
}
