//! Parity of Meshward's ext_authz v3 server with the real opa-envoy-plugin
//! (v1.15.2-envoy): a deterministic corpus of CheckRequests
//! (`tests/python/ext_authz_corpus.py`, its module docs list the request
//! classes) goes to both, each running the same policy, and the answers are
//! compared. Bundles:
//!
//! - **probe** (`tests/fixtures/ext_authz/probe`): denies everything with
//!   the input document as the body, so the input documents themselves are
//!   compared (and Meshward's `input.meshward` checked against the registry);
//! - **reference** (`policies/`, `data.meshward.authz.decision`): in the
//!   plugin through a test-only adapter (`tests/fixtures/ext_authz/adapter`)
//!   that computes `input.meshward` from a registry this test writes from
//!   the running mesh;
//! - **docs_query** and **docs_body**: the plugin documentation's
//!   `parsed_path`/`parsed_query` and `parsed_body` examples at the plugin's
//!   default path (`envoy/authz/allow`, Meshward `data.envoy.authz.allow`);
//! - **docs_rbac**: the plugin's Istio example (HTTP Basic users and
//!   roles, `base64url.decode`), at its own path `istio/authz/allow`.
//!   The documentation's JWT examples (the primer's, the Envoy quick
//!   start's) need `io.jwt.decode_verify`, which regorus lacks.
//!
//! Differences by design, excluded from every comparison:
//!
//! - headers named `x-agent-*` and `x-meshward-*`, in any header list of
//!   the response (Meshward asserts the verified caller upstream, removes
//!   client-sent copies, and names its refusals);
//! - `decision_id` in `dynamic_metadata`: its value (random in both) and
//!   its presence (the plugin sends none with a request-parse 400);
//! - `status.message` texts (gRPC's free-form detail);
//! - a malformed decision: the plugin answers with a gRPC `UNKNOWN` error,
//!   Meshward denies (none of these bundles produces one);
//! - callers that are no SPIFFE ID of the trust domain: Meshward denies them
//!   with 403 before any policy runs (asserted, not compared);
//! - paths Meshward refuses (encoded `/`, `\` or NUL, `;` parameters, `..`
//!   above the root, `\`, `#`, controls, not origin-form): 400 before any
//!   policy (asserted); a non-canonical path is judged in its canonical
//!   form, so the plugin is sent the request with the canonical path and
//!   Meshward's echo must show the raw one in `input.meshward.raw_path`;
//! - the JSON text of a malformed-JSON 400 (Go's words, not serde_json's:
//!   status and code are compared);
//! - the texts of malformed multipart bodies' 400s (Go's `mime/multipart`
//!   words them its own way; status and code are compared);
//! - JSON numbers are compared by value: OPA keeps a number's literal text
//!   (`1.50` stays `1.50` in `json.marshal`), regorus its value;
//! - `input.meshward.raw_path` in the reference adapter is the canonical
//!   path the plugin received (the reference bundle never reads it).
//!
//! Known differences the corpus leaves out, because Meshward's JSON reader
//! (serde_json) cannot follow Go's there: numbers beyond `u64`/`i64` are
//! floats (`100000000000000000000000` becomes `1e23`), numbers beyond `f64`
//! (`1e400`) and nesting deeper than 128 are refused with 400, and a
//! top-level scalar directly followed by `null` (`1null`) is refused where
//! Go reads `1`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::opa_envoy::{self, OpaEnvoy};
use common::{TestMesh, python};
use meshward::UpOptions;
use serde_json::{Value, json};

/// Requests in each corpus run.
const COUNT: usize = 800;
const SEED: u64 = 20_250_115;
/// Bound on one corpus run: a cold interpreter and ~1,400 loopback calls
/// (the probe's take ~25 ms each in Meshward's debug build, which
/// marshals the whole input in Rego).
const RUN: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/ext_authz").join(name)
}

