//! The ADS server: state-of-the-world and delta xDS over one mTLS stream per
//! node, following Envoy's xDS protocol document (`api/xds_protocol.rst`).
//!
//! Each stream is bound to the SPIFFE ID its TLS peer proved; a request that
//! did not arrive over a verified mTLS connection is refused
//! (`UNAUTHENTICATED`) before any state is built. The stream's snapshot is
//! taken from the latest [`Mesh`] whenever the model changes (built once per
//! view and shared, see [`SnapshotCache`]), and the protocol sessions ([`sotw`], [`delta`]) decide what to (re)send. They are
//! plain state machines with no I/O so the protocol rules are unit-tested
//! without a network. With tracing on, each pushed model is a trace
//! ([`trace`]): the push, and each node's delivery until it ACKs or NACKs.

pub mod delta;
pub mod sotw;
pub mod trace;
mod typed;

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use meshward_spire::grpc::peer_identity;
use meshward_telemetry::Tracing;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::config::Mesh;
use crate::snapshot::{self, ClientKind, NodeIdentity, Snapshot, SnapshotCache};
use trace::{Deliveries, PushTracer, Sent};

/// Counter: responses sent, labelled `type_url` and `protocol` (`sotw`/`delta`).
pub const METRIC_PUSHES: &str = "meshward_xds_pushes_total";
/// Counter: NACKs received, labelled `type_url` and `protocol`.
pub const METRIC_NACKS: &str = "meshward_xds_nacks_total";
/// Gauge: ADS streams currently open.
pub const METRIC_STREAMS: &str = "meshward_xds_connected_streams";

/// Describes the control plane's metric families on the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        METRIC_PUSHES,
        "xDS responses sent to clients, by type URL and protocol (sotw, delta)."
    );
    metrics::describe_counter!(
        METRIC_NACKS,
        "xDS responses clients rejected (NACK), by type URL and protocol."
    );
    metrics::describe_gauge!(METRIC_STREAMS, "xDS streams open on the control plane.");
    crate::config::metrics::describe();
}

/// Responses buffered per stream before the session waits for the client.
const STREAM_BUFFER: usize = 16;

/// A response stream handed to tonic.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The ADS server, fed by the control plane's latest validated mesh.
#[derive(Debug, Clone)]
pub struct XdsServer {
    meshes: watch::Receiver<Arc<Mesh>>,
    /// Shared by every stream: one snapshot per view of the mesh.
    snapshots: Arc<SnapshotCache>,
    /// Shared by every stream: one `xds.push` trace per model.
    pushes: Arc<PushTracer>,
    shutdown: CancellationToken,
}

impl XdsServer {
    /// A server that serves whatever `meshes` currently holds and pushes every
    /// later value to the open streams.
    pub fn new(meshes: watch::Receiver<Arc<Mesh>>) -> Self {
        Self {
            meshes,
            snapshots: Arc::default(),
            pushes: Arc::new(PushTracer::new(Tracing::off())),
            shutdown: CancellationToken::new(),
        }
    }

    /// Traces every push through `tracing` (see [`trace`]); off by default.
    #[must_use]
    pub fn with_tracing(mut self, tracing: Tracing) -> Self {
        self.pushes = Arc::new(PushTracer::new(tracing));
        self
    }

    /// Tracing with a shorter push window, so tests see roots end.
    #[cfg(test)]
    fn with_push_window(mut self, tracing: Tracing, window: std::time::Duration) -> Self {
        self.pushes = Arc::new(PushTracer::with_window(tracing, window));
        self
    }

    /// Ends every open stream (with `UNAVAILABLE`, so clients reconnect)
    /// when `token` is cancelled. ADS streams never finish on their own, so
    /// tonic's graceful shutdown alone would wait for them forever; streams
    /// also end when the `meshes` sender is dropped.
    #[must_use]
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// The tonic service; serve it over
    /// [`meshward_spire::grpc::incoming`] so every stream has a verified peer.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// ADS and the per-type discovery services (CDS, EDS, LDS, RDS) as one
    /// set of routes, all answered by this server.
    pub fn into_routes(self) -> tonic::service::Routes {
        use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer;
        use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer;
        use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryServiceServer;
        use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryServiceServer;
        tonic::service::Routes::new(AggregatedDiscoveryServiceServer::new(self.clone()))
            .add_service(ClusterDiscoveryServiceServer::new(self.clone()))
            .add_service(EndpointDiscoveryServiceServer::new(self.clone()))
            .add_service(ListenerDiscoveryServiceServer::new(self.clone()))
            .add_service(RouteDiscoveryServiceServer::new(self))
    }
}

