//! The dataplane's view of the mesh: one immutable, fully validated snapshot.
//!
//! The xDS client builds a new [`MeshState`] only from resources that passed
//! validation and only once every subscribed type has arrived ("warm"), then
//! publishes it on a watch channel. The request path reads the current
//! `Arc<MeshState>` per request, so an update never tears a request in half
//! and a rejected update never reaches it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use meshward_contract::spec::{
    Agent, Endpoint, ForwardClientCert, ListenerLimits, PathRules, Service,
};

use crate::policy::CompiledPolicy;

/// Everything the request path needs, as of one consistent set of xDS versions.
#[derive(Debug, Clone)]
pub struct MeshState {
    /// Upstream services by cluster (service) name.
    pub clusters: HashMap<String, Arc<Upstream>>,
    /// Registered agents this node may know, by SPIFFE ID.
    pub agents: HashMap<String, Arc<Agent>>,
    /// The compiled mesh policy bundle.
    pub policy: Arc<CompiledPolicy>,
    /// Per type URL, the `system_version_info` of the last applied response.
    pub versions: BTreeMap<String, String>,
    /// Resource limits of this dataplane's listeners.
    pub listeners: ListenerLimits,
}

impl MeshState {
    /// The service whose SPIFFE ID is `spiffe_id`: an inbound dataplane's own.
    pub fn service_by_spiffe_id(&self, spiffe_id: &str) -> Option<&Arc<Upstream>> {
        self.clusters
            .values()
            .find(|u| u.service.spiffe_id == spiffe_id)
    }
}

/// One upstream service: who it is and how to treat callers (its cluster),
/// and where its inbound dataplanes are (its endpoints).
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub service: Service,
    /// Its inbound dataplanes (empty until its endpoints arrive).
    pub endpoints: Vec<Endpoint>,
}
