//! One request's facts as the stages learn them, for its span and its
//! access-log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use meshward_telemetry::HopSpan;

use crate::policy::Direction;

/// What is known about one request so far.
#[derive(Debug)]
pub struct Record {
    pub started: Instant,
    pub timestamp: SystemTime,
    pub direction: Direction,
    pub request_id: String,
    pub remote: SocketAddr,
    pub method: String,
    pub protocol: &'static str,
    /// The path as it arrived.
    pub raw_path: String,
    /// The path policy and service saw, once canonicalized.
    pub path: Option<String>,
    pub caller: Option<String>,
    pub service: Option<String>,
    pub decision: Option<Verdict>,
    /// The refusal's kind (`forbidden`, `rate_limited`, ...), if refused.
    pub refusal: Option<&'static str>,
    pub refusal_reason: Option<String>,
    pub status: u16,
    /// Time to the upstream's response headers.
    pub upstream: Option<Duration>,
    /// Counted as the request body streams to the upstream.
    pub bytes_received: Arc<AtomicU64>,
    pub bytes_sent: u64,
    pub span: HopSpan,
}

/// What the policy decided, for logs and spans.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub allowed: bool,
    /// Set when a decision log is written: the id that joins the event,
    /// the access-log line and the response.
    pub decision_id: Option<String>,
    pub revision: String,
    pub eval: Duration,
}

impl Record {
    pub fn new(
        direction: Direction,
        request_id: &str,
        remote: SocketAddr,
        method: &str,
        protocol: &'static str,
        raw_path: &str,
        span: HopSpan,
    ) -> Self {
        Self {
            started: Instant::now(),
            timestamp: SystemTime::now(),
            direction,
            request_id: request_id.to_string(),
            remote,
            method: method.to_string(),
            protocol,
            raw_path: raw_path.to_string(),
            path: None,
            caller: None,
            service: None,
            decision: None,
            refusal: None,
            refusal_reason: None,
            status: 0,
            upstream: None,
            bytes_received: Arc::default(),
            bytes_sent: 0,
            span,
        }
    }

    /// Copies what the span should carry (semantic-convention HTTP
    /// attributes and Meshward's own) onto it, then ends it.
    pub fn finish_span(&mut self) {
        let span = &mut self.span;
        if !span.is_recording() {
            return;
        }
        span.set("http.request.method", self.method.clone());
        span.set(
            "url.path",
            self.path.clone().unwrap_or_else(|| self.raw_path.clone()),
        );
        span.set("http.response.status_code", i64::from(self.status));
        span.set("network.protocol.name", "http");
        span.set(
            "network.protocol.version",
            self.protocol.trim_start_matches("HTTP/"),
        );
        span.set("client.address", self.remote.ip().to_string());
        span.set("meshward.direction", self.direction.as_str());
        span.set("meshward.request_id", self.request_id.clone());
        if let Some(c) = &self.caller {
            span.set("meshward.caller", c.clone());
        }
        if let Some(s) = &self.service {
            span.set("meshward.service", s.clone());
        }
        if let Some(v) = &self.decision {
            span.set(
                "meshward.decision",
                if v.allowed { "allow" } else { "deny" },
            );
            span.set("meshward.policy_revision", v.revision.clone());
            if let Some(id) = &v.decision_id {
                span.set("meshward.decision_id", id.clone());
            }
        }
        if let Some(kind) = self.refusal {
            span.set("meshward.refusal", kind);
            if let Some(why) = &self.refusal_reason {
                span.set("meshward.refusal_reason", why.clone());
            }
        }
        if self.status >= 500 {
            span.set_error(format!("HTTP {}", self.status));
        }
        std::mem::take(span).end();
    }
}
