//! The ADS server over loopback TCP, with the peer identity injected by a
//! test transport the way `meshward_spire::grpc::incoming` injects it after
//! an mTLS handshake.
//!
//! "Nothing was sent" is observed without sleeping: after the step under
//! test, the client subscribes to a type it has not asked for yet (a made-up
//! probe type), whose first request the server always answers; responses on a stream are ordered, so if
//! that answer is the next message, nothing else was pushed before it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshward_spire::grpc::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Server};

use super::XdsServer;
use crate::config::Mesh;
use crate::snapshot::{tests as fixtures, type_url};
use meshward_contract::type_url::MESHWARD_USER_AGENT;

const HELLO: &str = "spiffe://example.org/service/hello";
const TRIAGE: &str = "spiffe://example.org/agent/triage";
const BILLING_BOT: &str = "spiffe://example.org/agent/billing-bot";
const WAIT: Duration = Duration::from_secs(10);

/// A TCP connection labelled with a fixed, test-chosen peer identity.
struct LabelledTcp {
    inner: TcpStream,
    peer: PeerIdentity,
}

impl Connected for LabelledTcp {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for LabelledTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LabelledTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Harness {
    meshes: watch::Sender<Arc<Mesh>>,
    shutdown: CancellationToken,
    client: AggregatedDiscoveryServiceClient<Channel>,
    /// For the per-type discovery services.
    channel: Channel,
}

impl Harness {
    /// A server whose every connection is `peer` (`None`: plain TCP, no identity).
    async fn start(peer: Option<&str>) -> Self {
        Self::start_with(peer, |server| server).await
    }

    /// The same, the server first set up by `configure`.
    async fn start_with(
        peer: Option<&str>,
        configure: impl FnOnce(XdsServer) -> XdsServer,
    ) -> Self {
        let (tx, rx) = watch::channel(Arc::new(fixtures::mesh()));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let shutdown = CancellationToken::new();
        let service = configure(XdsServer::new(rx))
            .with_shutdown(shutdown.clone())
            .into_routes();
        match peer {
            Some(spiffe_id) => {
                let spiffe_id = spiffe_id.to_string();
                let incoming = TcpListenerStream::new(listener).map(move |conn| {
                    conn.map(|inner| {
                        let remote_addr = inner
                            .peer_addr()
                            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
                        LabelledTcp {
                            inner,
                            peer: PeerIdentity {
                                spiffe_id: spiffe_id.clone(),
                                remote_addr,
                            },
                        }
                    })
                });
                tokio::spawn(
                    Server::builder()
                        .add_routes(service)
                        .serve_with_incoming(incoming),
                );
            }
            None => {
                let incoming = TcpListenerStream::new(listener);
                tokio::spawn(
                    Server::builder()
                        .add_routes(service)
                        .serve_with_incoming(incoming),
                );
            }
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("endpoint: {e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        Self {
            meshes: tx,
            shutdown,
            client: AggregatedDiscoveryServiceClient::new(channel.clone()),
            channel,
        }
    }

    async fn delta(&mut self) -> DeltaStream {
        let (tx, rx) = mpsc::channel(16);
        let responses = self
            .client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|e| panic!("delta stream refused: {e}"))
            .into_inner();
        DeltaStream {
            tx,
            responses,
            probes: 0,
        }
    }

    async fn sotw(&mut self) -> SotwStream {
        let (tx, rx) = mpsc::channel(16);
        let responses = self
            .client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|e| panic!("sotw stream refused: {e}"))
            .into_inner();
        SotwStream { tx, responses }
    }

    fn update(&self, change: impl FnOnce(&mut Mesh)) {
        let mut mesh = (**self.meshes.borrow()).clone();
        change(&mut mesh);
        self.meshes.send_replace(Arc::new(mesh));
    }
}

struct DeltaStream {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
    probes: u32,
}

