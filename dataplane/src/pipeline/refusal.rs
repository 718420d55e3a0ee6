//! The one place where a refused request becomes a protocol-shaped response.
//!
//! HTTP callers get a status code and a small JSON body naming the reason;
//! gRPC callers get a trailers-only response with the matching gRPC status,
//! because a gRPC client never looks at an HTTP 403.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use meshward_spire::IdentityError;

use crate::breaker::BreakerOpen;
use crate::canonical::PathError;
use crate::policy::PolicyError;
use crate::proxy::body::{ProxyBody, full};
use crate::ratelimit::RateLimitError;
use crate::route::RouteError;

/// Why the dataplane answered instead of the upstream. Each stage refuses
/// with its own typed reason; the text is written here, at the edge.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no route: {0}")]
    NoRoute(#[from] RouteError),
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("{0}")]
    Forbidden(Denial),
    #[error("policy error: {0}")]
    PolicyError(#[from] PolicyError),
    #[error("rate limited: {caller} -> {service}: {error}")]
    RateLimited {
        caller: String,
        service: String,
        error: RateLimitError,
    },
    #[error("{0}")]
    CircuitOpen(#[from] BreakerOpen),
    #[error("upstream {service} unavailable: {reason}")]
    Unavailable {
        service: String,
        reason: Unavailable,
    },
    #[error("upstream {service} timed out: {expired}")]
    UpstreamTimeout {
        service: String,
        expired: crate::proxy::timed::Expired,
    },
    #[error("dataplane not ready: {0}")]
    NotReady(#[from] NotReady),
    #[error("bad request: {0}")]
    BadRequest(#[from] BadRequest),
    /// A refusal of MCP messages, answered the JSON-RPC way: HTTP 200 with
    /// `answer` (an error per request, same `id`), so MCP clients raise it.
    /// Kind, gRPC status and headers are the inner refusal's.
    #[error("{refusal}")]
    JsonRpc {
        refusal: Box<Refusal>,
        answer: String,
    },
}

/// A denial by policy, with what the policy chose to answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct Denial {
    pub reason: String,
    /// The policy's `http_status`, if it chose one (defaults to 403).
    pub status: Option<u16>,
    /// The policy's `body`, if it chose one.
    pub body: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Denial {
    /// A plain 403 with `reason`.
    pub fn plain(reason: impl Into<String>) -> Self {
        Denial {
            reason: reason.into(),
            status: None,
            body: None,
            headers: Vec::new(),
        }
    }
}

/// Why the dataplane cannot make decisions yet (or any more).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotReady {
    /// No usable SVID: none yet, or expired while the Workload API is away.
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("configuration not received from the control plane yet")]
    NoConfig,
    #[error("{spiffe_id} is not a registered service in the mesh config")]
    NotRegistered { spiffe_id: String },
    /// This outbound sidecar's workload has no entry in the agent registry
    /// it received, so the mesh cannot say who the agent is.
    #[error("{spiffe_id} is not a registered agent in the mesh config")]
    UnregisteredAgent { spiffe_id: String },
}

/// The client's own error: the request is malformed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadRequest {
    #[error("path {path:?}: {error}")]
    Path { path: String, error: PathError },
    #[error("more than one Host header")]
    MultipleHosts,
    #[error("malformed Host header")]
    MalformedHost,
    #[error("Host {host} does not match the request authority {authority}")]
    HostMismatch { host: String, authority: String },
    #[error("request body from the client is malformed or incomplete: {0}")]
    Body(String),
    #[error("cannot build the upstream URI: {0}")]
    Uri(String),
    /// The request cannot be described to the policy as opa-envoy-plugin
    /// would (a query or body it cannot parse).
    #[error("{0}")]
    Input(#[from] crate::policy::InputError),
    /// An MCP endpoint's body the mesh cannot parse strictly and completely
    /// (answered with the JSON-RPC error body, `id` null).
    #[error("MCP message: {0}")]
    Mcp(crate::mcp::McpError),
    /// A sidecar endpoint (`/.meshward/...`) asked with a method it does not
    /// answer (405, with `Allow`).
    #[error("{path} answers {allow}, not {method}")]
    MethodNotAllowed {
        method: String,
        path: &'static str,
        allow: &'static str,
    },
    /// A sidecar endpoint that takes no query was sent one.
    #[error("{path} takes no query")]
    QueryNotAllowed { path: &'static str },
}

/// Why a request could not be delivered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    #[error("it has no endpoints")]
    NoEndpoints,
    #[error("no local upstream configured")]
    NoLocalUpstream,
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("{endpoint}: {error}")]
    Connect { endpoint: String, error: String },
}

