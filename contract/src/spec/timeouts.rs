//! How long the mesh waits for a service's upstream, per service and per
//! path prefix.
//!
//! The three limits follow Envoy's, so an operator who knows Envoy reads them
//! the same way:
//! - `response`: from sending the request to the upstream's response
//!   headers (Envoy's route `timeout` as most people use it);
//! - `idle`: the longest time without a body frame in either direction once
//!   the headers arrived (Envoy's stream `idle_timeout`), so an SSE or gRPC
//!   server stream runs for hours as long as it keeps sending;
//! - `total`: optional hard cap on the whole exchange, streaming included
//!   (Envoy's `max_stream_duration`).
//!
//! The control plane resolves what a route inherits from its service before
//! it sends anything, so the wire carries complete values and the dataplane
//! only picks the longest matching prefix. Both planes check values with
//! [`Timeouts::problems`] / [`ServiceTimeouts::check`].

use std::time::Duration;

use crate::pb::v1 as pb;
use crate::rules;

/// Upstream timeouts of one service or route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// Until the upstream's response headers arrive.
    pub response: Duration,
    /// Longest silence on the body streams once the headers arrived.
    pub idle: Duration,
    /// Cap on the whole exchange, streaming included; `None`: no cap.
    pub total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            response: Self::DEFAULT_RESPONSE,
            idle: Self::DEFAULT_IDLE,
            total: None,
        }
    }
}

impl Timeouts {
    pub const DEFAULT_RESPONSE: Duration = Duration::from_secs(30);
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(5 * 60);
    pub const MIN_RESPONSE: Duration = Duration::from_millis(1);
    pub const MAX_RESPONSE: Duration = Duration::from_secs(60 * 60);
    pub const MIN_IDLE: Duration = Duration::from_secs(1);
    pub const MAX_IDLE: Duration = Duration::from_secs(24 * 60 * 60);
    /// A week: long enough for any stream, short enough that a deadline
    /// computed from it never overflows a clock.
    pub const MAX_TOTAL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

