//! Settings both planes must read the same way: what `mesh.yaml` may say, what
//! goes on the wire, and what a dataplane accepts, defined once.
//!
//! The control plane validates `mesh.yaml` into these types and encodes them
//! with `From`; the dataplane decodes them with `TryFrom`, which applies the
//! same checks and names the field at fault, so a value `meshward validate`
//! accepts is a value every dataplane ACKs. On the wire a zero means "the
//! default", which `mesh.yaml` cannot express any other way (its values must
//! be at least 1), so an older control plane that does not send a field gets
//! the dataplane's defaults.

use std::time::Duration;

use crate::meshward::v1 as pb;

/// Type URL of the mesh-wide [`pb::DataplaneSettings`] resource.
pub const DATAPLANE_SETTINGS_TYPE_URL: &str = "type.googleapis.com/meshward.v1.DataplaneSettings";
/// Name of the one `DataplaneSettings` resource.
pub const DATAPLANE_SETTINGS_NAME: &str = "default";

/// What to do with a path feature that has no safe canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathAction {
    /// Refuse the request with 400 (the default).
    #[default]
    Reject,
    /// Forward it as written (escapes upper-cased), for APIs that need it.
    Keep,
}

impl PathAction {
    /// The names `mesh.yaml` uses.
    pub const NAMES: &'static [&'static str] = &["reject", "keep"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "reject" => Some(PathAction::Reject),
            "keep" => Some(PathAction::Keep),
            _ => None,
        }
    }

    fn from_wire(value: i32, field: &str) -> Result<Self, String> {
        match pb::PathAction::try_from(value) {
            Ok(pb::PathAction::Reject) => Ok(PathAction::Reject),
            Ok(pb::PathAction::Keep) => Ok(PathAction::Keep),
            Err(_) => Err(format!("{field}: unknown path action {value}")),
        }
    }

    fn to_wire(self) -> i32 {
        match self {
            PathAction::Reject => pb::PathAction::Reject as i32,
            PathAction::Keep => pb::PathAction::Keep as i32,
        }
    }
}

/// Per-service choices for paths that cannot be canonicalized safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathRules {
    /// `%2F` and `%5C` in a path (Envoy's `path_with_escaped_slashes_action`).
    pub escaped_slashes: PathAction,
    /// `;` in a path segment (a path parameter, as in `/a;jsessionid=1`).
    pub path_parameters: PathAction,
}

impl From<PathRules> for pb::PathRules {
    fn from(r: PathRules) -> Self {
        pb::PathRules {
            escaped_slashes: r.escaped_slashes.to_wire(),
            path_parameters: r.path_parameters.to_wire(),
        }
    }
}

impl TryFrom<Option<&pb::PathRules>> for PathRules {
    type Error = String;

    /// Absent means the defaults (refuse both).
    fn try_from(r: Option<&pb::PathRules>) -> Result<Self, String> {
        let Some(r) = r else {
            return Ok(PathRules::default());
        };
        Ok(PathRules {
            escaped_slashes: PathAction::from_wire(r.escaped_slashes, "paths.escaped_slashes")?,
            path_parameters: PathAction::from_wire(r.path_parameters, "paths.path_parameters")?,
        })
    }
}

/// What an inbound dataplane tells its service about the client certificate,
/// in `x-forwarded-client-cert` (Envoy's `forward_client_cert_details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// Remove any `x-forwarded-client-cert` (the default).
    #[default]
    Sanitize,
    /// Replace it with the verified peer's details.
    SanitizeSet,
    /// Keep what the verified peer sent and append its details.
    AppendForward,
}

