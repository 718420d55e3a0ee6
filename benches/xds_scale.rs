//! xDS at scale: N simulated Envoy-like delta ADS clients, each a real mTLS
//! connection with its own SVID (so its own node identity), hold streams on
//! a control plane; one config change (an endpoint of one service moves)
//! must reach all of them. Meshward's control plane (`meshward
//! controlplane`, a separate process) and go-control-plane v0.14.0 (the
//! `benches/xds_scale/go-server` peer, per-node snapshots) serve the same
//! resources, byte for byte, to the same clients in the same run.
//!
//! Reported per server and N: time until every client has its initial
//! resources, server CPU seconds for that, server RSS growth per client,
//! and for the change: time from the trigger to the first and to the last
//! client's ACK of the moved endpoint, and server CPU seconds. Meshward's
//! trigger is a rewrite of `mesh.yaml` (the control plane polls it every
//! 200 ms, so "trigger → first" includes that poll); go-control-plane's is
//! `SetSnapshot` for every node, timed from the command on its stdin.
//!
//! Run with `bash benches/xds_scale.sh` (builds both servers in release).
//! Environment: `MESHWARD_BIN`, `XDS_GO_SERVER` (binaries),
//! `XDS_SCALE_CLIENTS` (default `1000,10000`), `XDS_SCALE_SERVICES`
//! (default 50), `XDS_SCALE_SERVERS` (default `meshward,go`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use hyper_util::rt::TokioIo;
use meshward_spire::devserver::{DevIdentityServer, DevServerOptions};
use meshward_spire::test_util::TestCa;
use prost::Message;
use rustls::pki_types::ServerName;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

const TD: &str = "example.org";
const CP_ID: &str = "spiffe://example.org/meshward/controlplane";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const CLA: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Handshakes in flight while clients connect (same for both servers).
const CONNECTING: usize = 64;
/// Bound on every phase: a run that does not converge fails loudly.
const PHASE: Duration = Duration::from_secs(300);

#[path = "common/proc_usage.rs"]
mod proc_usage;
use proc_usage::usage;

type Error = Box<dyn std::error::Error + Send + Sync>;
/// (type URL, name) → resource bytes.
type Resources = BTreeMap<(String, String), Vec<u8>>;

fn main() -> Result<(), Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

async fn run() -> Result<(), Error> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let meshward = PathBuf::from(env_or(
        "MESHWARD_BIN",
        &repo.join("target/release/meshward").display().to_string(),
    ));
    let go_server = PathBuf::from(env_or(
        "XDS_GO_SERVER",
        &repo
            .join(".tools/bench/xds-go-server")
            .display()
            .to_string(),
    ));
    let counts: Vec<usize> = env_or("XDS_SCALE_CLIENTS", "1000,10000")
        .split(',')
        .map(|n| n.trim().parse())
        .collect::<Result<_, _>>()?;
    let services: usize = env_or("XDS_SCALE_SERVICES", "50").parse()?;
    let servers = env_or("XDS_SCALE_SERVERS", "meshward,go");

    let dir = tempfile::Builder::new()
        .prefix("mwxds")
        .tempdir_in("/tmp")?;
    let identity = DevIdentityServer::start(DevServerOptions {
        dir: dir.path().join("id"),
        trust_domain: TD.into(),
        svid_ttl: Duration::from_secs(24 * 3600),
    })
    .await?;
    // Both servers present the control plane's SVID, with `localhost` as a
    // DNS SAN so the clients can verify them the ordinary (WebPKI) way.
    let cp_socket = identity.register_with_dns(CP_ID, &["localhost"]).await?;
    let ca = identity.test_ca();
    let bench = Bench {
        dir: dir.path().to_path_buf(),
        meshward,
        go_server,
        cp_socket,
        roots: roots(&ca)?,
        bundle_pem: identity.bundle_pem(),
        services,
    };
    bench.write_meshes(&repo)?;

    eprintln!("minting {} client SVIDs", counts.iter().max().unwrap_or(&0));
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let clients: Vec<ClientIdentity> = (0..max)
        .map(|i| ClientIdentity::mint(&ca, i, &bench.roots))
        .collect::<Result<_, _>>()?;

    // The resources, as Meshward serves them, before and after the change:
    // the go-control-plane peer serves exactly these bytes.
    let (v1, v2) = bench.probe(&clients[0]).await?;
    let target = changed(&v1, &v2)?;
    eprintln!(
        "{} resources per client; the change is {} {}",
        v1.len(),
        target.0,
        target.1
    );
    bench.write_dump("v1.pb", "1", &v1)?;
    bench.write_dump("v2.pb", "2", &v2)?;
    let nodes: String = clients
        .iter()
        .map(|c| format!("{}\n", c.spiffe_id))
        .collect();
    std::fs::write(bench.dir.join("nodes.txt"), nodes)?;

    let expect = Expect {
        total: v1.len(),
        target: target.clone(),
        target_v2: hash(&v2[&target]),
    };
    println!(
        "| server | clients | initial sync (s) | CPU for sync (s) | RSS growth per client (KiB) | change: trigger → first ACK (ms) | trigger → last ACK (ms) | first → last (ms) | CPU for change (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &counts {
        for server in servers.split(',') {
            let report = bench
                .run(server.trim(), &clients[..n], &expect, &v1)
                .await?;
            println!("{}", report.row());
        }
    }
    Ok(())
}

