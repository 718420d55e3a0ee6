//! SPIRE server and agent on loopback, from the shipped local configs.

use super::*;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use meshward_spire::entries::unix_user;

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
