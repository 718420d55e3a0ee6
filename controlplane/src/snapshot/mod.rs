//! Per-node snapshots: the mesh model turned into the xDS resources one node
//! may see.
//!
//! A snapshot is built for one *proven* identity (the SPIFFE ID of the xDS
//! stream's mTLS peer), so authorization happens here, once, and the xDS
//! server never has to reason about who may see what: it only serves what the
//! snapshot holds. Every resource carries a content version (hex SHA-256 of
//! its encoded bytes) so a rebuild after an unrelated change keeps the
//! versions of untouched resources and delta xDS sends only what changed.

mod access;
mod cache;
pub mod envoy;
mod resources;

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};

use crate::config::Mesh;

pub use access::{NodeKind, classify};
pub use cache::SnapshotCache;
pub use resources::policy_bundle_message;

/// Type URLs of every resource type the control plane serves, and the
/// order it pushes them in.
pub mod type_url {
    pub use meshward_contract::type_url::*;

    /// The order in which a new snapshot is pushed on an ADS stream: make
    /// before break (clusters before the endpoints and listeners that use
    /// them), then Meshward's own types, which reference nothing.
    pub const PUSH_ORDER: [&str; 7] = [
        CLUSTER,
        CLUSTER_LOAD_ASSIGNMENT,
        LISTENER,
        ROUTE_CONFIGURATION,
        DATAPLANE_SETTINGS,
        POLICY_BUNDLE,
        AGENT,
    ];

    /// Position of `type_url` in [`PUSH_ORDER`]; unknown types go last.
    pub fn push_rank(type_url: &str) -> usize {
        PUSH_ORDER
            .iter()
            .position(|t| *t == type_url)
            .unwrap_or(PUSH_ORDER.len())
    }
}

/// Who is asking: the identity its certificate proves, plus the (unproven)
/// node id and kind of client from the xDS `Node` message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// SPIFFE ID of the stream's mTLS peer; the only input to authorization.
    pub spiffe_id: String,
    /// `Node.id` as sent by the client; used for logs only.
    pub node_id: String,
    /// Which encoding the client understands; never widens what it may see.
    pub client: ClientKind,
    /// Where an Envoy node's listeners bind and its app is (its metadata).
    pub envoy: envoy::EnvoyNode,
}

/// What speaks on the other end of a stream, as its `Node` says. It decides
/// only the encoding: a Meshward dataplane gets Meshward's own types and the
/// service metadata on clusters; any other client (Envoy, gRPC) only types
/// it knows, so its `/config_dump` and decoders never meet an unknown `Any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientKind {
    #[default]
    Meshward,
    /// Envoy or any other client of Envoy's xDS API.
    Envoy,
    /// A proxyless gRPC client (`user_agent_name` "gRPC ..."): `api_listener`s
    /// named after services and certificate provider instances, not SDS.
    Grpc,
}

impl ClientKind {
    /// From the first request's `Node` (Meshward dataplanes set
    /// `user_agent_name` to [`type_url::MESHWARD_USER_AGENT`]).
    pub fn of(node: Option<&envoy_types::pb::envoy::config::core::v3::Node>) -> Self {
        match node {
            Some(n) if n.user_agent_name == type_url::MESHWARD_USER_AGENT => ClientKind::Meshward,
            Some(n) if n.user_agent_name.starts_with("gRPC") => ClientKind::Grpc,
            _ => ClientKind::Envoy,
        }
    }
}

/// One resource with its content version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedResource {
    /// Hex SHA-256 of `resource.value` (the encoded resource).
    pub version: String,
    pub resource: Any,
}

impl VersionedResource {
    /// Wraps already-encoded bytes; the version is derived from them.
    pub fn from_encoded(type_url: &str, value: Vec<u8>) -> Self {
        let version = hex::encode(Sha256::digest(&value));
        Self {
            version,
            resource: Any {
                type_url: type_url.to_string(),
                value,
            },
        }
    }
}

/// All resources one node may see: per type URL, name → versioned resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<String, BTreeMap<String, VersionedResource>>,
}

