//! One dataplane: its xDS client, listeners and admin endpoint, started and
//! stopped together. `meshward up` runs several in one process, so nothing
//! here is global (the metrics recorder is passed in).
//!
//! A dataplane starts without waiting for its SVID: listeners and the admin
//! endpoint come up at once and refuse traffic (503 `not_ready` outbound, no
//! handshake inbound) until the first SVID and a warm config are there;
//! `/ready` names what is missing. See [`crate::identity`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshward_spire::WorkloadIdentity;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminSource};
use crate::config_dump;
use crate::extauthz::{ExtAuthz, ExtAuthzSettings};
use crate::grpc_server::{self, GrpcEndpoint};
use crate::listener::{Listener, ListenerKind, ListenerLimits};
use crate::observe::Observability;
use crate::pipeline::refusal::NotReady;
use crate::proxy::{self, Shared, upstream::MeshClient};
use crate::ratelimit::service::RateLimitServer;
use crate::state::MeshState;
use crate::xds::XdsClientConfig;

/// Everything a dataplane needs to start. Listeners are bound by the caller
/// so `meshward up` can pick free ports without races.
pub struct DataplaneOptions {
    /// Name for logs and metric labels.
    pub name: String,
    /// This workload's identity; may still be waiting for the Workload API
    /// (pass an already connected `IdentitySource` with `.into()`).
    pub identity: WorkloadIdentity,
    pub xds: XdsClientConfig,
    /// Agent-facing plain HTTP listener (sidecar of an agent).
    pub outbound: Option<TcpListener>,
    /// mTLS listener in front of a service.
    pub inbound: Option<TcpListener>,
    pub admin: Option<TcpListener>,
    /// The app behind the inbound listener.
    pub local_upstream: Option<SocketAddr>,
    pub metrics: Option<PrometheusHandle>,
    /// Envoy's ext_authz v3 `Check` (DESIGN.md's port 9191).
    pub ext_authz: Option<ExtAuthzListener>,
    /// Envoy's rate-limit v3 service (DESIGN.md's port 8081).
    pub rate_limit: Option<GrpcEndpoint>,
    /// Traces, access and decision logs (all off by default).
    pub observe: Observability,
}

/// An ext_authz listener and how it reads its checks.
pub struct ExtAuthzListener {
    pub endpoint: GrpcEndpoint,
    pub settings: ExtAuthzSettings,
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
    /// `host:port` or `unix:<path>`.
    pub ext_authz: Option<String>,
    pub rate_limit: Option<String>,
}

/// A running dataplane; dropping it does not stop it, [`Dataplane::shutdown`] does.
pub struct Dataplane {
    pub name: String,
    pub addrs: DataplaneAddrs,
    status: Arc<Status>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Readiness: a usable SVID, warm config, and for an inbound dataplane its
/// own service known.
struct Status {
    has_inbound: bool,
    state: watch::Receiver<Option<Arc<MeshState>>>,
    identity: WorkloadIdentity,
    /// Its breakers and last NACK, for `/config_dump`.
    shared: Arc<Shared>,
}

impl AdminSource for Status {
    fn readiness(&self) -> Result<(), String> {
        let own_spiffe_id = self.identity.check().map_err(|e| e.to_string())?.spiffe_id;
        let state = self
            .state
            .borrow()
            .clone()
            .ok_or_else(|| NotReady::NoConfig.to_string())?;
        if self.has_inbound && state.service_by_spiffe_id(&own_spiffe_id).is_none() {
            return Err(NotReady::NotRegistered {
                spiffe_id: own_spiffe_id,
            }
            .to_string());
        }
        Ok(())
    }

    fn listener_limits(&self) -> ListenerLimits {
        self.state
            .borrow()
            .as_ref()
            .map(|s| s.listeners)
            .unwrap_or_default()
    }

