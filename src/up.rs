//! `meshward up`: a whole mesh on loopback in one process.
//!
//! It runs the embedded dev identity server, the control plane, one outbound
//! dataplane per agent, one inbound dataplane per service and, for services
//! without a `backend`, its built-in demo service (`crate::demo`: the demo's
//! own API, with the echo behind it). Every component gets its SVID
//! through the SPIFFE Workload API from its own socket, exactly as it would
//! from a SPIRE agent. Ports are assigned here (the config's port-0
//! placeholders) and the result is written to `<state dir>/up.json`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use meshward_controlplane::config::{self, Mesh};
use meshward_controlplane::{ControlPlane, ControlPlaneOptions};
use meshward_dataplane::admin;
use meshward_dataplane::extauthz::ExtAuthzSettings;
use meshward_dataplane::grpc_server::{GrpcEndpoint, GrpcListener, GrpcTls};
use meshward_dataplane::listener::{Listener, ListenerKind};
use meshward_dataplane::xds::XdsClientConfig;
use meshward_dataplane::{Dataplane, DataplaneOptions, ExtAuthzListener};
use meshward_spire::IdentitySource;
use meshward_spire::devserver::{DevIdentityServer, DevServerOptions};
use meshward_telemetry::Tracing;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{demo, telemetry};
use meshward_dataplane::observe::{ObserveSettings, Sinks};

/// How to run the mesh.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// Lifetime of the dev server's SVIDs (they rotate at half of it).
    pub svid_ttl: Duration,
    pub ready_timeout: Duration,
    /// The host name advertised in service endpoints instead of the
    /// loopback IP (e.g. `localhost`), so dataplanes resolve it by DNS as
    /// they would a Kubernetes Service name.
    pub advertise_host: Option<String>,
    /// Services whose inbound sidecar runs outside `up` (an Envoy on the
    /// control plane's xDS): `up` starts no dataplane for them and keeps
    /// their `endpoints` as written; it still runs their demo service and
    /// serves their identity socket.
    pub external_services: std::collections::BTreeSet<String>,
    /// Where a dataplane answers Envoy's ext_authz `Check` (plain gRPC; the
    /// first SPIFFE ID under `authorizers:` is its identity). `None`: no
    /// ext_authz server.
    pub ext_authz: Option<SocketAddr>,
    /// Where the same dataplane answers Envoy's rate-limit service calls.
    pub rate_limit: Option<SocketAddr>,
    /// Traces and request logs for every dataplane.
    pub observe: ObserveSettings,
}

impl UpOptions {
    pub fn new(config: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            config: config.into(),
            state_dir: state_dir.into(),
            svid_ttl: Duration::from_secs(3600),
            ready_timeout: Duration::from_secs(30),
            advertise_host: None,
            external_services: Default::default(),
            ext_authz: None,
            rate_limit: None,
            observe: ObserveSettings::default(),
        }
    }
}

/// What runs where: printed as a table and written to `up.json`.
#[derive(Debug, Clone, Serialize)]
pub struct UpInfo {
    pub trust_domain: String,
    pub config: PathBuf,
    pub identity: IdentityInfo,
    pub controlplane: ControlPlaneInfo,
    pub agents: Vec<AgentInfo>,
    pub services: Vec<ServiceInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorizer: Option<AuthorizerInfo>,
}

