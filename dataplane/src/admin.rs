//! The admin endpoint (`/ready`, `/metrics`, `/config_dump`), served on its own
//! port so probes and scrapes never compete with proxied traffic.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::body::{ProxyBody, full};

/// What the admin endpoint reports; implemented by the dataplane and the
/// control plane so both share one admin server.
pub trait AdminSource: Send + Sync + 'static {
    /// `Ok(())` when ready to serve, else the reason it is not.
    fn readiness(&self) -> Result<(), String>;
    /// The current configuration as JSON.
    fn config_dump(&self) -> serde_json::Value;
}

/// Serves the admin endpoint until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    metrics: Option<PrometheusHandle>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    continue;
                }
            },
        };
        let source = source.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let source = source.clone();
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(route(&req, source.as_ref(), metrics.as_ref())) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
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
