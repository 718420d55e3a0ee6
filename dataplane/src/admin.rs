//! The admin endpoint (`/ready`, `/metrics`, `/config_dump`), served on its own
//! port so probes and scrapes never compete with proxied traffic, within the
//! same listener limits as the proxy (its own, smaller connection cap).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::listener::{self, ConnectionOptions, Listener, ListenerKind};
use crate::proxy::body::{ProxyBody, full};

pub use meshward_contract::admin::AdminSource;

/// Serves the admin endpoint until `stop` is cancelled.
pub async fn serve(
    listener: Listener,
    source: Arc<dyn AdminSource>,
    metrics: Option<PrometheusHandle>,
    stop: CancellationToken,
) {
    while let Some(accepted) = listener.accept(&stop, || source.listener_limits()).await {
        let source = source.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        let owner = listener.owner().to_string();
        tokio::spawn(async move {
            let _slot = accepted.slot;
            let opts = ConnectionOptions {
                limits: source.listener_limits(),
                accepted_at: accepted.accepted_at,
                close_at: None,
                owner: &owner,
                kind: ListenerKind::Admin,
                remote: accepted.remote,
                stop: &stop,
            };
            let handler = move |req: Request<Incoming>| {
                let response = route(&req, source.as_ref(), metrics.as_ref());
                async move { response }
            };
            listener::serve(accepted.tcp, opts, handler).await;
        });
    }
}

fn route(
    req: &Request<Incoming>,
    source: &dyn AdminSource,
    metrics: Option<&PrometheusHandle>,
) -> Response<ProxyBody> {
    match req.uri().path() {
        "/ready" | "/readyz" => match source.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => match metrics {
            Some(h) => text(StatusCode::OK, h.render()),
            None => text(
                StatusCode::NOT_FOUND,
                "metrics recorder not installed\n".into(),
            ),
        },
        "/config_dump" => {
            let body = serde_json::to_vec_pretty(&source.config_dump()).unwrap_or_default();
            let mut r = Response::new(full(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "try /ready, /metrics or /config_dump\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