impl DeltaStream {
    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx
            .send(request)
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    async fn subscribe_wildcard(&self, type_url: &str) {
        self.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "test-node".into(),
                user_agent_name: MESHWARD_USER_AGENT.into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            ..Default::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("expected a delta response, got {other:?}"),
        }
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    /// Subscribes and ACKs one type; returns its initial response.
    async fn warm(&mut self, type_url: &str) -> DeltaDiscoveryResponse {
        self.subscribe_wildcard(type_url).await;
        let r = self.next().await;
        assert_eq!(r.type_url, type_url);
        self.ack(&r).await;
        r
    }

    /// Asserts nothing was pushed since the last message (see module docs).
    async fn assert_quiet(&mut self) {
        self.probes += 1;
        let probe = format!("type.googleapis.com/meshward.test.Probe{}", self.probes);
        self.subscribe_wildcard(&probe).await;
        let r = self.next().await;
        assert_eq!(r.type_url, probe, "unexpected push: {r:?}");
        self.ack(&r).await;
    }
}

struct SotwStream {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl SotwStream {
    async fn send(&self, request: DiscoveryRequest) {
        self.tx
            .send(request)
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    async fn next(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn missing_peer_identity_is_unauthenticated() {
    let mut h = Harness::start(None).await;
    let (_tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let status = match h
        .client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Ok(_) => panic!("stream without identity was served"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
    let status = match h
        .client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Ok(_) => panic!("stream without identity was served"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn delta_wildcard_initial_responses_and_ack_without_resend() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.delta().await;
    let cds = s.warm(type_url::CLUSTER).await;
    assert_eq!(names(&cds), vec!["billing", "hello"]);
    let eds = s.warm(type_url::CLUSTER_LOAD_ASSIGNMENT).await;
    assert_eq!(names(&eds), vec!["billing", "hello"]);
    let policy = s.warm(type_url::POLICY_BUNDLE).await;
    assert_eq!(names(&policy), vec!["default"]);
    let agents = s.warm(type_url::AGENT).await;
    assert_eq!(names(&agents), vec![BILLING_BOT, TRIAGE]);
    s.assert_quiet().await;
}

#[tokio::test]
async fn delta_agent_node_sees_only_itself() {
    let mut h = Harness::start(Some(TRIAGE)).await;
    let mut s = h.delta().await;
    let agents = s.warm(type_url::AGENT).await;
    assert_eq!(names(&agents), vec![TRIAGE]);
}

#[tokio::test]
async fn delta_unregistered_node_gets_no_policy_and_no_agents() {
    let mut h = Harness::start(Some("spiffe://example.org/meshward/controlplane")).await;
    let mut s = h.delta().await;
    assert!(s.warm(type_url::POLICY_BUNDLE).await.resources.is_empty());
    assert!(s.warm(type_url::AGENT).await.resources.is_empty());
    assert_eq!(s.warm(type_url::CLUSTER).await.resources.len(), 2);
}

#[tokio::test]
async fn delta_nack_is_logged_and_not_resent_until_change() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.delta().await;
    s.subscribe_wildcard(type_url::POLICY_BUNDLE).await;
    let first = s.next().await;
    s.send(DeltaDiscoveryRequest {
        type_url: first.type_url.clone(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: tonic::Code::InvalidArgument as i32,
            message: "policy bundle does not compile".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    s.assert_quiet().await;
    // An unrelated model change (same bundle) does not resend it either.
    h.update(|m| {
        if let Some(a) = m.agents.get_mut("triage") {
            a.permissions.push("x".into());
        }
    });
    s.assert_quiet().await;
    h.update(|m| m.policy.revision = "r2".into());
    let fixed = s.next().await;
    assert_eq!(fixed.type_url, type_url::POLICY_BUNDLE);
    assert_eq!(names(&fixed), vec!["default"]);
}

#[tokio::test]
async fn delta_change_sends_only_changed_and_removal_sends_removed_resources() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.delta().await;
    s.warm(type_url::AGENT).await;
    h.update(|m| {
        if let Some(a) = m.agents.get_mut("triage") {
            a.attributes.insert("tier".into(), "gold".into());
        }
    });
    let changed = s.next().await;
    assert_eq!(names(&changed), vec![TRIAGE]);
    assert!(changed.removed_resources.is_empty());
    s.ack(&changed).await;
    h.update(|m| {
        m.agents.remove("billing-bot");
    });
    let removed = s.next().await;
    assert!(removed.resources.is_empty());
    assert_eq!(removed.removed_resources, vec![BILLING_BOT]);
    s.ack(&removed).await;
    s.assert_quiet().await;
}

#[tokio::test]
async fn delta_push_order_is_cds_eds_policy_agent() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.delta().await;
    // Subscribe in reverse to show the order comes from the server.
    for t in [
        type_url::AGENT,
        type_url::POLICY_BUNDLE,
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        type_url::CLUSTER,
    ] {
        s.warm(t).await;
    }
    h.update(|m| {
        m.policy.revision = "r2".into();
        m.services.remove("billing");
        if let Some(a) = m.agents.get_mut("triage") {
            a.permissions.push("x".into());
        }
    });
    let mut order = Vec::new();
    for _ in 0..4 {
        let r = s.next().await;
        s.ack(&r).await;
        order.push(r.type_url);
    }
    assert_eq!(
        order,
        vec![
            type_url::CLUSTER,
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            type_url::POLICY_BUNDLE,
            type_url::AGENT
        ]
    );
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions_sends_only_differences() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.delta().await;
    let first = s.warm(type_url::AGENT).await;
    drop(s);
    h.update(|m| {
        if let Some(a) = m.agents.get_mut("triage") {
            a.permissions.push("x".into());
        }
    });
    let s = h.delta().await;
    let mut s = s;
    s.send(DeltaDiscoveryRequest {
        node: Some(Node {
            user_agent_name: MESHWARD_USER_AGENT.into(),
            ..Default::default()
        }),
        type_url: type_url::AGENT.into(),
        initial_resource_versions: first
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect(),
        ..Default::default()
    })
    .await;
    let r = s.next().await;
    assert_eq!(names(&r), vec![TRIAGE]);
}

#[tokio::test]
async fn sotw_basic_flow() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.sotw().await;
    let request = |names: &[&str], ack: Option<&DiscoveryResponse>| DiscoveryRequest {
        node: Some(Node {
            id: "dataplane-1".into(),
            user_agent_name: MESHWARD_USER_AGENT.into(),
            ..Default::default()
        }),
        type_url: type_url::CLUSTER.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    };
    s.send(request(&[], None)).await;
    let first = s.next().await;
    assert_eq!(first.resources.len(), 2);
    s.send(request(&[], Some(&first))).await;

    // A change resends the complete state of the world.
    h.update(|m| {
        if let Some(svc) = m.services.get_mut("hello") {
            svc.spec.metadata.insert("tier".into(), "gold".into());
        }
    });
    let second = s.next().await;
    assert_eq!(second.resources.len(), 2);
    assert_ne!(second.version_info, first.version_info);

    // NACK: keep the old version, nothing resent.
    let mut nack = request(&[], Some(&second));
    nack.version_info = first.version_info.clone();
    nack.error_detail = Some(RpcStatus {
        code: tonic::Code::InvalidArgument as i32,
        message: "bad cluster".into(),
        details: vec![],
    });
    s.send(nack).await;
    // Probe: a new type is always answered; it must be the next message.
    s.send(DiscoveryRequest {
        type_url: type_url::LISTENER.into(),
        ..Default::default()
    })
    .await;
    assert_eq!(s.next().await.type_url, type_url::LISTENER);

    // Removal: the next state of the world no longer has the cluster.
    h.update(|m| {
        m.services.remove("billing");
    });
    let third = s.next().await;
    assert_eq!(third.type_url, type_url::CLUSTER);
    assert_eq!(third.resources.len(), 1);
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.delta().await;
    s.warm(type_url::CLUSTER).await;
    h.shutdown.cancel();
    match tokio::time::timeout(WAIT, s.responses.message()).await {
        Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}

/// A client that is not a Meshward dataplane (here Envoy's user agent) gets
/// clusters without Meshward's metadata and none of Meshward's types, so
/// its decoders and `/config_dump` never meet a type they do not know.
#[tokio::test]
async fn envoy_clients_get_only_envoy_types() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.sotw().await;
    let envoy = Node {
        id: "envoy-1".into(),
        user_agent_name: "envoy".into(),
        ..Default::default()
    };
    s.send(DiscoveryRequest {
        node: Some(envoy),
        type_url: type_url::CLUSTER.into(),
        ..Default::default()
    })
    .await;
    let clusters = s.next().await;
    assert_eq!(clusters.resources.len(), 2);
    for any in &clusters.resources {
        let cluster =
            <envoy_types::pb::envoy::config::cluster::v3::Cluster as prost::Message>::decode(
                any.value.as_slice(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            cluster.metadata.is_none(),
            "{}: Meshward metadata sent to Envoy",
            cluster.name
        );
    }
    for t in [
        type_url::POLICY_BUNDLE,
        type_url::AGENT,
        type_url::DATAPLANE_SETTINGS,
    ] {
        s.send(DiscoveryRequest {
            type_url: t.into(),
            ..Default::default()
        })
        .await;
        assert!(s.next().await.resources.is_empty(), "{t} sent to Envoy");
    }
}

/// ADS multiplexes types on one stream, so a request must name its type:
/// one without is refused, not answered.
#[tokio::test]
async fn requests_without_a_type_url_are_invalid() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.sotw().await;
    s.send(DiscoveryRequest::default()).await;
    match tokio::time::timeout(WAIT, s.responses.message()).await {
        Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    let mut d = h.delta().await;
    d.send(DeltaDiscoveryRequest::default()).await;
    match tokio::time::timeout(WAIT, d.responses.message()).await {
        Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

/// After a NACK the rejected version is not resent for the same request,
/// but a client that unsubscribes and resubscribes asked anew and gets it.
#[tokio::test]
async fn sotw_resubscription_after_a_nack_is_answered() {
    let mut h = Harness::start(Some(HELLO)).await;
    let mut s = h.sotw().await;
    let request = |names: &[&str], ack: Option<&DiscoveryResponse>, nack: bool| DiscoveryRequest {
        node: Some(Node {
            user_agent_name: MESHWARD_USER_AGENT.into(),
            ..Default::default()
        }),
        type_url: type_url::CLUSTER.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
        error_detail: nack.then(|| RpcStatus {
            code: tonic::Code::InvalidArgument as i32,
            message: "bad".into(),
            details: vec![],
        }),
        ..Default::default()
    };
    s.send(request(&["hello"], None, false)).await;
    let first = s.next().await;
    s.send(request(&["hello"], Some(&first), true)).await;
    s.send(request(&["billing"], Some(&first), false)).await;
    let other = s.next().await;
    assert_eq!(other.resources.len(), 1);
    s.send(request(&["hello"], Some(&other), false)).await;
    let again = s.next().await;
    assert_eq!(
        again.version_info, first.version_info,
        "the once-NACKed set, asked for anew"
    );
}

/// The per-type services serve their one type on their own streams: the
/// type may be left out of requests, another type is refused, and `Fetch`
/// answers with the current state of the world. Node kinds work as on ADS.
mod per_type {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
    use prost::Message;

    use super::*;

    fn envoy_node() -> Option<Node> {
        Some(Node {
            id: "envoy-1".into(),
            user_agent_name: "envoy".into(),
            ..Default::default()
        })
    }

    async fn first<T>(responses: &mut Streaming<T>) -> T {
        tokio::time::timeout(WAIT, responses.message())
            .await
            .unwrap_or_else(|_| panic!("no response within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("stream error: {e}"))
            .unwrap_or_else(|| panic!("stream ended"))
    }

    #[tokio::test]
    async fn cds_and_rds_streams_serve_their_type_without_naming_it() {
        let h = Harness::start(Some(TRIAGE)).await;
        let mut cds = ClusterDiscoveryServiceClient::new(h.channel.clone());
        let (tx, rx) = mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: envoy_node(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut responses = cds
            .stream_clusters(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let clusters = first(&mut responses).await;
        assert_eq!(clusters.type_url, type_url::CLUSTER);
        assert_eq!(clusters.resources.len(), 2);

        let mut rds = RouteDiscoveryServiceClient::new(h.channel.clone());
        let (tx, rx) = mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: envoy_node(),
            resource_names: vec!["meshward_outbound".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let mut responses = rds
            .stream_routes(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let routes = first(&mut responses).await;
        assert_eq!(routes.type_url, type_url::ROUTE_CONFIGURATION);
        assert_eq!(routes.resources.len(), 1);
    }

    #[tokio::test]
    async fn another_type_on_a_per_type_stream_is_invalid() {
        let h = Harness::start(Some(TRIAGE)).await;
        let mut cds = ClusterDiscoveryServiceClient::new(h.channel.clone());
        let (tx, rx) = mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: envoy_node(),
            type_url: type_url::LISTENER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut responses = cds
            .stream_clusters(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        match tokio::time::timeout(WAIT, responses.message()).await {
            Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn delta_eds_and_fetch_lds() {
        let h = Harness::start(Some(TRIAGE)).await;
        let mut eds = EndpointDiscoveryServiceClient::new(h.channel.clone());
        let (tx, rx) = mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest {
            node: envoy_node(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut responses = eds
            .delta_endpoints(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let endpoints = first(&mut responses).await;
        assert_eq!(endpoints.type_url, type_url::CLUSTER_LOAD_ASSIGNMENT);
        assert_eq!(endpoints.resources.len(), 2);

        let mut lds = ListenerDiscoveryServiceClient::new(h.channel.clone());
        let fetched = lds
            .fetch_listeners(DiscoveryRequest {
                node: envoy_node(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched.resources.len(), 1);
        let listener = Listener::decode(fetched.resources[0].value.as_slice()).unwrap();
        assert_eq!(listener.name, "meshward_outbound");
        let refused = lds
            .fetch_listeners(DiscoveryRequest {
                type_url: type_url::CLUSTER.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            refused.map(|_| ()).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}

/// A pushed model is one trace through the real server: the `xds.push`
/// root and one `xds.deliver` per stream, ended by the node's ACK or NACK.
mod push_trace {
    use meshward_telemetry::testing::{SpanData, Status, in_memory};

    use super::*;

    fn attr(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
    }

    #[tokio::test]
    async fn a_push_to_a_delta_and_a_sotw_stream_is_one_trace() {
        let (tracing, exporter) = in_memory("controlplane");
        let traced = tracing.clone();
        let mut h =
            Harness::start_with(Some(HELLO), move |s| s.with_push_window(traced, WAIT * 6)).await;
        let mut delta = h.delta().await;
        delta.warm(type_url::AGENT).await;
        let mut sotw = h.sotw().await;
        let subscribe = |ack: Option<&DiscoveryResponse>| DiscoveryRequest {
            node: Some(Node {
                id: "sotw-node".into(),
                user_agent_name: MESHWARD_USER_AGENT.into(),
                ..Default::default()
            }),
            type_url: type_url::AGENT.into(),
            version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
            ..Default::default()
        };
        sotw.send(subscribe(None)).await;
        let first = sotw.next().await;
        sotw.send(subscribe(Some(&first))).await;

        h.update(|m| {
            if let Some(a) = m.agents.get_mut("triage") {
                a.permissions.push("x".into());
            }
        });
        let pushed = delta.next().await;
        assert_eq!(pushed.type_url, type_url::AGENT);
        delta.ack(&pushed).await;
        let rejected = sotw.next().await;
        let mut nack = subscribe(Some(&rejected));
        nack.version_info = first.version_info.clone();
        nack.error_detail = Some(RpcStatus {
            code: tonic::Code::InvalidArgument as i32,
            message: "agent triage: bad permission".into(),
            details: vec![],
        });
        sotw.send(nack).await;
        // Both answers were handled: each stream answered a later request.
        delta.assert_quiet().await;
        sotw.send(DiscoveryRequest {
            type_url: type_url::LISTENER.into(),
            ..Default::default()
        })
        .await;
        assert_eq!(sotw.next().await.type_url, type_url::LISTENER);

        // The next model supersedes the push, ending its root.
        h.update(|m| {
            if let Some(a) = m.agents.get_mut("triage") {
                a.permissions.push("y".into());
            }
        });
        assert_eq!(delta.next().await.type_url, type_url::AGENT);

        assert!(tracing.flush(WAIT).await);
        let spans = exporter
            .get_finished_spans()
            .unwrap_or_else(|e| panic!("in-memory exporter: {e}"));
        let roots: Vec<_> = spans.iter().filter(|s| s.name == "xds.push").collect();
        assert_eq!(roots.len(), 1, "{spans:#?}");
        let root = roots[0];
        assert_eq!(attr(root, "meshward.config_revision").as_deref(), Some("1"));
        let deliveries: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "xds.deliver" && s.parent_span_id == root.span_context.span_id())
            .collect();
        assert_eq!(deliveries.len(), 2, "{spans:#?}");
        let of = |node: &str| {
            deliveries
                .iter()
                .find(|d| attr(d, "meshward.node").as_deref() == Some(node))
                .unwrap_or_else(|| panic!("no delivery to {node}: {deliveries:#?}"))
        };
        let (ack, nack) = (of("test-node"), of("sotw-node"));
        for (d, protocol) in [(ack, "delta"), (nack, "sotw")] {
            assert_eq!(d.span_context.trace_id(), root.span_context.trace_id());
            assert_eq!(attr(d, "xds.protocol").as_deref(), Some(protocol));
            assert_eq!(attr(d, "xds.type_url").as_deref(), Some(type_url::AGENT));
            assert_eq!(attr(d, "meshward.node_spiffe_id").as_deref(), Some(HELLO));
        }
        assert_eq!(attr(ack, "xds.result").as_deref(), Some("ack"));
        assert_eq!(
            attr(ack, "xds.version").as_deref(),
            Some(pushed.system_version_info.as_str())
        );
        assert_eq!(attr(nack, "xds.result").as_deref(), Some("nack"));
        assert_eq!(
            attr(nack, "xds.version").as_deref(),
            Some(rejected.version_info.as_str())
        );
        assert_eq!(nack.status, Status::error("agent triage: bad permission"));
    }

    /// A client that goes away without answering: its delivery ends as
    /// abandoned when the server sees the stream close.
    #[tokio::test]
    async fn a_stream_closed_before_answering_abandons_its_delivery() {
        let (tracing, exporter) = in_memory("controlplane");
        let traced = tracing.clone();
        let mut h =
            Harness::start_with(Some(HELLO), move |s| s.with_push_window(traced, WAIT * 6)).await;
        let mut delta = h.delta().await;
        delta.warm(type_url::AGENT).await;
        h.update(|m| {
            if let Some(a) = m.agents.get_mut("triage") {
                a.permissions.push("x".into());
            }
        });
        let pushed = delta.next().await;
        assert_eq!(pushed.type_url, type_url::AGENT);
        drop(delta);
        // The server ends the delivery once it reads the close; the exporter
        // is the signal, waited on with a deadline.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(tracing.flush(WAIT).await);
            let spans = exporter
                .get_finished_spans()
                .unwrap_or_else(|e| panic!("in-memory exporter: {e}"));
            if let Some(d) = spans.iter().find(|s| s.name == "xds.deliver") {
                assert_eq!(attr(d, "xds.result").as_deref(), Some("abandoned"));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no abandoned delivery within {WAIT:?}"
            );
            tokio::task::yield_now().await;
        }
    }
}
