//! ext_authz v3 `Check` under load: throughput and latency of three servers,
//! each its own process, driven by the same load generator in one run.
//!
//! - **floor**: a no-op tonic server answering OK to everything (this bench
//!   binary re-executed with `--noop-server <addr>`, so it is built in
//!   release like the rest): what gRPC, h2 and loopback cost on this machine.
//! - **meshward**: `meshward controlplane` + `meshward dataplane --name
//!   authorizer --ext-authz ...`, identities from a dev identity server in
//!   this process, a copy of `deploy/local/mesh.yaml` with the reference
//!   bundle (`policies/`) and every limit raised so that nothing is refused
//!   for its rate: each check is identified, routed, judged by the bundle,
//!   metered (never refused) and checked against the breaker.
//! - **opa**: opa-envoy-plugin v1.15.2-envoy (`scripts/install-opa-envoy.sh`)
//!   on the same bundle. The bundle reads `input.meshward` (caller and
//!   service facts), which only Meshward adds, so the plugin evaluates the
//!   parity test's adapter (`tests/fixtures/ext_authz/adapter`, decision
//!   `adapter/decision`): it computes those facts from a registry built
//!   from the same mesh file (`data.parity_registry`), then evaluates
//!   `data.meshward.authz.decision` with them.
//!
//! The requests are CheckRequests as Envoy sends them for the demo:
//! support-triage calling `POST /say-hello` on hello-skill (allowed, small
//! JSON body) and `GET /invoices` on billing-system (denied), a fixed mix
//! (default 80 % allowed) identical for every server. Before any timing,
//! each policy server must allow the allowed request (gRPC status 0) and
//! deny the denied one (7); during timing any other answer is an error.
//!
//! Phases, each with a warm-up that is not recorded, run server after
//! server for one phase before the next phase starts (so a drift in the
//! machine's load spreads over all servers):
//!
//! - **closed C=n**: n calls in flight at all times (each task sends its
//!   next call when the last one answers), over `connections` h2
//!   connections: throughput at saturation, and latency per call;
//! - **open R/s**: calls sent on a fixed schedule whatever the answers
//!   (from a pacing thread), latency measured from each call's scheduled
//!   send time, so a server that falls behind shows its queue.
//!
//! Reported per server and phase: the achieved rate (checks answered per
//! second of the measured window), p50 and p99 latency, errors (gRPC
//! errors, timeouts, wrong answers), the server process's CPU time per
//! 1,000 checks answered in the measured window (user + system, from
//! `/proc/<pid>/stat`; Meshward's dataplane, not its idle control plane)
//! and its resident set at the end of the phase. Then ratios: Meshward ÷
//! opa-envoy-plugin and Meshward ÷ floor.
//!
//! Run with `bash benches/ext_authz.sh`. Environment: `MESHWARD_BIN`,
//! `MESHWARD_OPA_ENVOY` (binaries), `EXT_AUTHZ_BENCH_SECONDS` (measured
//! seconds per phase, default 5), `EXT_AUTHZ_BENCH_WARMUP` (default 1),
//! `EXT_AUTHZ_BENCH_SERVERS` (default `floor,meshward,opa`),
//! `EXT_AUTHZ_BENCH_CONCURRENCY` (closed-loop in-flight calls, default
//! `1,32`), `EXT_AUTHZ_BENCH_RATES` (open-loop req/s, default `1000,5000`),
//! `EXT_AUTHZ_BENCH_CONNECTIONS` (h2 connections per server, default 4),
//! `EXT_AUTHZ_BENCH_DENY_PERCENT` (default 20).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::Timestamp;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshward_spire::devserver::{DevIdentityServer, DevServerOptions};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TD: &str = "example.org";
const CP_ID: &str = "spiffe://example.org/meshward/controlplane";
/// The authorizer of `deploy/local/mesh.yaml` (`authorizers:`).
const AUTHORIZER_ID: &str = "spiffe://example.org/meshward/ext-authz";
const CALLER: &str = "spiffe://example.org/agent/support-triage";
/// The hidden argument that turns this binary into the floor server.
const NOOP_FLAG: &str = "--noop-server";
/// How long a server may take to become ready.
const READY: Duration = Duration::from_secs(60);
/// A call not answered within this is an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Distinct requests (request IDs, source ports) cycled through.
const POOL: usize = 1000;
/// gRPC status codes of an allowed and a denied check.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

