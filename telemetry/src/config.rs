//! Where traces go and how many are kept: the OpenTelemetry environment
//! variables over `mesh.yaml`'s `telemetry.tracing`.
//!
//! Tracing is on only when an OTLP endpoint is named (in the environment or
//! the file) and `OTEL_SDK_DISABLED` is not `true`: a dataplane never starts
//! exporting to a default `localhost:4317` nobody asked for.

use std::time::Duration;

use serde::Deserialize;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Protocol {
    /// OTLP over gRPC (collector port 4317).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (collector port 4318); the
    /// specification's default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(format!(
                "{other:?} is not a supported OTLP protocol (grpc, http/protobuf)"
            )),
        }
    }
}

/// Which traces are recorded, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerConfig {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    /// Follow the caller's sampled flag; for a trace that starts here, the
    /// inner choice. The default: one agent call is sampled on every hop or
    /// on none.
    ParentBased(ParentRoot),
}

/// What a parent-based sampler does for a root span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentRoot {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::ParentBased(ParentRoot::AlwaysOn)
    }
}

impl SamplerConfig {
    /// Reads a sampler name and its argument (a ratio in `[0, 1]`).
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || -> Result<f64, String> {
            let Some(arg) = arg else { return Ok(1.0) };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!(
                    "sampler argument {arg:?} is not a ratio between 0 and 1"
                )),
            }
        };
        Ok(match name.trim() {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(ratio()?),
            "parentbased_always_on" => Self::ParentBased(ParentRoot::AlwaysOn),
            "parentbased_always_off" => Self::ParentBased(ParentRoot::AlwaysOff),
            "parentbased_traceidratio" => Self::ParentBased(ParentRoot::TraceIdRatio(ratio()?)),
            other => {
                return Err(format!(
                    "{other:?} is not a supported sampler (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                ));
            }
        })
    }
}

/// `mesh.yaml`'s `telemetry.tracing`: defaults the environment overrides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// OTLP endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    /// `OTEL_TRACES_SAMPLER`'s names.
    pub sampler: Option<String>,
    pub sampler_arg: Option<f64>,
}

/// Tracing as configured: where to export, under which service name, and
/// which traces to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    pub endpoint: String,
    pub protocol: Protocol,
    /// `OTEL_SERVICE_NAME`; each component's own name when unset.
    pub service_name: Option<String>,
    pub sampler: SamplerConfig,
    /// Spans waiting for export; beyond this they are dropped and counted.
    pub queue_size: usize,
    /// Spans per export call.
    pub batch_size: usize,
    /// How long a span may wait for a fuller batch.
    pub batch_delay: Duration,
    /// Bound on one export call (`OTEL_EXPORTER_OTLP_TIMEOUT`, ms).
    pub export_timeout: Duration,
}

