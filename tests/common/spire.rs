//! A mesh of separate processes with identities from a real SPIRE.
//!
//! One `spire-server` and one `spire-agent` on loopback (the shipped
//! `spire/conf/local/*.conf`, join-token node attestation, the unix workload
//! attestor), registration entries from `meshward spire entries --apply`,
//! and every workload — `meshward controlplane`, one `meshward dataplane`
//! per agent and service, one `meshward skill` per service — as its own
//! process under its own unix user `mw-<name>`, so the agent tells them apart
//! by uid exactly as it would on a real node. Readiness is always a signal
//! (SPIRE healthchecks, the admin `/ready` endpoints, a skill accepting
//! connections); everything is killed when the harness is dropped.
//!
//! Needs root (to create users and switch uid) and the SPIRE binaries
//! (`scripts/install-spire.sh`). Without them [`SpireMesh::start`] reports
//! why; `MESHWARD_REQUIRE_SPIRE=1` turns that into a test failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meshward_spire::entries::unix_user;

const MESHWARD: &str = env!("CARGO_BIN_EXE_meshward");

/// How long any one component may take to become ready.
const READY: Duration = Duration::from_secs(60);

/// Serialises `useradd` (it locks /etc/passwd) between parallel tests.
static USERS: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the SPIRE binaries are: `MESHWARD_SPIRE_BIN_DIR` or `.tools/bin`.
pub fn spire_bin_dir() -> PathBuf {
    std::env::var_os("MESHWARD_SPIRE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/bin"))
}

/// Why SPIRE tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    let bin = spire_bin_dir();
    for b in ["spire-server", "spire-agent"] {
        if !bin.join(b).is_file() {
            return Some(format!(
                "{} not found (run scripts/install-spire.sh, or set MESHWARD_SPIRE_BIN_DIR)",
                bin.join(b).display()
            ));
        }
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("SPIRE tests run workloads under their own uids and need root".into());
    }
    None
}

/// `Some(reason)` means: skip (with the reason printed). Panics instead when
/// `MESHWARD_REQUIRE_SPIRE=1`, so CI cannot pass by skipping.
pub fn skip_reason(what: &str) -> Option<String> {
    let reason = unavailable()?;
    if std::env::var("MESHWARD_REQUIRE_SPIRE").is_ok_and(|v| v == "1") {
        panic!("MESHWARD_REQUIRE_SPIRE=1 but {what} cannot run: {reason}");
    }
    eprintln!("SKIPPED {what}: {reason} (set MESHWARD_REQUIRE_SPIRE=1 to make this a failure)");
    Some(reason)
}

/// Where [`free_port`] looks: below Linux's ephemeral range (32768–60999),
/// so the port cannot be taken meanwhile by an outgoing connection's local
/// port (the kernel picks those from the ephemeral range, and a busy test
/// makes many), which `bind(:0)` ports would be exposed to.
const PORTS: std::ops::Range<u16> = 20000..32000;

/// A loopback port that was free a moment ago, for a process that binds it
/// itself. Each test process walks its own stretch of [`PORTS`] (offset by
/// its pid) and never hands out a port twice, so parallel tests and test
/// binaries do not race for the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::AcqRel) % span;
        let port = PORTS.start + u16::try_from(offset).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}");
}

/// A unix user for a workload: created when missing; returns (uid, gid).
pub fn ensure_user(user: &str) -> (u32, u32) {
    let _guard = USERS.lock().unwrap_or_else(|p| p.into_inner());
    let lookup = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if lookup("-u").is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ])
            .output()
            .expect("run useradd");
        assert!(
            out.status.success() || lookup("-u").is_some(),
            "useradd {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        lookup("-u").expect("uid of new user"),
        lookup("-g").expect("gid of new user"),
    )
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Makes a directory tree readable (and traversable) by every user.
pub fn open_up(dir: &Path) {
    chmod(dir, 0o755);
    for entry in fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            open_up(&path);
        } else {
            chmod(&path, 0o644);
        }
    }
}

/// A child process killed (and reaped) on drop, with its output in a log file.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` with its output to `<logs>/<name>.log`.
pub fn spawn(logs: &Path, name: &str, mut cmd: Command) -> Proc {
    let log = logs.join(format!("{name}.log"));
    let file = fs::File::create(&log).expect("create log");
    let err = file.try_clone().expect("clone log");
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Proc {
        name: name.to_string(),
        log,
        child,
    }
}