struct Bench {
    dir: PathBuf,
    meshward: PathBuf,
    go_server: PathBuf,
    cp_socket: PathBuf,
    roots: Arc<rustls::RootCertStore>,
    bundle_pem: String,
    services: usize,
}

fn roots(ca: &TestCa) -> Result<Arc<rustls::RootCertStore>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der())?;
    Ok(Arc::new(roots))
}

/// One simulated client: its SPIFFE ID (also its `Node.id`) and an mTLS
/// config presenting its own SVID.
struct ClientIdentity {
    spiffe_id: String,
    tls: Arc<rustls::ClientConfig>,
}

impl ClientIdentity {
    fn mint(ca: &TestCa, i: usize, roots: &Arc<rustls::RootCertStore>) -> Result<Self, Error> {
        let spiffe_id = format!("spiffe://{TD}/bench/client-{i}");
        let svid = ca.issue(&spiffe_id, Duration::from_secs(24 * 3600))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(Arc::clone(roots))
            .with_client_auth_cert(svid.chain, svid.key)?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            spiffe_id,
            tls: Arc::new(tls),
        })
    }
}

/// What a client must hold: how many resources initially, and which
/// resource's new content means the change reached it.
#[derive(Clone)]
struct Expect {
    total: usize,
    target: (String, String),
    target_v2: u64,
}

/// Whether two captures hold the same resources. Compared decoded, not as
/// bytes: protobuf encoding is not canonical (go-control-plane re-marshals
/// every resource, and map entries may come out in another order).
fn same_resources(got: &Resources, want: &Resources) -> Result<(), String> {
    let names = |r: &Resources| r.keys().cloned().collect::<Vec<_>>();
    if names(got) != names(want) {
        return Err(format!(
            "resource names differ: {:?} vs {:?}",
            names(got),
            names(want)
        ));
    }
    for ((type_url, name), bytes) in got {
        let other = &want[&(type_url.clone(), name.clone())];
        if bytes == other {
            continue;
        }
        let equal = match type_url.as_str() {
            CLUSTER => decoded_eq::<Cluster>(bytes, other),
            CLA => decoded_eq::<ClusterLoadAssignment>(bytes, other),
            LISTENER => decoded_eq::<Listener>(bytes, other),
            ROUTE => decoded_eq::<RouteConfiguration>(bytes, other),
            _ => false,
        };
        if !equal {
            return Err(format!("{type_url} {name} differs"));
        }
    }
    Ok(())
}