/// The verified SPIFFE ID of the request's peer, or `UNAUTHENTICATED`.
fn peer_spiffe_id<T>(request: &Request<T>) -> Result<String, Status> {
    match peer_identity(request) {
        Some(peer) => Ok(peer.spiffe_id.clone()),
        None => {
            warn!(
                remote = ?request.remote_addr(),
                "xDS stream without a verified mTLS peer identity refused"
            );
            Err(Status::unauthenticated(
                "xDS requires mTLS with a verified SPIFFE ID",
            ))
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let spiffe_id = peer_spiffe_id(&request)?;
        Ok(Response::new(self.spawn_stream::<sotw::SotwSession>(
            spiffe_id,
            request.into_inner(),
            None,
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let spiffe_id = peer_spiffe_id(&request)?;
        Ok(Response::new(self.spawn_stream::<delta::DeltaSession>(
            spiffe_id,
            request.into_inner(),
            None,
        )))
    }
}

/// The protocol rules of one ADS variant, without I/O.
pub trait Session: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// `"sotw"` or `"delta"`, for metrics and logs.
    const PROTOCOL: &'static str;

    fn new(node: NodeIdentity, snapshot: Arc<Snapshot>) -> Self;
    /// The `Node` a request carries (only the first must).
    fn request_node(request: &Self::Request) -> Option<&Node>;
    /// The type URL a request is about (ADS requires one on every request).
    fn request_type(request: &Self::Request) -> &str;
    /// The same, to fill in on a per-type stream (where it may be empty).
    fn request_type_mut(request: &mut Self::Request) -> &mut String;
    /// Handles one request; returns the responses to send, in order.
    fn on_request(&mut self, request: Self::Request) -> Vec<Self::Response>;
    /// Installs a rebuilt snapshot; returns the updates to push, in
    /// CDS, EDS, LDS, RDS, PolicyBundle, Agent order.
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<Self::Response>;
    /// The nonce a request answers (empty on a subscription) and, for a
    /// NACK, the client's error message.
    fn request_answer(request: &Self::Request) -> (&str, Option<&str>);
    /// What a response is (for metrics and the push trace).
    fn sent(response: &Self::Response) -> Sent<'_>;
}

/// Keeps [`METRIC_STREAMS`] accurate however a stream ends.
struct StreamGauge;

impl StreamGauge {
    fn open() -> Self {
        metrics::gauge!(METRIC_STREAMS).increment(1.0);
        Self
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        metrics::gauge!(METRIC_STREAMS).decrement(1.0);
    }
}

impl XdsServer {
    /// Serves one stream from its own task. `pin`: the one type a per-type
    /// discovery service (CDS, EDS, ...) serves; `None` for ADS.
    fn spawn_stream<S: Session>(
        &self,
        spiffe_id: String,
        inbound: Streaming<S::Request>,
        pin: Option<&'static str>,
    ) -> ResponseStream<S::Response> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(drive::<S>(spiffe_id, inbound, self.clone(), tx, pin));
        Box::pin(ReceiverStream::new(rx))
    }
}

/// Runs one ADS stream until the client goes away, the control plane shuts
/// down or the model's sender is dropped. The session (and the node's
/// snapshot) is made on the first request, whose `Node` says what kind of
/// client this is. Every wait also watches for shutdown, so a client that
/// stops reading cannot hold the stream, or the server, open.
async fn drive<S: Session>(
    spiffe_id: String,
    mut inbound: Streaming<S::Request>,
    server: XdsServer,
    tx: mpsc::Sender<Result<S::Response, Status>>,
    pin: Option<&'static str>,
) {
    let XdsServer {
        mut meshes,
        snapshots,
        pushes,
        shutdown,
    } = server;
    let _gauge = StreamGauge::open();
    // Ends the stream's open deliveries as abandoned however it ends.
    let mut deliveries = Deliveries::new(S::PROTOCOL);
    let mut node = NodeIdentity {
        spiffe_id,
        node_id: String::new(),
        client: ClientKind::Meshward,
        envoy: Default::default(),
    };
    let mut session: Option<S> = None;
    info!(peer = %node.spiffe_id, protocol = S::PROTOCOL, "xDS stream opened");
    loop {
        let (responses, push) = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(mut request)) => {
                    if let Some(pinned) = pin {
                        let type_url = S::request_type_mut(&mut request);
                        if type_url.is_empty() {
                            *type_url = pinned.to_string();
                        } else if type_url != pinned {
                            let refusal = Status::invalid_argument(format!(
                                "this discovery service serves {pinned}, not {type_url}"
                            ));
                            let _ = send(&tx, Err(refusal), &shutdown).await;
                            break;
                        }
                    }
                    if S::request_type(&request).is_empty() {
                        let refusal = Status::invalid_argument(
                            "xDS request without type_url: on ADS every request names its type",
                        );
                        let _ = send(&tx, Err(refusal), &shutdown).await;
                        break;
                    }
                    let session = match &mut session {
                        Some(session) => session,
                        None => {
                            let first = S::request_node(&request);
                            node.node_id = first.map(|n| n.id.clone()).unwrap_or_default();
                            node.client = ClientKind::of(first);
                            node.envoy = snapshot::envoy::EnvoyNode::of(first);
                            let mesh = Arc::clone(&meshes.borrow_and_update());
                            session.insert(S::new(node.clone(), snapshots.get(&mesh, &node)))
                        }
                    };
                    let (nonce, error) = S::request_answer(&request);
                    deliveries.answered(S::request_type(&request), nonce, error);
                    (session.on_request(request), None)
                }
                Ok(None) => {
                    debug!(peer = %node.spiffe_id, node = %node.node_id, "xDS stream closed by client");
                    break;
                }
                Err(status) => {
                    debug!(peer = %node.spiffe_id, node = %node.node_id, %status, "xDS stream ended");
                    break;
                }
            },
            changed = meshes.changed() => match changed {
                Ok(()) => {
                    let mesh = Arc::clone(&meshes.borrow_and_update());
                    match &mut session {
                        Some(session) => {
                            let push = pushes.push(&mesh, || Arc::clone(&meshes.borrow()));
                            (session.on_snapshot(snapshots.get(&mesh, &node)), push)
                        }
                        None => (Vec::new(), None),
                    }
                }
                Err(_) => {
                    let _ = send(&tx, Err(Status::unavailable("control plane shutting down")), &shutdown).await;
                    break;
                }
            },
            () = shutdown.cancelled() => {
                // Best effort: a client that is not reading gets no status.
                let _ = tx.try_send(Err(Status::unavailable("control plane shutting down")));
                break;
            }
        };
        for response in responses {
            let sent = S::sent(&response);
            let type_url = sent.type_url.to_string();
            deliveries.sent(push.as_ref(), &node, sent);
            if !send(&tx, Ok(response), &shutdown).await {
                debug!(peer = %node.spiffe_id, node = %node.node_id, "xDS client gone or server stopping");
                return;
            }
            metrics::counter!(METRIC_PUSHES, "type_url" => type_url, "protocol" => S::PROTOCOL)
                .increment(1);
        }
    }
    info!(peer = %node.spiffe_id, node = %node.node_id, protocol = S::PROTOCOL, "xDS stream closed");
}

/// Queues one message for the client; false when the client is gone or the
/// server is stopping (a client that stopped reading would otherwise hold
/// this task forever once the buffer is full).
async fn send<T>(tx: &mpsc::Sender<T>, message: T, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        sent = tx.send(message) => sent.is_ok(),
        () = shutdown.cancelled() => false,
    }
}

/// Records and logs a NACK. The resource set the client rejected is not
/// sent again; the next push happens when the resources change.
fn record_nack(protocol: &'static str, node: &NodeIdentity, type_url: &str, detail: &str) {
    warn!(
        node = %node.node_id,
        peer = %node.spiffe_id,
        type_url,
        error = detail,
        "xDS client rejected (NACKed) an update; not resending it until it changes"
    );
    metrics::counter!(METRIC_NACKS, "type_url" => type_url.to_string(), "protocol" => protocol)
        .increment(1);
}

/// Per-stream nonce source: unique within the stream, which is all xDS asks.
#[derive(Debug, Default)]
struct Nonces(u64);

impl Nonces {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

#[cfg(test)]
mod tests;