impl Snapshot {
    /// The resources of `type_url` (empty if the node may see none).
    pub fn resources(&self, type_url: &str) -> impl Iterator<Item = (&str, &VersionedResource)> {
        self.types
            .get(type_url)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// One resource by type and name.
    pub fn get(&self, type_url: &str, name: &str) -> Option<&VersionedResource> {
        self.types.get(type_url).and_then(|m| m.get(name))
    }

    /// Number of resources of `type_url`.
    pub fn len(&self, type_url: &str) -> usize {
        self.types.get(type_url).map_or(0, BTreeMap::len)
    }

    /// True when the snapshot holds no resource at all.
    pub fn is_empty(&self) -> bool {
        self.types.values().all(BTreeMap::is_empty)
    }

    /// Adds (or replaces) a resource.
    pub fn insert(&mut self, type_url: &str, name: String, resource: VersionedResource) {
        self.types
            .entry(type_url.to_string())
            .or_default()
            .insert(name, resource);
    }
}

/// Builds the snapshot for `node` from `mesh`.
///
/// What a node receives depends only on the identity its certificate proves
/// (see [`NodeKind`]):
///
/// | node | clusters + endpoints | `PolicyBundle`, `DataplaneSettings` | `Agent` |
/// |---|---|---|---|
/// | registered agent | all | yes | its own only |
/// | registered service | all | yes | all (its inbound side authorizes callers) |
/// | authorizer (`authorizers:`, an ext_authz backend) | all | yes | all |
/// | other ID in the trust domain (the control plane itself, an Envoy gateway) | all | no | none |
/// | ID outside the trust domain | none | no | none |
///
/// A client that is not a Meshward dataplane ([`ClientKind::Envoy`]) gets
/// only Envoy's types ([`envoy`]): clusters as an Envoy needs them (mTLS to
/// the services' sidecars), endpoints, and listeners and routes for its
/// role: the outbound listener for an agent or an unregistered gateway, the
/// inbound listener for a service. Meshward dataplanes get no listeners or
/// routes (they have their own).
pub fn build(mesh: &Mesh, node: &NodeIdentity) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let kind = classify(mesh, &node.spiffe_id);
    if kind == NodeKind::Foreign {
        return snapshot;
    }
    match node.client {
        ClientKind::Envoy => {
            resources::envoy(mesh, node, &kind, &mut snapshot);
            return snapshot;
        }
        ClientKind::Grpc => {
            resources::grpc(mesh, &mut snapshot);
            return snapshot;
        }
        ClientKind::Meshward => {}
    }
    for service in mesh.services.values() {
        snapshot.insert(
            type_url::CLUSTER,
            service.spec.name.clone(),
            resources::cluster(service),
        );
        snapshot.insert(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            service.spec.name.clone(),
            resources::load_assignment(service),
        );
    }
    let agents: Vec<_> = match &kind {
        NodeKind::Agent(_) => mesh
            .agent_by_spiffe_id(&node.spiffe_id)
            .into_iter()
            .collect(),
        NodeKind::Service(_) | NodeKind::Authorizer => mesh.agents.values().collect(),
        NodeKind::Unregistered | NodeKind::Foreign => Vec::new(),
    };
    if matches!(
        kind,
        NodeKind::Agent(_) | NodeKind::Service(_) | NodeKind::Authorizer
    ) {
        snapshot.insert(
            type_url::POLICY_BUNDLE,
            resources::POLICY_BUNDLE_NAME.to_string(),
            resources::policy_bundle(&mesh.policy),
        );
        snapshot.insert(
            type_url::DATAPLANE_SETTINGS,
            resources::DATAPLANE_SETTINGS_NAME.to_string(),
            resources::dataplane_settings(mesh),
        );
    }
    for agent in agents {
        snapshot.insert(
            type_url::AGENT,
            agent.spiffe_id.clone(),
            resources::agent(agent),
        );
    }
    snapshot
}

#[cfg(test)]
pub(crate) mod tests;