fn decoded_eq<M: Message + Default + PartialEq>(a: &[u8], b: &[u8]) -> bool {
    matches!((M::decode(a), M::decode(b)), (Ok(a), Ok(b)) if a == b)
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The one resource that differs between `v1` and `v2` (the bench's change
/// moves one endpoint, so exactly one ClusterLoadAssignment).
fn changed(v1: &Resources, v2: &Resources) -> Result<(String, String), Error> {
    let keys: HashSet<_> = v1.keys().chain(v2.keys()).collect();
    let diff: Vec<_> = keys
        .into_iter()
        .filter(|k| v1.get(*k) != v2.get(*k))
        .collect();
    match diff.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(format!("expected one changed resource, got {diff:?}").into()),
    }
}

impl Bench {
    fn mesh_yaml(&self, repo: &Path, moved: bool) -> String {
        let mut yaml = format!(
            "trust_domain: {TD}\npolicy:\n  dir: {}\n  decision: data.meshward.authz.decision\nagents: []\nservices:\n",
            repo.join("policies").display()
        );
        for i in 0..self.services {
            let ip = if moved && i == 0 {
                "10.9.0.1".to_string()
            } else {
                format!("10.1.{}.{}", i / 250, i % 250 + 1)
            };
            yaml.push_str(&format!(
                "  - name: svc-{i}
    spiffe_id: spiffe://{TD}/service/svc-{i}
    endpoints: [\"{ip}:8443\"]
    metadata: {{ team: bench, environment: production, data_classification: internal }}
    breaker: {{ consecutive_failures: 5, open_for: 10s, half_open_probes: 1 }}
    per_caller_limits: {{ requests_per_second: 200, burst: 400, max_concurrent: 100 }}
"
            ));
        }
        yaml
    }

    fn write_meshes(&self, repo: &Path) -> Result<(), Error> {
        std::fs::write(self.dir.join("mesh-v1.yaml"), self.mesh_yaml(repo, false))?;
        std::fs::write(self.dir.join("mesh-v2.yaml"), self.mesh_yaml(repo, true))?;
        Ok(())
    }

    /// Puts version `v` of the mesh in place atomically (the control plane
    /// must never read a half-written file).
    fn set_mesh(&self, v: &str) -> Result<(), Error> {
        let tmp = self.dir.join("mesh.yaml.tmp");
        std::fs::copy(self.dir.join(format!("mesh-{v}.yaml")), &tmp)?;
        std::fs::rename(tmp, self.dir.join("mesh.yaml"))?;
        Ok(())
    }

    fn write_dump(&self, file: &str, version: &str, resources: &Resources) -> Result<(), Error> {
        let response = DiscoveryResponse {
            version_info: version.into(),
            resources: resources
                .iter()
                .map(|((type_url, _), value)| Any {
                    type_url: type_url.clone(),
                    value: value.clone(),
                })
                .collect(),
            ..Default::default()
        };
        std::fs::write(self.dir.join(file), response.encode_to_vec())?;
        Ok(())
    }

    fn start(&self, server: &str) -> Result<Server, Error> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut child = match server {
            "meshward" => {
                self.set_mesh("v1")?;
                Command::new(&self.meshward)
                    .args(["controlplane", "--config"])
                    .arg(self.dir.join("mesh.yaml"))
                    .args(["--xds", &addr])
                    .args(["--admin", &format!("127.0.0.1:{}", free_port()?)])
                    .env(
                        "SPIFFE_ENDPOINT_SOCKET",
                        format!("unix:{}", self.cp_socket.display()),
                    )
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()?
            }
            "go" => {
                let mut child = Command::new(&self.go_server)
                    .args(["--listen", &addr])
                    .arg("--cert")
                    .arg(self.dir.join("cp.pem"))
                    .arg("--key")
                    .arg(self.dir.join("cp.key"))
                    .arg("--ca")
                    .arg(self.dir.join("ca.pem"))
                    .arg("--v1")
                    .arg(self.dir.join("v1.pb"))
                    .arg("--v2")
                    .arg(self.dir.join("v2.pb"))
                    .arg("--nodes")
                    .arg(self.dir.join("nodes.txt"))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()?;
                let mut line = String::new();
                BufReader::new(child.stdout.as_mut().ok_or("no stdout")?).read_line(&mut line)?;
                if line.trim() != "READY" {
                    return Err(format!("go server: {line:?}").into());
                }
                child
            }
            other => return Err(format!("unknown server {other:?}").into()),
        };
        // Ready when it accepts TCP (both bind before serving).
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Some(status) = child.try_wait()? {
                return Err(format!("{server} exited: {status}").into());
            }
            if Instant::now() > deadline {
                return Err(format!("{server} never listened on {addr}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Server {
            name: server.to_string(),
            addr,
            child,
        })
    }

    /// Change the config on `server` to v2 and return when it is triggered.
    fn trigger(&self, server: &mut Server) -> Result<(), Error> {
        match server.name.as_str() {
            "meshward" => self.set_mesh("v2"),
            _ => {
                let stdin = server.child.stdin.as_mut().ok_or("no stdin")?;
                stdin.write_all(b"v2\n")?;
                stdin.flush()?;
                Ok(())
            }
        }
    }

    /// One client against Meshward, through the change: the resources
    /// before and after.
    async fn probe(&self, client: &ClientIdentity) -> Result<(Resources, Resources), Error> {
        // The go server is given the control plane's SVID as files.
        self.write_cp_files().await?;
        let mut server = self.start("meshward")?;
        let capture = Arc::new(Mutex::new(Resources::new()));
        let (events, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_client(
            0,
            server.addr.clone(),
            client.spiffe_id.clone(),
            Arc::clone(&client.tls),
            None,
            Some(Arc::clone(&capture)),
            events,
        ));
        let v1 = settled(&capture, &mut rx, None).await?;
        self.trigger(&mut server)?;
        let v2 = settled(&capture, &mut rx, Some(&v1)).await?;
        task.abort();
        server.stop();
        Ok((v1, v2))
    }

    async fn write_cp_files(&self) -> Result<(), Error> {
        let source = meshward_spire::identity::IdentitySource::connect(
            &format!("unix:{}", self.cp_socket.display()),
            Duration::from_secs(10),
        )
        .await?;
        let svid = source.x509_source().svid()?;
        let pem = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
        let chain: String = svid
            .cert_chain()
            .iter()
            .map(|c| pem("CERTIFICATE", c.as_bytes()))
            .collect();
        std::fs::write(self.dir.join("cp.pem"), chain)?;
        std::fs::write(
            self.dir.join("cp.key"),
            pem("PRIVATE KEY", svid.private_key().as_bytes()),
        )?;
        std::fs::write(self.dir.join("ca.pem"), &self.bundle_pem)?;
        Ok(())
    }

    async fn run(
        &self,
        server_name: &str,
        clients: &[ClientIdentity],
        expect: &Expect,
        reference: &Resources,
    ) -> Result<Report, Error> {
        let mut server = self.start(server_name)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let base = usage(server.child.id())?;
        let started = Instant::now();
        let (events, mut rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(CONNECTING));
        let capture = Arc::new(Mutex::new(Resources::new()));
        let mut tasks = Vec::with_capacity(clients.len());
        for (i, c) in clients.iter().enumerate() {
            tasks.push(tokio::spawn(run_client(
                i,
                server.addr.clone(),
                c.spiffe_id.clone(),
                Arc::clone(&c.tls),
                Some((Arc::clone(&gate), expect.clone())),
                (i == 0).then(|| Arc::clone(&capture)),
                events.clone(),
            )));
        }
        drop(events);
        let n = clients.len();
        collect(&mut rx, n, |e| matches!(e, Event::Synced(_))).await?;
        let synced_at = Instant::now();
        let sync = synced_at - started;
        // Same resources from both servers (client 0 kept them).
        same_resources(&capture.lock().unwrap(), reference)
            .map_err(|e| format!("{server_name} served other resources than Meshward: {e}"))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let synced = usage(server.child.id())?;

        let trigger = Instant::now();
        self.trigger(&mut server)?;
        let acks = collect(&mut rx, n, |e| matches!(e, Event::Converged(_))).await?;
        let changed = usage(server.child.id())?;
        let first = acks.iter().min().copied().unwrap_or(trigger) - trigger;
        let last = acks.iter().max().copied().unwrap_or(trigger) - trigger;
        for t in tasks {
            t.abort();
        }
        server.stop();
        Ok(Report {
            server: server_name.to_string(),
            clients: n,
            sync,
            sync_cpu: synced.cpu - base.cpu,
            rss_per_client_kib: (synced.rss_kib.saturating_sub(base.rss_kib)) as f64 / n as f64,
            first,
            last,
            change_cpu: changed.cpu - synced.cpu,
        })
    }
}

/// The times of `n` events that `want` picks; a failed client ends the wait.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    want: fn(&Event) -> bool,
) -> Result<Vec<Instant>, Error> {
    let mut times = Vec::with_capacity(n);
    let wait = async {
        while times.len() < n {
            match rx.recv().await {
                Some(Event::Failed(e)) => return Err::<(), Error>(e.into()),
                Some(e) if want(&e) => times.push(e.at()),
                Some(_) => {}
                None => return Err("every client ended".into()),
            }
        }
        Ok(())
    };
    tokio::time::timeout(PHASE, wait)
        .await
        .map_err(|_| format!("timed out with {} of {n} clients", times.len()))??;
    Ok(times)
}

/// The probe client's resources once they stop changing (and differ from
/// `from`, when given); a failed client ends the wait.
async fn settled(
    capture: &Mutex<Resources>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    from: Option<&Resources>,
) -> Result<Resources, Error> {
    let deadline = Instant::now() + PHASE;
    let mut last = Resources::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(800)).await;
        while let Ok(e) = events.try_recv() {
            if let Event::Failed(e) = e {
                return Err(e.into());
            }
        }
        let now = capture.lock().unwrap().clone();
        if now == last && !now.is_empty() && Some(&now) != from {
            return Ok(now);
        }
        last = now;
    }
    Err("the probe client never settled".into())
}