/// `from` copied to `to` without `*_test.rego` files, which Meshward does
/// not load and the plugin, like any `opa run`, would.
fn copy_bundle(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_bundle(&entry.path(), &target);
        } else if !name.to_string_lossy().ends_with("_test.rego") {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// One bundle run on both servers.
struct Bundle {
    name: &'static str,
    /// The policy directory both servers load.
    policies: PathBuf,
    /// Meshward's `policy.decision`.
    decision: &'static str,
    /// The plugin's decision path.
    plugin_path: &'static str,
    /// Policy directories only the plugin loads (the adapter).
    plugin_extra: Vec<PathBuf>,
    /// `probe` (compare input documents) or `decision` (compare responses).
    mode: &'static str,
}

/// `mesh.yaml` with `dir` and `decision` set and every rate limit off: a
/// corpus run is hundreds of checks per caller, denials included, and a
/// 429 would hide the answer under test.
fn edit_yaml(yaml: &mut String, dir: &Path, decision: &str) {
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("requests_per_second:") {
            out.push_str(&format!("{indent}requests_per_second: 0\n"));
        } else if trimmed.starts_with("dir: ") {
            out.push_str(&format!("{indent}dir: {}\n", dir.display()));
        } else if trimmed.starts_with("decision: ") {
            out.push_str(&format!("{indent}decision: {decision}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    *yaml = out;
}

/// What the mesh knows about its agents (by SPIFFE ID) and services (by
/// name), in `input.meshward`'s shapes: the plugin's adapter reads it as
/// `data.parity_registry`, the corpus checks Meshward's facts against it.
fn registry(mesh: &TestMesh) -> Value {
    let model = mesh.up().mesh();
    let agents: serde_json::Map<String, Value> = model
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
    let services: serde_json::Map<String, Value> = model
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
        "trust_domain": model.trust_domain,
        "agents": agents,
        "services": services,
    })
}

/// The corpus script's summary.
struct Summary {
    json: Value,
}

impl Summary {
    fn class(&self, name: &str) -> u64 {
        self.json["classes"][name].as_u64().unwrap_or(0)
    }

    fn get(&self, key: &str) -> u64 {
        self.json[key].as_u64().unwrap_or(0)
    }
}

/// Starts both servers on `bundle`, runs the corpus, and returns its
/// summary once it passed (every request explained, no mismatch).
async fn run(bundle: Bundle) -> Option<Summary> {
    let opa = opa_envoy::find()?;
    let python = python::find()?;
    let started = Instant::now();
    let dir = bundle.policies.clone();
    let decision = bundle.decision;
    let mesh = TestMesh::start_with_options(
        move |yaml| edit_yaml(yaml, &dir, decision),
        |opts: &mut UpOptions| {
            opts.ext_authz = Some("127.0.0.1:0".parse().unwrap());
        },
    )
    .await;
    let ext_authz = mesh
        .up()
        .info
        .authorizer
        .as_ref()
        .and_then(|a| a.ext_authz.clone())
        .expect("ext_authz runs");
    let work = tempfile::tempdir().unwrap();
    let registry = registry(&mesh);
    let data = work.path().join("registry.json");
    std::fs::write(&data, json!({ "parity_registry": registry }).to_string()).unwrap();
    let mut paths: Vec<&Path> = vec![&bundle.policies];
    paths.extend(bundle.plugin_extra.iter().map(PathBuf::as_path));
    paths.push(&data);
    let plugin = OpaEnvoy::start(&opa, work.path(), bundle.plugin_path, &paths).await;

    let config = work.path().join("corpus.json");
    let corpus = json!({
        "mode": bundle.mode,
        "meshward": ext_authz,
        "plugin": plugin.grpc,
        "registry": registry,
        "seed": SEED,
        "count": COUNT,
    });
    std::fs::write(&config, corpus.to_string()).unwrap();
    let script = tokio::process::Command::new(&python)
        .arg(python::script("ext_authz_corpus.py"))
        .arg(&config)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN, script)
        .await
        .unwrap_or_else(|_| panic!("{}: the corpus did not finish within {RUN:?}", bundle.name))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{}: no summary from the corpus ({e}):\n{stdout}\n{stderr}\nplugin log:\n{}",
            bundle.name,
            plugin.log_tail()
        )
    });
    assert!(
        out.status.success(),
        "{}: unexplained differences between Meshward and opa-envoy-plugin:\n{}\n{stderr}",
        bundle.name,
        serde_json::to_string_pretty(&json).unwrap()
    );
    eprintln!(
        "{} parity in {:?}: {} (seconds in each server: {})",
        bundle.name,
        started.elapsed(),
        json["classes"],
        json["seconds"]
    );
    drop(plugin);
    mesh.shutdown().await;
    Some(Summary { json })
}