/// Polls `check` (every 50 ms) until it holds; panics after [`READY`] with
/// `what` and the process's log.
pub fn wait_for(proc: &mut Proc, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if check() {
            return;
        }
        proc.assert_running();
        assert!(
            start.elapsed() < READY,
            "{} not {what} within {READY:?}; log {}:\n{}",
            proc.name,
            proc.log.display(),
            proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 GET on loopback; the status code, if any answer came.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1)?.parse().ok()
}

/// What runs where in a [`SpireMesh`].
#[derive(Debug, Clone, Default)]
pub struct Addresses {
    pub xds: String,
    pub controlplane_admin: String,
    /// Agent name → outbound listener.
    pub outbound: BTreeMap<String, String>,
    /// Service name → inbound listener (or the external endpoint).
    pub inbound: BTreeMap<String, String>,
    /// Dataplane name → admin address.
    pub admin: BTreeMap<String, String>,
}

/// Which mesh members the harness should not run itself (a test runs a
/// real peer, e.g. Envoy, under that member's identity instead).
#[derive(Debug, Clone, Default)]
pub struct External {
    /// Agents with no Meshward dataplane.
    pub agents: BTreeSet<String>,
    /// Services with no Meshward dataplane or skill; their endpoint is a
    /// port the harness picks (see [`Addresses::inbound`]).
    pub services: BTreeSet<String>,
}

/// How [`SpireMesh::start_with`] sets SPIRE up.
#[derive(Debug, Clone, Default)]
pub struct SpireOptions {
    pub external: External,
    /// X509-SVID lifetime of every entry (`meshward spire entries
    /// --x509-svid-ttl`), in seconds; `None` is the server default (1h).
    pub x509_svid_ttl: Option<u32>,
}

/// SPIRE server + agent on loopback.
pub struct Spire {
    pub dir: PathBuf,
    pub trust_domain: String,
    pub server_socket: PathBuf,
    /// The agent's Workload API (and SDS) socket.
    pub agent_socket: PathBuf,
    pub node_id: String,
    // Drop order: agent before server.
    agent: Option<Proc>,
    server: Proc,
}

impl Spire {
    fn bin(name: &str) -> PathBuf {
        spire_bin_dir().join(name)
    }

    /// Runs `spire-server <args> -socketPath <server socket>`.
    pub fn server_cmd(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(Self::bin("spire-server"));
        cmd.args(args).arg("-socketPath").arg(&self.server_socket);
        cmd.output().expect("run spire-server")
    }

    /// Starts the server in `dir/spire` (config `spire/conf/local/server.conf`),
    /// waits for its healthcheck.
    pub fn start_server(dir: &Path, trust_domain: &str, svid_ttl: &str) -> Spire {
        let spire_dir = dir.join("spire");
        for sub in ["server", "agent", "agent-data", "admin", "logs"] {
            fs::create_dir_all(spire_dir.join(sub)).expect("create spire dirs");
        }
        let server_socket = spire_dir.join("server.sock");
        assert!(
            server_socket.as_os_str().len() < 100,
            "socket path too long: {}",
            server_socket.display()
        );
        let port = free_port();
        let env = [
            ("MESHWARD_SPIRE_DIR", spire_dir.display().to_string()),
            ("MESHWARD_SPIRE_SERVER_PORT", port.to_string()),
            ("MESHWARD_SPIRE_SVID_TTL", svid_ttl.to_string()),
            ("MESHWARD_TRUST_DOMAIN", trust_domain.to_string()),
        ];
        let mut cmd = Command::new(Self::bin("spire-server"));
        cmd.args(["run", "-expandEnv", "-config"])
            .arg(repo().join("spire/conf/local/server.conf"))
            .envs(env.iter().map(|(k, v)| (k, v)));
        let server = spawn(&spire_dir.join("logs"), "spire-server", cmd);
        let mut spire = Spire {
            dir: spire_dir.clone(),
            trust_domain: trust_domain.to_string(),
            agent_socket: spire_dir.join("agent/api.sock"),
            server_socket,
            node_id: format!("spiffe://{trust_domain}/meshward/node"),
            agent: None,
            server,
        };
        let socket = spire.server_socket.clone();
        wait_for(&mut spire.server, "healthy", || {
            Command::new(Self::bin("spire-server"))
                .args(["healthcheck", "-shallow", "-socketPath"])
                .arg(&socket)
                .output()
                .is_ok_and(|o| o.status.success())
        });
        // The agent's bootstrap trust: the server's bundle, not insecure bootstrap.
        let bundle = spire.server_cmd(&["bundle", "show"]);
        assert!(bundle.status.success(), "bundle show: {bundle:?}");
        fs::write(spire_dir.join("bundle.pem"), &bundle.stdout).expect("write bundle");
        // Remember the env for the agent.
        fs::write(
            spire_dir.join("env"),
            env.iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect::<String>(),
        )
        .expect("write env");
        spire
    }

