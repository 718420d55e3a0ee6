//! Resource limits of every dataplane listener, carried in the mesh-wide
//! [`pb::DataplaneSettings`] resource.
//!
//! On the wire a zero means "the default", which `mesh.yaml` cannot express
//! any other way (its values must be at least 1), so a control plane that
//! does not send a field leaves the dataplane's default in force.

use std::time::Duration;

use crate::pb::v1 as pb;
use crate::type_url::DATAPLANE_SETTINGS_NAME;

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

impl ListenerLimits {
    /// The `DataplaneSettings` resource carrying these limits.
    pub fn to_settings(&self) -> pb::DataplaneSettings {
        pb::DataplaneSettings {
            name: DATAPLANE_SETTINGS_NAME.to_string(),
            listeners: Some(self.into()),
        }
    }

    /// The limits in a `DataplaneSettings` resource named `name`.
    pub fn from_settings(name: &str, settings: &pb::DataplaneSettings) -> Result<Self, String> {
        if settings.name != name {
            return Err(format!(
                "resource name {name:?} but settings name {:?}",
                settings.name
            ));
        }
        ListenerLimits::try_from(settings.listeners.as_ref())
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
}