struct Server {
    name: String,
    addr: String,
    child: Child,
}

impl Server {
    fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Report {
    server: String,
    clients: usize,
    sync: Duration,
    sync_cpu: f64,
    rss_per_client_kib: f64,
    first: Duration,
    last: Duration,
    change_cpu: f64,
}

impl Report {
    fn row(&self) -> String {
        format!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {:.2} |",
            self.server,
            self.clients,
            self.sync.as_secs_f64(),
            self.sync_cpu,
            self.rss_per_client_kib,
            self.first.as_millis(),
            self.last.as_millis(),
            (self.last - self.first).as_millis(),
            self.change_cpu,
        )
    }
}

enum Event {
    Synced(Instant),
    Converged(Instant),
    Failed(String),
}

impl Event {
    fn at(&self) -> Instant {
        match self {
            Event::Synced(t) | Event::Converged(t) => *t,
            Event::Failed(_) => Instant::now(),
        }
    }
}

/// An mTLS h2 connection to `addr`, the server verified as `localhost`.
async fn channel(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, Error> {
    let addr = addr.to_string();
    let connector = tower::service_fn(move |_: http::Uri| {
        let addr = addr.clone();
        let tls = Arc::clone(&tls);
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(ServerName::try_from("localhost")?, tcp)
                .await?;
            Ok::<_, Error>(TokioIo::new(stream))
        }
    });
    Ok(tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await?)
}