#[path = "common/proc_usage.rs"]
mod proc_usage;
use proc_usage::{Usage, usage};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == NOOP_FLAG) {
        let addr: SocketAddr = args
            .get(i + 1)
            .ok_or("--noop-server needs an address")?
            .parse()?;
        return runtime.block_on(noop_server(addr));
    }
    runtime.block_on(run())
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn env_list<T: std::str::FromStr>(var: &str, default: &str) -> Result<Vec<T>, Error>
where
    T::Err: std::fmt::Display,
{
    env_or(var, default)
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|e| format!("{var}: {s:?}: {e}").into())
        })
        .collect()
}

/// The floor: answers OK to every check, reads nothing.
struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus {
                code: OK,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

async fn noop_server(addr: SocketAddr) -> Result<(), Error> {
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Noop))
        .serve(addr)
        .await?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Floor,
    Meshward,
    Opa,
}

impl Kind {
    fn parse(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "floor" => Ok(Kind::Floor),
            "meshward" => Ok(Kind::Meshward),
            "opa" => Ok(Kind::Opa),
            other => Err(format!(
                "EXT_AUTHZ_BENCH_SERVERS: unknown server {other:?} (floor, meshward, opa)"
            )
            .into()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Floor => "floor (no-op tonic)",
            Kind::Meshward => "meshward",
            Kind::Opa => "opa-envoy-plugin",
        }
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Closed(usize),
    Open(u64),
}

impl Phase {
    fn name(self) -> String {
        match self {
            Phase::Closed(c) => format!("closed C={c}"),
            Phase::Open(r) => format!("open {r}/s"),
        }
    }
}

struct Settings {
    measure: Duration,
    warmup: Duration,
    servers: Vec<Kind>,
    phases: Vec<Phase>,
    connections: usize,
    deny_percent: usize,
}

impl Settings {
    fn from_env() -> Result<Self, Error> {
        let secs = |var, default| -> Result<Duration, Error> {
            let s: f64 = env_or(var, default).parse()?;
            Ok(Duration::try_from_secs_f64(s).map_err(|e| format!("{var}: {e}"))?)
        };
        let servers = env_or("EXT_AUTHZ_BENCH_SERVERS", "floor,meshward,opa")
            .split(',')
            .map(Kind::parse)
            .collect::<Result<_, _>>()?;
        let mut phases: Vec<Phase> = env_list("EXT_AUTHZ_BENCH_CONCURRENCY", "1,32")?
            .into_iter()
            .map(Phase::Closed)
            .collect();
        phases.extend(
            env_list("EXT_AUTHZ_BENCH_RATES", "1000,5000")?
                .into_iter()
                .map(Phase::Open),
        );
        let connections: usize = env_or("EXT_AUTHZ_BENCH_CONNECTIONS", "4").parse()?;
        let deny_percent: usize = env_or("EXT_AUTHZ_BENCH_DENY_PERCENT", "20").parse()?;
        if connections == 0 || deny_percent > 100 {
            return Err("need at least one connection and a deny percentage of 0..=100".into());
        }
        Ok(Self {
            measure: secs("EXT_AUTHZ_BENCH_SECONDS", "5")?,
            warmup: secs("EXT_AUTHZ_BENCH_WARMUP", "1")?,
            servers,
            phases,
            connections,
            deny_percent,
        })
    }
}

async fn run() -> Result<(), Error> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let settings = Settings::from_env()?;
    let meshward = PathBuf::from(env_or(
        "MESHWARD_BIN",
        &repo.join("target/release/meshward").display().to_string(),
    ));
    let opa = PathBuf::from(env_or(
        "MESHWARD_OPA_ENVOY",
        &repo
            .join(".tools/bin/opa-envoy-plugin")
            .display()
            .to_string(),
    ));
    let dir = tempfile::Builder::new()
        .prefix("mwauthz")
        .tempdir_in("/tmp")?;
    let identity = DevIdentityServer::start(DevServerOptions {
        dir: dir.path().join("id"),
        trust_domain: TD.into(),
        svid_ttl: Duration::from_secs(24 * 3600),
    })
    .await?;
    let env = Env {
        repo,
        dir: dir.path().to_path_buf(),
        meshward,
        opa,
        identity,
    };
    let mesh = env.write_mesh()?;

