//! The HTTP proxy: listeners, the per-request pipeline and upstream clients.
//!
//! - outbound (agent-facing, plain HTTP/1.1 and h2c on loopback): the caller
//!   is this sidecar's own workload;
//! - inbound (mTLS, HTTP/1.1 and h2 by ALPN): the caller is whoever the peer
//!   certificate proves.

pub mod body;
pub mod guard;
pub mod headers;
pub mod pipeline;
pub mod refusal;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::sync::{Arc, OnceLock};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshward_spire::WorkloadIdentity;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breakers;
use crate::policy::Direction;
use crate::ratelimit::RateLimiter;
use crate::state::{Endpoint, MeshState, Upstream};
use pipeline::Arrival;

/// State shared by every request of one dataplane.
pub struct Shared {
    /// Name used in logs and metric labels (e.g. the agent's name).
    pub name: String,
    /// This workload's identity: checked on every request and before every
    /// inbound handshake, so a missing or expired SVID fails closed.
    pub identity: WorkloadIdentity,
    /// The inbound mTLS config, set once the first SVID has arrived (a TLS
    /// config cannot be built without one).
    pub inbound_tls: OnceLock<Arc<rustls::ServerConfig>>,
    pub state: watch::Receiver<Option<Arc<MeshState>>>,
    pub limiter: RateLimiter,
    pub breakers: Breakers,
    pub mesh_client: upstream::MeshClient,
    pub local_client: upstream::LocalClient,
    /// The app behind an inbound dataplane.
    pub local_upstream: Option<SocketAddr>,
    pub request_timeout: Duration,
    next_endpoint: AtomicUsize,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        identity: WorkloadIdentity,
        state: watch::Receiver<Option<Arc<MeshState>>>,
        mesh_client: upstream::MeshClient,
        local_upstream: Option<SocketAddr>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            name,
            identity,
            inbound_tls: OnceLock::new(),
            state,
            limiter: RateLimiter::new(),
            breakers: Breakers::new(),
            mesh_client,
            local_client: upstream::LocalClient::default(),
            local_upstream,
            request_timeout,
            next_endpoint: AtomicUsize::new(0),
        }
    }

    pub fn current_state(&self) -> Option<Arc<MeshState>> {
        self.state.borrow().clone()
    }

    /// This workload's SPIFFE ID if it holds a usable SVID, else why not
    /// (waiting for the Workload API, or expired without a replacement).
    pub fn own_spiffe_id(&self) -> Result<String, meshward_spire::IdentityError> {
        self.identity.check().map(|svid| svid.spiffe_id)
    }

    /// Why an inbound connection must not even be handshaken: no usable SVID,
    /// no TLS config yet, or no configuration (no policy means no decisions).
    fn refuse_inbound(&self) -> Option<String> {
        if let Err(e) = self.own_spiffe_id() {
            return Some(e.to_string());
        }
        if self.inbound_tls.get().is_none() {
            return Some("inbound TLS not configured yet".into());
        }
        if self.state.borrow().is_none() {
            return Some("configuration not received from the control plane yet".into());
        }
        None
    }

    /// Round-robin over the upstream's endpoints.
    pub fn pick_endpoint(&self, upstream: &Upstream) -> Option<Endpoint> {
        if upstream.endpoints.is_empty() {
            return None;
        }
        let i = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
        upstream
            .endpoints
            .get(i % upstream.endpoints.len())
            .cloned()
    }
}

/// The next connection, or `None` once `stop` is cancelled. Accept errors
/// (out of file descriptors and the like) are logged and retried after a
/// short pause instead of spinning.
async fn accept(
    listener: &TcpListener,
    name: &str,
    stop: &CancellationToken,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::warn!(dataplane = %name, "accept on {addr} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves plain HTTP/1.1 and h2c (prior knowledge) from the local agent.
pub async fn serve_outbound(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let Some((tcp, remote)) = accept(&listener, &shared.name, &stop).await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(remote);
        let shared = shared.clone();
        let stop = stop.clone();
        let arrival = Arrival {
            direction: Direction::Outbound,
            peer_spiffe_id: None,
            remote_addr: remote,
            local_addr: local,
        };
        tokio::spawn(serve_connection(
            TokioIo::new(tcp),
            arrival,
            shared,
            stop,
            None,
        ));
    }
}

/// Serves mTLS (h2 or HTTP/1.1 by ALPN) from other workloads' dataplanes.
/// The handshake itself refuses peers without a valid SVID. Until this
/// workload has a usable SVID and a warm config, connections are closed
/// before any handshake (fail closed; `/ready` says why).
pub async fn serve_inbound(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let Some((tcp, remote)) = accept(&listener, &shared.name, &stop).await else {
            return;
        };
        if let Some(why) = shared.refuse_inbound() {
            tracing::debug!(dataplane = %shared.name, peer = %remote, "inbound connection closed before handshake: {why}");
            metrics::counter!("meshward_inbound_connections_refused_total", "dataplane" => shared.name.clone()).increment(1);
            drop(tcp);
            continue;
        }
        let Some(tls) = shared.inbound_tls.get().cloned() else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(remote);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(dataplane = %shared.name, peer = %remote, "TLS handshake refused: {e}");
                    metrics::counter!("meshward_tls_handshake_failures_total", "dataplane" => shared.name.clone()).increment(1);
                    return;
                }
                Err(_) => {
                    tracing::info!(dataplane = %shared.name, peer = %remote, "TLS handshake timed out");
                    return;
                }
            };
            let certs = tls.get_ref().1.peer_certificates();
            // The connection may not outlive the certificate that opened it:
            // an h2 connection is long-lived, and an expired peer must not
            // keep sending requests on it.
            let peer_expiry = certs
                .and_then(|c| c.first())
                .and_then(|leaf| meshward_spire::identity::leaf_not_after(leaf));
            let peer = certs
                .ok_or_else(|| {
                    meshward_spire::IdentityError::PeerCertificate("no client certificate".into())
                })
                .and_then(meshward_spire::tls::peer_spiffe_id);
            let peer = match peer {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(dataplane = %shared.name, peer = %remote, "peer identity refused: {e}");
                    return;
                }
            };
            let arrival = Arrival {
                direction: Direction::Inbound,
                peer_spiffe_id: Some(peer),
                remote_addr: remote,
                local_addr: local,
            };
            serve_connection(TokioIo::new(tls), arrival, shared, stop, peer_expiry).await;
        });
    }
}

/// Serves HTTP/1.1 or h2 (auto-detected) on one accepted connection, until
/// the client closes it, the dataplane stops, or `close_at` (the peer
/// certificate's expiry) passes: then the connection is shut down gracefully
/// (h2 GOAWAY, in-flight requests finish) and the peer must handshake again
/// with a valid SVID.
async fn serve_connection<I>(
    io: TokioIo<I>,
    arrival: Arrival,
    shared: Arc<Shared>,
    stop: CancellationToken,
    close_at: Option<std::time::SystemTime>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remote = arrival.remote_addr;
    let name = shared.name.clone();
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let arrival = arrival.clone();
        async move { Ok::<_, std::convert::Infallible>(pipeline::handle(shared, arrival, req).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let expiry = async {
        match close_at {
            Some(at) => {
                let left = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep(left).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        res = conn.as_mut() => if let Err(e) = res {
            tracing::debug!("connection from {remote} ended: {e}");
        },
        _ = expiry => {
            tracing::info!(dataplane = %name, peer = %remote, "peer certificate expired; closing its connection");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        }
        _ = stop.cancelled() => {}
    }
}
