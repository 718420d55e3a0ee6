//! The xDS client against the real control plane server over loopback mTLS,
//! with identities from the embedded dev identity server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshward_controlplane::config::{Agent, Mesh, PolicyBundle, RateLimitSettings, Service};
use meshward_controlplane::xds::XdsServer;
use meshward_spire::{DevIdentityServer, DevServerOptions, IdentitySource};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::transport::Server;

use super::{XdsClientConfig, spawn, spawn_reporting};
use crate::state::MeshState;

const CONTROL_PLANE: &str = "spiffe://example.org/meshward/controlplane";
const HELLO: &str = "spiffe://example.org/service/hello";
const TRIAGE: &str = "spiffe://example.org/agent/triage";
const WAIT: Duration = Duration::from_secs(20);

const GOOD_POLICY: &str = "package meshward.authz\n\ndefault decision := false\n";
const BROKEN_POLICY: &str = "package meshward.authz\n\ndecision := {{{ not rego\n";

fn mesh() -> Mesh {
    let agent = Agent {
        name: "triage".into(),
        spiffe_id: TRIAGE.into(),
        attributes: BTreeMap::from([("team".to_string(), "cs".to_string())]),
        permissions: vec!["skills:invoke".into()],
        limits: RateLimitSettings {
            requests_per_second: 5.0,
            burst: 10,
            max_concurrent: 20,
            per_destination: false,
            count_denied: true,
        },
    };
    let service = Service {
        spec: meshward_contract::spec::Service {
            name: "hello".into(),
            spiffe_id: HELLO.into(),
            metadata: BTreeMap::from([("team".to_string(), "platform".to_string())]),
            breaker: Default::default(),
            per_caller_limits: RateLimitSettings::default(),
            paths: Default::default(),
            forward_client_cert: Default::default(),
            mcp: None,
            timeouts: Default::default(),
        },
        endpoints: vec!["127.0.0.1:7001".into()],
        backend: None,
    };
    Mesh {
        tracing: None,
        authorizers: Vec::new(),
        source: PathBuf::from("mesh.yaml"),
        trust_domain: "example.org".into(),
        listeners: Default::default(),
        services: BTreeMap::from([(service.spec.name.clone(), service)]),
        agents: BTreeMap::from([(agent.name.clone(), agent)]),
        policy: PolicyBundle {
            dir: PathBuf::from("policies"),
            revision: "r1".into(),
            modules: vec![("authz.rego".into(), GOOD_POLICY.into())],
            data: serde_json::json!({}),
            decision: "data.meshward.authz.decision".into(),
        },
    }
}

/// A running control plane xDS server; dropping `meshes` ends its streams.
struct ControlPlane {
    meshes: watch::Sender<Arc<Mesh>>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    async fn start(identity: &IdentitySource, listener: TcpListener, mesh: Mesh) -> Self {
        let (meshes, rx) = watch::channel(Arc::new(mesh));
        let tls = meshward_spire::tls::server_config(identity, &[meshward_spire::grpc::ALPN_H2])
            .unwrap_or_else(|e| panic!("server tls config: {e}"));
        let incoming = meshward_spire::grpc::incoming(listener, tls);
        let (stop, stopped) = oneshot::channel::<()>();
        let service = XdsServer::new(rx).into_service();
        let task = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self { meshes, stop, task }
    }

    fn update(&self, change: impl FnOnce(&mut Mesh)) {
        let mut mesh = (**self.meshes.borrow()).clone();
        change(&mut mesh);
        self.meshes.send_replace(Arc::new(mesh));
    }

