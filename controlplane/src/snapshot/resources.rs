//! One function per xDS resource built from the model. The encodings
//! themselves are the contract's ([`meshward_contract::spec`]), canonical so
//! that a resource's version, the hash of its bytes, depends only on its
//! content.

use meshward_contract::pb::v1 as mw;
use meshward_contract::rules;
use meshward_contract::spec::{self, Endpoint};
use prost::Message;
use tracing::warn;

use super::type_url;
use super::{NodeIdentity, NodeKind, Snapshot, VersionedResource, envoy};
use crate::config::{self, Agent, Service};

pub use meshward_contract::type_url::{DATAPLANE_SETTINGS_NAME, POLICY_BUNDLE_NAME};

/// The CDS resource of a service: EDS over ADS, with Meshward's view of the
/// service (expected SPIFFE ID, metadata, breaker, per-caller limits, path
/// rules) in `typed_filter_metadata["meshward"]`.
pub fn cluster(service: &Service) -> VersionedResource {
    VersionedResource::from_encoded(type_url::CLUSTER, service.spec.to_cluster().encode_to_vec())
}

/// The resources of a proxyless gRPC client: per service an `api_listener`,
/// its cluster (with gRPC's certificate providers) and its endpoints.
pub fn grpc(mesh: &config::Mesh, snapshot: &mut Snapshot) {
    let mut put = |type_url: &str, name: &str, bytes: Vec<u8>| {
        snapshot.insert(
            type_url,
            name.to_string(),
            VersionedResource::from_encoded(type_url, bytes),
        );
    };
    for service in mesh.services.values() {
        let name = &service.spec.name;
        put(
            type_url::LISTENER,
            name,
            envoy::grpc_listener(service).encode_to_vec(),
        );
        put(
            type_url::CLUSTER,
            name,
            envoy::grpc_cluster(service).encode_to_vec(),
        );
        put(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            name,
            spec::load_assignment(name, &envoy::endpoints(service)).encode_to_vec(),
        );
    }
}

/// The resources of an Envoy node (see [`super::envoy`]).
pub fn envoy(mesh: &config::Mesh, node: &NodeIdentity, kind: &NodeKind, snapshot: &mut Snapshot) {
    let mut put = |type_url: &str, name: &str, bytes: Vec<u8>| {
        snapshot.insert(
            type_url,
            name.to_string(),
            VersionedResource::from_encoded(type_url, bytes),
        );
    };
    for service in mesh.services.values() {
        let name = &service.spec.name;
        put(
            type_url::CLUSTER,
            name,
            envoy::service_cluster(mesh, service).encode_to_vec(),
        );
        if envoy::uses_eds(service) {
            put(
                type_url::CLUSTER_LOAD_ASSIGNMENT,
                name,
                spec::load_assignment(name, &envoy::endpoints(service)).encode_to_vec(),
            );
        }
    }
    match kind {
        NodeKind::Service(name) => {
            let backend = node.envoy.backend.clone().or_else(|| {
                mesh.services
                    .get(name)
                    .and_then(|s| s.backend.as_deref())
                    .and_then(|b| rules::endpoint(b, false).ok())
            });
            let Some(backend) = backend else {
                warn!(node = %node.node_id, service = %name,
                    "no backend for the Envoy in front of this service (node metadata {} or the service's backend); no inbound listener",
                    envoy::metadata::BACKEND);
                return;
            };
            put(
                type_url::CLUSTER,
                envoy::LOCAL_APP,
                envoy::local_app_cluster(&backend).encode_to_vec(),
            );
            if let Some(at) = &node.envoy.ext_authz {
                put(
                    type_url::CLUSTER,
                    envoy::ext_authz::CLUSTER,
                    envoy::ext_authz::cluster(at).encode_to_vec(),
                );
            }
            put(
                type_url::LISTENER,
                envoy::INBOUND,
                envoy::inbound_listener(mesh, &node.envoy).encode_to_vec(),
            );
            put(
                type_url::ROUTE_CONFIGURATION,
                envoy::INBOUND,
                envoy::inbound_routes(mesh, name, node.envoy.ext_authz.is_some()).encode_to_vec(),
            );
        }
        NodeKind::Agent(_) | NodeKind::Authorizer | NodeKind::Unregistered => {
            put(
                type_url::LISTENER,
                envoy::OUTBOUND,
                envoy::outbound_listener(&node.envoy).encode_to_vec(),
            );
            put(
                type_url::ROUTE_CONFIGURATION,
                envoy::OUTBOUND,
                envoy::outbound_routes(mesh).encode_to_vec(),
            );
        }
        NodeKind::Foreign => {}
    }
}

/// The EDS resource of a service: one locality with its endpoints.
///
/// Port-0 placeholders (which `meshward up` fills in) are left out until
/// they are filled, and so is an endpoint that does not parse (the config
/// loader refuses those already): a dataplane never has to NACK the whole
/// type for one of them.
pub fn load_assignment(service: &Service) -> VersionedResource {
    let endpoints: Vec<Endpoint> = service
        .endpoints
        .iter()
        .filter_map(|addr| match rules::endpoint(addr, true) {
            Ok(e) if e.port() != 0 => Some(e),
            Ok(_) => None,
            Err(e) => {
                warn!(service = %service.spec.name, endpoint = %addr,
                    "endpoint left out of the load assignment: {e}");
                None
            }
        })
        .collect();
    VersionedResource::from_encoded(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        spec::load_assignment(&service.spec.name, &endpoints).encode_to_vec(),
    )
}

/// The mesh-wide policy bundle as the `meshward.v1.PolicyBundle` message
/// (also used by tests and benchmarks that compile the bundle directly).
pub fn policy_bundle_message(policy: &config::PolicyBundle) -> mw::PolicyBundle {
    spec::policy_bundle(
        &policy.revision,
        &policy.modules,
        policy.data.to_string(),
        &policy.decision,
    )
}

/// The mesh-wide policy bundle resource.
pub fn policy_bundle(policy: &config::PolicyBundle) -> VersionedResource {
    VersionedResource::from_encoded(
        type_url::POLICY_BUNDLE,
        policy_bundle_message(policy).encode_to_vec(),
    )
}

/// The settings every dataplane applies to itself (listener limits).
pub fn dataplane_settings(mesh: &config::Mesh) -> VersionedResource {
    VersionedResource::from_encoded(
        type_url::DATAPLANE_SETTINGS,
        mesh.listeners.to_settings().encode_to_vec(),
    )
}

/// One agent's registry entry, named by its SPIFFE ID.
pub fn agent(agent: &Agent) -> VersionedResource {
    VersionedResource::from_encoded(type_url::AGENT, agent.encode())
}