impl ForwardClientCert {
    /// The names `mesh.yaml` uses (Envoy's, lower-cased).
    pub const NAMES: &'static [&'static str] = &["sanitize", "sanitize_set", "append_forward"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sanitize" => Some(ForwardClientCert::Sanitize),
            "sanitize_set" => Some(ForwardClientCert::SanitizeSet),
            "append_forward" => Some(ForwardClientCert::AppendForward),
            _ => None,
        }
    }

    pub fn from_wire(value: i32) -> Result<Self, String> {
        match pb::ForwardClientCert::try_from(value) {
            Ok(pb::ForwardClientCert::Sanitize) => Ok(ForwardClientCert::Sanitize),
            Ok(pb::ForwardClientCert::SanitizeSet) => Ok(ForwardClientCert::SanitizeSet),
            Ok(pb::ForwardClientCert::AppendForward) => Ok(ForwardClientCert::AppendForward),
            Err(_) => Err(format!("forward_client_cert: unknown mode {value}")),
        }
    }

    pub fn to_wire(self) -> i32 {
        match self {
            ForwardClientCert::Sanitize => pb::ForwardClientCert::Sanitize as i32,
            ForwardClientCert::SanitizeSet => pb::ForwardClientCert::SanitizeSet as i32,
            ForwardClientCert::AppendForward => pb::ForwardClientCert::AppendForward as i32,
        }
    }
}

/// Resource limits of every dataplane listener. The defaults follow Envoy's
/// (60 KiB of request headers) or its edge best practices (100 concurrent
/// streams), and bound what one client can hold: see `docs/security.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// From accept (TLS handshake included) to a complete first request
    /// head; and for each later HTTP/1.1 request head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections per outbound or inbound listener.
    pub max_connections: u32,
    /// Open connections per client IP on the outbound listener.
    pub max_connections_per_client_ip: u32,
    /// Request line and headers (HTTP/1.1) or header list (h2), in bytes.
    pub max_request_headers_bytes: u32,
    /// Concurrent h2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Open connections on the admin listener (probes and scrapes).
    pub admin_max_connections: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 4096,
            max_connections_per_client_ip: 1024,
            max_request_headers_bytes: 60 * 1024,
            max_concurrent_streams: 100,
            admin_max_connections: 64,
        }
    }
}

impl ListenerLimits {
    /// Smallest header limit: HTTP/1.1 parsing needs an 8 KiB read buffer.
    pub const MIN_REQUEST_HEADERS_BYTES: u32 = 8 * 1024;
    /// Largest header limit accepted (1 MiB).
    pub const MAX_REQUEST_HEADERS_BYTES: u32 = 1024 * 1024;
    /// Shortest timeout accepted; anything shorter would cut off handshakes.
    pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
    /// RFC 9113 §6.5.2: stream counts are 31-bit.
    pub const MAX_CONCURRENT_STREAMS: u32 = i32::MAX as u32;

    /// Every value out of range, each with the `mesh.yaml` field it is
    /// written as; empty when all are fine.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (field, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d < Self::MIN_TIMEOUT {
                out.push((field, format!("must be at least {:?}", Self::MIN_TIMEOUT)));
            }
        }
        for (field, v) in [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_client_ip",
                self.max_connections_per_client_ip,
            ),
            ("max_concurrent_streams", self.max_concurrent_streams),
            ("admin_max_connections", self.admin_max_connections),
        ] {
            if v == 0 {
                out.push((field, "must be at least 1".into()));
            }
        }
        if self.max_concurrent_streams > Self::MAX_CONCURRENT_STREAMS {
            out.push((
                "max_concurrent_streams",
                format!("must be at most {}", Self::MAX_CONCURRENT_STREAMS),
            ));
        }
        if !(Self::MIN_REQUEST_HEADERS_BYTES..=Self::MAX_REQUEST_HEADERS_BYTES)
            .contains(&self.max_request_headers_bytes)
        {
            out.push((
                "max_request_headers_kb",
                format!(
                    "must be between {} and {} KiB",
                    Self::MIN_REQUEST_HEADERS_BYTES / 1024,
                    Self::MAX_REQUEST_HEADERS_BYTES / 1024
                ),
            ));
        }
        out
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&ListenerLimits> for pb::ListenerLimits {
    fn from(l: &ListenerLimits) -> Self {
        pb::ListenerLimits {
            header_read_timeout_ms: millis(l.header_read_timeout),
            idle_timeout_ms: millis(l.idle_timeout),
            max_connections: l.max_connections,
            max_connections_per_client_ip: l.max_connections_per_client_ip,
            max_request_headers_bytes: l.max_request_headers_bytes,
            max_concurrent_streams: l.max_concurrent_streams,
            admin_max_connections: l.admin_max_connections,
        }
    }
}