    /// Ends every stream (as a control plane shutting down does), then the server.
    async fn stop(self) {
        drop(self.meshes);
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

struct World {
    _dir: tempfile::TempDir,
    _dev: DevIdentityServer,
    cp_identity: IdentitySource,
    node_identity: IdentitySource,
}

impl World {
    async fn new(node_id: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let dev = DevIdentityServer::start(DevServerOptions {
            dir: dir.path().join("sockets"),
            trust_domain: "example.org".into(),
            svid_ttl: Duration::from_secs(3600),
        })
        .await
        .unwrap_or_else(|e| panic!("dev identity server: {e}"));
        let connect = async |id: &str| {
            let socket = dev
                .register(id)
                .await
                .unwrap_or_else(|e| panic!("register {id}: {e}"));
            IdentitySource::connect(&socket.to_string_lossy(), WAIT)
                .await
                .unwrap_or_else(|e| panic!("identity for {id}: {e}"))
        };
        let cp_identity = connect(CONTROL_PLANE).await;
        let node_identity = connect(node_id).await;
        Self {
            _dir: dir,
            _dev: dev,
            cp_identity,
            node_identity,
        }
    }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = l
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .to_string();
    (l, addr)
}

fn client_config(address: &str) -> XdsClientConfig {
    XdsClientConfig {
        address: address.to_string(),
        server_spiffe_id: Some(CONTROL_PLANE.to_string()),
        node_id: "hello-0".into(),
        cluster: "hello".into(),
    }
}

/// Waits until the published state satisfies `f`.
async fn wait_for(
    rx: &mut watch::Receiver<Option<Arc<MeshState>>>,
    what: &str,
    f: impl Fn(&MeshState) -> bool,
) -> Arc<MeshState> {
    let waited = tokio::time::timeout(WAIT, rx.wait_for(|s| s.as_deref().is_some_and(&f)))
        .await
        .map(|r| r.map(|state| state.clone()));
    match waited {
        Ok(Ok(Some(state))) => state,
        Ok(Ok(None)) => panic!("{what}: no state"),
        Ok(Err(e)) => panic!("{what}: client gone: {e}"),
        Err(_) => panic!(
            "{what}: timed out; last versions: {:?}",
            rx.borrow().as_ref().map(|s| s.versions.clone())
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_state_arrives_over_mtls() {
    let world = World::new(HELLO).await;
    let (l, addr) = listener().await;
    let cp = ControlPlane::start(&world.cp_identity, l, mesh()).await;
    let (mut rx, task) = spawn(client_config(&addr), world.node_identity.clone());

    let state = wait_for(&mut rx, "warm state", |_| true).await;
    let hello = state
        .clusters
        .get("hello")
        .unwrap_or_else(|| panic!("no hello cluster: {:?}", state.clusters.keys()));
    assert_eq!(hello.service.spiffe_id, HELLO);
    assert_eq!(
        hello.endpoints,
        vec![crate::state::Endpoint::Ip(
            "127.0.0.1:7001".parse().unwrap_or_else(|e| panic!("{e}"))
        )]
    );
    assert_eq!(
        hello.service.metadata.get("team").map(String::as_str),
        Some("platform")
    );
    assert_eq!(hello.service.breaker.consecutive_failures, 5);
    let triage = state
        .agents
        .get(TRIAGE)
        .unwrap_or_else(|| panic!("no triage agent"));
    assert_eq!(triage.permissions, vec!["skills:invoke".to_string()]);
    assert_eq!(triage.limits.burst, 10);
    assert_eq!(state.policy.revision(), "r1");
    assert_eq!(state.versions.len(), 5);
    assert_eq!(state.listeners, mesh().listeners);

    task.abort();
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_policy_is_nacked_and_last_good_state_kept() {
    let world = World::new(HELLO).await;
    let (l, addr) = listener().await;
    let cp = ControlPlane::start(&world.cp_identity, l, mesh()).await;
    let rejected = std::sync::Arc::new(super::rejected::LastRejected::default());
    let (mut rx, task) = spawn_reporting(
        client_config(&addr),
        world.node_identity.clone(),
        rejected.clone(),
    );
    let before = wait_for(&mut rx, "warm state", |_| true).await;
    assert_eq!(rejected.get(), None);

    // One model change: a bundle that does not compile and an agent change.
    // The server pushes the bundle before the agent, so once the agent
    // change is visible the bundle has been handled: it must have been NACKed.
    cp.update(|m| {
        m.policy.revision = "r2-broken".into();
        m.policy.modules = vec![("authz.rego".into(), BROKEN_POLICY.into())];
        if let Some(a) = m.agents.get_mut("triage") {
            a.permissions.push("data:read".into());
        }
    });
    let after = wait_for(&mut rx, "agent update", |s| {
        s.agents
            .get(TRIAGE)
            .is_some_and(|a| a.permissions.len() == 2)
    })
    .await;
    assert_eq!(after.policy.revision(), "r1", "broken bundle was applied");
    let policy_type = meshward_contract::type_url::POLICY_BUNDLE;
    assert_eq!(
        after.versions.get(policy_type),
        before.versions.get(policy_type)
    );
    let nack = rejected
        .get()
        .expect("the NACK is recorded for /config_dump");
    assert_eq!(nack.type_url, policy_type);
    assert!(nack.error.contains("authz.rego"), "{}", nack.error);

    // A fixed bundle is applied.
    cp.update(|m| {
        m.policy.revision = "r3".into();
        m.policy.modules = vec![("authz.rego".into(), GOOD_POLICY.into())];
    });
    wait_for(&mut rx, "fixed policy", |s| s.policy.revision() == "r3").await;

    task.abort();
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_server_restart_and_keeps_serving_meanwhile() {
    let world = World::new(HELLO).await;
    let (l, addr) = listener().await;
    let cp = ControlPlane::start(&world.cp_identity, l, mesh()).await;
    let (mut rx, task) = spawn(client_config(&addr), world.node_identity.clone());
    wait_for(&mut rx, "warm state", |_| true).await;

    // Watch for the state ever going away.
    let lost = Arc::new(AtomicBool::new(false));
    let watcher = {
        let lost = Arc::clone(&lost);
        let mut rx = rx.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if rx.borrow().is_none() {
                    lost.store(true, Ordering::SeqCst);
                }
            }
        })
    };

    cp.stop().await;
    assert!(
        rx.borrow().is_some(),
        "state dropped when the server went away"
    );

    // Restart on the same address with one more agent.
    let l = TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("rebind {addr}: {e}"));
    let mut next = mesh();
    let other = Agent {
        name: "billing-bot".into(),
        spiffe_id: "spiffe://example.org/agent/billing-bot".into(),
        attributes: BTreeMap::new(),
        permissions: vec![],
        limits: RateLimitSettings::default(),
    };
    next.agents.insert(other.name.clone(), other);
    let cp = ControlPlane::start(&world.cp_identity, l, next).await;

    let state = wait_for(&mut rx, "state after reconnect", |s| s.agents.len() == 2).await;
    // Unchanged resources, not resent thanks to initial_resource_versions,
    // are still there.
    assert!(state.clusters.contains_key("hello"));
    assert!(state.agents.contains_key(TRIAGE));
    assert_eq!(state.policy.revision(), "r1");
    assert!(
        !lost.load(Ordering::SeqCst),
        "state was withdrawn during the restart"
    );

    watcher.abort();
    task.abort();
    cp.stop().await;
}
