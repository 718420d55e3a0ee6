//! Per-type discovery services (CDS, EDS, LDS, RDS), state of the world and
//! delta, for clients that do not use ADS. Each is the ADS session pinned to
//! one type: a request may leave `type_url` empty (it is implied by the
//! service) but may not name another type. `Fetch*` answers one request
//! with the current state of the world, as a first SotW request would be.

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryService;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryService;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, Session, XdsServer, delta, peer_spiffe_id, sotw};
use crate::snapshot::{ClientKind, NodeIdentity, envoy::EnvoyNode, type_url};

impl XdsServer {
    fn typed_sotw(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
        pin: &'static str,
    ) -> Result<Response<ResponseStream<DiscoveryResponse>>, Status> {
        let spiffe_id = peer_spiffe_id(&request)?;
        Ok(Response::new(self.spawn_stream::<sotw::SotwSession>(
            spiffe_id,
            request.into_inner(),
            Some(pin),
        )))
    }

    fn typed_delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
        pin: &'static str,
    ) -> Result<Response<ResponseStream<DeltaDiscoveryResponse>>, Status> {
        let spiffe_id = peer_spiffe_id(&request)?;
        Ok(Response::new(self.spawn_stream::<delta::DeltaSession>(
            spiffe_id,
            request.into_inner(),
            Some(pin),
        )))
    }

    fn fetch(
        &self,
        request: Request<DiscoveryRequest>,
        pin: &'static str,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let spiffe_id = peer_spiffe_id(&request)?;
        let mut request = request.into_inner();
        if request.type_url.is_empty() {
            request.type_url = pin.to_string();
        } else if request.type_url != pin {
            return Err(Status::invalid_argument(format!(
                "this discovery service serves {pin}, not {}",
                request.type_url
            )));
        }
        let node = NodeIdentity {
            spiffe_id,
            node_id: request
                .node
                .as_ref()
                .map(|n| n.id.clone())
                .unwrap_or_default(),
            client: ClientKind::of(request.node.as_ref()),
            envoy: EnvoyNode::of(request.node.as_ref()),
        };
        let mesh = self.meshes.borrow().clone();
        let mut session = sotw::SotwSession::new(node.clone(), self.snapshots.get(&mesh, &node));
        session
            .on_request(request)
            .into_iter()
            .next()
            .map(Response::new)
            .ok_or_else(|| Status::internal("no response for a first request"))
    }
}

/// Implements one per-type discovery service on [`XdsServer`].
macro_rules! discovery_service {
    ($service:ident, $type_url:expr, $stream_ty:ident, $stream:ident, $delta_ty:ident, $delta:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $service for XdsServer {
            type $stream_ty = ResponseStream<DiscoveryResponse>;
            type $delta_ty = ResponseStream<DeltaDiscoveryResponse>;

            async fn $stream(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::$stream_ty>, Status> {
                self.typed_sotw(request, $type_url)
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<Self::$delta_ty>, Status> {
                self.typed_delta(request, $type_url)
            }

            async fn $fetch(
                &self,
                request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.fetch(request, $type_url)
            }
        }
    };
}

discovery_service!(
    ClusterDiscoveryService,
    type_url::CLUSTER,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
discovery_service!(
    EndpointDiscoveryService,
    type_url::CLUSTER_LOAD_ASSIGNMENT,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);
discovery_service!(
    ListenerDiscoveryService,
    type_url::LISTENER,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
discovery_service!(
    RouteDiscoveryService,
    type_url::ROUTE_CONFIGURATION,
    StreamRoutesStream,
    stream_routes,
    DeltaRoutesStream,
    delta_routes,
    fetch_routes
);
