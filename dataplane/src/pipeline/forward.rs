//! Stage 6, forward: send the request on and settle the breaker by the
//! answer.
//!
//! The outbound side sends to one of the service's inbound dataplanes over
//! mTLS h2, proving the agent's SVID and requiring the service's; the inbound
//! side sends to the app on loopback (h2 for gRPC, HTTP/1.1 otherwise). The
//! breaker hears a failure for a 5xx, a connect error, a timeout or a gRPC
//! "the server could not" status; the client's own broken body is neither a
//! success nor a failure ([`BreakerGuard::abandon`]) but a 400.
//!
//! The service's timeouts for the request's path apply here
//! ([`crate::proxy::timed`]): no response headers in time is a refusal
//! (`upstream_timeout`, 504 / DEADLINE_EXCEEDED) and a breaker failure; a
//! stream that goes silent or runs past its total is aborted mid-body, and
//! does not change the breaker (its headers already counted as a success).

use http::{HeaderMap, Request, Response, Uri, Version, header};
use http_body_util::BodyExt;

use super::admit::Admitted;
use super::headers;
use super::refusal::{BadRequest, Refusal, Unavailable};
use crate::breaker::BreakerGuard;
use crate::metrics::labels as metric_labels;
use crate::policy::Direction;
use crate::proxy::Shared;
use crate::proxy::body::{self, BodyErrors, ProxyBody, boxed};
use crate::proxy::guard::GuardedBody;
use crate::proxy::timed::{self, TimedBody};
use crate::state::Upstream;
use metrics::SharedString;

/// A request ready to leave: its head (the path already canonical and its
/// headers sanitized and authorized) and body.
pub struct Outgoing {
    pub parts: http::request::Parts,
    pub path_and_query: String,
    pub body: ProxyBody,
    pub grpc: bool,
}

/// Sends `out` to `upstream` and settles the admission by the answer. The
/// response body holds the concurrency slot until it is done.
pub async fn forward(
    shared: &Shared,
    direction: Direction,
    upstream: &Upstream,
    out: Outgoing,
    admitted: Admitted,
    request_id: &str,
) -> Result<Response<ProxyBody>, Refusal> {
    let service = &upstream.service.name;
    let timeouts = *upstream.service.timeouts.for_path(&out.path_and_query);
    let grpc = out.grpc;
    let (body, client_body) = body::watch_errors(out.body);
    let (body, activity) = timed::watch_request(body);
    let out = Outgoing { body, ..out };
    let count = TimeoutCount::new(shared, service);
    let Admitted { permit, breaker } = admitted;
    let sent =
        match timed::await_headers(send(shared, direction, upstream, out), &activity, &timeouts)
            .await
        {
            Ok(sent) => sent,
            Err(expired) => {
                count.record(expired, request_id);
                let client_silent = timed::client_was_silent(&activity);
                return Err(settle_expired(expired, client_silent, breaker, service));
            }
        };
    let mut resp = settle(sent, breaker, &client_body, service)?;
    headers::strip_hop_by_hop(resp.headers_mut());
    let inbound = direction == Direction::Inbound;
    if inbound {
        // Only the mesh speaks `x-meshward-*`: an app must not be able to
        // fake a mesh refusal to its callers, in headers or (gRPC) trailers.
        headers::strip_mesh_asserted(resp.headers_mut());
    }
    let (parts, body) = resp.into_parts();
    let body = if inbound {
        strip_mesh_asserted_trailers(body)
    } else {
        body
    };
    let request_id = request_id.to_string();
    let body = TimedBody::wrap(body, activity, &timeouts, grpc, move |expired| {
        count.record(expired, &request_id);
    });
    Ok(Response::from_parts(parts, GuardedBody::wrap(body, permit)))
}

/// Removes mesh-asserted names from the trailers of an app's response: a
/// gRPC client reads `x-meshward-refusal` from trailing metadata.
fn strip_mesh_asserted_trailers(body: ProxyBody) -> ProxyBody {
    body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            headers::strip_mesh_asserted(&mut trailers);
            http_body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    })
    .boxed()
}

/// `meshward_upstream_timeouts_total` for one exchange, and its log line.
struct TimeoutCount {
    dataplane: String,
    service: SharedString,
}

impl TimeoutCount {
    fn new(shared: &Shared, service: &str) -> Self {
        Self {
            dataplane: shared.name.clone(),
            service: metric_labels::service_label(shared.current_state().as_deref(), service),
        }
    }

