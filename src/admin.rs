//! The control plane's admin endpoint (`/ready`, `/metrics`, `/config_dump`),
//! served by the same admin server as the dataplanes.

use std::sync::Arc;

use meshward_controlplane::ControlPlaneStatus;
use meshward_dataplane::admin::{self, AdminSource};
use meshward_dataplane::listener::{Listener, ListenerKind, ListenerLimits};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct ControlPlaneAdmin(ControlPlaneStatus);

impl AdminSource for ControlPlaneAdmin {
    fn readiness(&self) -> Result<(), String> {
        self.0.readiness()
    }

    /// The control plane's admin listener follows `mesh.yaml` like the
    /// dataplanes' do.
    fn listener_limits(&self) -> ListenerLimits {
        self.0.mesh().listeners
    }

    fn config_dump(&self) -> serde_json::Value {
        let mesh = self.0.mesh();
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

pub async fn serve_controlplane(
    listener: TcpListener,
    status: ControlPlaneStatus,
    metrics: Option<PrometheusHandle>,
    stop: CancellationToken,
) {
    let listener = Listener::new(listener, ListenerKind::Admin, "controlplane");
    admin::serve(listener, Arc::new(ControlPlaneAdmin(status)), metrics, stop).await
}