/// gRPC status codes used by the mesh (a subset of google.rpc.Code).
mod grpc_code {
    pub const INVALID_ARGUMENT: u16 = 3;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const NOT_FOUND: u16 = 5;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const UNAVAILABLE: u16 = 14;
}

impl Refusal {
    /// The refusal without its JSON-RPC answer (an ext_authz check answers
    /// over HTTP: Envoy sends a denial with the status it is given).
    pub fn into_plain(self) -> Refusal {
        match self {
            Refusal::JsonRpc { refusal, .. } => *refusal,
            other => other,
        }
    }

    /// The short machine-readable name of the outcome (JSON `error`, metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NoRoute(_) | Refusal::UnknownService(_) => "not_found",
            Refusal::Forbidden(_) | Refusal::PolicyError(_) => "forbidden",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::CircuitOpen(_) => "circuit_open",
            Refusal::Unavailable { .. } => "unavailable",
            Refusal::UpstreamTimeout { .. } => "upstream_timeout",
            Refusal::NotReady(_) => "not_ready",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::JsonRpc { refusal, .. } => refusal.kind(),
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            Refusal::NoRoute(_) | Refusal::UnknownService(_) => StatusCode::NOT_FOUND,
            Refusal::Forbidden(d) => d
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::FORBIDDEN),
            Refusal::PolicyError(_) => StatusCode::FORBIDDEN,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::CircuitOpen(_) | Refusal::Unavailable { .. } | Refusal::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::BadRequest(BadRequest::MethodNotAllowed { .. }) => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            Refusal::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::JsonRpc { .. } => StatusCode::OK,
        }
    }

    fn grpc_status(&self) -> u16 {
        match self {
            Refusal::NoRoute(_) | Refusal::UnknownService(_) => grpc_code::NOT_FOUND,
            Refusal::Forbidden(_) | Refusal::PolicyError(_) => grpc_code::PERMISSION_DENIED,
            Refusal::RateLimited { .. } => grpc_code::RESOURCE_EXHAUSTED,
            Refusal::CircuitOpen(_) | Refusal::Unavailable { .. } | Refusal::NotReady(_) => {
                grpc_code::UNAVAILABLE
            }
            Refusal::UpstreamTimeout { .. } => grpc_code::DEADLINE_EXCEEDED,
            Refusal::BadRequest(_) => grpc_code::INVALID_ARGUMENT,
            Refusal::JsonRpc { refusal, .. } => refusal.grpc_status(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { error, .. } => Some(match error {
                RateLimitError::RateExceeded { retry_after } => *retry_after,
                _ => Duration::from_secs(1),
            }),
            Refusal::CircuitOpen(open) => Some(open.retry_after),
            Refusal::JsonRpc { refusal, .. } => refusal.retry_after(),
            _ => None,
        }
    }

    /// What every rendering of the refusal carries: the status (HTTP and
    /// gRPC), the headers (`retry-after`, the policy's headers,
    /// `x-request-id`, `x-meshward-refusal`) and the HTTP body (the policy's
    /// `body`, or a small JSON object naming the reason). The sidecar
    /// answers with it directly; the ext_authz server puts it in a
    /// `DeniedHttpResponse`.
    pub fn render(&self, request_id: &str) -> Rendered {
        let mut headers = Vec::new();
        if let Some(retry) = self.retry_after() {
            // Whole seconds, rounded up: `retry-after: 0` would invite a hot loop.
            let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
            headers.push((header::RETRY_AFTER.to_string(), secs.max(1).to_string()));
        }
        let inner = match self {
            Refusal::JsonRpc { refusal, .. } => refusal,
            other => other,
        };
        if let Refusal::Forbidden(Denial {
            headers: policy, ..
        }) = inner
        {
            headers.extend(policy.iter().cloned());
        }
        if let Refusal::BadRequest(BadRequest::MethodNotAllowed { allow, .. }) = self {
            headers.push((header::ALLOW.to_string(), allow.to_string()));
        }
        headers.push(("x-request-id".into(), request_id.to_string()));
        headers.push((super::headers::REFUSAL.into(), self.kind().to_string()));
        let body = match self {
            Refusal::Forbidden(Denial {
                body: Some(body), ..
            }) => body.clone(),
            Refusal::JsonRpc { answer, .. } => answer.clone(),
            Refusal::BadRequest(BadRequest::Mcp(e)) => e.to_response(),
            _ => serde_json::json!({
                "error": self.kind(),
                "reason": self.to_string(),
                "request_id": request_id,
            })
            .to_string(),
        };
        Rendered {
            status: self.http_status(),
            grpc_status: self.grpc_status(),
            headers,
            body,
        }
    }

    /// Renders the refusal for an HTTP or a gRPC caller.
    pub fn into_response(self, grpc: bool, request_id: &str) -> Response<ProxyBody> {
        let rendered = self.render(request_id);
        let mut builder = Response::builder();
        for (k, v) in &rendered.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let response = if grpc {
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", rendered.grpc_status)
                .header("grpc-message", grpc_message(&self.to_string()))
                .body(full(Bytes::new()))
        } else {
            builder
                .status(rendered.status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(Bytes::from(rendered.body)))
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

/// A refusal as status, headers and body (see [`Refusal::render`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub status: StatusCode,
    /// The matching `google.rpc.Code`.
    pub grpc_status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
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
        let r = Refusal::Forbidden(Denial::plain(
            "customer-success agents may not reach billing-system",
        ))
        .into_response(false, "rid-1");
        assert_eq!(r.status(), 403);
        let v = body_json(r).await;
        assert_eq!(v["error"], "forbidden");
        assert_eq!(v["request_id"], "rid-1");
        assert!(v["reason"].as_str().unwrap().contains("billing-system"));
    }

    #[tokio::test]
    async fn upstream_timeout_is_504_with_the_refusal_header() {
        let r = Refusal::UpstreamTimeout {
            service: "s".into(),
            expired: crate::proxy::timed::Expired::Response(Duration::from_millis(250)),
        }
        .into_response(false, "rid-2");
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()["x-meshward-refusal"], "upstream_timeout");
        let v = body_json(r).await;
        assert_eq!(v["error"], "upstream_timeout");
        assert!(v["reason"].as_str().unwrap().contains("250ms"), "{v}");
    }

    #[test]
    fn rate_limited_rounds_retry_after_up() {
        let r = Refusal::RateLimited {
            caller: "a".into(),
            service: "s".into(),
            error: RateLimitError::RateExceeded {
                retry_after: Duration::from_millis(1200),
            },
        }
        .into_response(false, "r");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
    }

    #[test]
    fn grpc_refusals_are_trailers_only_with_status() {
        let cases = [
            (Refusal::UnknownService("x".into()), "5"),
            (Refusal::Forbidden(Denial::plain("no")), "7"),
            (
                Refusal::RateLimited {
                    caller: "a".into(),
                    service: "s".into(),
                    error: RateLimitError::TooManyConcurrent { limit: 1 },
                },
                "8",
            ),
            (
                Refusal::CircuitOpen(BreakerOpen {
                    retry_after: Duration::from_secs(1),
                    identity: "a".into(),
                    upstream: "s".into(),
                }),
                "14",
            ),
            (Refusal::NotReady(NotReady::NoConfig), "14"),
            (Refusal::BadRequest(BadRequest::MultipleHosts), "3"),
            (
                Refusal::UpstreamTimeout {
                    service: "s".into(),
                    expired: crate::proxy::timed::Expired::Response(Duration::from_secs(1)),
                },
                "4",
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
        let r = Refusal::Forbidden(Denial {
            reason: "r".into(),
            status: Some(401),
            body: Some("nope".into()),
            headers: vec![("x-why".into(), "policy".into())],
        })
        .into_response(false, "r");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-why"], "policy");
    }
}