/// The dataplane that answers Envoy's ext_authz and rate-limit calls.
#[derive(Debug, Clone, Serialize)]
pub struct AuthorizerInfo {
    pub spiffe_id: String,
    /// `host:port` of the ext_authz v3 gRPC service.
    pub ext_authz: Option<String>,
    /// `host:port` of the rate-limit v3 gRPC service.
    pub rate_limit: Option<String>,
    pub admin: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentityInfo {
    /// Directory holding one Workload API socket per workload.
    pub socket_dir: PathBuf,
    pub sockets: BTreeMap<String, PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneInfo {
    pub spiffe_id: String,
    pub xds: String,
    pub admin: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub name: String,
    pub spiffe_id: String,
    pub outbound: String,
    pub admin: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceInfo {
    pub name: String,
    pub spiffe_id: String,
    pub inbound: String,
    pub admin: String,
    /// The app behind the inbound dataplane.
    pub backend: String,
    /// True when `meshward up` runs the built-in demo service as the backend.
    pub demo_skill: bool,
}

/// A running mesh.
pub struct Up {
    pub info: UpInfo,
    identity: DevIdentityServer,
    controlplane: ControlPlane,
    dataplanes: Vec<Dataplane>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn bind() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let a = l.local_addr()?;
    Ok((l, a))
}

impl Up {
    /// Starts everything and returns once every dataplane is ready.
    pub async fn start(opts: UpOptions) -> anyhow::Result<Up> {
        let mesh: Mesh = config::load(&opts.config).map_err(|errors| {
            anyhow!(
                "{} is invalid:\n{}",
                opts.config.display(),
                errors
                    .iter()
                    .map(|e| format!("  {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        std::fs::create_dir_all(&opts.state_dir)
            .with_context(|| format!("creating state dir {}", opts.state_dir.display()))?;
        let metrics = telemetry::prometheus();
        // Traces: the OpenTelemetry environment, else the mesh file's
        // `telemetry.tracing`.
        let mut observe = opts.observe.clone();
        if observe.tracing.is_none() {
            observe.tracing = meshward_telemetry::TracingConfig::resolve(mesh.tracing.as_ref())?;
        }
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();

        // Identity first: everything else needs an SVID.
        let socket_dir = opts.state_dir.join("identity");
        let identity = DevIdentityServer::start(DevServerOptions {
            dir: socket_dir.clone(),
            trust_domain: mesh.trust_domain.clone(),
            svid_ttl: opts.svid_ttl,
        })
        .await
        .context("starting the dev identity server")?;
        let mut sockets = BTreeMap::new();
        let mut source_for = async |spiffe_id: &str| -> anyhow::Result<IdentitySource> {
            let socket = identity
                .register(spiffe_id)
                .await
                .with_context(|| format!("registering {spiffe_id}"))?;
            sockets.insert(spiffe_id.to_string(), socket.clone());
            IdentitySource::connect(&socket.to_string_lossy(), Duration::from_secs(10))
                .await
                .with_context(|| format!("SVID for {spiffe_id}"))
        };

        // Bind every listener up front so the control plane can advertise
        // the real inbound addresses from its first snapshot.
        let (xds_listener, xds_addr) = bind().await?;
        let (cp_admin_listener, cp_admin_addr) = bind().await?;
        let mut service_ports = BTreeMap::new();
        for svc in mesh
            .services
            .values()
            .filter(|s| !opts.external_services.contains(&s.spec.name))
        {
            let inbound = bind().await?;
            let admin = bind().await?;
            let backend = match &svc.backend {
                Some(b) => (
                    None,
                    b.parse::<SocketAddr>().with_context(|| {
                        format!(
                            "service {}: backend {b:?} must be an ip:port",
                            svc.spec.name
                        )
                    })?,
                ),
                None => {
                    let (l, a) = bind().await?;
                    (Some(l), a)
                }
            };
            service_ports.insert(svc.spec.name.clone(), (inbound, admin, backend));
        }
        let inbound_addrs: BTreeMap<String, String> = service_ports
            .iter()
            .map(|(name, ((_, a), _, _))| {
                let addr = match &opts.advertise_host {
                    Some(host) => format!("{host}:{}", a.port()),
                    None => a.to_string(),
                };
                (name.clone(), addr)
            })
            .collect();
        let overlay: config::Overlay = Arc::new(move |mesh: &mut Mesh| {
            for svc in mesh.services.values_mut() {
                if let Some(addr) = inbound_addrs.get(&svc.spec.name) {
                    svc.endpoints = vec![addr.clone()];
                }
            }
        });

        let cp_id = format!("spiffe://{}/meshward/controlplane", mesh.trust_domain);
        // The control plane's SVID also names `localhost`: gRPC's xDS
        // client checks the server's host name, not its SPIFFE ID.
        identity
            .register_with_dns(&cp_id, &["localhost"])
            .await
            .with_context(|| format!("registering {cp_id}"))?;
        let cp_identity = source_for(&cp_id).await?;
        let controlplane = ControlPlane::start(ControlPlaneOptions {
            config: opts.config.clone(),
            overlay: Some(overlay),
            identity: cp_identity,
            xds: xds_listener,
            tracing: Tracing::start(observe.tracing.as_ref(), "controlplane")?,
        })
        .await
        .context("starting the control plane")?;
        tasks.push(tokio::spawn(admin::serve(
            Listener::new(cp_admin_listener, ListenerKind::Admin, "controlplane"),
            Arc::new(controlplane.status()),
            metrics.clone(),
            stop.clone(),
        )));

        let xds = |node: &str| XdsClientConfig {
            address: xds_addr.to_string(),
            server_spiffe_id: Some(cp_id.clone()),
            node_id: node.to_string(),
            cluster: "meshward-up".to_string(),
        };
        let sinks = Sinks::open(&observe)?;
        let mut dataplanes = Vec::new();
        let mut services = Vec::new();
        for (name, ((inbound, inbound_addr), (admin, admin_addr), (skill_listener, backend))) in
            service_ports
        {
            let svc = &mesh.services[&name];
            let demo_skill = skill_listener.is_some();
            if let Some(l) = skill_listener {
                tasks.push(tokio::spawn(demo::serve(name.clone(), l, stop.clone())));
            }
            let source = source_for(&svc.spec.spiffe_id).await?;
            dataplanes.push(
                Dataplane::start(DataplaneOptions {
                    name: format!("{name}-inbound"),
                    observe: sinks.for_dataplane(&format!("{name}-inbound"))?,
                    identity: source.into(),
                    xds: xds(&format!("{name}-inbound")),
                    outbound: None,
                    inbound: Some(inbound),
                    admin: Some(admin),
                    local_upstream: Some(backend),
                    metrics: metrics.clone(),
                    ext_authz: None,
                    rate_limit: None,
                })
                .await?,
            );
            services.push(ServiceInfo {
                name: name.clone(),
                spiffe_id: svc.spec.spiffe_id.clone(),
                inbound: inbound_addr.to_string(),
                admin: admin_addr.to_string(),
                backend: backend.to_string(),
                demo_skill,
            });
        }
        let mut agents = Vec::new();
        for agent in mesh.agents.values() {
            let (outbound, outbound_addr) = bind().await?;
            let (admin, admin_addr) = bind().await?;
            let source = source_for(&agent.spiffe_id).await?;
            dataplanes.push(
                Dataplane::start(DataplaneOptions {
                    name: agent.name.clone(),
                    observe: sinks.for_dataplane(&agent.name)?,
                    identity: source.into(),
                    xds: xds(&agent.name),
                    outbound: Some(outbound),
                    inbound: None,
                    admin: Some(admin),
                    local_upstream: None,
                    metrics: metrics.clone(),
                    ext_authz: None,
                    rate_limit: None,
                })
                .await?,
            );
            agents.push(AgentInfo {
                name: agent.name.clone(),
                spiffe_id: agent.spiffe_id.clone(),
                outbound: outbound_addr.to_string(),
                admin: admin_addr.to_string(),
            });
        }
        // One dataplane answers Envoy's ext_authz and rate-limit calls.
        let authorizer = if opts.ext_authz.is_some() || opts.rate_limit.is_some() {
            let spiffe_id = mesh.authorizers.first().cloned().context(
                "ext_authz and rate-limit servers need an identity: list its SPIFFE ID under `authorizers:` in the mesh file",
            )?;
            let grpc = async |addr: Option<SocketAddr>,
                              what: &str|
                   -> anyhow::Result<Option<(GrpcEndpoint, String)>> {
                let Some(addr) = addr else { return Ok(None) };
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the {what} listener {addr}"))?;
                let bound = listener.local_addr()?.to_string();
                let endpoint = GrpcEndpoint {
                    listener: GrpcListener::Tcp(listener),
                    tls: GrpcTls::Plain,
                };
                Ok(Some((endpoint, bound)))
            };
            let ext_authz = grpc(opts.ext_authz, "ext_authz").await?;
            let rate_limit = grpc(opts.rate_limit, "rate-limit").await?;
            let (admin, admin_addr) = bind().await?;
            let source = source_for(&spiffe_id).await?;
            let info = AuthorizerInfo {
                spiffe_id,
                ext_authz: ext_authz.as_ref().map(|(_, a)| a.clone()),
                rate_limit: rate_limit.as_ref().map(|(_, a)| a.clone()),
                admin: admin_addr.to_string(),
            };
            dataplanes.push(
                Dataplane::start(DataplaneOptions {
                    name: "authorizer".into(),
                    observe: sinks.for_dataplane("authorizer")?,
                    identity: source.into(),
                    xds: xds("authorizer"),
                    outbound: None,
                    inbound: None,
                    admin: Some(admin),
                    local_upstream: None,
                    metrics: metrics.clone(),
                    ext_authz: ext_authz.map(|(endpoint, _)| ExtAuthzListener {
                        endpoint,
                        settings: ExtAuthzSettings {
                            // Envoys in front of `up` may report outcomes over
                            // the access log service on the same port.
                            outcomes: Some(Duration::from_secs(30)),
                            ..ExtAuthzSettings::default()
                        },
                    }),
                    rate_limit: rate_limit.map(|(endpoint, _)| endpoint),
                })
                .await?,
            );
            Some(info)
        } else {
            None
        };
        for name in &opts.external_services {
            let svc = mesh
                .services
                .get(name)
                .with_context(|| format!("external service {name} is not in the mesh file"))?;
            let backend = match &svc.backend {
                Some(b) => b
                    .parse::<SocketAddr>()
                    .with_context(|| format!("service {name}: backend {b:?} must be an ip:port"))?,
                None => {
                    let (l, a) = bind().await?;
                    tasks.push(tokio::spawn(demo::serve(name.clone(), l, stop.clone())));
                    a
                }
            };
            identity
                .register(&svc.spec.spiffe_id)
                .await
                .map(|socket| sockets.insert(svc.spec.spiffe_id.clone(), socket))
                .with_context(|| format!("registering {}", svc.spec.spiffe_id))?;
            services.push(ServiceInfo {
                name: name.clone(),
                spiffe_id: svc.spec.spiffe_id.clone(),
                inbound: svc.endpoints.first().cloned().unwrap_or_default(),
                admin: String::new(),
                backend: backend.to_string(),
                demo_skill: svc.backend.is_none(),
            });
        }
        for dp in &dataplanes {
            dp.wait_ready(opts.ready_timeout).await?;
        }
        let info = UpInfo {
            trust_domain: mesh.trust_domain.clone(),
            config: opts.config.clone(),
            identity: IdentityInfo {
                socket_dir,
                sockets,
            },
            controlplane: ControlPlaneInfo {
                spiffe_id: cp_id,
                xds: xds_addr.to_string(),
                admin: cp_admin_addr.to_string(),
            },
            agents,
            services,
            authorizer,
        };
        write_info(&opts.state_dir, &info)?;
        Ok(Up {
            info,
            identity,
            controlplane,
            dataplanes,
            stop,
            tasks,
        })
    }

    /// The control plane, e.g. to restart it in a test.
    pub fn controlplane(&mut self) -> &mut ControlPlane {
        &mut self.controlplane
    }

    /// The control plane's current (last good) model.
    pub fn mesh(&self) -> Arc<Mesh> {
        self.controlplane.mesh()
    }

    /// The outcome of the control plane's latest config reload.
    pub fn reload_status(&self) -> meshward_controlplane::config::ReloadStatus {
        self.controlplane.reload_status()
    }

    /// The dev identity server (tests mint certificates from its CA).
    pub fn identity_server(&self) -> &DevIdentityServer {
        &self.identity
    }

    /// Stops the control plane only (dataplanes keep their last config),
    /// then starts it again on the same address. Used to show that
    /// dataplanes survive and reconnect.
    pub async fn restart_controlplane(&mut self) -> anyhow::Result<()> {
        self.controlplane
            .restart()
            .await
            .context("restarting the control plane")
    }

    /// Stops everything.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for dp in self.dataplanes {
            dp.shutdown().await;
        }
        self.controlplane.shutdown().await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        self.identity.shutdown().await;
    }

    /// A human-readable table of what runs where.
    pub fn table(&self) -> String {
        render_table(&self.info)
    }
}

fn write_info(state_dir: &Path, info: &UpInfo) -> anyhow::Result<()> {
    let path = state_dir.join("up.json");
    let json = serde_json::to_string_pretty(info)?;
    let tmp = state_dir.join("up.json.tmp");
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Renders the table `meshward up` prints.
pub fn render_table(info: &UpInfo) -> String {
    let mut rows: Vec<[String; 4]> = vec![[
        "KIND".into(),
        "NAME".into(),
        "LISTENS".into(),
        "SPIFFE ID".into(),
    ]];
    rows.push([
        "controlplane".into(),
        "xds".into(),
        format!(
            "{} (admin {})",
            info.controlplane.xds, info.controlplane.admin
        ),
        info.controlplane.spiffe_id.clone(),
    ]);
    for a in &info.agents {
        rows.push([
            "agent".into(),
            a.name.clone(),
            format!("{} (admin {})", a.outbound, a.admin),
            a.spiffe_id.clone(),
        ]);
    }
    for s in &info.services {
        rows.push([
            "service".into(),
            s.name.clone(),
            format!("{} -> {} (admin {})", s.inbound, s.backend, s.admin),
            s.spiffe_id.clone(),
        ]);
    }
    if let Some(a) = &info.authorizer {
        let listens: Vec<String> = [("ext_authz", &a.ext_authz), ("ratelimit", &a.rate_limit)]
            .into_iter()
            .filter_map(|(what, addr)| addr.as_ref().map(|addr| format!("{what} {addr}")))
            .collect();
        rows.push([
            "authorizer".into(),
            "authorizer".into(),
            format!("{} (admin {})", listens.join(", "), a.admin),
            a.spiffe_id.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
