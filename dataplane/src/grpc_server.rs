//! Where the dataplane's gRPC services (ext_authz, rate limit) listen:
//! TCP in plain text (loopback, or a pod's own network), TCP with mTLS (the
//! caller's SVID required, as Envoy's `envoy_grpc` cluster presents with an
//! SDS-backed `UpstreamTlsContext`), or a Unix socket.
//!
//! Every listener also answers `grpc.health.v1.Health`: the overall status
//! (`""`) and each service's are SERVING while the dataplane is ready and
//! NOT_SERVING otherwise, so Envoy's and Kubernetes' gRPC health checks
//! follow `/ready`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshward_spire::WorkloadIdentity;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Where a gRPC service listens.
#[derive(Debug)]
pub enum GrpcListener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

impl GrpcListener {
    /// For logs and [`crate::DataplaneAddrs`].
    pub fn describe(&self) -> String {
        match self {
            GrpcListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp:?".into(), |a| a.to_string()),
            GrpcListener::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }
}

/// Transport security of a TCP gRPC listener (a Unix socket is protected
/// by its file mode and is always plain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GrpcTls {
    #[default]
    Plain,
    /// Present this workload's SVID and require a client SVID from a trust
    /// domain the dataplane holds a bundle for.
    Mutual,
}

/// A listener and its transport security.
#[derive(Debug)]
pub struct GrpcEndpoint {
    pub listener: GrpcListener,
    pub tls: GrpcTls,
}

/// Serves `routes` plus the health service (reporting `services`) on
/// `endpoint` until `stop`. With [`GrpcTls::Mutual`], accepting starts once
/// the first SVID is there.
pub async fn serve(
    name: String,
    routes: Routes,
    services: &'static [&'static str],
    endpoint: GrpcEndpoint,
    identity: WorkloadIdentity,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    stop: CancellationToken,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let routes = routes.add_service(health);
    tokio::spawn(report_health(reporter, services, ready, stop.clone()));
    let server = tonic::transport::Server::builder().add_routes(routes);
    let shutdown = stop.clone().cancelled_owned();
    let described = endpoint.listener.describe();
    let result = match (endpoint.listener, endpoint.tls) {
        (GrpcListener::Tcp(l), GrpcTls::Plain) => {
            server
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), shutdown)
                .await
        }
        (GrpcListener::Tcp(l), GrpcTls::Mutual) => {
            let source = tokio::select! {
                r = identity.ready() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(dataplane = %name, listener = %described, "identity: {e}");
                        return;
                    }
                },
                () = stop.cancelled() => return,
            };
            let config = loop {
                match meshward_spire::tls::server_config(&source, &[b"h2"]) {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(dataplane = %name, listener = %described, "mTLS config: {e}; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                }
            };
            let incoming = meshward_spire::grpc::incoming(l, config);
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        (GrpcListener::Unix { listener, .. }, _) => {
            server
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(dataplane = %name, listener = %described, "gRPC server ended: {e}");
    }
}

/// Keeps the health status in step with readiness (checked every 500 ms).
async fn report_health(
    reporter: HealthReporter,
    services: &'static [&'static str],
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    stop: CancellationToken,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let status = if ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            for service in std::iter::once(&"").chain(services) {
                reporter.set_service_status(*service, status).await;
            }
            last = Some(status);
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
    }
}