    let pool = Arc::new(request_pool(settings.deny_percent));
    let mut servers = Vec::new();
    for &kind in &settings.servers {
        eprintln!("starting {}", kind.name());
        let mut server = match kind {
            Kind::Floor => env.start_floor()?,
            Kind::Meshward => env.start_meshward().await?,
            Kind::Opa => env.start_opa(&mesh)?,
        };
        server.wait_ready().await?;
        let load = Load::connect(&server, Arc::clone(&pool), settings.connections).await?;
        load.verify()
            .await
            .map_err(|e| format!("{}: {e}\n{}", kind.name(), server.log_tail()))?;
        servers.push((server, load));
    }

    let allowed = pool.iter().filter(|(_, want)| *want == OK).count();
    println!(
        "ext_authz Check: {} s measured after {} s warm-up per phase, {} h2 connections per server, \
         {}% allowed / {}% denied (support-triage → hello-skill POST /say-hello, → billing-system GET /invoices); \
         opa-envoy-plugin evaluates the adapter tests/fixtures/ext_authz/adapter (adapter/decision).",
        settings.measure.as_secs_f64(),
        settings.warmup.as_secs_f64(),
        settings.connections,
        allowed * 100 / pool.len(),
        100 - allowed * 100 / pool.len(),
    );
    println!();
    println!(
        "| server | phase | achieved (req/s) | p50 (µs) | p99 (µs) | errors | CPU per 1,000 checks (ms) | RSS (MiB) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut results: HashMap<(Kind, String), Sample> = HashMap::new();
    for &phase in &settings.phases {
        for (server, load) in &servers {
            eprintln!("{}: {}", server.kind.name(), phase.name());
            let sample = match phase {
                Phase::Closed(c) => {
                    load.closed(c, settings.warmup, settings.measure, server.pid())
                        .await
                }
                Phase::Open(r) => {
                    load.open(r, settings.warmup, settings.measure, server.pid())
                        .await
                }
            }
            .map_err(|e| {
                format!(
                    "{}, {}: {e}\n{}",
                    server.kind.name(),
                    phase.name(),
                    server.log_tail()
                )
            })?;
            println!("{}", sample.row(server.kind, phase));
            results.insert((server.kind, phase.name()), sample);
        }
    }
    print_ratios(&settings, &results);
    // A server that logs per check would be measured with its logging.
    for (server, _) in &servers {
        let bytes = std::fs::metadata(&server.log).map_or(0, |m| m.len());
        eprintln!("{}: {} bytes of log", server.log.display(), bytes);
    }
    drop(servers);
    env.identity.shutdown().await;
    Ok(())
}

fn print_ratios(settings: &Settings, results: &HashMap<(Kind, String), Sample>) {
    let mut out = String::new();
    for (other, label) in [
        (Kind::Opa, "Meshward ÷ opa-envoy-plugin"),
        (Kind::Floor, "Meshward ÷ floor"),
    ] {
        let mut rows = String::new();
        for phase in &settings.phases {
            let name = phase.name();
            let (Some(m), Some(o)) = (
                results.get(&(Kind::Meshward, name.clone())),
                results.get(&(other, name.clone())),
            ) else {
                continue;
            };
            let _ = writeln!(
                rows,
                "| {label} | {name} | {} | {} | {} | {} |",
                ratio(m.rate(), o.rate()),
                ratio(m.percentile(0.50), o.percentile(0.50)),
                ratio(m.percentile(0.99), o.percentile(0.99)),
                ratio(m.cpu_per_1k(), o.cpu_per_1k()),
            );
        }
        out.push_str(&rows);
    }
    if out.is_empty() {
        return;
    }
    println!();
    println!(
        "Ratios (Meshward's value ÷ the other's: above 1 is better for throughput, below 1 is better for latency and CPU):"
    );
    println!();
    println!("| ratio | phase | throughput | p50 | p99 | CPU per check |");
    println!("|---|---|---:|---:|---:|---:|");
    print!("{out}");
}

/// `a ÷ b` with three significant digits (at least two decimals).
fn ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if !r.is_finite() || r <= 0.0 {
        return format!("{r}");
    }
    let decimals = (2 - r.log10().floor() as i32).max(2) as usize;
    format!("{r:.decimals$}")
}

