//! The validated mesh model: what `mesh.yaml` means once every field has been
//! checked. Everything downstream (snapshots, xDS, `meshward up`) reads this
//! type, never the raw YAML, so a value that reaches a dataplane has already
//! been validated once, in one place.

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use meshward_contract::spec::{
    Agent, BreakerSettings, ForwardClientCert, ListenerLimits, PathAction, PathRules,
    RateLimitSettings, RouteTimeouts, ServiceTimeouts, Timeouts,
};

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
    /// Dataplanes that answer Envoy's ext_authz and rate-limit calls
    /// (`authorizers:`): they receive the policy, every agent and every
    /// service, as a service's inbound sidecar does.
    pub authorizers: Vec<String>,
    /// `telemetry.tracing`: where traces go unless the OpenTelemetry
    /// environment says otherwise.
    pub tracing: Option<meshward_telemetry::TracingFile>,
}

impl Mesh {
    /// The agent whose SPIFFE ID is `spiffe_id`, if registered.
    pub fn agent_by_spiffe_id(&self, spiffe_id: &str) -> Option<&Agent> {
        self.agents.values().find(|a| a.spiffe_id == spiffe_id)
    }

    /// The service whose SPIFFE ID is `spiffe_id`, if registered.
    pub fn service_by_spiffe_id(&self, spiffe_id: &str) -> Option<&Service> {
        self.services
            .values()
            .find(|s| s.spec.spiffe_id == spiffe_id)
    }

    /// Who exists in the mesh, for SPIRE registration entries.
    pub fn spire_registry(&self) -> meshward_spire::entries::Registry {
        meshward_spire::entries::Registry {
            trust_domain: self.trust_domain.clone(),
            agents: self
                .agents
                .values()
                .map(|a| (a.name.clone(), a.spiffe_id.clone()))
                .collect(),
            services: self
                .services
                .values()
                .map(|s| (s.spec.name.clone(), s.spec.spiffe_id.clone()))
                .collect(),
            authorizers: self
                .authorizers
                .iter()
                .map(|id| {
                    let name = id.rsplit('/').next().unwrap_or(id);
                    (name.to_string(), id.clone())
                })
                .collect(),
        }
    }
}

/// A service as `mesh.yaml` describes it: what every dataplane learns about
/// it ([`meshward_contract::spec::Service`], sent as its cluster) plus where
/// it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub spec: meshward_contract::spec::Service,
    /// Addresses (`host:port`) of the service's inbound dataplanes. Port 0 is
    /// allowed only as a placeholder that `meshward up` fills in.
    pub endpoints: Vec<String>,
    /// Where the inbound dataplane forwards to (the app on loopback). `None`
    /// means `meshward up` runs its built-in demo service (`src/demo/`).
    pub backend: Option<String>,
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