/// A tracing setting that cannot be used; names the variable or field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl TracingConfig {
    /// Tracing from the process environment over `file`'s defaults; `None`
    /// when no endpoint is named or the SDK is disabled.
    pub fn resolve(file: Option<&TracingFile>) -> Result<Option<Self>, ConfigError> {
        Self::resolve_with(file, |k| std::env::var(k).ok())
    }

    /// [`resolve`](Self::resolve) with the environment as a function, so
    /// tests need not touch the process environment.
    pub fn resolve_with(
        file: Option<&TracingFile>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let err = |setting: &str, message: String| ConfigError {
            setting: setting.to_string(),
            message,
        };
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none") {
            return Ok(None);
        }
        let file = file.cloned().unwrap_or_default();
        let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|e| ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e, true))
            .or_else(|| {
                env("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e, false))
            })
            .or_else(|| {
                file.endpoint
                    .clone()
                    .map(|e| ("telemetry.tracing.endpoint", e, false))
            });
        let Some((setting, endpoint, signal_specific)) = endpoint else {
            return Ok(None);
        };
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(err(
                setting,
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        let protocol = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|p| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p))
            .or_else(|| {
                env("OTEL_EXPORTER_OTLP_PROTOCOL").map(|p| ("OTEL_EXPORTER_OTLP_PROTOCOL", p))
            }) {
            Some((setting, p)) => Protocol::parse(&p).map_err(|m| err(setting, m))?,
            None => file.protocol.unwrap_or_default(),
        };
        // The generic endpoint is a base URL the HTTP exporter appends the
        // signal path to; the signal-specific one is used as given.
        let endpoint = match (protocol, signal_specific) {
            (Protocol::HttpProtobuf, false) => format!("{endpoint}/v1/traces"),
            _ => endpoint,
        };
        let sampler = match env("OTEL_TRACES_SAMPLER") {
            Some(name) => {
                let arg = env("OTEL_TRACES_SAMPLER_ARG");
                SamplerConfig::parse(&name, arg.as_deref())
                    .map_err(|m| err("OTEL_TRACES_SAMPLER", m))?
            }
            None => match &file.sampler {
                Some(name) => {
                    let arg = file.sampler_arg.map(|a| a.to_string());
                    SamplerConfig::parse(name, arg.as_deref())
                        .map_err(|m| err("telemetry.tracing.sampler", m))?
                }
                None => SamplerConfig::default(),
            },
        };
        let export_timeout = match env("OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some(ms) => Duration::from_millis(ms.trim().parse::<u64>().map_err(|_| {
                err(
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                    format!("{ms:?} is not a number of milliseconds"),
                )
            })?),
            None => Duration::from_secs(10),
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            service_name: env("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()),
            sampler,
            queue_size: 2048,
            batch_size: 512,
            batch_delay: Duration::from_millis(500),
            export_timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        file: Option<&TracingFile>,
        vars: &[(&str, &str)],
    ) -> Result<Option<TracingConfig>, ConfigError> {
        TracingConfig::resolve_with(file, |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn off_unless_an_endpoint_is_named() {
        assert_eq!(resolve(None, &[]), Ok(None));
        assert_eq!(
            resolve(None, &[("OTEL_SERVICE_NAME", "x")]),
            Ok(None),
            "a service name alone does not turn tracing on"
        );
        let on = resolve(
            None,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(on.protocol, Protocol::HttpProtobuf);
        assert_eq!(on.sampler, SamplerConfig::ParentBased(ParentRoot::AlwaysOn));
    }

    #[test]
    fn the_sdk_switch_and_exporter_none_turn_it_off() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert_eq!(
            resolve(None, &[ep, ("OTEL_SDK_DISABLED", "TRUE")]),
            Ok(None)
        );
        assert_eq!(
            resolve(None, &[ep, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(None)
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = TracingFile {
            endpoint: Some("http://127.0.0.1:9999".into()),
            protocol: Some(Protocol::Grpc),
            sampler: Some("traceidratio".into()),
            sampler_arg: Some(0.25),
        };
        let from_file = resolve(Some(&file), &[]).unwrap().unwrap();
        assert_eq!(from_file.endpoint, "http://127.0.0.1:9999");
        assert_eq!(from_file.protocol, Protocol::Grpc);
        assert_eq!(from_file.sampler, SamplerConfig::TraceIdRatio(0.25));

        let env = resolve(
            Some(&file),
            &[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://127.0.0.1:1/custom",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ("OTEL_SERVICE_NAME", "triage"),
            ],
        )
        .unwrap()
        .unwrap();
        // A signal-specific endpoint is used as given.
        assert_eq!(env.endpoint, "http://127.0.0.1:1/custom");
        assert_eq!(env.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            env.sampler,
            SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(0.01))
        );
        assert_eq!(env.service_name.as_deref(), Some("triage"));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let e = resolve(None, &[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
        assert_eq!(e.setting, "OTEL_EXPORTER_OTLP_PROTOCOL");
        let e = resolve(
            None,
            &[
                ep,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.setting, "OTEL_TRACES_SAMPLER");
        assert!(e.message.contains("ratio"), "{e}");
        let e = resolve(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317")]).unwrap_err();
        assert_eq!(e.setting, "OTEL_EXPORTER_OTLP_ENDPOINT");
        let file = TracingFile {
            endpoint: Some("http://x".into()),
            sampler: Some("sometimes".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(Some(&file), &[]).unwrap_err().setting,
            "telemetry.tracing.sampler"
        );
    }
}
