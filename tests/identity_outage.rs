//! Workload API outages and SVID rotation, end to end on loopback: a control
//! plane, an agent's dataplane (outbound) and a service's dataplane (inbound,
//! in front of a small HTTP app), all with identities from the embedded dev
//! identity server with short SVID lifetimes.
//!
//! Everything waits on signals (identity change notifications, `/ready`
//! polls) with bounded deadlines; no sleep is used to synchronise. The code
//! under test talks to the Workload API only through the `spiffe` crate, so
//! the same scenarios apply to a SPIRE agent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshward_controlplane::config::{Mesh, Overlay};
use meshward_controlplane::{ControlPlane, ControlPlaneOptions};
use meshward_dataplane::xds::XdsClientConfig;
use meshward_dataplane::{Dataplane, DataplaneOptions};
use meshward_spire::{
    DevIdentityServer, DevServerOptions, IdentityError, IdentitySource, WorkloadIdentity,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "example.org";
const CP: &str = "spiffe://example.org/meshward/controlplane";
const AGENT: &str = "spiffe://example.org/agent/a";
const SERVICE: &str = "spiffe://example.org/service/echo";
/// The dev server names sockets after the ID's path.
const AGENT_SOCKET: &str = "agent_a.sock";
/// Bound for every wait; generous for slow CI, still finite.
const WAIT: Duration = Duration::from_secs(30);

const MESH: &str = r#"
trust_domain: example.org
policy:
  dir: policies
  decision: data.meshward.authz.decision
agents:
  - name: a
    spiffe_id: spiffe://example.org/agent/a
    permissions: [skills:invoke]
services:
  - name: echo
    spiffe_id: spiffe://example.org/service/echo
    endpoints: ["127.0.0.1:0"]
"#;
const POLICY: &str = "package meshward.authz\n\ndefault decision := true\n";

type Http = Client<HttpConnector, Full<Bytes>>;

fn tracing_init() {
    meshward::telemetry::init_tracing("warn");
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("local_addr");
    (l, a)
}

/// A tiny app behind the service's dataplane: 200 "ok" to everything.
async fn serve_app(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let svc = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn dev_server(dir: &Path, ttl: Duration) -> DevIdentityServer {
    DevIdentityServer::start(DevServerOptions {
        dir: dir.join("sockets"),
        trust_domain: TD.into(),
        svid_ttl: ttl,
    })
    .await
    .expect("dev identity server")
}

async fn lazy(dev: &DevIdentityServer, id: &str) -> WorkloadIdentity {
    let path = dev.register(id).await.expect("register");
    WorkloadIdentity::connect(&format!("unix:{}", path.display())).expect("endpoint")
}

struct World {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    agent: Dataplane,
    agent_identity: WorkloadIdentity,
    service: Dataplane,
    service_identity: WorkloadIdentity,
    app: tokio::task::JoinHandle<()>,
    http: Http,
}

impl World {
    /// Control plane and service up; the agent's identity is whatever
    /// `agent_identity` returns (it may still be waiting).
    async fn start(
        name: &str,
        dir: tempfile::TempDir,
        dev: &DevIdentityServer,
        agent_identity: WorkloadIdentity,
    ) -> World {
        tracing_init();
        std::fs::create_dir_all(dir.path().join("policies")).expect("policies dir");
        std::fs::write(dir.path().join("policies/authz.rego"), POLICY).expect("policy");
        std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("mesh.yaml");

        let (app_l, app_addr) = bind().await;
        let app = tokio::spawn(serve_app(app_l));
        let (inbound_l, inbound_addr) = bind().await;
        let overlay: Overlay = Arc::new(move |mesh: &mut Mesh| {
            for svc in mesh.services.values_mut() {
                svc.endpoints = vec![inbound_addr.to_string()];
            }
        });
        let cp_path = dev.register(CP).await.expect("register cp");
        let cp_identity = IdentitySource::connect(&format!("unix:{}", cp_path.display()), WAIT)
            .await
            .expect("control plane identity");
        let (xds_l, xds_addr) = bind().await;
        let cp = ControlPlane::start(ControlPlaneOptions {
            config: dir.path().join("mesh.yaml"),
            overlay: Some(overlay),
            identity: cp_identity,
            xds: xds_l,
            tracing: meshward_telemetry::Tracing::off(),
        })
        .await
        .expect("control plane");
        let xds = |node: &str| XdsClientConfig {
            address: xds_addr.to_string(),
            server_spiffe_id: Some(CP.into()),
            node_id: node.into(),
            cluster: "test".into(),
        };
        let metrics = meshward::telemetry::prometheus();

        let service_identity = lazy(dev, SERVICE).await;
        let service = Dataplane::start(DataplaneOptions {
            name: format!("{name}-echo"),
            observe: Default::default(),
            identity: service_identity.clone(),
            xds: xds("echo"),
            outbound: None,
            inbound: Some(inbound_l),
            admin: Some(bind().await.0),
            local_upstream: Some(app_addr),
            metrics: metrics.clone(),
            ext_authz: None,
            rate_limit: None,
        })
        .await
        .expect("service dataplane");
        let agent = Dataplane::start(DataplaneOptions {
            name: format!("{name}-a"),
            observe: Default::default(),
            identity: agent_identity.clone(),
            xds: xds("a"),
            outbound: Some(bind().await.0),
            inbound: None,
            admin: Some(bind().await.0),
            local_upstream: None,
            metrics,
            ext_authz: None,
            rate_limit: None,
        })
        .await
        .expect("agent dataplane");
        World {
            dir,
            cp,
            agent,
            agent_identity,
            service,
            service_identity,
            app,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn get(&self, url: String) -> (StatusCode, String) {
        let req = Request::get(url)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = tokio::time::timeout(WAIT, self.http.request(req))
            .await
            .expect("answer in time")
            .expect("answer");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A request from the agent to the echo service through both dataplanes.
    async fn call(&self) -> (StatusCode, String) {
        let out = self.agent.addrs.outbound.expect("outbound addr");
        self.get(format!("http://{out}/mcp://echo/hello")).await
    }

    async fn admin(&self, dp: &Dataplane, path: &str) -> (StatusCode, String) {
        let admin = dp.addrs.admin.expect("admin addr");
        self.get(format!("http://{admin}{path}")).await
    }

    async fn shutdown(self) {
        self.agent.shutdown().await;
        self.service.shutdown().await;
        self.cp.shutdown().await;
        self.app.abort();
        drop(self.dir);
    }
}

/// Waits until `f` holds for the identity, re-checking on every change.
async fn wait_identity(
    identity: &WorkloadIdentity,
    what: &str,
    f: impl Fn(&Result<meshward_spire::SvidInfo, IdentityError>) -> bool,
) {
    let mut updates = identity.updated();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = identity.check();
        if f(&now) {
            return;
        }
        match tokio::time::timeout_at(deadline, updates.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("{what}: timed out; identity is {now:?}"),
        }
    }
}

/// Polls `/ready` (bounded) until it reports `want`.
async fn wait_admin_ready(world: &World, dp: &Dataplane, want: StatusCode) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let (status, body) = world.admin(dp, "/ready").await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {status}: {body}"
        );
        tick.tick().await;
    }
}

/// The value of the series of `name` whose labels contain every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dataplane_starts_before_the_workload_api_and_becomes_ready_without_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dev_server(dir.path(), Duration::from_secs(3600)).await;
    // The agent's socket does not exist yet: it is not registered.
    let socket: PathBuf = dir.path().join("sockets").join(AGENT_SOCKET);
    let endpoint = format!("unix:{}", socket.display());
    let agent_identity = WorkloadIdentity::connect(&endpoint).expect("endpoint");
    let world = World::start("start", dir, &dev, agent_identity).await;

    // Not ready, and it says why: the Workload API and its error.
    wait_identity(
        &world.agent_identity,
        "first connection attempt",
        |r| matches!(r, Err(IdentityError::Waiting { reason, .. }) if reason != "connecting"),
    )
    .await;
    let (status, body) = world.admin(&world.agent, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let want = format!("waiting for SVID from workload API at {endpoint}: ");
    assert!(body.contains(&want), "{body}");
    assert!(
        body.contains("No such file or directory") || body.contains("os error 2"),
        "the reason names the socket error: {body}"
    );
    // Traffic is refused with the same reason.
    let (status, body) = world.call().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("not_ready") && body.contains(&want), "{body}");

    // The Workload API appears: ready without a restart, traffic flows.
    let registered = dev.register(AGENT).await.expect("register agent");
    assert_eq!(registered, socket, "the dev server's socket name changed");
    world.agent.wait_ready(WAIT).await.expect("agent ready");
    world.service.wait_ready(WAIT).await.expect("service ready");
    let (status, body) = world.call().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "ok");

    world.shutdown().await;
    dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn svid_expiry_gauge_follows_rotation_and_requests_survive_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dev_server(dir.path(), Duration::from_secs(2)).await;
    let agent_identity = lazy(&dev, AGENT).await;
    let world = World::start("gauge", dir, &dev, agent_identity).await;
    world.agent.wait_ready(WAIT).await.expect("agent ready");
    world.service.wait_ready(WAIT).await.expect("service ready");
    let (status, body) = world.call().await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let labels = [("dataplane", "gauge-a"), ("spiffe_id", AGENT)];
    let first = world.agent_identity.check().expect("usable SVID").clone();
    // The gauge shows the current SVID's notAfter.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let (_, text) = world.admin(&world.agent, "/metrics").await;
        let v = metric(&text, "meshward_svid_expiry_timestamp_seconds", &labels);
        #[allow(clippy::cast_precision_loss)]
        if v.is_some_and(|v| v >= first.not_after_unix() as f64) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no expiry gauge: {text}"
        );
        tick.tick().await;
    }

    // Through two rotations every request succeeds, and the gauge follows.
    let mut rotations = 0;
    let mut serial = first.serial.clone();
    while rotations < 2 {
        let mut updates = world.agent_identity.updated();
        loop {
            let (status, body) = world.call().await;
            assert_eq!(status, StatusCode::OK, "during rotation: {body}");
            let now = world.agent_identity.check().expect("usable SVID");
            if now.serial != serial {
                serial = now.serial;
                rotations += 1;
                break;
            }
            // Wait for the next identity change, still bounded.
            let _ = tokio::time::timeout(Duration::from_millis(200), updates.changed()).await;
        }
    }
    let current = world.agent_identity.check().expect("usable SVID");
    assert!(current.not_after > first.not_after);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, text) = world.admin(&world.agent, "/metrics").await;
        let expiry = metric(&text, "meshward_svid_expiry_timestamp_seconds", &labels);
        let rotated = metric(&text, "meshward_svid_rotations_total", &labels);
        #[allow(clippy::cast_precision_loss)]
        if expiry.is_some_and(|v| v >= current.not_after_unix() as f64)
            && rotated.is_some_and(|v| v >= 2.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauge did not follow rotation (want {}): {text}",
            current.not_after_unix()
        );
        tick.tick().await;
    }

    world.shutdown().await;
    dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workload_api_outage_serves_until_expiry_then_fails_closed_then_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_secs(4);
    let dev = dev_server(dir.path(), ttl).await;
    let agent_identity = lazy(&dev, AGENT).await;
    let world = World::start("outage", dir, &dev, agent_identity).await;
    world.agent.wait_ready(WAIT).await.expect("agent ready");
    world.service.wait_ready(WAIT).await.expect("service ready");
    let (status, body) = world.call().await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The Workload API goes away. The current SVIDs have at least half their
    // lifetime left (the server renews at half), so traffic keeps flowing.
    let sockets = dev.dir().to_owned();
    dev.shutdown().await;
    wait_identity(&world.agent_identity, "link lost", |_| {
        matches!(
            world.agent_identity.link(),
            meshward_spire::WorkloadApiLink::Unavailable(_)
        )
    })
    .await;
    let svid = world.agent_identity.check();
    if let Ok(svid) = &svid
        && svid.not_after > SystemTime::now() + Duration::from_secs(1)
    {
        let (status, body) = world.call().await;
        assert_eq!(status, StatusCode::OK, "with a valid SVID: {body}");
        let (status, body) = world.admin(&world.agent, "/ready").await;
        assert_eq!(status, StatusCode::OK, "with a valid SVID: {body}");
    }

    // After expiry: fail closed, with the reason.
    wait_identity(&world.agent_identity, "agent SVID expiry", |r| {
        matches!(r, Err(IdentityError::Expired { .. }))
    })
    .await;
    wait_identity(&world.service_identity, "service SVID expiry", |r| {
        matches!(r, Err(IdentityError::Expired { .. }))
    })
    .await;
    let (status, body) = world.call().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains(&format!("SVID for {AGENT} expired at "))
            && body.contains("workload API unavailable"),
        "{body}"
    );
    let body = wait_admin_ready(&world, &world.agent, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        body.contains(&format!("SVID for {AGENT} expired at ")),
        "{body}"
    );
    let body = wait_admin_ready(&world, &world.service, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        body.contains(&format!("SVID for {SERVICE} expired at ")),
        "{body}"
    );
    // Inbound: the connection is closed before any handshake (a served
    // connection would wait for the ClientHello instead).
    let inbound = world.service.addrs.inbound.expect("inbound addr");
    let mut tcp = TcpStream::connect(inbound).await.expect("connect inbound");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("inbound closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "inbound sent TLS bytes with an expired SVID");

    // The Workload API comes back (a restarted server: new CA, so the
    // bundle changes too); everything recovers without a restart.
    let dev = DevIdentityServer::start(DevServerOptions {
        dir: sockets,
        trust_domain: TD.into(),
        svid_ttl: Duration::from_secs(3600),
    })
    .await
    .expect("dev identity server again");
    for id in [CP, SERVICE, AGENT] {
        dev.register(id).await.expect("register again");
    }
    world
        .agent
        .wait_ready(WAIT)
        .await
        .expect("agent ready again");
    world
        .service
        .wait_ready(WAIT)
        .await
        .expect("service ready again");
    let (status, body) = world.call().await;
    assert_eq!(status, StatusCode::OK, "after recovery: {body}");

    world.shutdown().await;
    dev.shutdown().await;
}
