//! The validated mesh model: what `mesh.yaml` means once every field has been
//! checked. Everything downstream (snapshots, xDS, `meshward up`) reads this
//! type, never the raw YAML, so a value that reaches a dataplane has already
//! been validated once, in one place.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use meshward_proto::spec::{ForwardClientCert, ListenerLimits, PathAction, PathRules};

/// A whole mesh: one trust domain, its services, its agents and its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    /// The file this model was loaded from (for messages and reloads).
    pub source: PathBuf,
    /// SPIFFE trust domain, e.g. `example.org`.
    pub trust_domain: String,
    /// Services by name (sorted, so snapshots are deterministic).
    pub services: BTreeMap<String, Service>,
    /// Agents by name.
    pub agents: BTreeMap<String, Agent>,
    /// The loaded policy bundle.
    pub policy: PolicyBundle,
    /// Resource limits of every dataplane listener (`listeners:`).
    pub listeners: ListenerLimits,
}

impl Mesh {
    /// The agent whose SPIFFE ID is `spiffe_id`, if registered.
    pub fn agent_by_spiffe_id(&self, spiffe_id: &str) -> Option<&Agent> {
        self.agents.values().find(|a| a.spiffe_id == spiffe_id)
    }

    /// The service whose SPIFFE ID is `spiffe_id`, if registered.
    pub fn service_by_spiffe_id(&self, spiffe_id: &str) -> Option<&Service> {
        self.services.values().find(|s| s.spiffe_id == spiffe_id)
    }
}

/// A service (skill, tool, data source) reachable through the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// The SPIFFE ID its inbound dataplane presents.
    pub spiffe_id: String,
    /// Addresses (`host:port`) of the service's inbound dataplanes. Port 0 is
    /// allowed only as a placeholder that `meshward up` fills in.
    pub endpoints: Vec<String>,
    /// Where the inbound dataplane forwards to (the app on loopback). `None`
    /// means `meshward up` runs a built-in demo echo skill for it.
    pub backend: Option<String>,
    /// Registry metadata: team, environment, data-classification, ...
    pub metadata: BTreeMap<String, String>,
    pub breaker: BreakerSettings,
    /// Limit the inbound dataplane applies to each caller identity.
    pub per_caller_limits: RateLimitSettings,
    /// Encoded slashes and path parameters: refused (default) or kept.
    pub paths: PathRules,
    /// What the inbound dataplane tells the service in
    /// `x-forwarded-client-cert`.
    pub forward_client_cert: ForwardClientCert,
}

/// A registered agent identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub name: String,
    pub spiffe_id: String,
    /// Registry attributes: team, type, environment, ...
    pub attributes: BTreeMap<String, String>,
    pub permissions: Vec<String>,
    /// The agent's own egress limit, applied by its outbound dataplane.
    pub limits: RateLimitSettings,
}

/// Token-bucket (GCRA) rate plus a concurrency cap. Zero disables a dimension.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitSettings {
    pub requests_per_second: f64,
    pub burst: u32,
    pub max_concurrent: u32,
    /// Key the bucket by (identity, destination service) instead of identity.
    pub per_destination: bool,
    /// A request denied by policy costs a token, so denied paths cannot be
    /// probed at full speed.
    pub count_denied: bool,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 0.0,
            burst: 0,
            max_concurrent: 0,
            per_destination: false,
            count_denied: true,
        }
    }
}

/// Per-(caller identity, upstream) circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    pub open_for: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        }
    }
}

/// Rego modules and data, loaded from the bundle directory.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyBundle {
    /// The directory the bundle was loaded from.
    pub dir: PathBuf,
    /// Content hash of modules, data and decision.
    pub revision: String,
    /// `(path relative to dir, source)`, sorted by path; `_test.rego` files excluded.
    pub modules: Vec<(String, String)>,
    /// Merged `data.json` / `data.yaml` documents of the bundle.
    pub data: serde_json::Value,
    /// Rule evaluated for a decision, e.g. `data.meshward.authz.decision`.
    pub decision: String,
}

/// A change applied to every successfully loaded model before it is
/// published (used by `meshward up` to fill in port-0 placeholders).
pub type Overlay = std::sync::Arc<dyn Fn(&mut Mesh) + Send + Sync>;