/// What every run must have covered, whatever the bundle.
fn assert_coverage(name: &str, s: &Summary) {
    let at_least = |what: &str, got: u64, want: u64| {
        assert!(got >= want, "{name}: {what}: {got} < {want}\n{:#}", s.json);
    };
    at_least("requests sent", s.get("sent"), 500);
    at_least("requests explained", s.get("explained"), s.get("sent"));
    at_least("compared with the plugin", s.get("compared"), 500);
    at_least("identical", s.class("identical"), 200);
    at_least("canonicalized", s.class("canonicalized"), 100);
    at_least("refused_identity", s.class("refused_identity"), 100);
    at_least("refused_path", s.class("refused_path"), 50);
    at_least("parse_error", s.class("parse_error"), 40);
    at_least("parse_error_json", s.class("parse_error_json"), 20);
    assert_eq!(s.get("mismatches"), 0, "{name}: {:#}", s.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_inputs_match_the_plugin() {
    let Some(s) = run(Bundle {
        name: "probe",
        policies: fixture("probe"),
        decision: "data.probe.decision",
        plugin_path: "probe/decision",
        plugin_extra: Vec::new(),
        mode: "probe",
    })
    .await
    else {
        return;
    };
    assert_coverage("probe", &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_bundle_decides_as_in_the_plugin() {
    let bundle = tempfile::tempdir().unwrap();
    copy_bundle(&repo().join("policies"), bundle.path());
    let Some(s) = run(Bundle {
        name: "reference",
        policies: bundle.path().to_path_buf(),
        decision: "data.meshward.authz.decision",
        plugin_path: "adapter/decision",
        plugin_extra: vec![fixture("adapter")],
        mode: "decision",
    })
    .await
    else {
        return;
    };
    assert_coverage("reference", &s);
    assert!(s.class("allowed") >= 50, "{:#}", s.json);
    assert!(s.class("denied") >= 50, "{:#}", s.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_query_example_decides_as_in_the_plugin() {
    let Some(s) = run(Bundle {
        name: "docs_query",
        policies: fixture("docs_query"),
        decision: "data.envoy.authz.allow",
        plugin_path: "envoy/authz/allow",
        plugin_extra: Vec::new(),
        mode: "decision",
    })
    .await
    else {
        return;
    };
    assert_coverage("docs_query", &s);
    assert!(s.class("allowed") >= 5, "{:#}", s.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_body_example_decides_as_in_the_plugin() {
    let Some(s) = run(Bundle {
        name: "docs_body",
        policies: fixture("docs_body"),
        decision: "data.envoy.authz.allow",
        plugin_path: "envoy/authz/allow",
        plugin_extra: Vec::new(),
        mode: "decision",
    })
    .await
    else {
        return;
    };
    assert_coverage("docs_body", &s);
    assert!(s.class("allowed") >= 5, "{:#}", s.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_rbac_example_decides_as_in_the_plugin() {
    let Some(s) = run(Bundle {
        name: "docs_rbac",
        policies: fixture("docs_rbac"),
        decision: "data.istio.authz.allow",
        plugin_path: "istio/authz/allow",
        plugin_extra: Vec::new(),
        mode: "decision",
    })
    .await
    else {
        return;
    };
    assert_coverage("docs_rbac", &s);
    assert!(s.class("allowed") >= 5, "{:#}", s.json);
}