/// The bench's working directory, binaries and identity server.
struct Env {
    repo: PathBuf,
    dir: PathBuf,
    meshward: PathBuf,
    opa: PathBuf,
    identity: DevIdentityServer,
}

impl Env {
    /// `deploy/local/mesh.yaml` with the repository's `policies/` and every
    /// limit raised far beyond what the bench sends (the limiter still runs
    /// on every check, it never refuses). Validated here as the control
    /// plane will validate it.
    fn write_mesh(&self) -> Result<meshward_controlplane::config::Mesh, Error> {
        let template = std::fs::read_to_string(self.repo.join("deploy/local/mesh.yaml"))?;
        let mut yaml = String::with_capacity(template.len());
        for line in template.lines() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let key = trimmed.split(':').next().unwrap_or("");
            let value = match key {
                "dir" => Some(self.repo.join("policies").display().to_string()),
                "requests_per_second" | "burst" => Some("1000000".into()),
                "max_concurrent" => Some("100000".into()),
                _ => None,
            };
            match value {
                Some(v) => {
                    let _ = writeln!(yaml, "{indent}{key}: {v}");
                }
                None => {
                    yaml.push_str(line);
                    yaml.push('\n');
                }
            }
        }
        let path = self.dir.join("mesh.yaml");
        std::fs::write(&path, yaml)?;
        let mesh = meshward_controlplane::config::load(&path)
            .map_err(|e| format!("the bench's mesh file {}: {e}", path.display()))?;
        if !mesh.authorizers.iter().any(|a| a == AUTHORIZER_ID) {
            return Err(format!("{AUTHORIZER_ID} is not among the mesh's authorizers").into());
        }
        Ok(mesh)
    }

    fn log(&self, name: &str) -> Result<(PathBuf, std::fs::File), Error> {
        let path = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&path)?;
        Ok((path, file))
    }

    fn start_floor(&self) -> Result<Server, Error> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let (log, file) = self.log("floor")?;
        let child = Command::new(std::env::current_exe()?)
            .args([NOOP_FLAG, &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        Ok(Server {
            kind: Kind::Floor,
            addr,
            measured: Proc(child),
            helpers: Vec::new(),
            log,
        })
    }

    async fn start_meshward(&self) -> Result<Server, Error> {
        if !self.meshward.is_file() {
            return Err(format!(
                "meshward not found at {} (cargo build --release --bin meshward, or set MESHWARD_BIN)",
                self.meshward.display()
            )
            .into());
        }
        let cp_socket = self.identity.register(CP_ID).await?;
        let authz_socket = self.identity.register(AUTHORIZER_ID).await?;
        let xds = format!("127.0.0.1:{}", free_port()?);
        let addr = format!("127.0.0.1:{}", free_port()?);
        let (_, cp_log) = self.log("controlplane")?;
        let controlplane = Command::new(&self.meshward)
            .args(["controlplane", "--config"])
            .arg(self.dir.join("mesh.yaml"))
            .args(["--xds", &xds])
            .args(["--admin", &format!("127.0.0.1:{}", free_port()?)])
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix:{}", cp_socket.display()),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(cp_log)
            .spawn()?;
        let controlplane = Proc(controlplane);
        let (log, dp_log) = self.log("dataplane")?;
        let dataplane = Command::new(&self.meshward)
            .args(["dataplane", "--name", "authorizer"])
            .args(["--ext-authz", &addr])
            .args(["--xds", &xds, "--xds-spiffe-id", CP_ID])
            .args(["--admin", &format!("127.0.0.1:{}", free_port()?)])
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix:{}", authz_socket.display()),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(dp_log)
            .spawn()?;
        Ok(Server {
            kind: Kind::Meshward,
            addr,
            measured: Proc(dataplane),
            helpers: vec![controlplane],
            log,
        })
    }

    /// The plugin on the reference bundle (without `*_test.rego`, which
    /// Meshward does not load either), the parity test's adapter, and the
    /// mesh's registry as `data.parity_registry`.
    fn start_opa(&self, mesh: &meshward_controlplane::config::Mesh) -> Result<Server, Error> {
        if !self.opa.is_file() {
            return Err(format!(
                "opa-envoy-plugin not found at {} (bash scripts/install-opa-envoy.sh, or set MESHWARD_OPA_ENVOY)",
                self.opa.display()
            )
            .into());
        }
        let adapter = self.repo.join("tests/fixtures/ext_authz/adapter");
        if !adapter.join("adapter.rego").is_file() {
            return Err(format!("the OPA adapter {} is missing", adapter.display()).into());
        }
        let bundle = self.dir.join("opa-bundle");
        copy_bundle(&self.repo.join("policies"), &bundle)?;
        let registry = self.dir.join("registry.json");
        std::fs::write(
            &registry,
            json!({ "parity_registry": registry_of(mesh) }).to_string(),
        )?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let http = format!("127.0.0.1:{}", free_port()?);
        let config = self.dir.join("opa-envoy.yaml");
        std::fs::write(
            &config,
            format!(
                "plugins:\n  envoy_ext_authz_grpc:\n    addr: {addr}\n    path: adapter/decision\n    \
                 dry-run: false\n    enable-reflection: false\ndecision_logs:\n  console: false\n"
            ),
        )?;
        let (log, file) = self.log("opa-envoy")?;
        let child = Command::new(&self.opa)
            .args(["run", "--server", "--addr", &http, "--skip-version-check"])
            .args(["--log-level", "error", "--config-file"])
            .arg(&config)
            .arg(&bundle)
            .arg(&adapter)
            .arg(&registry)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        Ok(Server {
            kind: Kind::Opa,
            addr,
            measured: Proc(child),
            helpers: Vec::new(),
            log,
        })
    }
}

