//! The running control plane: the config watcher feeding the xDS server,
//! served over mTLS with the control plane's own SVID.
//!
//! The xDS listener can be stopped and started again on the same address
//! while the config watcher keeps running, so operators (and tests) can see
//! dataplanes keep serving their last config and reconnect.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use meshward_spire::IdentitySource;
use meshward_telemetry::Tracing;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigErrors, Mesh, Overlay, ReloadStatus};
use crate::xds::XdsServer;

pub struct ControlPlaneOptions {
    /// The mesh file (`mesh.yaml`), watched for changes.
    pub config: PathBuf,
    pub overlay: Option<Overlay>,
    /// The control plane's own identity (from the Workload API).
    pub identity: IdentitySource,
    /// Where xDS is served (mTLS, h2).
    pub xds: TcpListener,
    /// Traces each pushed model and every node's ACK or NACK of it
    /// ([`crate::xds::trace`]); [`Tracing::off`] for none.
    pub tracing: Tracing,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{}", format_config_errors(.0))]
    Config(ConfigErrors),
    #[error("control plane identity: {0}")]
    Identity(#[from] meshward_spire::IdentityError),
    #[error("xDS listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn format_config_errors(errors: &ConfigErrors) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// How long open xDS connections may take to close when serving stops.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// What the admin endpoint shows about the control plane.
#[derive(Clone)]
pub struct ControlPlaneStatus {
    meshes: watch::Receiver<Arc<Mesh>>,
    reloads: watch::Receiver<ReloadStatus>,
    serving: watch::Receiver<bool>,
    identity: IdentitySource,
}

impl ControlPlaneStatus {
    pub fn mesh(&self) -> Arc<Mesh> {
        self.meshes.borrow().clone()
    }

    /// The outcome of the latest config reload, and the last rejected one.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reloads.borrow().clone()
    }

    pub fn serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// `Ok(())` when serving xDS with a usable SVID, else why not. With the
    /// Workload API gone the control plane keeps serving on its current
    /// SVID; once that expires, handshakes fail (spiffe-rustls refuses an
    /// expired SVID) and this says so.
    pub fn readiness(&self) -> Result<(), String> {
        self.identity.check().map_err(|e| e.to_string())?;
        if self.serving() {
            Ok(())
        } else {
            Err("xDS server stopped".into())
        }
    }
}

pub struct ControlPlane {
    xds_addr: SocketAddr,
    identity: IdentitySource,
    meshes: watch::Receiver<Arc<Mesh>>,
    reloads: watch::Receiver<ReloadStatus>,
    /// What each (re)start of the xDS listener serves: one snapshot cache
    /// and push tracer for the control plane's whole life.
    xds: XdsServer,
    watcher: JoinHandle<()>,
    serving: watch::Sender<bool>,
    /// The running xDS server: its stop token, its task, and the task that
    /// owns the listening socket.
    server: Option<(CancellationToken, JoinHandle<()>, JoinHandle<()>)>,
    svid_metrics: JoinHandle<()>,
}

impl ControlPlane {
    /// Loads the config (refusing to start if it is invalid), starts the
    /// watcher and serves xDS.
    pub async fn start(opts: ControlPlaneOptions) -> Result<ControlPlane, ControlPlaneError> {
        let (meshes, reloads, watcher) =
            config::watch_with_status(opts.config.clone(), opts.overlay)
                .map_err(ControlPlaneError::Config)?;
        let xds_addr = opts
            .xds
            .local_addr()
            .map_err(|source| ControlPlaneError::Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let (serving, _) = watch::channel(false);
        let svid_metrics = tokio::spawn(meshward_spire::identity::export_svid_metrics(
            opts.identity.clone().into(),
            vec![("component", "controlplane".to_string())],
        ));
        let mut cp = ControlPlane {
            xds_addr,
            svid_metrics,
            identity: opts.identity,
            xds: XdsServer::new(meshes.clone()).with_tracing(opts.tracing),
            meshes,
            reloads,
            watcher,
            serving,
            server: None,
        };
        cp.serve(opts.xds)?;
        tracing::info!(xds = %xds_addr, config = %opts.config.display(), "control plane serving");
        Ok(cp)
    }

    fn serve(&mut self, listener: TcpListener) -> Result<(), ControlPlaneError> {
        let tls = meshward_spire::tls::server_config(&self.identity, &[b"h2"])?;
        let (incoming, accept) = meshward_spire::grpc::incoming_with_accept_task(listener, tls);
        let stop = CancellationToken::new();
        // The token also ends open ADS streams: stopping the listener alone
        // would leave connected dataplanes receiving pushes.
        let routes = self.xds.clone().with_shutdown(stop.clone()).into_routes();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stopped.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::error!("xDS server stopped: {e}");
            }
        });
        self.server = Some((stop, task, accept));
        self.serving.send_replace(true);
        Ok(())
    }

    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    /// The current (last good) model.
    pub fn mesh(&self) -> Arc<Mesh> {
        self.meshes.borrow().clone()
    }

    /// The outcome of the latest config reload (a refused edit shows here).
    pub fn reload_status(&self) -> ReloadStatus {
        self.reloads.borrow().clone()
    }

    /// A subscription to model changes.
    pub fn meshes(&self) -> watch::Receiver<Arc<Mesh>> {
        self.meshes.clone()
    }

    pub fn status(&self) -> ControlPlaneStatus {
        ControlPlaneStatus {
            meshes: self.meshes.clone(),
            reloads: self.reloads.clone(),
            serving: self.serving.subscribe(),
            identity: self.identity.clone(),
        }
    }

    /// Stops serving xDS (open streams are closed); the watcher keeps running.
    ///
    /// Streams end with `UNAVAILABLE` at once, and connections get
    /// [`SHUTDOWN_GRACE`] to finish; a client that stopped reading (a zero
    /// flow-control window, a frozen Envoy) would otherwise hold a graceful
    /// shutdown, and the process, forever. After the grace the server is
    /// dropped.
    pub async fn stop_xds(&mut self) {
        if let Some((stop, mut task, mut accept)) = self.server.take() {
            stop.cancel();
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!(
                    "xDS connections still open {SHUTDOWN_GRACE:?} after shutdown began; dropping them"
                );
                task.abort();
                let _ = task.await;
            }
            // The listening socket closes when the accept task has seen the
            // server go; a restart binds the same address, so wait for it.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut accept)
                .await
                .is_err()
            {
                accept.abort();
                let _ = accept.await;
            }
        }
        self.serving.send_replace(false);
    }

    /// Serves xDS again on the same address.
    pub async fn start_xds(&mut self) -> Result<(), ControlPlaneError> {
        if self.server.is_some() {
            return Ok(());
        }
        let listener =
            TcpListener::bind(self.xds_addr)
                .await
                .map_err(|source| ControlPlaneError::Listen {
                    addr: self.xds_addr,
                    source,
                })?;
        self.serve(listener)
    }

    /// `stop_xds` then `start_xds`.
    pub async fn restart(&mut self) -> Result<(), ControlPlaneError> {
        self.stop_xds().await;
        self.start_xds().await
    }

    pub async fn shutdown(mut self) {
        self.stop_xds().await;
        self.svid_metrics.abort();
        self.watcher.abort();
        let _ = (&mut self.watcher).await;
    }
}