    /// Applies the mesh's entries with `meshward spire entries --apply`.
    pub fn apply_entries(&self, mesh_yaml: &Path, extra: &[&str]) -> String {
        let out = Command::new(MESHWARD)
            .args(["spire", "entries", "--apply", "--config"])
            .arg(mesh_yaml)
            .arg("--parent-id")
            .arg(&self.node_id)
            .arg("--spire-server")
            .arg(Self::bin("spire-server"))
            .arg("--socket")
            .arg(&self.server_socket)
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run meshward spire entries");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "meshward spire entries --apply failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Starts the agent with a fresh join token whose node alias is
    /// [`Spire::node_id`]; waits for its healthcheck. The socket directory
    /// is made traversable for the workload users.
    pub fn start_agent(&mut self) {
        let token = self.server_cmd(&["token", "generate", "-spiffeID", &self.node_id]);
        assert!(token.status.success(), "token generate: {token:?}");
        let token = String::from_utf8_lossy(&token.stdout)
            .split_whitespace()
            .nth(1)
            .expect("Token: <value>")
            .to_string();
        let env = fs::read_to_string(self.dir.join("env")).expect("read env");
        let mut cmd = Command::new(Self::bin("spire-agent"));
        cmd.args(["run", "-expandEnv", "-config"])
            .arg(repo().join("spire/conf/local/agent.conf"))
            .args(["-joinToken", &token]);
        for line in env.lines() {
            if let Some((k, v)) = line.split_once('=') {
                cmd.env(k, v);
            }
        }
        chmod(&self.dir, 0o755);
        chmod(&self.dir.join("agent"), 0o755);
        let mut agent = spawn(&self.dir.join("logs"), "spire-agent", cmd);
        let socket = self.agent_socket.clone();
        wait_for(&mut agent, "healthy", || {
            Command::new(Self::bin("spire-agent"))
                .args(["healthcheck", "-shallow", "-socketPath"])
                .arg(&socket)
                .output()
                .is_ok_and(|o| o.status.success())
        });
        self.agent = Some(agent);
    }

    /// Kills the agent (SIGKILL, as a crash or an OOM kill would) and waits
    /// for it to be gone. Its socket file stays behind, as it would.
    pub fn stop_agent(&mut self) {
        drop(self.agent.take());
    }

    pub fn agent_running(&self) -> bool {
        self.agent.is_some()
    }

    /// Starts the agent again. Its keys were in memory (`KeyManager
    /// "memory"`), so it attests afresh with a new join token: a restarted
    /// node, same node alias, same workload entries.
    pub fn restart_agent(&mut self) {
        self.stop_agent();
        let data = self.dir.join("agent-data");
        let _ = fs::remove_dir_all(&data);
        fs::create_dir_all(&data).expect("create agent-data");
        self.start_agent();
    }

    /// `spire-server <args> -output json`, parsed; panics with the output
    /// when the command fails.
    pub fn server_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-output", "json"]);
        let out = self.server_cmd(&all);
        assert!(
            out.status.success(),
            "spire-server {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "spire-server {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The X.509 CAs in the trust domain's bundle (`spire-server bundle
    /// show`), as authority IDs (subject key identifiers, lowercase hex).
    pub fn bundle_authority_ids(&self) -> Vec<String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let out = self.server_cmd(&["bundle", "show"]);
        assert!(out.status.success(), "bundle show: {out:?}");
        CertificateDer::pem_slice_iter(&out.stdout)
            .map(|c| {
                let der = c.expect("bundle show prints PEM certificates");
                meshward_spire::identity::subject_key_id(der.as_ref())
                    .expect("a CA certificate has a subject key identifier")
            })
            .collect()
    }

    /// `SPIFFE_ENDPOINT_SOCKET` for workloads.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.agent_socket.display())
    }

    /// A command running as workload `name`'s unix user (created if
    /// missing), with only a minimal environment.
    pub fn workload_command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let (uid, gid) = ensure_user(&unix_user(name));
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env(
                "RUST_LOG",
                std::env::var("MESHWARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("SPIFFE_ENDPOINT_SOCKET", self.endpoint())
            .current_dir(&self.dir)
            .uid(uid)
            .gid(gid);
        cmd
    }
}

/// The whole mesh as processes, identities from [`Spire`].
pub struct SpireMesh {
    pub addresses: Addresses,
    pub entries_report: String,
    // Workloads first so they die before SPIRE.
    procs: Vec<Proc>,
    pub spire: Spire,
}

/// Rewrites the `endpoints:` of each service under `services:` to its
/// assigned address (the mesh file's port-0 placeholders).
fn assign_endpoints(yaml: &str, endpoints: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut in_services = false;
    let mut current: Option<String> = None;
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
            in_services = line.starts_with("services:");
        }
        let trimmed = line.trim_start();
        if in_services {
            if let Some(name) = trimmed.strip_prefix("- name:") {
                current = Some(name.trim().to_string());
            }
            if let Some(addr) = current
                .as_ref()
                .and_then(|n| endpoints.get(n))
                .filter(|_| trimmed.starts_with("endpoints:"))
            {
                let indent = &line[..line.len() - trimmed.len()];
                out.push_str(&format!("{indent}endpoints: [\"{addr}\"]\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl SpireMesh {
    /// Starts SPIRE and the mesh described by `dir/mesh.yaml` (policies
    /// next to it). `dir` must be short (socket paths) and is opened up for
    /// the workload users.
    pub fn start(dir: &Path, external: &External) -> SpireMesh {
        Self::start_with(
            dir,
            &SpireOptions {
                external: external.clone(),
                ..SpireOptions::default()
            },
        )
    }

    /// [`SpireMesh::start`] with more [`SpireOptions`].
    pub fn start_with(dir: &Path, opts: &SpireOptions) -> SpireMesh {
        let external = &opts.external;
        let config = dir.join("mesh.yaml");
        let mesh = meshward_controlplane::config::load(&config)
            .unwrap_or_else(|e| panic!("test mesh.yaml invalid: {e:?}"));
        let addr = |port: u16| format!("127.0.0.1:{port}");

        let mut a = Addresses {
            xds: addr(free_port()),
            controlplane_admin: addr(free_port()),
            ..Addresses::default()
        };
        let mut backends = BTreeMap::new();
        for svc in mesh.services.values() {
            a.inbound.insert(svc.spec.name.clone(), addr(free_port()));
            if external.services.contains(&svc.spec.name) {
                continue;
            }
            a.admin.insert(svc.spec.name.clone(), addr(free_port()));
            let backend = match &svc.backend {
                Some(b) => (b.clone(), false),
                None => (addr(free_port()), true),
            };
            backends.insert(svc.spec.name.clone(), backend);
        }
        for agent in mesh.agents.values() {
            if external.agents.contains(&agent.name) {
                continue;
            }
            a.outbound.insert(agent.name.clone(), addr(free_port()));
            a.admin.insert(agent.name.clone(), addr(free_port()));
        }
        let yaml = fs::read_to_string(&config).expect("read mesh.yaml");
        fs::write(&config, assign_endpoints(&yaml, &a.inbound)).expect("write mesh.yaml");
        open_up(dir);

        let mut spire = Spire::start_server(dir, &mesh.trust_domain, "1h");
        // Entries before the agent starts: its first sync has them all.
        let ttl = opts.x509_svid_ttl.map(|t| t.to_string());
        let ttl_args: Vec<&str> = match &ttl {
            Some(t) => vec!["--x509-svid-ttl", t],
            None => vec![],
        };
        let entries_report = spire.apply_entries(&config, &ttl_args);
        spire.start_agent();
        let logs = spire.dir.join("logs");
        let cp_id = meshward_spire::entries::controlplane_id(&mesh.trust_domain);

        let mut procs = Vec::new();
        let mut cmd = spire.workload_command("controlplane", MESHWARD);
        cmd.arg("controlplane").arg("--config").arg(&config).args([
            "--xds",
            &a.xds,
            "--admin",
            &a.controlplane_admin,
        ]);
        let mut cp = spawn(&logs, "controlplane", cmd);
        let admin = a.controlplane_admin.clone();
        wait_for(&mut cp, "ready", || {
            http_status(&admin, "/ready") == Some(200)
        });
        procs.push(cp);

        let dataplane = |name: &str, node: &str| {
            let mut cmd = spire.workload_command(name, MESHWARD);
            cmd.args([
                "dataplane",
                "--name",
                node,
                "--xds",
                &a.xds,
                "--xds-spiffe-id",
                &cp_id,
                "--admin",
                &a.admin[name],
            ]);
            cmd
        };
        let mut starting = Vec::new();
        for (name, (backend, demo)) in &backends {
            if *demo {
                let mut cmd = spire.workload_command(name, MESHWARD);
                cmd.args(["skill", "--name", name, "--listen", backend]);
                let mut skill = spawn(&logs, &format!("{name}-skill"), cmd);
                wait_for(&mut skill, "accepting", || {
                    std::net::TcpStream::connect(backend.as_str()).is_ok()
                });
                procs.push(skill);
            }
            let node = format!("{name}-inbound");
            let mut cmd = dataplane(name, &node);
            cmd.args(["--inbound", &a.inbound[name], "--local-upstream", backend]);
            starting.push((spawn(&logs, &node, cmd), a.admin[name].clone()));
        }
        for name in a.outbound.keys() {
            let mut cmd = dataplane(name, name);
            cmd.args(["--outbound", &a.outbound[name]]);
            starting.push((spawn(&logs, name, cmd), a.admin[name].clone()));
        }
        for (mut dp, admin) in starting {
            wait_for(&mut dp, "ready", || {
                http_status(&admin, "/ready") == Some(200)
            });
            procs.push(dp);
        }
        SpireMesh {
            addresses: a,
            entries_report,
            procs,
            spire,
        }
    }

    /// Starts an extra process (e.g. Envoy) as mesh member `member`'s user,
    /// logging to `<log_name>.log`; it is killed with the mesh.
    pub fn spawn_as(
        &mut self,
        member: &str,
        log_name: &str,
        program: &Path,
        args: &[String],
    ) -> &mut Proc {
        let mut cmd = self.spire.workload_command(member, program);
        cmd.args(args);
        let proc = spawn(&self.spire.dir.join("logs"), log_name, cmd);
        self.procs.push(proc);
        self.procs.last_mut().expect("just pushed")
    }

    /// Starts one more `meshward dataplane` process as mesh member
    /// `member`'s user (node name `node`, `extra` listener arguments) with
    /// an admin port of its own, returned. It is killed with the mesh.
    pub fn spawn_dataplane(&mut self, member: &str, node: &str, extra: &[String]) -> String {
        let admin = format!("127.0.0.1:{}", free_port());
        let cp_id = meshward_spire::entries::controlplane_id(&self.spire.trust_domain);
        let mut cmd = self.spire.workload_command(member, MESHWARD);
        cmd.args([
            "dataplane",
            "--name",
            node,
            "--xds",
            &self.addresses.xds,
            "--xds-spiffe-id",
            &cp_id,
            "--admin",
            &admin,
        ])
        .args(extra);
        let proc = spawn(&self.spire.dir.join("logs"), node, cmd);
        self.procs.push(proc);
        admin
    }

    /// The log of the process named `name` (its last lines).
    pub fn log_tail(&self, name: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(Proc::log_tail)
            .unwrap_or_else(|| format!("no process {name}"))
    }

    /// The whole log of the process named `name`.
    pub fn log(&self, name: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    /// The pid of the process named `name` (to show it was not restarted).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.iter().find(|p| p.name == name).map(Proc::id)
    }

    /// Panics (with logs) if any process of the mesh has died.
    pub fn assert_running(&mut self) {
        for p in &mut self.procs {
            p.assert_running();
        }
    }
}

/// One GET over HTTP/1.1 (fresh connection); status and body.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| format!("GET {url}: no answer within 10s"))?
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {url}: body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An admin endpoint's `path`: status and body (panics if nothing answers).
pub async fn admin(addr: &str, path: &str) -> (u16, String) {
    get(&format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("admin {addr}{path}: {e}"))
}

/// Polls `check` every 50 ms until it yields `Some`; panics with `what`
/// and the last observation after `within`.
pub async fn poll<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of the Prometheus series `name` whose labels include every
/// pair of `labels`; 0 when there is none (counters start absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A certificate a server presented in a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub serial: String,
    /// Which CA signed it (SPIRE's authority ID).
    pub authority_key_id: Option<String>,
    pub not_after: std::time::SystemTime,
}

/// The test process as a workload of its own: uid 0 is registered as
/// `spiffe://<td>/meshward/test-probe`, so it gets an SVID from the SPIRE
/// agent like any workload and can complete mTLS handshakes with the mesh's
/// listeners to see which certificate a *new* connection is served.
pub struct Probe {
    pub spiffe_id: String,
    pub identity: meshward_spire::IdentitySource,
}

impl Probe {
    /// Creates the entry (with `ttl` seconds, if given) and waits for the SVID.
    pub async fn register(spire: &Spire, ttl: Option<u32>) -> Probe {
        let spiffe_id = format!("spiffe://{}/meshward/test-probe", spire.trust_domain);
        let ttl = ttl.map(|t| t.to_string());
        let mut args = vec![
            "entry",
            "create",
            "-parentID",
            &spire.node_id,
            "-spiffeID",
            &spiffe_id,
            "-selector",
            "unix:uid:0",
        ];
        if let Some(t) = &ttl {
            args.extend(["-x509SVIDTTL", t]);
        }
        let out = tokio::task::block_in_place(|| spire.server_cmd(&args));
        assert!(out.status.success(), "probe entry: {out:?}");
        let identity = meshward_spire::IdentitySource::connect(&spire.endpoint(), READY)
            .await
            .unwrap_or_else(|e| panic!("probe SVID: {e}"));
        Probe {
            spiffe_id,
            identity,
        }
    }

    /// A fresh mTLS handshake with `addr`, requiring the server to prove
    /// `expected`; the leaf it presented.
    pub async fn peer_leaf(&self, addr: &str, expected: &str) -> Result<Leaf, String> {
        let config = meshward_spire::tls::client_config(&self.identity, Some(expected), &[b"h2"])
            .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(config)
                .connect(meshward_spire::server_name_for(expected), tcp),
        )
        .await
        .map_err(|_| format!("handshake with {addr} timed out"))?
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| format!("{addr} presented no certificate"))?;
        let der = leaf.as_ref();
        Ok(Leaf {
            serial: meshward_spire::identity::leaf_serial(der).unwrap_or_default(),
            authority_key_id: meshward_spire::identity::leaf_authority_key_id(der),
            not_after: meshward_spire::identity::leaf_not_after(der)
                .unwrap_or(std::time::UNIX_EPOCH),
        })
    }
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, described.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn rps(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = (self.ok + self.failed) as f64;
        n / self.elapsed.as_secs_f64().max(1e-3)
    }
}

/// Continuous, paced GET load from concurrent client tasks (each with its
/// own keep-alive connection) against one URL, until stopped or `limit`
/// elapses. Anything but a 200 within 10 s counts as a failure.
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    errors: std::sync::Arc<Mutex<Vec<String>>>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: &str, workers: usize, per_worker_rps: u32, limit: Duration) -> Load {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let stop = tokio_util::sync::CancellationToken::new();
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let period = Duration::from_secs(1) / per_worker_rps.max(1);
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, errors) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    use http_body_util::BodyExt;
                    let client: hyper_util::client::legacy::Client<
                        _,
                        http_body_util::Empty<bytes::Bytes>,
                    > = hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build_http();
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let deadline = tokio::time::Instant::now() + limit;
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep_until(deadline) => return,
                            _ = tick.tick() => {}
                        }
                        let uri: http::Uri = match url.parse() {
                            Ok(u) => u,
                            Err(e) => panic!("load url {url}: {e}"),
                        };
                        let outcome = async {
                            let resp = client.get(uri).await.map_err(|e| format!("{e:?}"))?;
                            let status = resp.status();
                            let body = resp
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| format!("body: {e}"))?
                                .to_bytes();
                            if status == http::StatusCode::OK {
                                Ok(())
                            } else {
                                Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                            }
                        };
                        match tokio::time::timeout(Duration::from_secs(10), outcome).await {
                            Ok(Ok(())) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut errs = errors.lock().unwrap_or_else(|p| p.into_inner());
                                if errs.len() < 10 {
                                    errs.push(e);
                                }
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut errs = errors.lock().unwrap_or_else(|p| p.into_inner());
                                if errs.len() < 10 {
                                    errs.push("no answer within 10s".into());
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            started,
            tasks,
        }
    }

    /// (succeeded, failed) so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The first failures seen so far, described.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the clients (requests in flight finish) and reports.
    pub async fn finish(self) -> LoadReport {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let (ok, failed) = (
            self.ok.load(std::sync::atomic::Ordering::Relaxed),
            self.failed.load(std::sync::atomic::Ordering::Relaxed),
        );
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        LoadReport {
            ok,
            failed,
            errors,
            elapsed: self.started.elapsed(),
        }
    }
}
