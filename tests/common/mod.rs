//! Test harness: a whole mesh on loopback from a private copy of
//! `deploy/local/mesh.yaml` and `policies/` (so tests can edit config and
//! policy without touching the repository), backed either by `meshward up`
//! in this process ([`TestMesh::start`], dev identity server) or by separate
//! processes with identities from a real SPIRE ([`TestMesh::start_spire`]).
//! Scenario bodies in [`scenarios`] take a `&TestMesh`, so the same
//! assertions run against both.

#![allow(dead_code)]

pub mod envoy;
pub mod jaeger;
pub mod net;
pub mod opa_envoy;
pub mod promtool;
pub mod python;
pub mod raw;
pub mod scenarios;
pub mod spire;
pub mod wait;

#[allow(unused_imports)]
pub use wait::eventually;

use std::path::{Path, PathBuf};
use std::sync::Once;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshward::{Up, UpOptions};

pub const SUPPORT_TRIAGE: &str = "spiffe://example.org/agent/support-triage";
pub const BILLING_BOT: &str = "spiffe://example.org/agent/billing-bot";

static TRACING: Once = Once::new();

/// What runs the mesh.
pub enum Backend {
    /// `meshward up` in this process.
    InProcess(Box<Up>),
    /// One process per component, SVIDs from SPIRE.
    Spire(Box<spire::SpireMesh>),
}

pub struct TestMesh {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub http1: Client<HttpConnector, Full<Bytes>>,
    pub h2c: Client<HttpConnector, Full<Bytes>>,
}

/// A plain response, body collected.
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

