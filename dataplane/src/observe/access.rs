//! The access log: one JSON line per request, written when its response
//! has been sent in full.

use serde_json::{Value, json};

use super::decision::rfc3339;
use super::record::Record;
use super::sink::LineSink;

/// An access-log writer.
#[derive(Debug, Clone)]
pub struct AccessLog {
    sink: LineSink,
    dataplane: String,
}

impl AccessLog {
    pub fn new(sink: LineSink, dataplane: &str) -> Self {
        Self {
            sink,
            dataplane: dataplane.to_string(),
        }
    }

    pub fn log(&self, record: &Record, trace_id: Option<&str>) {
        self.sink.write_json(&self.line(record, trace_id));
    }

    fn line(&self, r: &Record, trace_id: Option<&str>) -> Value {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let decision = r.decision.as_ref();
        json!({
            "timestamp": rfc3339(r.timestamp),
            "dataplane": self.dataplane,
            "direction": r.direction.as_str(),
            "request_id": r.request_id,
            "trace_id": trace_id,
            "caller": r.caller,
            "service": r.service,
            "method": r.method,
            "path": r.path,
            "raw_path": r.raw_path,
            "protocol": r.protocol,
            "status": r.status,
            "refusal": r.refusal,
            "reason": r.refusal_reason,
            "decision": decision.map(|d| if d.allowed { "allow" } else { "deny" }),
            "decision_id": decision.and_then(|d| d.decision_id.as_deref()),
            "policy_revision": decision.map(|d| d.revision.as_str()),
            "duration_ms": ms(r.started.elapsed()),
            "policy_ms": decision.map(|d| ms(d.eval)),
            "upstream_ms": r.upstream.map(ms),
            "bytes_received": r.bytes_received.load(std::sync::atomic::Ordering::Relaxed),
            "bytes_sent": r.bytes_sent,
            "remote": r.remote.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::record::Verdict;
    use crate::observe::sink::LogTarget;
    use crate::policy::Direction;
    use meshward_telemetry::HopSpan;

    #[test]
    fn a_refusal_line_answers_who_what_why_and_which_revision() {
        let log = AccessLog::new(
            LineSink::open("access", &LogTarget::Stderr).unwrap(),
            "hello-skill",
        );
        let mut r = Record::new(
            Direction::Inbound,
            "rid-1",
            "127.0.0.1:4000".parse().unwrap(),
            "DELETE",
            "HTTP/2",
            "/a/../admin",
            HopSpan::none(),
        );
        r.path = Some("/admin".into());
        r.caller = Some("spiffe://mesh.local/agent/triage".into());
        r.service = Some("hello-skill".into());
        r.decision = Some(Verdict {
            allowed: false,
            decision_id: Some("d-1".into()),
            revision: "rev-3".into(),
            eval: std::time::Duration::from_micros(30),
        });
        r.refusal = Some("forbidden");
        r.refusal_reason = Some("admin paths are closed".into());
        r.status = 403;
        let line = log.line(&r, Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(line["caller"], "spiffe://mesh.local/agent/triage");
        assert_eq!(line["service"], "hello-skill");
        assert_eq!(line["path"], "/admin");
        assert_eq!(line["raw_path"], "/a/../admin");
        assert_eq!(line["refusal"], "forbidden");
        assert_eq!(line["reason"], "admin paths are closed");
        assert_eq!(line["decision_id"], "d-1");
        assert_eq!(line["policy_revision"], "rev-3");
        assert_eq!(line["status"], 403);
        assert_eq!(line["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert!(line["policy_ms"].as_f64().unwrap() > 0.0);
    }
}