/// What the mesh knows about its agents (by SPIFFE ID) and services (by
/// name), in `input.meshward`'s shapes, as the adapter reads it.
fn registry_of(mesh: &meshward_controlplane::config::Mesh) -> Value {
    let agents: serde_json::Map<String, Value> = mesh
        .agents
        .values()
        .map(|a| {
            let facts = json!({
                "spiffe_id": a.spiffe_id,
                "name": a.name,
                "attributes": a.attributes,
                "permissions": a.permissions,
            });
            (a.spiffe_id.clone(), facts)
        })
        .collect();
    let services: serde_json::Map<String, Value> = mesh
        .services
        .values()
        .map(|s| {
            let facts = json!({
                "name": s.spec.name,
                "spiffe_id": s.spec.spiffe_id,
                "metadata": s.spec.metadata,
            });
            (s.spec.name.clone(), facts)
        })
        .collect();
    json!({
        "trust_domain": mesh.trust_domain,
        "agents": agents,
        "services": services,
    })
}

/// `from` copied to `to` without `*_test.rego` files.
fn copy_bundle(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_bundle(&entry.path(), &target)?;
        } else if !name.to_string_lossy().ends_with("_test.rego") {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A child process, killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    kind: Kind,
    /// `host:port` of its ext_authz gRPC listener.
    addr: String,
    /// The process that answers the checks (measured).
    measured: Proc,
    /// Processes it needs (Meshward's control plane); not measured.
    helpers: Vec<Proc>,
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.measured.0.id()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "{} (last lines):\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// Meshward: gRPC health SERVING on the ext_authz listener (it has its
    /// SVID and the mesh's configuration). The others: a first answered
    /// Check (the plugin binds its listener after loading the bundle).
    async fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + READY;
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5));
        let probe = request_pool(0).swap_remove(0).0;
        loop {
            let mut exited = self.measured.0.try_wait()?.is_some();
            for p in &mut self.helpers {
                exited |= p.0.try_wait()?.is_some();
            }
            if exited {
                return Err(format!(
                    "{} exited before it was ready\n{}",
                    self.kind.name(),
                    self.log_tail()
                )
                .into());
            }
            if let Ok(channel) = endpoint.connect().await {
                let ready = match self.kind {
                    Kind::Meshward => HealthClient::new(channel)
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32),
                    Kind::Floor | Kind::Opa => AuthorizationClient::new(channel)
                        .check(probe.clone())
                        .await
                        .is_ok(),
                };
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready on {} within {READY:?}\n{}",
                    self.kind.name(),
                    self.addr,
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One of the two calls of the mix.
struct Call {
    method: &'static str,
    path: &'static str,
    service: &'static str,
    body: &'static str,
    want: i32,
}

const ALLOWED: Call = Call {
    method: "POST",
    path: "/say-hello",
    service: "hello-skill",
    body: r#"{"name":"Ada","message":"Hello from support triage","ticket":"T-4821","priority":2}"#,
    want: OK,
};

const DENIED: Call = Call {
    method: "GET",
    path: "/invoices",
    service: "billing-system",
    body: "",
    want: PERMISSION_DENIED,
};

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

/// The check Envoy sends for `call` from support-triage's verified mTLS
/// connection (principal = its URI SAN), with a request body
/// (`with_request_body`), request `i` of the pool.
fn check_request(call: &Call, i: usize, time: &Timestamp) -> CheckRequest {
    let request_id = format!("5f0c{i:04x}-8e1b-4c1d-9a57-b3d2e6f{i:05x}");
    let mut headers: HashMap<String, String> = [
        (":authority", call.service),
        (":method", call.method),
        (":path", call.path),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("user-agent", "support-triage/1.4 python-httpx/0.27"),
        ("x-forwarded-proto", "https"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    headers.insert("x-request-id".into(), request_id);
    if !call.body.is_empty() {
        headers.insert("content-type".into(), "application/json".into());
        headers.insert("content-length".into(), call.body.len().to_string());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: socket("10.0.1.7", 40_000 + (i % 20_000) as u32),
                principal: CALLER.into(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: socket("10.0.2.9", 8443),
                principal: format!("spiffe://{TD}/service/{}", call.service),
                ..Default::default()
            }),
            request: Some(Request {
                time: Some(*time),
                http: Some(HttpRequest {
                    id: (10_000_000_000_u64 + i as u64).to_string(),
                    method: call.method.into(),
                    headers,
                    path: call.path.into(),
                    host: call.service.into(),
                    scheme: "https".into(),
                    size: call.body.len() as i64,
                    protocol: "HTTP/2".into(),
                    body: call.body.into(),
                    ..Default::default()
                }),
            }),
            metadata_context: Some(Metadata::default()),
            ..Default::default()
        }),
    }
}