impl TestMesh {
    /// Starts the demo mesh from a private copy of the shipped config.
    pub async fn start() -> TestMesh {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestMesh::start`], with a chance to edit `mesh.yaml` first.
    pub async fn start_with(edit: impl FnOnce(&mut String)) -> TestMesh {
        Self::start_with_options(edit, |_| {}).await
    }

    /// Like [`TestMesh::start_with`], with a chance to adjust [`UpOptions`].
    pub async fn start_with_options(
        edit: impl FnOnce(&mut String),
        options: impl FnOnce(&mut UpOptions),
    ) -> TestMesh {
        let dir = Self::prepare(edit);
        let mut opts = UpOptions::new(dir.path().join("mesh.yaml"), dir.path().join("state"));
        options(&mut opts);
        let up = Up::start(opts).await.expect("mesh starts");
        Self::with_backend(Backend::InProcess(Box::new(up)), dir)
    }

    /// The same mesh as separate processes with SVIDs from a real SPIRE
    /// (see [`spire`]). `None` (after saying why on stderr) when SPIRE
    /// cannot run here; panics instead under `MESHWARD_REQUIRE_SPIRE=1`.
    pub async fn start_spire() -> Option<TestMesh> {
        Self::start_spire_with(|_| {}, spire::External::default()).await
    }

    /// Like [`TestMesh::start_spire`], editing `mesh.yaml` first; members
    /// in `external` get SPIRE entries and users but no Meshward process.
    pub async fn start_spire_with(
        edit: impl FnOnce(&mut String),
        external: spire::External,
    ) -> Option<TestMesh> {
        let opts = spire::SpireOptions {
            external,
            ..spire::SpireOptions::default()
        };
        Self::start_spire_opts(edit, opts).await
    }

    /// Like [`TestMesh::start_spire_with`], with every [`spire::SpireOptions`]
    /// (e.g. a short SVID lifetime).
    pub async fn start_spire_opts(
        edit: impl FnOnce(&mut String),
        opts: spire::SpireOptions,
    ) -> Option<TestMesh> {
        if spire::skip_reason("this SPIRE test").is_some() {
            return None;
        }
        let dir = Self::prepare(edit);
        let path = dir.path().to_path_buf();
        let mesh = tokio::task::spawn_blocking(move || spire::SpireMesh::start_with(&path, &opts))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Some(Self::with_backend(Backend::Spire(Box::new(mesh)), dir))
    }

    fn prepare(edit: impl FnOnce(&mut String)) -> tempfile::TempDir {
        TRACING.call_once(|| meshward::telemetry::init_tracing("warn"));
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo().join("policies"), &dir.path().join("policies"));
        let mut yaml = std::fs::read_to_string(repo().join("deploy/local/mesh.yaml")).unwrap();
        yaml = yaml.replace("dir: ../../policies", "dir: policies");
        edit(&mut yaml);
        std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
        dir
    }

    fn with_backend(backend: Backend, dir: tempfile::TempDir) -> TestMesh {
        TestMesh {
            backend,
            dir,
            http1: Client::builder(TokioExecutor::new()).build_http(),
            h2c: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// The in-process mesh; panics for a SPIRE-backed one.
    pub fn up(&self) -> &Up {
        match &self.backend {
            Backend::InProcess(up) => up,
            Backend::Spire(_) => panic!("this test needs the in-process mesh"),
        }
    }

    pub fn up_mut(&mut self) -> &mut Up {
        match &mut self.backend {
            Backend::InProcess(up) => up,
            Backend::Spire(_) => panic!("this test needs the in-process mesh"),
        }
    }

    /// The SPIRE-backed mesh; panics for an in-process one.
    pub fn spire(&mut self) -> &mut spire::SpireMesh {
        match &mut self.backend {
            Backend::Spire(m) => m,
            Backend::InProcess(_) => panic!("this test needs the SPIRE mesh"),
        }
    }

    /// Which backend, for messages.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::InProcess(_) => "in-process",
            Backend::Spire(_) => "spire",
        }
    }

    /// Admin address of a dataplane (agent or service name).
    pub fn admin(&self, name: &str) -> String {
        match &self.backend {
            Backend::InProcess(up) => up
                .info
                .agents
                .iter()
                .map(|a| (&a.name, &a.admin))
                .chain(up.info.services.iter().map(|s| (&s.name, &s.admin)))
                .find(|(n, _)| *n == name)
                .map(|(_, a)| a.clone()),
            Backend::Spire(m) => m.addresses.admin.get(name).cloned(),
        }
        .unwrap_or_else(|| panic!("no dataplane {name}"))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    pub fn policy_path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("policies").join(rel)
    }

    pub fn outbound(&self, agent: &str) -> String {
        match &self.backend {
            Backend::InProcess(up) => up
                .info
                .agents
                .iter()
                .find(|a| a.name == agent)
                .map(|a| a.outbound.clone()),
            Backend::Spire(m) => m.addresses.outbound.get(agent).cloned(),
        }
        .unwrap_or_else(|| panic!("no agent {agent}"))
    }

    pub fn inbound(&self, service: &str) -> String {
        match &self.backend {
            Backend::InProcess(up) => up
                .info
                .services
                .iter()
                .find(|s| s.name == service)
                .map(|s| s.inbound.clone()),
            Backend::Spire(m) => m.addresses.inbound.get(service).cloned(),
        }
        .unwrap_or_else(|| panic!("no service {service}"))
    }

    /// Sends a request through an agent's sidecar over HTTP/1.1.
    pub async fn call(&self, agent: &str, method: &str, path: &str, body: &str) -> Answer {
        self.call_with(agent, method, path, body, &[]).await
    }

    pub async fn call_with(
        &self,
        agent: &str,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(format!(
            "http://{}{}",
            self.outbound(agent),
            path
        ));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        answer(self.http1.request(req).await.expect("sidecar answers")).await
    }

    /// The same over h2c (prior knowledge).
    pub async fn call_h2(&self, agent: &str, method: &str, path: &str, body: &str) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.outbound(agent), path))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        answer(self.h2c.request(req).await.expect("sidecar answers")).await
    }

    pub async fn shutdown(self) {
        match self.backend {
            Backend::InProcess(up) => up.shutdown().await,
            // Killing processes blocks briefly; keep it off the runtime.
            Backend::Spire(m) => {
                let _ = tokio::task::spawn_blocking(move || drop(m)).await;
            }
        }
    }
}

pub async fn answer(r: Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = r.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Rewrites a file atomically (write + rename), as editors and ConfigMaps do.
pub fn rewrite(path: &Path, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    let new = edit(text);
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
