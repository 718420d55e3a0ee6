//! Which configuration a node may receive, decided from the SPIFFE ID its
//! certificate proves and nothing else (never from the `Node` message, which
//! the client writes itself).

use crate::config::Mesh;

/// What a proven SPIFFE ID is in this mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A registered agent (its name): it sees only its own `Agent`.
    Agent(String),
    /// A registered service (its name): its inbound side authorizes callers,
    /// so it sees every `Agent`.
    Service(String),
    /// An ext_authz / rate-limit backend listed under `authorizers:`: it
    /// decides for every service, so it sees what a service sees.
    Authorizer,
    /// In the trust domain but registered as neither, e.g. the control plane
    /// itself or a plain Envoy gateway: clusters and endpoints only.
    Unregistered,
    /// Outside the mesh's trust domain (or not a SPIFFE ID): nothing.
    Foreign,
}

/// Classifies `spiffe_id` against `mesh`.
///
/// An ID registered both as an agent and as a service (config validation
/// should prevent it) is treated as the agent: the kind that sees less.
pub fn classify(mesh: &Mesh, spiffe_id: &str) -> NodeKind {
    if !in_trust_domain(&mesh.trust_domain, spiffe_id) {
        return NodeKind::Foreign;
    }
    if let Some(agent) = mesh.agent_by_spiffe_id(spiffe_id) {
        return NodeKind::Agent(agent.name.clone());
    }
    if let Some(service) = mesh.service_by_spiffe_id(spiffe_id) {
        return NodeKind::Service(service.spec.name.clone());
    }
    if mesh.authorizers.iter().any(|a| a == spiffe_id) {
        return NodeKind::Authorizer;
    }
    NodeKind::Unregistered
}

/// True when `spiffe_id` is `spiffe://<trust_domain>/<non-empty path>`.
fn in_trust_domain(trust_domain: &str, spiffe_id: &str) -> bool {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(td, path)| td.eq_ignore_ascii_case(trust_domain) && !path.is_empty())
}