/// `POOL` requests, `deny_percent` % of them denied, spread evenly; each
/// with the gRPC status a policy server must answer.
fn request_pool(deny_percent: usize) -> Vec<(CheckRequest, i32)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let time = Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    };
    (0..POOL)
        .map(|i| {
            // Request i is denied when the running share of denials steps up.
            let denied = (i + 1) * deny_percent / 100 > i * deny_percent / 100;
            let call = if denied { &DENIED } else { &ALLOWED };
            (check_request(call, i, &time), call.want)
        })
        .collect()
}

/// The load generator for one server: its connections and the requests.
struct Load {
    clients: Vec<AuthorizationClient<Channel>>,
    pool: Arc<Vec<(CheckRequest, i32)>>,
    /// The floor answers OK to everything: only a policy server is held to
    /// the expected statuses.
    expect_decisions: bool,
}

impl Load {
    async fn connect(
        server: &Server,
        pool: Arc<Vec<(CheckRequest, i32)>>,
        connections: usize,
    ) -> Result<Self, Error> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            // Each `connect` is its own h2 connection.
            let channel = Endpoint::from_shared(format!("http://{}", server.addr))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            clients.push(AuthorizationClient::new(channel));
        }
        Ok(Self {
            clients,
            pool,
            expect_decisions: server.kind != Kind::Floor,
        })
    }

    /// Once per server before timing: the allowed request is allowed and
    /// the denied one denied (the floor: every request answered OK).
    async fn verify(&self) -> Result<(), Error> {
        let mut client = self.clients[0].clone();
        let mut seen = [false, false];
        for (request, want) in self.pool.iter() {
            let slot = usize::from(*want == PERMISSION_DENIED);
            if seen[slot] {
                continue;
            }
            seen[slot] = true;
            let want = if self.expect_decisions { *want } else { OK };
            let response = client.check(request.clone()).await?.into_inner();
            let got = code(&response);
            if got != want {
                return Err(format!(
                    "{} {} answered gRPC status {got}, want {want}: {response:?}",
                    request_method(request),
                    request_host(request),
                )
                .into());
            }
        }
        Ok(())
    }

    fn want(&self, i: usize) -> (CheckRequest, i32) {
        let (request, want) = &self.pool[i % self.pool.len()];
        (
            request.clone(),
            if self.expect_decisions { *want } else { OK },
        )
    }

    /// `c` calls in flight at all times for `warmup + measure`; calls sent
    /// during `measure` are recorded.
    async fn closed(
        &self,
        c: usize,
        warmup: Duration,
        measure: Duration,
        pid: u32,
    ) -> Result<Sample, Error> {
        let from = Instant::now() + warmup;
        let until = from + measure;
        let mut tasks = JoinSet::new();
        for k in 0..c {
            let mut client = self.clients[k % self.clients.len()].clone();
            // Each task starts at another place in the pool.
            let requests: Vec<(CheckRequest, i32)> = (0..self.pool.len())
                .map(|j| self.want(j + k * 37))
                .collect();
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0_u64;
                for (request, want) in requests.iter().cycle() {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let answer =
                        tokio::time::timeout(CALL_TIMEOUT, client.check(request.clone())).await;
                    let ok = matches!(&answer, Ok(Ok(r)) if code(r.get_ref()) == *want);
                    if sent >= from {
                        latencies.push(sent.elapsed().as_nanos() as u64);
                        errors += u64::from(!ok);
                    }
                }
                (latencies, errors)
            });
        }
        tokio::time::sleep_until(from.into()).await;
        let before = usage(pid)?;
        tokio::time::sleep_until(until.into()).await;
        let after = usage(pid)?;
        let mut sample = Sample::new(measure, before, after);
        while let Some(done) = tasks.join_next().await {
            let (latencies, errors) = done?;
            sample.latencies.extend(latencies);
            sample.errors += errors;
        }
        sample.finish();
        Ok(sample)
    }

    /// Calls sent at `rate` per second on a fixed schedule (a pacing
    /// thread), whatever the answers. Latency runs from each call's
    /// scheduled send time, for the calls scheduled during `measure` (and
    /// waits for their answers, however late); the rate and the CPU per
    /// check count the answers received during `measure`, so a server that
    /// falls behind shows its capacity, not the schedule.
    async fn open(
        &self,
        rate: u64,
        warmup: Duration,
        measure: Duration,
        pid: u32,
    ) -> Result<Sample, Error> {
        let total = ((warmup + measure).as_secs_f64() * rate as f64) as u64;
        let first = (warmup.as_secs_f64() * rate as f64) as u64;
        let start = Instant::now() + Duration::from_millis(20);
        let from = start + warmup;
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, bool, Instant)>();
        let runtime = tokio::runtime::Handle::current();
        let clients = self.clients.clone();
        let requests: Vec<(CheckRequest, i32)> =
            (0..self.pool.len()).map(|j| self.want(j)).collect();
        let pacer = std::thread::spawn(move || {
            for i in 0..total {
                let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let mut client = clients[i as usize % clients.len()].clone();
                let (request, want) = requests[i as usize % requests.len()].clone();
                let tx = tx.clone();
                runtime.spawn(async move {
                    let answer = tokio::time::timeout(CALL_TIMEOUT, client.check(request)).await;
                    let ok = matches!(&answer, Ok(Ok(r)) if code(r.get_ref()) == want);
                    let _ = tx.send((i, ok, at));
                });
            }
        });
        let until = from + measure;
        let window = tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let before = usage(pid);
            tokio::time::sleep_until(until.into()).await;
            (before, usage(pid))
        });
        let mut latencies = Vec::with_capacity((total - first) as usize);
        let mut errors = 0;
        let mut answered = 0_u64;
        while let Some((i, ok, at)) = rx.recv().await {
            let now = Instant::now();
            if now >= from && now < until {
                answered += 1;
            }
            if i >= first {
                latencies.push((now - at).as_nanos() as u64);
                errors += u64::from(!ok);
            }
        }
        pacer.join().map_err(|_| "the pacing thread panicked")?;
        let (before, after) = window.await?;
        let mut sample = Sample::new(measure, before?, after?);
        sample.latencies = latencies;
        sample.errors = errors;
        sample.answered = Some(answered);
        sample.finish();
        Ok(sample)
    }
}

