//! The one place where a refused request becomes a protocol-shaped response.
//!
//! HTTP callers get a status code and a small JSON body naming the reason;
//! gRPC callers get a trailers-only response with the matching gRPC status,
//! because a gRPC client never looks at an HTTP 403.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::{ProxyBody, full};

/// Why the dataplane answered instead of the upstream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("{reason}")]
    Forbidden {
        reason: String,
        /// The policy's `http_status`, if it chose one (defaults to 403).
        status: Option<u16>,
        /// The policy's `body`, if it chose one.
        body: Option<String>,
        headers: Vec<(String, String)>,
    },
    #[error("rate limited: {reason}")]
    RateLimited {
        reason: String,
        retry_after: Duration,
    },
    #[error("{reason}")]
    CircuitOpen {
        reason: String,
        retry_after: Duration,
    },
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("dataplane not ready: {0}")]
    NotReady(String),
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// gRPC status codes used by the mesh (a subset of google.rpc.Code).
mod grpc_code {
    pub const INVALID_ARGUMENT: u16 = 3;
    pub const NOT_FOUND: u16 = 5;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const UNAVAILABLE: u16 = 14;
}

impl Refusal {
    /// The short machine-readable name of the outcome (JSON `error`, metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NoRoute(_) | Refusal::UnknownService(_) => "not_found",
            Refusal::Forbidden { .. } => "forbidden",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::CircuitOpen { .. } => "circuit_open",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::NotReady(_) => "not_ready",
            Refusal::BadRequest(_) => "bad_request",
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            Refusal::NoRoute(_) | Refusal::UnknownService(_) => StatusCode::NOT_FOUND,
            Refusal::Forbidden { status, .. } => status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::FORBIDDEN),
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::CircuitOpen { .. } | Refusal::Unavailable(_) | Refusal::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn grpc_status(&self) -> u16 {
        match self {
            Refusal::NoRoute(_) | Refusal::UnknownService(_) => grpc_code::NOT_FOUND,
            Refusal::Forbidden { .. } => grpc_code::PERMISSION_DENIED,
            Refusal::RateLimited { .. } => grpc_code::RESOURCE_EXHAUSTED,
            Refusal::CircuitOpen { .. } | Refusal::Unavailable(_) | Refusal::NotReady(_) => {
                grpc_code::UNAVAILABLE
            }
            Refusal::BadRequest(_) => grpc_code::INVALID_ARGUMENT,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after, .. } | Refusal::CircuitOpen { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// Renders the refusal for an HTTP or a gRPC caller.
    pub fn into_response(self, grpc: bool, request_id: &str) -> Response<ProxyBody> {
        let mut builder = Response::builder();
        if let Some(retry) = self.retry_after() {
            // Whole seconds, rounded up: `retry-after: 0` would invite a hot loop.
            let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
            builder = builder.header(header::RETRY_AFTER, secs.max(1));
        }
        if let Refusal::Forbidden { headers, .. } = &self {
            for (k, v) in headers {
                builder = builder.header(k.as_str(), v.as_str());
            }
        }
        builder = builder
            .header("x-request-id", request_id)
            .header("x-meshward-refusal", self.kind());
        let response = if grpc {
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", self.grpc_status())
                .header("grpc-message", grpc_message(&self.to_string()))
                .body(full(Bytes::new()))
        } else {
            let body = match &self {
                Refusal::Forbidden {
                    body: Some(body), ..
                } => body.clone(),
                _ => serde_json::json!({
                    "error": self.kind(),
                    "reason": self.to_string(),
                    "request_id": request_id,
                })
                .to_string(),
            };
            builder
                .status(self.http_status())
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(Bytes::from(body)))
        };
        // Only a header value from the policy can be invalid; fall back to a
        // bare refusal rather than letting a policy typo turn into an allow.
        response.unwrap_or_else(|_| {
            let mut r = Response::new(full(Bytes::from_static(b"{\"error\":\"forbidden\"}")));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        })
    }
}

/// Percent-encodes a grpc-message value as the gRPC HTTP/2 spec requires.
fn grpc_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(r: Response<ProxyBody>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn http_forbidden_is_403_with_reason() {
        let r = Refusal::Forbidden {
            reason: "customer-success agents may not reach billing-system".into(),
            status: None,
            body: None,
            headers: vec![],
        }
        .into_response(false, "rid-1");
        assert_eq!(r.status(), 403);
        let v = body_json(r).await;
        assert_eq!(v["error"], "forbidden");
        assert_eq!(v["request_id"], "rid-1");
        assert!(v["reason"].as_str().unwrap().contains("billing-system"));
    }

    #[test]
    fn rate_limited_rounds_retry_after_up() {
        let r = Refusal::RateLimited {
            reason: "x".into(),
            retry_after: Duration::from_millis(1200),
        }
        .into_response(false, "r");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
    }

    #[test]
    fn grpc_refusals_are_trailers_only_with_status() {
        let cases = [
            (Refusal::UnknownService("x".into()), "5"),
            (
                Refusal::Forbidden {
                    reason: "no".into(),
                    status: None,
                    body: None,
                    headers: vec![],
                },
                "7",
            ),
            (
                Refusal::RateLimited {
                    reason: "x".into(),
                    retry_after: Duration::from_secs(1),
                },
                "8",
            ),
            (
                Refusal::CircuitOpen {
                    reason: "x".into(),
                    retry_after: Duration::from_secs(1),
                },
                "14",
            ),
        ];
        for (refusal, code) in cases {
            let r = refusal.into_response(true, "r");
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], "application/grpc");
            assert_eq!(r.headers()["grpc-status"], code);
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("a b%\nc"), "a b%25%0Ac");
    }

    #[test]
    fn policy_status_and_body_are_honoured() {
        let r = Refusal::Forbidden {
            reason: "r".into(),
            status: Some(401),
            body: Some("nope".into()),
            headers: vec![("x-why".into(), "policy".into())],
        }
        .into_response(false, "r");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-why"], "policy");
    }
}