    /// Every value out of range, each with its `mesh.yaml` key (`response`,
    /// `idle`, `total`); empty when all are fine. Values travel in whole
    /// milliseconds, so finer ones are refused rather than rounded.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let range = |d: Duration, min: Duration, max: Duration| {
            if d < min || d > max {
                Some(format!(
                    "must be between {} and {}, found {}",
                    show(min),
                    show(max),
                    show(d)
                ))
            } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
                Some(format!(
                    "must be a whole number of milliseconds, found {d:?}"
                ))
            } else {
                None
            }
        };
        if let Some(why) = range(self.response, Self::MIN_RESPONSE, Self::MAX_RESPONSE) {
            out.push(("response", why));
        }
        if let Some(why) = range(self.idle, Self::MIN_IDLE, Self::MAX_IDLE) {
            out.push(("idle", why));
        }
        if let Some(total) = self.total {
            if let Some(why) = range(total, Self::MIN_RESPONSE, Self::MAX_TOTAL) {
                out.push(("total", why));
            } else if total < self.response {
                out.push((
                    "total",
                    format!(
                        "must be at least response ({}), found {}",
                        show(self.response),
                        show(total)
                    ),
                ));
            }
        }
        out
    }

    /// [`Timeouts::problems`] as one message, each naming its field.
    pub fn check(&self) -> Result<(), String> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        Err(problems
            .iter()
            .map(|(field, why)| format!("{field} {why}"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// A duration as `mesh.yaml` would write it (`30s`, `5m`, `250ms`).
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{d:?}")
    } else if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Timeouts for requests whose canonical path starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTimeouts {
    /// A canonical path prefix ([`rules::path_prefix`]), matched as a plain
    /// string prefix like Envoy's route `prefix`: `/stream` also matches
    /// `/streams`; `/stream/` matches only below `/stream/`.
    pub prefix: String,
    /// Complete values: what the route did not set is its service's.
    pub timeouts: Timeouts,
}

/// A service's timeouts and its per-prefix overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceTimeouts {
    /// For paths no route matches.
    pub default: Timeouts,
    /// In the order written; the longest matching prefix wins.
    pub routes: Vec<RouteTimeouts>,
}

impl ServiceTimeouts {
    /// The timeouts for a request whose canonical path (a query, if any,
    /// is ignored) is `path`.
    pub fn for_path(&self, path: &str) -> &Timeouts {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.routes
            .iter()
            .filter(|r| path.starts_with(r.prefix.as_str()))
            .max_by_key(|r| r.prefix.len())
            .map_or(&self.default, |r| &r.timeouts)
    }

    /// Every problem, naming its field as `mesh.yaml` spells it
    /// (`timeouts.idle`, `routes[1].prefix`, `routes[1].timeouts.total`).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .default
            .problems()
            .into_iter()
            .map(|(f, why)| (format!("timeouts.{f}"), why))
            .collect();
        for (i, route) in self.routes.iter().enumerate() {
            if let Err(why) = rules::path_prefix(&route.prefix) {
                out.push((format!("routes[{i}].prefix"), why));
            }
            if let Some(first) = self.routes[..i]
                .iter()
                .position(|r| r.prefix == route.prefix)
            {
                out.push((
                    format!("routes[{i}].prefix"),
                    format!("duplicate prefix {:?} (routes[{first}])", route.prefix),
                ));
            }
            for (f, why) in route.timeouts.problems() {
                out.push((format!("routes[{i}].timeouts.{f}"), why));
            }
        }
        out
    }

    /// [`ServiceTimeouts::problems`] as one message (the NACK reason).
    pub fn check(&self) -> Result<(), String> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        Err(problems
            .iter()
            .map(|(field, why)| format!("{field} {why}"))
            .collect::<Vec<_>>()
            .join("; "))
    }

    /// The wire form: `ServiceMetadata.timeouts` and `.routes`. The
    /// defaults are sent as an absent message (zero means default).
    pub fn to_wire(&self) -> (Option<pb::Timeouts>, Vec<pb::RouteTimeouts>) {
        let timeouts = (self.default != Timeouts::default()).then(|| (&self.default).into());
        let routes = self
            .routes
            .iter()
            .map(|r| pb::RouteTimeouts {
                prefix: r.prefix.clone(),
                timeouts: Some((&r.timeouts).into()),
            })
            .collect();
        (timeouts, routes)
    }

    /// Decodes and checks the wire form; the error names the field.
    pub fn from_wire(
        timeouts: Option<&pb::Timeouts>,
        routes: &[pb::RouteTimeouts],
    ) -> Result<Self, String> {
        let decoded = ServiceTimeouts {
            default: timeouts.map(Timeouts::from).unwrap_or_default(),
            routes: routes
                .iter()
                .map(|r| RouteTimeouts {
                    prefix: r.prefix.clone(),
                    timeouts: r.timeouts.as_ref().map(Timeouts::from).unwrap_or_default(),
                })
                .collect(),
        };
        decoded.check()?;
        Ok(decoded)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&Timeouts> for pb::Timeouts {
    fn from(t: &Timeouts) -> Self {
        pb::Timeouts {
            response_ms: millis(t.response),
            idle_ms: millis(t.idle),
            total_ms: t.total.map_or(0, millis),
        }
    }
}

impl From<&pb::Timeouts> for Timeouts {
    /// Zero takes the default; the result is not checked yet.
    fn from(t: &pb::Timeouts) -> Self {
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        Timeouts {
            response: ms(t.response_ms, Timeouts::DEFAULT_RESPONSE),
            idle: ms(t.idle_ms, Timeouts::DEFAULT_IDLE),
            total: (t.total_ms != 0).then(|| Duration::from_millis(t.total_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn route(prefix: &str, idle: u64) -> RouteTimeouts {
        RouteTimeouts {
            prefix: prefix.into(),
            timeouts: Timeouts {
                idle: secs(idle),
                ..Timeouts::default()
            },
        }
    }

    #[test]
    fn defaults_are_envoy_like_and_valid() {
        let t = Timeouts::default();
        assert_eq!(t.response, secs(30));
        assert_eq!(t.idle, secs(300));
        assert_eq!(t.total, None);
        assert_eq!(t.check(), Ok(()));
        assert_eq!(ServiceTimeouts::default().check(), Ok(()));
    }

    #[test]
    fn each_bad_value_is_named() {
        let cases = [
            (
                Timeouts {
                    response: Duration::ZERO,
                    ..Default::default()
                },
                "response",
                "between 1ms and 1h",
            ),
            (
                Timeouts {
                    response: secs(2 * 3600),
                    ..Default::default()
                },
                "response",
                "found 2h",
            ),
            (
                Timeouts {
                    idle: Duration::from_millis(500),
                    ..Default::default()
                },
                "idle",
                "between 1s and 24h",
            ),
            (
                Timeouts {
                    idle: secs(25 * 3600),
                    ..Default::default()
                },
                "idle",
                "between 1s and 24h",
            ),
            (
                Timeouts {
                    total: Some(secs(10)),
                    ..Default::default()
                },
                "total",
                "at least response (30s)",
            ),
            (
                Timeouts {
                    total: Some(secs(8 * 24 * 3600)),
                    ..Default::default()
                },
                "total",
                "between",
            ),
            (
                Timeouts {
                    response: Duration::from_micros(1500),
                    ..Default::default()
                },
                "response",
                "whole number of milliseconds",
            ),
        ];
        for (t, field, why) in cases {
            let problems = t.problems();
            assert_eq!(problems.len(), 1, "{t:?}: {problems:?}");
            assert_eq!(problems[0].0, field);
            assert!(problems[0].1.contains(why), "{t:?}: {}", problems[0].1);
            let message = t.check().unwrap_err();
            assert!(message.starts_with(field), "{message}");
        }
    }

    #[test]
    fn routes_are_checked_by_index() {
        let t = ServiceTimeouts {
            default: Timeouts::default(),
            routes: vec![
                route("/stream", 60),
                route("stream", 60),
                route("/stream", 60),
                route("/ok", 0),
            ],
        };
        let problems = t.problems();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "routes[1].prefix",
                "routes[2].prefix",
                "routes[3].timeouts.idle"
            ]
        );
        assert!(
            problems[1]
                .1
                .contains("duplicate prefix \"/stream\" (routes[0])")
        );
    }

    #[test]
    fn the_longest_matching_prefix_wins() {
        let t = ServiceTimeouts {
            default: Timeouts::default(),
            routes: vec![route("/a", 10), route("/a/b/", 20), route("/a/b", 30)],
        };
        assert_eq!(t.for_path("/x").idle, secs(300));
        assert_eq!(t.for_path("/a").idle, secs(10));
        assert_eq!(t.for_path("/ab").idle, secs(10), "a plain string prefix");
        assert_eq!(t.for_path("/a/b").idle, secs(30));
        assert_eq!(t.for_path("/a/b/c?x=/q").idle, secs(20));
        assert_eq!(
            t.for_path("/x?/a/b").idle,
            secs(300),
            "the query is no path"
        );
    }

    #[test]
    fn wire_round_trip_and_checks() {
        let t = ServiceTimeouts {
            default: Timeouts {
                response: Duration::from_millis(250),
                idle: secs(60),
                total: Some(secs(3600)),
            },
            routes: vec![route("/stream", 600)],
        };
        let (timeouts, routes) = t.to_wire();
        assert_eq!(
            ServiceTimeouts::from_wire(timeouts.as_ref(), &routes),
            Ok(t)
        );
        let (none, no_routes) = ServiceTimeouts::default().to_wire();
        assert!(none.is_none() && no_routes.is_empty());
        assert_eq!(
            ServiceTimeouts::from_wire(None, &[]),
            Ok(ServiceTimeouts::default())
        );
        let bad = pb::Timeouts {
            response_ms: 5000,
            idle_ms: 1,
            total_ms: 1000,
        };
        let err = ServiceTimeouts::from_wire(Some(&bad), &[]).unwrap_err();
        assert!(err.contains("timeouts.idle"), "{err}");
        assert!(err.contains("timeouts.total"), "{err}");
        let bad_route = pb::RouteTimeouts {
            prefix: "/a/../b".into(),
            timeouts: None,
        };
        let err = ServiceTimeouts::from_wire(None, &[bad_route]).unwrap_err();
        assert!(err.contains("routes[0].prefix"), "{err}");
    }
}
