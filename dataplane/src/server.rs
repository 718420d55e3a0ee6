//! One dataplane: its xDS client, listeners and admin endpoint, started and
//! stopped together. `meshward up` runs several in one process, so nothing
//! here is global (the metrics recorder is passed in).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshward_spire::IdentitySource;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminSource};
use crate::proxy::{self, Shared, upstream::MeshClient};
use crate::state::MeshState;
use crate::xds::{self, XdsClientConfig};

/// Everything a dataplane needs to start. Listeners are bound by the caller
/// so `meshward up` can pick free ports without races.
pub struct DataplaneOptions {
    /// Name for logs and metric labels.
    pub name: String,
    pub identity: IdentitySource,
    pub xds: XdsClientConfig,
    /// Agent-facing plain HTTP listener (sidecar of an agent).
    pub outbound: Option<TcpListener>,
    /// mTLS listener in front of a service.
    pub inbound: Option<TcpListener>,
    pub admin: Option<TcpListener>,
    /// The app behind the inbound listener.
    pub local_upstream: Option<SocketAddr>,
    pub request_timeout: Duration,
    pub metrics: Option<PrometheusHandle>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("dataplane {name}: identity: {source}")]
    Identity {
        name: String,
        #[source]
        source: meshward_spire::IdentityError,
    },
    #[error("dataplane {name}: not ready after {waited:?}: {why}")]
    NotReady {
        name: String,
        waited: Duration,
        why: String,
    },
}

/// Addresses a started dataplane listens on.
#[derive(Debug, Clone, Default)]
pub struct DataplaneAddrs {
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// A running dataplane; dropping it does not stop it, [`Dataplane::shutdown`] does.
pub struct Dataplane {
    pub name: String,
    pub addrs: DataplaneAddrs,
    status: Arc<Status>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Readiness: warm config, and for an inbound dataplane its own service known.
struct Status {
    own_spiffe_id: String,
    has_inbound: bool,
    state: watch::Receiver<Option<Arc<MeshState>>>,
    identity: IdentitySource,
}

impl AdminSource for Status {
    fn readiness(&self) -> Result<(), String> {
        if let Some(not_after) = self.identity.not_after()
            && not_after <= std::time::SystemTime::now()
        {
            return Err(format!("SVID for {} has expired", self.own_spiffe_id));
        }
        let state = self
            .state
            .borrow()
            .clone()
            .ok_or_else(|| "waiting for configuration from the control plane".to_string())?;
        if self.has_inbound
            && !state
                .clusters
                .values()
                .any(|u| u.spiffe_id == self.own_spiffe_id)
        {
            return Err(format!(
                "{} is not a registered service in the mesh config",
                self.own_spiffe_id
            ));
        }
        Ok(())
    }

    fn config_dump(&self) -> serde_json::Value {
        let state = self.state.borrow().clone();
        match state {
            None => serde_json::json!({ "spiffe_id": self.own_spiffe_id, "warm": false }),
            Some(s) => serde_json::json!({
                "spiffe_id": self.own_spiffe_id,
                "warm": true,
                "versions": s.versions,
                "policy_revision": s.policy.revision(),
                "clusters": s.clusters.values().map(|u| serde_json::json!({
                    "name": u.name,
                    "spiffe_id": u.spiffe_id,
                    "endpoints": u.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    "metadata": u.metadata,
                })).collect::<Vec<_>>(),
                "agents": s.agents.values().map(|a| serde_json::json!({
                    "name": a.name,
                    "spiffe_id": a.spiffe_id,
                    "attributes": a.attributes,
                    "permissions": a.permissions,
                })).collect::<Vec<_>>(),
            }),
        }
    }
}

impl Dataplane {
    /// Starts the xDS client and every listener given.
    pub async fn start(opts: DataplaneOptions) -> Result<Dataplane, DataplaneError> {
        let name = opts.name.clone();
        let own_spiffe_id =
            opts.identity
                .spiffe_id()
                .map_err(|source| DataplaneError::Identity {
                    name: name.clone(),
                    source,
                })?;
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let (state, xds_task) = xds::spawn(opts.xds, opts.identity.clone());
        tasks.push(xds_task);

        let shared = Arc::new(Shared::new(
            name.clone(),
            own_spiffe_id.clone(),
            state.clone(),
            MeshClient::new(opts.identity.clone()),
            opts.local_upstream,
            opts.request_timeout,
        ));
        let mut addrs = DataplaneAddrs::default();
        if let Some(l) = opts.outbound {
            addrs.outbound = l.local_addr().ok();
            tasks.push(tokio::spawn(proxy::serve_outbound(
                l,
                shared.clone(),
                stop.clone(),
            )));
        }
        let has_inbound = opts.inbound.is_some();
        if let Some(l) = opts.inbound {
            addrs.inbound = l.local_addr().ok();
            let tls = meshward_spire::tls::server_config(&opts.identity, &[b"h2", b"http/1.1"])
                .map_err(|source| DataplaneError::Identity {
                    name: name.clone(),
                    source,
                })?;
            tasks.push(tokio::spawn(proxy::serve_inbound(
                l,
                tls,
                shared.clone(),
                stop.clone(),
            )));
        }
        let status = Arc::new(Status {
            own_spiffe_id,
            has_inbound,
            state,
            identity: opts.identity,
        });
        if let Some(l) = opts.admin {
            addrs.admin = l.local_addr().ok();
            tasks.push(tokio::spawn(admin::serve(
                l,
                status.clone(),
                opts.metrics,
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(evict_idle(shared, stop.clone())));
        Ok(Dataplane {
            name,
            addrs,
            status,
            stop,
            tasks,
        })
    }

    /// `Ok(())` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.status.readiness()
    }

    /// Waits until ready (config warm), or fails with the reason after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), DataplaneError> {
        let mut state = self.status.state.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.readiness().is_ok() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, state.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(DataplaneError::NotReady {
                        name: self.name.clone(),
                        waited: timeout,
                        why: self.readiness().err().unwrap_or_default(),
                    });
                }
            }
        }
    }

    /// Stops listeners and the xDS client.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Keeps limiter and breaker memory bounded by forgetting idle identities.
async fn evict_idle(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                shared.limiter.evict_idle(Duration::from_secs(300));
                shared.breakers.evict_idle(Duration::from_secs(300));
            }
        }
    }
}
