//! The HTTP proxy: listeners, the per-request pipeline and upstream clients.
//!
//! - outbound (agent-facing, plain HTTP/1.1 and h2c on loopback): the caller
//!   is this sidecar's own workload;
//! - inbound (mTLS, HTTP/1.1 and h2 by ALPN): the caller is whoever the peer
//!   certificate proves.

pub mod body;
pub mod guard;
pub mod timed;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use meshward_spire::WorkloadIdentity;
use sha2::Digest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breakers;
use crate::listener::{
    self, Accepted, ConnectionOptions, ConnectionSlot, Listener, ListenerKind, ListenerLimits,
};
use crate::metrics::labels::LabelContext;
use crate::observe::Observability;
use crate::pipeline::refusal::NotReady;
use crate::pipeline::{self, Arrival, VerifiedPeer};
use crate::policy::Direction;
use crate::ratelimit::RateLimiter;
use crate::state::{Endpoint, MeshState, Upstream};
use crate::xds::rejected::LastRejected;

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
    /// The last xDS update this dataplane NACKed, for `/config_dump`.
    pub xds_rejected: Arc<LastRejected>,
    pub mesh_client: upstream::MeshClient,
    pub local_client: upstream::LocalClient,
    /// The app behind an inbound dataplane.
    pub local_upstream: Option<SocketAddr>,
    /// Traces, access and decision logs; all off by default.
    pub observe: Observability,
    next_endpoint: AtomicUsize,
}

impl Shared {
    pub fn new(
        name: String,
        identity: WorkloadIdentity,
        state: watch::Receiver<Option<Arc<MeshState>>>,
        mesh_client: upstream::MeshClient,
        local_upstream: Option<SocketAddr>,
    ) -> Self {
        let labels = LabelContext::new(&name, state.clone());
        Self {
            name,
            identity,
            inbound_tls: OnceLock::new(),
            state,
            limiter: RateLimiter::new().with_labels(labels.clone()),
            breakers: Breakers::with_labels(labels),
            xds_rejected: Arc::default(),
            mesh_client,
            local_client: upstream::LocalClient::default(),
            local_upstream,
            observe: Observability::default(),
            next_endpoint: AtomicUsize::new(0),
        }
    }

    pub fn current_state(&self) -> Option<Arc<MeshState>> {
        self.state.borrow().clone()
    }

    /// The listener limits in force: the control plane's, or the defaults
    /// until its configuration has arrived.
    pub fn listener_limits(&self) -> ListenerLimits {
        self.state
            .borrow()
            .as_ref()
            .map(|s| s.listeners)
            .unwrap_or_default()
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
            return Some(NotReady::NoConfig.to_string());
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

/// Serves plain HTTP/1.1 and h2c (prior knowledge) from the local agent.
pub async fn serve_outbound(listener: Listener, shared: Arc<Shared>, stop: CancellationToken) {
    while let Some(accepted) = listener.accept(&stop, || shared.listener_limits()).await {
        let arrival = Arrival {
            direction: Direction::Outbound,
            peer: None,
            remote_addr: accepted.remote,
            local_addr: accepted.local,
        };
        let held = Held {
            slot: accepted.slot,
            accepted_at: accepted.accepted_at,
            close_at: None,
        };
        tokio::spawn(serve_connection(
            accepted.tcp,
            held,
            arrival,
            shared.clone(),
            stop.clone(),
        ));
    }
}

/// Serves mTLS (h2 or HTTP/1.1 by ALPN) from other workloads' dataplanes.
/// The handshake itself refuses peers without a valid SVID. Until this
/// workload has a usable SVID and a warm config, connections are closed
/// before any handshake (fail closed; `/ready` says why).
pub async fn serve_inbound(listener: Listener, shared: Arc<Shared>, stop: CancellationToken) {
    while let Some(accepted) = listener.accept(&stop, || shared.listener_limits()).await {
        let remote = accepted.remote;
        if let Some(why) = shared.refuse_inbound() {
            tracing::debug!(dataplane = %shared.name, peer = %remote, "inbound connection closed before handshake: {why}");
            metrics::counter!("meshward_inbound_connections_refused_total", "dataplane" => shared.name.clone()).increment(1);
            continue;
        }
        let Some(tls) = shared.inbound_tls.get().cloned() else {
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // The handshake counts against the time to the first request.
            let limits = shared.listener_limits();
            let deadline = accepted.accepted_at + limits.header_read_timeout;
            let Accepted {
                tcp,
                local,
                accepted_at,
                slot,
                ..
            } = accepted;
            let tls = match tokio::time::timeout_at(deadline.into(), acceptor.accept(tcp)).await {
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
            let leaf = certs.and_then(|c| c.first());
            let peer_expiry = leaf.and_then(|leaf| meshward_spire::identity::leaf_not_after(leaf));
            let cert_hash = leaf.map(|leaf| hex::encode(sha2::Sha256::digest(leaf.as_ref())));
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
                peer: Some(Arc::new(VerifiedPeer {
                    spiffe_id: peer,
                    cert_sha256: cert_hash.unwrap_or_default(),
                })),
                remote_addr: remote,
                local_addr: local,
            };
            let held = Held {
                slot,
                accepted_at,
                close_at: peer_expiry,
            };
            serve_connection(tls, held, arrival, shared, stop).await;
        });
    }
}

/// What an accepted connection carries while it is served.
struct Held {
    /// Its place in the listener's connection count, released on drop.
    slot: ConnectionSlot,
    accepted_at: std::time::Instant,
    /// The peer certificate's expiry: the connection is shut down then.
    close_at: Option<std::time::SystemTime>,
}

/// Serves one accepted connection through the request pipeline, within the
/// listener limits in force, until the client closes it, the dataplane
/// stops, a limit closes it or the peer certificate expires (then it is
/// shut down gracefully: h2 GOAWAY, in-flight requests finish, and the peer
/// must handshake again with a valid SVID).
async fn serve_connection<I>(
    io: I,
    held: Held,
    arrival: Arrival,
    shared: Arc<Shared>,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Held {
        slot: _slot,
        accepted_at,
        close_at,
    } = held;
    let kind = match arrival.direction {
        Direction::Inbound => ListenerKind::Inbound,
        _ => ListenerKind::Outbound,
    };
    let name = shared.name.clone();
    let remote = arrival.remote_addr;
    let limits = shared.listener_limits();
    let handler = move |req| pipeline::handle(shared.clone(), arrival.clone(), req);
    listener::serve(
        io,
        ConnectionOptions {
            limits,
            accepted_at,
            close_at,
            owner: &name,
            kind,
            remote,
            stop: &stop,
        },
        handler,
    )
    .await;
}