fn request(type_url: &str, node: Option<Node>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        node,
        ..Default::default()
    }
}

/// The RouteConfiguration names a Listener's HTTP connection managers use.
fn route_names(listener: &[u8]) -> Vec<String> {
    let Ok(listener) = Listener::decode(listener) else {
        return Vec::new();
    };
    listener
        .filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

/// An Envoy-like delta ADS client: CDS and LDS wildcard, EDS for the
/// clusters it was given, RDS for the listeners' route names; every
/// response ACKed at once. Reports when it holds `total` resources and when
/// `target` has the hash `v2`. `gate` bounds concurrent handshakes.
async fn run_client(
    index: usize,
    addr: String,
    spiffe_id: String,
    tls: Arc<rustls::ClientConfig>,
    expect: Option<(Arc<Semaphore>, Expect)>,
    capture: Option<Arc<Mutex<Resources>>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let failed = events.clone();
    if let Err(e) = client_loop(index, addr, spiffe_id, tls, expect, capture, events).await {
        let _ = failed.send(Event::Failed(format!("client {index}: {e}")));
    }
}

async fn client_loop(
    _index: usize,
    addr: String,
    spiffe_id: String,
    tls: Arc<rustls::ClientConfig>,
    expect: Option<(Arc<Semaphore>, Expect)>,
    capture: Option<Arc<Mutex<Resources>>>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<(), Error> {
    let channel = match &expect {
        Some((gate, ..)) => {
            let _permit = gate.acquire().await?;
            channel(&addr, tls).await?
        }
        None => channel(&addr, tls).await?,
    };
    let node = Node {
        id: spiffe_id,
        cluster: "bench".into(),
        user_agent_name: "envoy".into(),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(16);
    tx.send(request(CLUSTER, Some(node))).await?;
    tx.send(request(LISTENER, None)).await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut held: HashMap<(String, String), u64> = HashMap::new();
    let mut subscribed: HashSet<(String, String)> = HashSet::new();
    let (mut synced, mut converged) = (false, false);
    while let Some(response) = stream.message().await? {
        let type_url = response.type_url.clone();
        let mut wanted = Vec::new();
        for r in &response.resources {
            let Some(any) = &r.resource else { continue };
            held.insert((type_url.clone(), r.name.clone()), hash(&any.value));
            if let Some(capture) = &capture {
                capture
                    .lock()
                    .unwrap()
                    .insert((type_url.clone(), r.name.clone()), any.value.clone());
            }
            let next = match type_url.as_str() {
                CLUSTER => vec![(CLA, r.name.clone())],
                LISTENER => route_names(&any.value)
                    .into_iter()
                    .map(|n| (ROUTE, n))
                    .collect(),
                _ => Vec::new(),
            };
            for (t, n) in next {
                if subscribed.insert((t.to_string(), n.clone())) {
                    wanted.push((t, n));
                }
            }
        }
        for name in &response.removed_resources {
            held.remove(&(type_url.clone(), name.clone()));
            if let Some(capture) = &capture {
                capture
                    .lock()
                    .unwrap()
                    .remove(&(type_url.clone(), name.clone()));
            }
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await?;
        let mut by_type: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (t, n) in wanted {
            by_type.entry(t).or_default().push(n);
        }
        for (t, names) in by_type {
            tx.send(DeltaDiscoveryRequest {
                type_url: t.into(),
                resource_names_subscribe: names,
                ..Default::default()
            })
            .await?;
        }
        let Some((
            _,
            Expect {
                total,
                target,
                target_v2: v2,
            },
        )) = &expect
        else {
            let _ = events.send(Event::Synced(Instant::now()));
            continue;
        };
        if !synced && held.len() == *total {
            synced = true;
            let _ = events.send(Event::Synced(Instant::now()));
        }
        if synced && !converged && held.get(target) == Some(v2) {
            converged = true;
            let _ = events.send(Event::Converged(Instant::now()));
        }
    }
    Err("stream ended".into())
}
