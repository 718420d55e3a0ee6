//! The control plane's admin endpoint: ready when it serves xDS with a usable
//! SVID, and `/config_dump` shows the model it serves. The admin server
//! itself is shared with the dataplanes.

use meshward_contract::admin::AdminSource;
use meshward_contract::spec::ListenerLimits;

use crate::ControlPlaneStatus;

impl AdminSource for ControlPlaneStatus {
    fn readiness(&self) -> Result<(), String> {
        ControlPlaneStatus::readiness(self)
    }

    /// The control plane's admin listener follows `mesh.yaml` like the
    /// dataplanes' do.
    fn listener_limits(&self) -> ListenerLimits {
        self.mesh().listeners
    }

    fn config_dump(&self) -> serde_json::Value {
        let mesh = self.mesh();
        serde_json::json!({
            "source": mesh.source,
            "trust_domain": mesh.trust_domain,
            "policy_revision": mesh.policy.revision,
            "policy_modules": mesh.policy.modules.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            "services": mesh.services.values().map(|s| serde_json::json!({
                "name": s.spec.name,
                "spiffe_id": s.spec.spiffe_id,
                "endpoints": s.endpoints,
                "metadata": s.spec.metadata,
            })).collect::<Vec<_>>(),
            "agents": mesh.agents.values().map(|a| serde_json::json!({
                "name": a.name,
                "spiffe_id": a.spiffe_id,
                "attributes": a.attributes,
                "permissions": a.permissions,
            })).collect::<Vec<_>>(),
        })
    }
}