    fn config_dump(&self) -> serde_json::Value {
        let state = self.state.borrow().clone();
        let source = self.identity.source();
        let svid = source.as_ref().and_then(|s| s.last_svid());
        let bundles = source.as_ref().map(|s| s.bundle_authorities());
        let identity = serde_json::json!({
            "endpoint": self.identity.endpoint(),
            "workload_api": format!("{:?}", self.identity.link()),
            "usable": self.identity.check().map_err(|e| e.to_string()).err().unwrap_or_else(|| "yes".into()),
            "serial": svid.as_ref().map(|s| s.serial.clone()),
            "not_after": svid.as_ref().map(|s| s.not_after_rfc3339()),
            "not_after_unix": svid.as_ref().map(|s| s.not_after_unix()),
            "authority_key_id": svid.as_ref().and_then(|s| s.authority_key_id.clone()),
            "bundle_authorities": bundles,
        });
        let spiffe_id = svid.map(|s| s.spiffe_id);
        let breakers =
            config_dump::breakers(&self.shared.breakers.snapshot(config_dump::BREAKERS_LISTED));
        let last_rejected_xds = config_dump::rejection(self.shared.xds_rejected.get().as_ref());
        match state {
            None => serde_json::json!({
                "spiffe_id": spiffe_id,
                "identity": identity,
                "warm": false,
                "breakers": breakers,
                "last_rejected_xds": last_rejected_xds,
            }),
            Some(s) => serde_json::json!({
                "spiffe_id": spiffe_id,
                "identity": identity,
                "warm": true,
                "versions": s.versions,
                "policy_revision": s.policy.revision(),
                "limits": config_dump::effective_limits(&s, spiffe_id.as_deref()),
                "breakers": breakers,
                "last_rejected_xds": last_rejected_xds,
                "listeners": config_dump::listener_limits(&s.listeners),
                "clusters": s.clusters.values().map(|u| serde_json::json!({
                    "name": u.service.name,
                    "spiffe_id": u.service.spiffe_id,
                    "endpoints": u.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    "metadata": u.service.metadata,
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
    /// Starts every listener given and the admin endpoint at once; the xDS
    /// client and inbound TLS follow when the first SVID arrives.
    pub async fn start(opts: DataplaneOptions) -> Result<Dataplane, DataplaneError> {
        let name = opts.name.clone();
        let identity = opts.identity;
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let (state_tx, state) = watch::channel(None);

        let mut shared = Shared::new(
            name.clone(),
            identity.clone(),
            state.clone(),
            MeshClient::new(identity.clone()),
            opts.local_upstream,
        );
        shared.observe = opts.observe;
        let shared = Arc::new(shared);
        let mut addrs = DataplaneAddrs::default();
        if let Some(l) = opts.outbound {
            addrs.outbound = l.local_addr().ok();
            tasks.push(tokio::spawn(proxy::serve_outbound(
                Listener::new(l, ListenerKind::Outbound, &name),
                shared.clone(),
                stop.clone(),
            )));
        }
        let has_inbound = opts.inbound.is_some();
        if let Some(l) = opts.inbound {
            addrs.inbound = l.local_addr().ok();
            tasks.push(tokio::spawn(proxy::serve_inbound(
                Listener::new(l, ListenerKind::Inbound, &name),
                shared.clone(),
                stop.clone(),
            )));
        }
        let status = Arc::new(Status {
            has_inbound,
            state,
            identity: identity.clone(),
            shared: shared.clone(),
        });
        if let Some(ext) = opts.ext_authz {
            addrs.ext_authz = Some(ext.endpoint.listener.describe());
            let routes = ExtAuthz::new(shared.clone(), ext.settings).into_routes(stop.clone());
            let ready = status.clone();
            tasks.push(tokio::spawn(grpc_server::serve(
                name.clone(),
                routes,
                &["envoy.service.auth.v3.Authorization"],
                ext.endpoint,
                identity.clone(),
                Arc::new(move || ready.readiness().is_ok()),
                stop.clone(),
            )));
        }
        if let Some(endpoint) = opts.rate_limit {
            addrs.rate_limit = Some(endpoint.listener.describe());
            let service = RateLimitServer::new(shared.clone()).into_service();
            let ready = status.clone();
            tasks.push(tokio::spawn(grpc_server::serve(
                name.clone(),
                tonic::service::Routes::new(service),
                &["envoy.service.ratelimit.v3.RateLimitService"],
                endpoint,
                identity.clone(),
                Arc::new(move || ready.readiness().is_ok()),
                stop.clone(),
            )));
        }
        if let Some(l) = opts.admin {
            addrs.admin = l.local_addr().ok();
            tasks.push(tokio::spawn(admin::serve(
                Listener::new(l, ListenerKind::Admin, &name),
                status.clone(),
                opts.metrics,
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(meshward_spire::identity::export_svid_metrics(
            identity.clone(),
            vec![("dataplane", name.clone())],
        )));
        tasks.push(tokio::spawn(crate::identity::bring_up(
            identity,
            opts.xds,
            shared.clone(),
            has_inbound,
            state_tx,
            stop.clone(),
        )));
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

    /// Waits until ready (usable SVID, config warm), or fails with the
    /// reason after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), DataplaneError> {
        let mut state = self.status.state.clone();
        let mut identity = self.status.identity.updated();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.readiness().is_ok() {
                return Ok(());
            }
            let changed = async {
                tokio::select! {
                    r = state.changed() => r.is_ok(),
                    r = identity.changed() => r.is_ok(),
                }
            };
            match tokio::time::timeout_at(deadline, changed).await {
                Ok(true) => continue,
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
