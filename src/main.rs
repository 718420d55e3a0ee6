//! `meshward`: the one CLI. Thin: parses flags and dispatches to the crates.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshward::{Up, UpOptions, telemetry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: the request path allocates on every
/// worker thread, and glibc's arenas cost ~30% of the proxy's CPU under load
/// (see benches/RESULTS.md, "Proxy path").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meshward",
    version,
    about = "Identity-aware mesh for AI agents"
)]
struct Cli {
    /// Log filter (`info`, `debug`, `meshward_dataplane=debug,info`, ...);
    /// default: `RUST_LOG`, else `info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = telemetry::LogFormat::Text)]
    log_format: telemetry::LogFormat,
    /// Runtime worker threads. Default: 1 for a sidecar (`dataplane` with
    /// no ext_authz or rate-limit server), every CPU otherwise. One worker
    /// runs everything on one thread: no cross-thread wake-ups, the least
    /// CPU per request at a sidecar's rates (linkerd2-proxy's default too);
    /// give a busy sidecar more.
    #[arg(long, global = true, env = "MESHWARD_WORKERS")]
    workers: Option<NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole mesh on loopback in one process (dev identity server,
    /// control plane, a dataplane per agent and per service, demo skills).
    Up {
        /// The mesh file.
        #[arg(long, default_value = "deploy/local/mesh.yaml")]
        config: PathBuf,
        /// Where sockets and up.json go.
        #[arg(long, default_value = ".meshward")]
        state_dir: PathBuf,
        /// Envoy ext_authz v3 gRPC for existing meshes (DESIGN.md's 9191);
        /// its identity is the first SPIFFE ID under `authorizers:`.
        #[arg(long, default_value = "127.0.0.1:9191")]
        ext_authz: SocketAddr,
        /// Run no ext_authz server.
        #[arg(long)]
        no_ext_authz: bool,
        /// Envoy rate-limit v3 gRPC (DESIGN.md's 8081), on the same dataplane.
        #[arg(long, default_value = "127.0.0.1:8081")]
        rate_limit: SocketAddr,
        /// Run no rate-limit server.
        #[arg(long)]
        no_rate_limit: bool,
        #[command(flatten)]
        observe: telemetry::ObserveArgs,
    },
    /// Check a mesh file; prints every error with file, line and field.
    Validate { file: PathBuf },
    /// Run the control plane alone (identity from SPIFFE_ENDPOINT_SOCKET).
    Controlplane {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:18001")]
        admin: SocketAddr,
    },
    /// Run one dataplane (identity from SPIFFE_ENDPOINT_SOCKET).
    Dataplane {
        /// Name for logs and metrics.
        #[arg(long)]
        name: String,
        /// Control plane xDS address.
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds: String,
        /// The SPIFFE ID the control plane must present.
        #[arg(long)]
        xds_spiffe_id: Option<String>,
        /// Agent-facing listener (sidecar of an agent), e.g. 127.0.0.1:15001.
        #[arg(long)]
        outbound: Option<SocketAddr>,
        /// mTLS listener in front of a service, e.g. 0.0.0.0:15006.
        #[arg(long)]
        inbound: Option<SocketAddr>,
        /// The app behind the inbound listener.
        #[arg(long)]
        local_upstream: Option<SocketAddr>,
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        #[command(flatten)]
        ext_authz: ExtAuthzArgs,
        /// Answer Envoy's rate-limit v3 `ShouldRateLimit` here: `host:port`
        /// (e.g. 127.0.0.1:8081) or `unix:/path/to/socket`.
        #[arg(long = "rate-limit")]
        rate_limit: Option<String>,
        /// Require mTLS on a TCP rate-limit listener.
        #[arg(long = "rate-limit-mtls")]
        rate_limit_mtls: bool,
        #[command(flatten)]
        observe: telemetry::ObserveArgs,
    },
    /// Print the bootstrap of a proxy that takes its configuration from the
    /// control plane.
    Bootstrap {
        #[command(subcommand)]
        command: BootstrapCommand,
    },
    /// Work with a real SPIRE deployment (see docs/spire.md).
    Spire {
        #[command(subcommand)]
        command: SpireCommand,
    },
    /// Run one demo service alone (its JSON API with the echo behind it, and
    /// the meshward.demo.v1.Echo gRPC service), e.g. behind a `meshward
    /// dataplane --local-upstream`.
    Skill {
        /// The service: hello-skill, sentiment-analysis, customer-lookup,
        /// support-system or billing-system get their demo API; any name
        /// gets the echo, which reports it.
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum BootstrapCommand {
    /// An Envoy bootstrap: ADS over mTLS to the control plane, certificates
    /// from the SPIRE agent's (or dev server's) SDS socket, admin on
    /// loopback. The Envoy's role follows from its SPIFFE ID.
    Envoy {
        /// The SPIFFE ID of the Envoy's SVID.
        #[arg(long)]
        node: String,
        /// The control plane's xDS address.
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds: String,
        /// The SPIRE agent's socket (serves SDS).
        #[arg(long)]
        sds: PathBuf,
        /// Delta xDS instead of state of the world.
        #[arg(long)]
        delta: bool,
        /// The SPIFFE ID the control plane must present
        /// [default: spiffe://<trust domain>/meshward/controlplane].
        #[arg(long)]
        xds_spiffe_id: Option<String>,
        /// `Node.id` [default: the SPIFFE ID].
        #[arg(long)]
        node_id: Option<String>,
        /// `Node.cluster`.
        #[arg(long, default_value = "meshward")]
        cluster: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Where the outbound listener binds [default: 127.0.0.1:15001].
        #[arg(long)]
        outbound: Option<String>,
        /// Where the inbound listener binds [default: 0.0.0.0:15006].
        #[arg(long)]
        inbound: Option<String>,
        /// The app behind the inbound listener [default: the service's
        /// `backend` in mesh.yaml].
        #[arg(long)]
        backend: Option<String>,
        /// A Meshward authorizer (`ip:port`, e.g. one beside the Envoy on
        /// 127.0.0.1:9191) that the inbound listener's ext_authz filter
        /// asks, reporting outcomes over its access log.
        #[arg(long)]
        ext_authz: Option<String>,
    },
}

/// What `meshward spire entries` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EntriesFormat {
    /// `spire-server entry create` command lines.
    Commands,
    /// spire-controller-manager `ClusterSPIFFEID` resources (YAML).
    K8s,
}

#[derive(Subcommand)]
enum SpireCommand {
    /// Turn the mesh's control plane, agents and services into SPIRE
    /// registration entries: print the `spire-server entry create` commands,
    /// or apply them (idempotently) with --apply; or, with --format k8s,
    /// print spire-controller-manager ClusterSPIFFEID resources for
    /// `kubectl apply`.
    Entries {
        #[arg(long)]
        config: PathBuf,
        /// `commands`: `spire-server entry create` lines (or --apply them);
        /// `k8s`: ClusterSPIFFEID resources, one per workload, selecting
        /// pods by namespace, label `meshward.io/workload: <name>` and
        /// service account `<name>`.
        #[arg(long, default_value = "commands")]
        format: EntriesFormat,
        /// `className` of the ClusterSPIFFEIDs (--format k8s): which
        /// spire-controller-manager acts on them [default: none].
        #[arg(long)]
        k8s_class_name: Option<String>,
        /// Run the commands: create missing entries, update changed ones,
        /// leave equal ones alone.
        #[arg(long)]
        apply: bool,
        /// The node (alias) SPIFFE ID the entries hang off
        /// [default: spiffe://<trust domain>/meshward/node].
        #[arg(long)]
        parent_id: Option<String>,
        /// `unix`: unix:user:mw-<name>; `k8s`: k8s:ns:<namespace> + k8s:sa:<name>.
        #[arg(long, default_value = "unix")]
        selectors: meshward_spire::entries::SelectorKind,
        /// Kubernetes namespace of the workloads (k8s selectors, --format k8s).
        #[arg(long, default_value = "meshward")]
        k8s_namespace: String,
        /// Cluster name of the k8s_psat node alias entry (k8s selectors).
        #[arg(long, default_value = "meshward")]
        k8s_cluster: String,
        /// X509-SVID lifetime of the entries in seconds [default: the server's].
        #[arg(long)]
        x509_svid_ttl: Option<u32>,
        #[arg(long, default_value = "spire-server")]
        spire_server: PathBuf,
        /// The SPIRE server's API socket (-socketPath).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

/// Worker threads when `--workers` is not given: one for a sidecar, all
/// CPUs for everything else (a whole mesh, a control plane, an authorizer
/// that Envoys share).
fn default_workers(command: &Command) -> usize {
    let sidecar = matches!(
        command,
        Command::Dataplane {
            ext_authz: ExtAuthzArgs { addr: None, .. },
            rate_limit: None,
            ..
        }
    );
    if sidecar {
        1
    } else {
        std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
    }
}

/// One worker: a current-thread runtime (no idle worker to wake, nothing
/// crosses threads). More: tokio's multi-thread scheduler.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_level.as_deref(), cli.log_format, "info");
    raise_nofile_limit();
    let runtime = match runtime(
        cli.workers
            .map_or_else(|| default_workers(&cli.command), NonZeroUsize::get),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshward: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit: every
/// connection of every listener needs one, and the usual soft limit of 1024
/// would let one client exhaust them long before the listener caps apply.
fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit raised to the hard limit"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { file } => Ok(validate(&file)),
        Command::Spire { command } => spire(command).await,
        Command::Bootstrap {
            command:
                BootstrapCommand::Envoy {
                    node,
                    xds,
                    sds,
                    delta,
                    xds_spiffe_id,
                    node_id,
                    cluster,
                    admin,
                    outbound,
                    inbound,
                    backend,
                    ext_authz,
                },
        } => {
            let yaml = meshward_controlplane::bootstrap::EnvoyBootstrap {
                spiffe_id: node,
                node_id,
                cluster,
                xds,
                xds_spiffe_id,
                sds_socket: sds,
                delta,
                admin,
                outbound,
                inbound,
                backend,
                ext_authz,
            }
            .render()?;
            use std::io::Write;
            std::io::stdout().lock().write_all(yaml.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Skill { name, listen } => {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let stop = CancellationToken::new();
            let task = tokio::spawn(meshward::demo::serve(name.clone(), listener, stop.clone()));
            tracing::info!(skill = %name, %listen, "skill ready");
            shutdown_signal().await;
            stop.cancel();
            let _ = task.await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up {
            config,
            state_dir,
            ext_authz,
            no_ext_authz,
            rate_limit,
            no_rate_limit,
            observe,
        } => {
            let config = locate_default(config);
            let mut opts = UpOptions::new(config, &state_dir);
            opts.observe = observe.settings()?;
            opts.ext_authz = (!no_ext_authz).then_some(ext_authz);
            opts.rate_limit = (!no_rate_limit).then_some(rate_limit);
            let up = Up::start(opts).await?;
            println!("{}", up.table());
            println!("\nwrote {}", state_dir.join("up.json").display());
            tracing::info!(
                agents = up.info.agents.len(),
                services = up.info.services.len(),
                "mesh ready"
            );
            shutdown_signal().await;
            tracing::info!("shutting down");
            up.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Controlplane { config, xds, admin } => {
            let identity =
                meshward_spire::IdentitySource::connect_env(Duration::from_secs(30)).await?;
            let listener = TcpListener::bind(xds)
                .await
                .with_context(|| format!("binding {xds}"))?;
            let admin_listener = TcpListener::bind(admin)
                .await
                .with_context(|| format!("binding {admin}"))?;
            let traces = meshward_telemetry::Tracing::start(
                meshward_telemetry::TracingConfig::resolve(None)?.as_ref(),
                "controlplane",
            )?;
            let cp = meshward_controlplane::ControlPlane::start(
                meshward_controlplane::ControlPlaneOptions {
                    config,
                    overlay: None,
                    identity,
                    xds: listener,
                    tracing: traces.clone(),
                },
            )
            .await?;
            let stop = CancellationToken::new();
            let admin_task = tokio::spawn(meshward_dataplane::admin::serve(
                meshward_dataplane::listener::Listener::new(
                    admin_listener,
                    meshward_dataplane::listener::ListenerKind::Admin,
                    "controlplane",
                ),
                std::sync::Arc::new(cp.status()),
                telemetry::prometheus(),
                stop.clone(),
            ));
            shutdown_signal().await;
            stop.cancel();
            let _ = admin_task.await;
            cp.shutdown().await;
            traces.flush(Duration::from_secs(2)).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dataplane {
            name,
            xds,
            xds_spiffe_id,
            outbound,
            inbound,
            local_upstream,
            admin,
            ext_authz,
            rate_limit,
            rate_limit_mtls,
            observe,
        } => {
            let observe = meshward_dataplane::observe::Sinks::open(&observe.settings()?)?
                .for_dataplane(&name)?;
            // Starts without waiting for the Workload API: /ready says why
            // the dataplane is not ready until the first SVID arrives.
            let identity = meshward_spire::WorkloadIdentity::connect_env()?;
            let bind = async |a: Option<SocketAddr>| -> anyhow::Result<Option<TcpListener>> {
                match a {
                    Some(a) => Ok(Some(
                        TcpListener::bind(a)
                            .await
                            .with_context(|| format!("binding {a}"))?,
                    )),
                    None => Ok(None),
                }
            };
            let dp = meshward_dataplane::Dataplane::start(meshward_dataplane::DataplaneOptions {
                name: name.clone(),
                observe,
                identity,
                xds: meshward_dataplane::xds::XdsClientConfig {
                    address: xds,
                    server_spiffe_id: xds_spiffe_id,
                    node_id: name,
                    cluster: "meshward".into(),
                },
                outbound: bind(outbound).await?,
                inbound: bind(inbound).await?,
                admin: bind(Some(admin)).await?,
                local_upstream,
                metrics: telemetry::prometheus(),
                ext_authz: ext_authz.listener().await?,
                rate_limit: match rate_limit {
                    Some(addr) => Some(grpc_endpoint(&addr, rate_limit_mtls).await?),
                    None => None,
                },
            })
            .await?;
            shutdown_signal().await;
            dp.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `meshward dataplane`'s ext_authz flags.
#[derive(clap::Args, Debug)]
struct ExtAuthzArgs {
    /// Answer Envoy's ext_authz v3 `Check` here: `host:port` (e.g.
    /// 127.0.0.1:9191) or `unix:/path/to/socket`.
    #[arg(long = "ext-authz")]
    addr: Option<String>,
    /// Require mTLS on a TCP ext_authz listener (the caller's SVID; ours
    /// from the Workload API).
    #[arg(long = "ext-authz-mtls")]
    mtls: bool,
    /// The destination service when a check names none (no
    /// `meshward_service` context extension, no matching `:authority`).
    #[arg(long = "ext-authz-service")]
    service: Option<String>,
    /// A front proxy's SPIFFE ID whose `x-forwarded-client-cert` names the
    /// caller (repeatable).
    #[arg(long = "ext-authz-trusted-proxy")]
    trusted_proxies: Vec<String>,
    /// Log the real decision, then allow.
    #[arg(long = "ext-authz-dry-run")]
    dry_run: bool,
    /// Allow when the policy fails to evaluate (default: deny).
    #[arg(long = "ext-authz-allow-on-policy-error")]
    allow_on_policy_error: bool,
    /// Feed breakers and hold concurrency slots from Envoy's gRPC access
    /// log (`envoy.access_loggers.http_grpc` pointed at this listener);
    /// a request not reported within this many seconds is abandoned.
    #[arg(long = "ext-authz-outcomes", value_name = "SECONDS")]
    outcomes: Option<u64>,
}

impl ExtAuthzArgs {
    async fn listener(self) -> anyhow::Result<Option<meshward_dataplane::ExtAuthzListener>> {
        let Some(addr) = self.addr else {
            return Ok(None);
        };
        Ok(Some(meshward_dataplane::ExtAuthzListener {
            endpoint: grpc_endpoint(&addr, self.mtls).await?,
            settings: meshward_dataplane::extauthz::ExtAuthzSettings {
                trusted_proxies: self.trusted_proxies,
                service: self.service,
                dry_run: self.dry_run,
                allow_on_policy_error: self.allow_on_policy_error,
                outcomes: self.outcomes.map(Duration::from_secs),
            },
        }))
    }
}

/// A gRPC listener from `host:port` or `unix:<path>`.
async fn grpc_endpoint(
    addr: &str,
    mtls: bool,
) -> anyhow::Result<meshward_dataplane::grpc_server::GrpcEndpoint> {
    use meshward_dataplane::grpc_server::{GrpcEndpoint, GrpcListener, GrpcTls};
    let listener = match addr.strip_prefix("unix:") {
        Some(path) => {
            if mtls {
                anyhow::bail!(
                    "mTLS applies to TCP listeners; {addr} is a Unix socket (protect it by its file mode)"
                );
            }
            // A stale socket from an earlier run would make bind fail.
            let _ = std::fs::remove_file(path);
            GrpcListener::Unix {
                listener: tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("binding {addr}"))?,
                path: path.into(),
            }
        }
        None => GrpcListener::Tcp(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
    };
    Ok(GrpcEndpoint {
        listener,
        tls: if mtls {
            GrpcTls::Mutual
        } else {
            GrpcTls::Plain
        },
    })
}

async fn spire(command: SpireCommand) -> anyhow::Result<ExitCode> {
    use meshward_spire::cluster_spiffe_ids::{self, K8sOptions};
    use meshward_spire::entries::{self as spire_entries, EntryOptions, ServerCli};
    let SpireCommand::Entries {
        config,
        format,
        k8s_class_name,
        apply,
        parent_id,
        selectors,
        k8s_namespace,
        k8s_cluster,
        x509_svid_ttl,
        spire_server,
        socket,
    } = command;
    let mesh = meshward_controlplane::config::load(&config).map_err(|errors| {
        for e in errors.iter() {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{}: {} error(s)", config.display(), errors.len())
    })?;
    // Written, not println!'d: a closed pipe (`| head`) is an error, not a panic.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if format == EntriesFormat::K8s {
        if apply || parent_id.is_some() || socket.is_some() {
            anyhow::bail!(
                "--format k8s prints resources for `kubectl apply`; \
                 --apply, --parent-id and --socket belong to --format commands"
            );
        }
        let opts = K8sOptions {
            namespace: k8s_namespace,
            class_name: k8s_class_name,
            x509_svid_ttl,
        };
        let resources = cluster_spiffe_ids::plan(&mesh.spire_registry(), &opts)?;
        // The header names the command that reproduces the file.
        let mut source = format!(
            "meshward spire entries --config {} --format k8s",
            config.display()
        );
        if opts.namespace != K8sOptions::default().namespace {
            source.push_str(&format!(" --k8s-namespace {}", opts.namespace));
        }
        if let Some(class) = &opts.class_name {
            source.push_str(&format!(" --k8s-class-name {class}"));
        }
        if let Some(ttl) = opts.x509_svid_ttl {
            source.push_str(&format!(" --x509-svid-ttl {ttl}"));
        }
        write!(out, "{}", cluster_spiffe_ids::to_yaml(&resources, &source))?;
        return Ok(ExitCode::SUCCESS);
    }
    if k8s_class_name.is_some() {
        anyhow::bail!("--k8s-class-name belongs to --format k8s");
    }
    let entries = spire_entries::plan(
        &mesh.spire_registry(),
        &EntryOptions {
            parent_id,
            selectors,
            k8s_namespace,
            k8s_cluster,
            x509_svid_ttl,
        },
    )?;
    let cli = ServerCli {
        spire_server,
        socket,
    };
    if apply {
        let report = tokio::task::spawn_blocking(move || spire_entries::apply(&cli, &entries))
            .await
            .context("applying entries")??;
        for line in report {
            writeln!(out, "{line}")?;
        }
    } else {
        for e in &entries {
            writeln!(out, "# {}", e.workload)?;
            writeln!(out, "{}", spire_entries::shell_line(&cli.create(e)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(file: &std::path::Path) -> ExitCode {
    match meshward_controlplane::config::validate_file(file) {
        Ok(mesh) => {
            println!(
                "{}: ok ({} agents, {} services, policy revision {})",
                file.display(),
                mesh.agents.len(),
                mesh.services.len(),
                &mesh.policy.revision[..12.min(mesh.policy.revision.len())]
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", file.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}

/// `deploy/local/mesh.yaml` is relative to the repository; when run from
/// elsewhere, fall back to the copy next to the sources this binary was built from.
fn locate_default(config: PathBuf) -> PathBuf {
    if config.exists() || config != std::path::Path::new("deploy/local/mesh.yaml") {
        return config;
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(&config);
    if built.exists() { built } else { config }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(args: &[&str]) -> usize {
        let cli = Cli::try_parse_from(args).expect("valid command line");
        cli.workers
            .map_or_else(|| default_workers(&cli.command), NonZeroUsize::get)
    }

    #[test]
    fn a_sidecar_runs_one_worker_and_everything_else_every_cpu() {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let sidecar = [
            "meshward",
            "dataplane",
            "--name",
            "a",
            "--outbound",
            "127.0.0.1:1",
        ];
        assert_eq!(workers(&sidecar), 1);
        assert_eq!(
            workers(&[&sidecar[..], &["--ext-authz", "127.0.0.1:2"]].concat()),
            cpus
        );
        assert_eq!(
            workers(&[&sidecar[..], &["--rate-limit", "127.0.0.1:2"]].concat()),
            cpus
        );
        assert_eq!(workers(&["meshward", "up"]), cpus);
        assert_eq!(
            workers(&["meshward", "--workers", "3", "dataplane", "--name", "a"]),
            3
        );
        assert!(Cli::try_parse_from(["meshward", "--workers", "0", "up"]).is_err());
    }
}
