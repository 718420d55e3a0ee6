//! The whole mesh as separate processes, identities from [`super::Spire`].

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

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
