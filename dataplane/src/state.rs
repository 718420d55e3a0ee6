//! The dataplane's view of the mesh: one immutable, fully validated snapshot.
//!
//! The xDS client builds a new [`MeshState`] only from resources that passed
//! validation and only once every subscribed type has arrived ("warm"), then
//! publishes it on a watch channel. The request path reads the current
//! `Arc<MeshState>` per request, so an update never tears a request in half
//! and a rejected update never reaches it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

pub use meshward_proto::spec::{ForwardClientCert, ListenerLimits, PathRules};

use crate::breaker::BreakerSettings;
use crate::policy::CompiledPolicy;
use crate::ratelimit::RateLimitSettings;

/// Everything the request path needs, as of one consistent set of xDS versions.
#[derive(Debug, Clone)]
pub struct MeshState {
    /// Upstream services by cluster (service) name.
    pub clusters: HashMap<String, Arc<Upstream>>,
    /// Registered agents this node may know, by SPIFFE ID.
    pub agents: HashMap<String, Arc<AgentInfo>>,
    /// The compiled mesh policy bundle.
    pub policy: Arc<CompiledPolicy>,
    /// Per type URL, the `system_version_info` of the last applied response.
    pub versions: BTreeMap<String, String>,
    /// Resource limits of this dataplane's listeners.
    pub listeners: ListenerLimits,
}

/// Where an inbound dataplane listens: an IP address, or a DNS name that is
/// resolved when a connection is opened (a Kubernetes Service name), so the
/// mesh file does not have to pin cluster IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Ip(addr) => addr.fmt(f),
            Endpoint::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::Ip(addr)
    }
}

/// One upstream service: where it is, who it must be, how to treat callers.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    /// The SPIFFE ID the service's inbound dataplane must present.
    pub spiffe_id: String,
    /// Its inbound dataplanes (empty until its endpoints arrive).
    pub endpoints: Vec<Endpoint>,
    /// Registry metadata (team, environment, data classification, ...).
    pub metadata: BTreeMap<String, String>,
    /// Per-(caller, upstream) breaker thresholds.
    pub breaker: BreakerSettings,
    /// The limit the service's inbound side applies to each caller.
    pub per_caller_limits: RateLimitSettings,
    /// Encoded slashes and path parameters: refused or kept.
    pub paths: PathRules,
    /// What the inbound side tells the service in `x-forwarded-client-cert`.
    pub forward_client_cert: ForwardClientCert,
}

/// A registered agent identity: attributes, permissions and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInfo {
    pub name: String,
    pub spiffe_id: String,
    pub attributes: BTreeMap<String, String>,
    pub permissions: Vec<String>,
    /// The agent's own egress limit.
    pub limits: RateLimitSettings,
}