impl TryFrom<Option<&pb::ListenerLimits>> for ListenerLimits {
    type Error = String;

    /// Zero (or an absent message) takes the default; the result must pass
    /// [`ListenerLimits::check`], or the error names the field.
    fn try_from(l: Option<&pb::ListenerLimits>) -> Result<Self, String> {
        let d = ListenerLimits::default();
        let Some(l) = l else { return Ok(d) };
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        let n = |v: u32, default: u32| if v == 0 { default } else { v };
        let limits = ListenerLimits {
            header_read_timeout: ms(l.header_read_timeout_ms, d.header_read_timeout),
            idle_timeout: ms(l.idle_timeout_ms, d.idle_timeout),
            max_connections: n(l.max_connections, d.max_connections),
            max_connections_per_client_ip: n(
                l.max_connections_per_client_ip,
                d.max_connections_per_client_ip,
            ),
            max_request_headers_bytes: n(l.max_request_headers_bytes, d.max_request_headers_bytes),
            max_concurrent_streams: n(l.max_concurrent_streams, d.max_concurrent_streams),
            admin_max_connections: n(l.admin_max_connections, d.admin_max_connections),
        };
        let problems: Vec<String> = limits
            .problems()
            .into_iter()
            .map(|(field, why)| format!("listeners.{field}: {why}"))
            .collect();
        if problems.is_empty() {
            Ok(limits)
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_limits_round_trip_and_zero_means_default() {
        let custom = ListenerLimits {
            header_read_timeout: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(2),
            max_connections: 10,
            max_connections_per_client_ip: 3,
            max_request_headers_bytes: 16 * 1024,
            max_concurrent_streams: 7,
            admin_max_connections: 2,
        };
        let wire = pb::ListenerLimits::from(&custom);
        assert_eq!(ListenerLimits::try_from(Some(&wire)), Ok(custom));
        assert_eq!(
            ListenerLimits::try_from(Some(&pb::ListenerLimits::default())),
            Ok(ListenerLimits::default())
        );
        assert_eq!(
            ListenerLimits::try_from(None),
            Ok(ListenerLimits::default())
        );
        assert_eq!(ListenerLimits::default().problems(), vec![]);
    }

    #[test]
    fn out_of_range_listener_limits_are_refused_by_field() {
        let bad = [
            (
                pb::ListenerLimits {
                    max_request_headers_bytes: 100,
                    ..Default::default()
                },
                "max_request_headers_kb",
            ),
            (
                pb::ListenerLimits {
                    header_read_timeout_ms: 5,
                    ..Default::default()
                },
                "header_read_timeout",
            ),
            (
                pb::ListenerLimits {
                    max_concurrent_streams: u32::MAX,
                    ..Default::default()
                },
                "max_concurrent_streams",
            ),
        ];
        for (wire, field) in bad {
            let err = ListenerLimits::try_from(Some(&wire)).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn enums_reject_unknown_wire_values() {
        let rules = pb::PathRules {
            escaped_slashes: 9,
            path_parameters: 0,
        };
        assert!(
            PathRules::try_from(Some(&rules))
                .unwrap_err()
                .contains("escaped_slashes")
        );
        assert!(ForwardClientCert::from_wire(42).is_err());
        for mode in [
            ForwardClientCert::Sanitize,
            ForwardClientCert::SanitizeSet,
            ForwardClientCert::AppendForward,
        ] {
            assert_eq!(ForwardClientCert::from_wire(mode.to_wire()), Ok(mode));
        }
        let keep = PathRules {
            escaped_slashes: PathAction::Keep,
            path_parameters: PathAction::Reject,
        };
        assert_eq!(
            PathRules::try_from(Some(&pb::PathRules::from(keep))),
            Ok(keep)
        );
    }
}
