//! opa-envoy-plugin, the reference ext_authz server, for parity tests:
//! finding the binary (`scripts/install-opa-envoy.sh`), running it on a
//! policy (killed on drop, log kept) and waiting until it serves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::net::free_port;
use super::raw;
use super::wait::eventually;

/// How long a cold start may take: compiling a bundle and binding two
/// listeners, on a loaded CI machine.
const READY: Duration = Duration::from_secs(30);

/// The binary: `MESHWARD_OPA_ENVOY`, else `.tools/bin/opa-envoy-plugin`.
/// `None` (after saying why) when missing; a failure under
/// `MESHWARD_REQUIRE_PEERS=1`.
pub fn find() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidate = std::env::var_os("MESHWARD_OPA_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".tools/bin/opa-envoy-plugin"));
    if candidate.is_file() {
        return Some(candidate);
    }
    let msg = format!(
        "opa-envoy-plugin not found at {} (run scripts/install-opa-envoy.sh or set MESHWARD_OPA_ENVOY)",
        candidate.display()
    );
    assert!(
        std::env::var("MESHWARD_REQUIRE_PEERS").as_deref() != Ok("1"),
        "opa-envoy-plugin is required here but {msg}"
    );
    eprintln!("SKIPPED: {msg}");
    None
}

/// A running opa-envoy-plugin, killed and reaped on drop.
pub struct OpaEnvoy {
    child: Child,
    /// `host:port` of its ext_authz v3 gRPC server.
    pub grpc: String,
    /// `host:port` of OPA's REST API (health).
    pub http: String,
    log: PathBuf,
}

impl Drop for OpaEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OpaEnvoy {
    /// Starts `binary` answering Check with the decision at `path` (the
    /// plugin's form, e.g. `envoy/authz/allow`) of `bundle`: policy
    /// directories and data files, loaded as `opa run` loads its arguments
    /// (a directory's `data.json` at its path, a data file at the root).
    /// Config and log are written to `dir`; returns once the plugin reports
    /// healthy (its gRPC listener is bound then).
    pub async fn start(binary: &Path, dir: &Path, path: &str, bundle: &[&Path]) -> OpaEnvoy {
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let config = dir.join("opa-envoy.yaml");
        std::fs::write(
            &config,
            format!(
                "plugins:\n  envoy_ext_authz_grpc:\n    addr: {grpc}\n    path: {path}\n    \
                 dry-run: false\n    enable-reflection: false\ndecision_logs:\n  console: false\n"
            ),
        )
        .unwrap();
        let log = dir.join("opa-envoy.log");
        let file = std::fs::File::create(&log).unwrap();
        // Load errors go to stdout, logs to stderr: keep both.
        let child = Command::new(binary)
            .args(["run", "--server", "--addr", &http, "--skip-version-check"])
            .args(["--log-level", "error", "--config-file"])
            .arg(&config)
            .args(bundle)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut plugin = OpaEnvoy {
            child,
            grpc,
            http,
            log,
        };
        plugin.wait_healthy().await;
        plugin
    }

    /// The last lines of its output, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until `GET /health?plugins` answers 200: the bundle compiled
    /// and every plugin, the ext_authz gRPC server included, is up.
    async fn wait_healthy(&mut self) {
        let http = self.http.clone();
        let child = &mut self.child;
        let mut exited = None;
        let healthy = eventually(READY, || {
            // An exited plugin ends the wait at once (reported below).
            if exited.is_none() {
                exited = child.try_wait().ok().flatten();
            }
            let gone = exited.is_some();
            let http = http.clone();
            async move {
                let request =
                    "GET /health?plugins HTTP/1.1\r\nHost: opa\r\nConnection: close\r\n\r\n";
                gone || raw::try_http1(&http, request)
                    .await
                    .is_some_and(|a| a.status == Some(200))
            }
        })
        .await;
        if let Some(status) = exited {
            panic!(
                "opa-envoy-plugin exited with {status}:\n{}",
                self.log_tail()
            );
        }
        assert!(
            healthy.is_some(),
            "opa-envoy-plugin not healthy within {READY:?}:\n{}",
            self.log_tail()
        );
    }
}