    fn record(&self, expired: timed::Expired, request_id: &str) {
        tracing::info!(dataplane = %self.dataplane, service = %self.service, request_id,
            kind = expired.kind(), "upstream timeout: {expired}");
        metrics::counter!(
            crate::metrics::UPSTREAM_TIMEOUTS,
            "dataplane" => self.dataplane.clone(),
            "service" => self.service.clone(),
            "kind" => expired.kind(),
        )
        .increment(1);
    }
}

/// Reports the outcome to the breaker and turns a failed send into the
/// refusal it deserves: the client's own error (400) when its body broke.
fn settle(
    sent: Result<Response<ProxyBody>, Unavailable>,
    breaker: BreakerGuard,
    client_body: &BodyErrors,
    service: &str,
) -> Result<Response<ProxyBody>, Refusal> {
    match sent {
        Ok(resp) => {
            if is_failure(resp.status(), resp.headers()) {
                breaker.failure();
            } else {
                breaker.success();
            }
            Ok(resp)
        }
        Err(_) if client_body.failed() => {
            breaker.abandon();
            Err(Refusal::BadRequest(BadRequest::Body(
                client_body.error().unwrap_or_default(),
            )))
        }
        Err(reason) => {
            breaker.failure();
            Err(Refusal::Unavailable {
                service: service.to_string(),
                reason,
            })
        }
    }
}

/// Reports a timeout before the response headers to the breaker: a failure
/// (the upstream did not answer: a gateway error, as Envoy's outlier
/// detection counts a 504), unless it was `idle` while the client had
/// stopped sending its body, the client's silence and not the upstream's.
fn settle_expired(
    expired: timed::Expired,
    client_silent: bool,
    breaker: BreakerGuard,
    service: &str,
) -> Refusal {
    if matches!(expired, timed::Expired::Idle(_)) && client_silent {
        breaker.abandon();
    } else {
        breaker.failure();
    }
    Refusal::UpstreamTimeout {
        service: service.to_string(),
        expired,
    }
}

/// Upstream failures count against the breaker: 5xx, and for gRPC the
/// trailers-only statuses that mean "the server could not do it"
/// (DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE). Refusals by the remote side's
/// policy or limits (403, 429, their gRPC codes) are not failures.
pub fn is_failure(status: http::StatusCode, headers: &HeaderMap) -> bool {
    status.is_server_error()
        || headers
            .get("grpc-status")
            .is_some_and(|v| matches!(v.as_bytes(), b"4" | b"13" | b"14"))
}

async fn send(
    shared: &Shared,
    direction: Direction,
    upstream: &Upstream,
    out: Outgoing,
) -> Result<Response<ProxyBody>, Unavailable> {
    let Outgoing {
        mut parts,
        path_and_query,
        body,
        grpc,
    } = out;
    let path_and_query = path_and_query.as_str();
    let resp = match direction {
        Direction::Inbound => {
            let local = shared.local_upstream.ok_or(Unavailable::NoLocalUpstream)?;
            parts.uri = uri("http", &local.to_string(), path_and_query)?;
            parts.version = if grpc {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            if grpc {
                parts.headers.remove(header::HOST);
            } else if let Ok(v) = http::HeaderValue::from_str(&upstream.service.name) {
                parts.headers.insert(header::HOST, v);
            }
            shared
                .local_client
                .get(grpc)
                .request(Request::from_parts(parts, body))
                .await
                .map_err(|e| Unavailable::Connect {
                    endpoint: local.to_string(),
                    error: e.to_string(),
                })?
        }
        Direction::Outbound => {
            let endpoint = shared
                .pick_endpoint(upstream)
                .ok_or(Unavailable::NoEndpoints)?;
            let client = shared.mesh_client.for_peer(&upstream.service.spiffe_id)?;
            parts.uri = uri("https", &endpoint.to_string(), path_and_query)?;
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
            client
                .request(Request::from_parts(parts, body))
                .await
                .map_err(|e| Unavailable::Connect {
                    endpoint: endpoint.to_string(),
                    error: meshward_spire::identity::error_chain(&e),
                })?
        }
    };
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, boxed(body)))
}