fn code(response: &CheckResponse) -> i32 {
    response.status.as_ref().map_or(OK, |s| s.code)
}

fn request_method(r: &CheckRequest) -> &str {
    r.attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map_or("", |h| h.method.as_str())
}

fn request_host(r: &CheckRequest) -> &str {
    r.attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map_or("", |h| h.host.as_str())
}

/// One phase on one server.
struct Sample {
    /// The measured window.
    elapsed: Duration,
    /// Sorted, nanoseconds.
    latencies: Vec<u64>,
    errors: u64,
    /// Open loop: answers received during the window, whichever call they
    /// answer (closed loop: one per recorded call).
    answered: Option<u64>,
    cpu: f64,
    rss_kib: u64,
}

impl Sample {
    fn new(elapsed: Duration, before: Usage, after: Usage) -> Self {
        Self {
            elapsed,
            latencies: Vec::new(),
            errors: 0,
            answered: None,
            cpu: after.cpu - before.cpu,
            rss_kib: after.rss_kib,
        }
    }

    fn finish(&mut self) {
        self.latencies.sort_unstable();
    }

    /// Checks answered in the window.
    fn answered(&self) -> u64 {
        self.answered.unwrap_or(self.latencies.len() as u64)
    }

    /// Checks answered per second of the window.
    fn rate(&self) -> f64 {
        self.answered() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile, in µs.
    fn percentile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1] as f64 / 1000.0
    }

    /// CPU seconds per 1,000 checks.
    fn cpu_per_1k(&self) -> f64 {
        self.cpu / self.answered().max(1) as f64 * 1000.0
    }

    fn row(&self, kind: Kind, phase: Phase) -> String {
        format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.1} |",
            kind.name(),
            phase.name(),
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.errors,
            self.cpu_per_1k() * 1000.0,
            self.rss_kib as f64 / 1024.0,
        )
    }
}