/// The request URI for the next hop. The path was canonicalized already and
/// the authority is an endpoint the contract checked, so this only fails on
/// a bug; it is still an answer, not a panic.
fn uri(scheme: &str, authority: &str, path_and_query: &str) -> Result<Uri, Unavailable> {
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Unavailable::Connect {
            endpoint: authority.to_string(),
            error: format!("cannot build the request URI: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{BreakerSettings, BreakerState, Breakers};
    use crate::proxy::body::full;

    fn response(status: u16, grpc_status: Option<&str>) -> Response<ProxyBody> {
        let mut r = Response::new(full(""));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        if let Some(g) = grpc_status {
            r.headers_mut().insert("grpc-status", g.parse().unwrap());
        }
        r
    }

    #[test]
    fn breaker_failures_are_5xx_and_server_side_grpc_codes() {
        for (status, grpc, failure) in [
            (200, None, false),
            (404, None, false),
            (403, None, false),
            (429, None, false),
            (500, None, true),
            (503, None, true),
            (200, Some("0"), false),
            (200, Some("7"), false),
            (200, Some("8"), false),
            (200, Some("4"), true),
            (200, Some("13"), true),
            (200, Some("14"), true),
        ] {
            let r = response(status, grpc);
            assert_eq!(
                is_failure(r.status(), r.headers()),
                failure,
                "{status} {grpc:?}"
            );
        }
    }

    /// Five settled sends with one outcome each, then the breaker's state.
    fn settle_five(
        sent: impl Fn() -> Result<Response<ProxyBody>, Unavailable>,
        broken_body: bool,
    ) -> BreakerState {
        let breakers = Breakers::new();
        let settings = BreakerSettings::default();
        for _ in 0..5 {
            let guard = breakers.acquire("a", "s", &settings).unwrap();
            let errors = BodyErrors::default();
            if broken_body {
                let (b, e) = body::watch_errors(boxed(ErrBody));
                let _ = futures::executor::block_on(http_body_util::BodyExt::collect(b));
                let _ = settle(sent(), guard, &e, "s");
            } else {
                let _ = settle(sent(), guard, &errors, "s");
            }
        }
        breakers.state("a", "s")
    }

    /// A body that fails at once, like a malformed chunked request.
    struct ErrBody;

    impl http_body::Body for ErrBody {
        type Data = bytes::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>>
        {
            std::task::Poll::Ready(Some(Err(std::io::Error::other("bad chunk"))))
        }
    }

    #[test]
    fn timeouts_before_the_headers_fail_the_breaker_unless_the_client_went_silent() {
        use crate::proxy::timed::Expired;
        let five = |expired: Expired, client_silent: bool| {
            let breakers = Breakers::new();
            let settings = BreakerSettings::default();
            for _ in 0..5 {
                let guard = breakers.acquire("a", "s", &settings).unwrap();
                let refusal = settle_expired(expired, client_silent, guard, "s");
                assert_eq!(refusal.kind(), "upstream_timeout");
            }
            breakers.state("a", "s")
        };
        let d = std::time::Duration::from_secs(1);
        assert_eq!(five(Expired::Response(d), false), BreakerState::Open);
        assert_eq!(five(Expired::Total(d), false), BreakerState::Open);
        assert_eq!(five(Expired::Idle(d), false), BreakerState::Open);
        assert_eq!(five(Expired::Idle(d), true), BreakerState::Closed);
        // A response timeout is the upstream's even while the client idles.
        assert_eq!(five(Expired::Response(d), true), BreakerState::Open);
    }

    #[test]
    fn settle_counts_upstream_failures_but_not_the_clients_broken_body() {
        let connect_error = || {
            Err(Unavailable::Connect {
                endpoint: "e".into(),
                error: "refused".into(),
            })
        };
        assert_eq!(settle_five(connect_error, false), BreakerState::Open);
        assert_eq!(
            settle_five(|| Ok(response(503, None)), false),
            BreakerState::Open
        );
        assert_eq!(
            settle_five(|| Ok(response(200, None)), false),
            BreakerState::Closed
        );
        assert_eq!(settle_five(connect_error, true), BreakerState::Closed);

        let breakers = Breakers::new();
        let guard = breakers
            .acquire("a", "s", &BreakerSettings::default())
            .unwrap();
        let (b, e) = body::watch_errors(boxed(ErrBody));
        let _ = futures::executor::block_on(http_body_util::BodyExt::collect(b));
        match settle(connect_error(), guard, &e, "s") {
            Err(Refusal::BadRequest(BadRequest::Body(why))) => assert!(why.contains("bad chunk")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_apps_trailers_cannot_pose_as_the_mesh() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "7".parse().unwrap());
        trailers.insert("x-meshward-refusal", "forbidden".parse().unwrap());
        trailers.insert("x_meshward_refusal", "forbidden".parse().unwrap());
        let app = http_body_util::StreamBody::new(futures::stream::iter([
            Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from("m"))),
            Ok(http_body::Frame::trailers(trailers)),
        ]));
        let collected =
            futures::executor::block_on(strip_mesh_asserted_trailers(boxed(app)).collect())
                .unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "7");
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(collected.to_bytes(), "m");
    }
}
