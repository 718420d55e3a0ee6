//! The examples in `deploy/` for meshes that use Meshward as their
//! authorization backend, checked by what will read them:
//!
//! - `deploy/envoy/ext-authz.yaml` by Envoy 1.40 itself (`--mode validate`:
//!   the whole bootstrap is parsed, every typed extension instantiated and its
//!   constraints checked, CEL expressions compiled; nothing is connected).
//! - `deploy/k8s/istio/` and `deploy/k8s/envoy-gateway/` by
//!   `tests/python/validate_manifests.py`: custom resources against their
//!   CRDs' schemas from the Go modules `istio.io/api` and
//!   `github.com/envoyproxy/gateway` (strict: unknown fields, types, enums,
//!   CEL rules), Istio's mesh config against its MeshConfig protobuf type,
//!   built-in kinds against Kubernetes' strict schemas.
//!
//! Every check is also shown to be able to fail: a copy of each file with one
//! field broken must be refused, with a message naming what is wrong.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{envoy, python};
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn peers_required() -> bool {
    std::env::var("MESHWARD_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// Says why the test does not run; a failure under `MESHWARD_REQUIRE_PEERS=1`.
fn skip(msg: &str) {
    assert!(!peers_required(), "required peer missing: {msg}");
    eprintln!("SKIPPED: {msg}");
}

/// One field broken on purpose: `from` (found exactly once in `file`)
/// becomes `to`, and the refusal must mention `expect`.
struct Break {
    file: &'static str,
    from: &'static str,
    to: &'static str,
    expect: &'static str,
}

impl Break {
    /// The broken copy of the file, written under `dir`.
    fn write(&self, dir: &Path, n: usize) -> PathBuf {
        let original = std::fs::read_to_string(repo().join(self.file))
            .unwrap_or_else(|e| panic!("{}: {e}", self.file));
        assert_eq!(
            original.matches(self.from).count(),
            1,
            "{}: {:?} must occur exactly once for the break to mean anything",
            self.file,
            self.from
        );
        let name = Path::new(self.file).file_name().unwrap().to_string_lossy();
        let path = dir.join(format!("broken-{n}-{name}"));
        std::fs::write(&path, original.replacen(self.from, self.to, 1)).unwrap();
        path
    }
}

const ENVOY_BOOTSTRAP: &str = "deploy/envoy/ext-authz.yaml";

const ENVOY_BREAKS: &[Break] = &[
    // A misspelled key inside a typed extension.
    Break {
        file: ENVOY_BOOTSTRAP,
        from: "failure_mode_allow: false",
        to: "failure_mode_alow: false",
        expect: "no such field: 'failure_mode_alow'",
    },
    // An enum value Envoy does not have.
    Break {
        file: ENVOY_BOOTSTRAP,
        from: "path_with_escaped_slashes_action: REJECT_REQUEST",
        to: "path_with_escaped_slashes_action: REJECT",
        expect: "unknown enum value: 'REJECT'",
    },
    // A CEL descriptor that does not compile.
    Break {
        file: ENVOY_BOOTSTRAP,
        from: "text: connection.uri_san_peer_certificate",
        to: "text: \"connection.(\"",
        expect: "connection.(",
    },
];

/// `envoy --mode validate -c <config>`: success, and everything it said with
/// runs of white space made one space (protobuf's error messages vary theirs
/// on purpose, so nobody matches them exactly).
fn envoy_validate(binary: &Path, config: &Path) -> (bool, String) {
    let out = Command::new(binary)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(config)
        .args(["--log-level", "error"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        text.split_whitespace().collect::<Vec<_>>().join(" "),
    )
}

#[test]
fn envoy_bootstrap_is_valid_for_envoy() {
    let Some(binary) = envoy::find() else { return };
    // Validation needs no SPIRE agent: the SDS socket is an address Envoy
    // would connect to later, not a file it opens now.
    let (ok, text) = envoy_validate(&binary, &repo().join(ENVOY_BOOTSTRAP));
    assert!(ok, "{ENVOY_BOOTSTRAP}:\n{text}");
    assert!(text.contains("OK"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    for (n, b) in ENVOY_BREAKS.iter().enumerate() {
        let (ok, text) = envoy_validate(&binary, &b.write(dir.path(), n));
        assert!(!ok, "Envoy accepted {:?} -> {:?}:\n{text}", b.from, b.to);
        assert!(
            text.contains(b.expect),
            "{:?} -> {:?}: expected {:?} in:\n{text}",
            b.from,
            b.to,
            b.expect
        );
    }
}

const MANIFEST_BREAKS: &[Break] = &[
    // MeshConfig: a misspelled field (istiod itself would drop it silently).
    Break {
        file: "deploy/k8s/istio/istio-operator.yaml",
        from: "failOpen: false",
        to: "failopen: false",
        expect: "has no field named \"failopen\"",
    },
    // An Istio CRD: an enum.
    Break {
        file: "deploy/k8s/istio/authorization-policy.yaml",
        from: "action: CUSTOM",
        to: "action: CUSTOMER",
        expect: "spec.action: 'CUSTOMER' is not one of",
    },
    // A custom resource's metadata is ObjectMeta.
    Break {
        file: "deploy/k8s/istio/authorization-policy.yaml",
        from: "name: hello-skill-meshward",
        to: "nmae: hello-skill-meshward",
        expect: "metadata: Additional properties are not allowed ('nmae' was unexpected)",
    },
    // A built-in kind: a misspelled field, and a wrong type.
    Break {
        file: "deploy/k8s/istio/authorizer.yaml",
        from: "readinessProbe:",
        to: "readinesProbe:",
        expect: "'readinesProbe' was unexpected",
    },
    Break {
        file: "deploy/k8s/istio/authorizer.yaml",
        from: "replicas: 2",
        to: "replicas: two",
        expect: "spec.replicas: 'two' is not of type 'integer'",
    },
    // Envoy Gateway CRDs: a wrong type, a CEL rule, an enum.
    Break {
        file: "deploy/k8s/envoy-gateway/security-policy.yaml",
        from: "failOpen: false",
        to: "failOpen: \"no\"",
        expect: "spec.extAuth.failOpen: 'no' is not of type 'boolean'",
    },
    Break {
        file: "deploy/k8s/envoy-gateway/security-policy.yaml",
        from: "kind: Service\n          name: meshward-authorizer",
        to: "kind: Deployment\n          name: meshward-authorizer",
        expect: "BackendRefs only supports Service, ServiceImport, and Backend kind.",
    },
    Break {
        file: "deploy/k8s/envoy-gateway/gateway.yaml",
        from: "mode: RequireAndVerify",
        to: "mode: RequireAndVerfy",
        expect: "spec.tls.clientValidation.mode: 'RequireAndVerfy' is not one of",
    },
    // Gateway API CRD: a misspelled field.
    Break {
        file: "deploy/k8s/envoy-gateway/gateway.yaml",
        from: "sectionName: https",
        to: "section: https",
        expect: "'section' was unexpected",
    },
];

/// Which schema must have checked a document of each example, so a file
/// cannot pass by being checked against nothing in particular.
const CHECKED_BY: &[(&str, &str)] = &[
    (
        "deploy/k8s/istio/istio-operator.yaml",
        "spec.meshConfig: istio.mesh.v1alpha1.MeshConfig (istio.io/api@",
    ),
    (
        "deploy/k8s/istio/authorization-policy.yaml",
        "CRD security.istio.io/v1 AuthorizationPolicy (istio.io/api@",
    ),
    (
        "deploy/k8s/istio/authorization-policy.yaml",
        "CRD security.istio.io/v1 PeerAuthentication (istio.io/api@",
    ),
    (
        "deploy/k8s/istio/authorizer.yaml",
        "apps/v1 Deployment (Kubernetes ",
    ),
    (
        "deploy/k8s/envoy-gateway/security-policy.yaml",
        "CRD gateway.envoyproxy.io/v1alpha1 SecurityPolicy (github.com/envoyproxy/gateway@",
    ),
    (
        "deploy/k8s/envoy-gateway/gateway.yaml",
        "CRD gateway.envoyproxy.io/v1alpha1 ClientTrafficPolicy (github.com/envoyproxy/gateway@",
    ),
    (
        "deploy/k8s/envoy-gateway/gateway.yaml",
        "CRD gateway.networking.k8s.io/v1 HTTPRoute (github.com/envoyproxy/gateway@",
    ),
];

/// The schemas `scripts/install-schemas.sh` installs: `MESHWARD_SCHEMAS`,
/// else `.tools/schemas`.
fn schemas() -> Option<PathBuf> {
    let dir = std::env::var_os("MESHWARD_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/schemas"));
    if dir.join("SOURCES").is_file() {
        return Some(dir);
    }
    skip(&format!(
        "no schemas at {} (run scripts/install-schemas.sh or set MESHWARD_SCHEMAS)",
        dir.display()
    ));
    None
}

/// The YAML files of an example directory, relative to the repository.
fn examples(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {dir}");
    files
}

#[test]
fn istio_and_envoy_gateway_examples_match_their_schemas() {
    let Some(python) = python::find() else { return };
    let Some(schemas) = schemas() else { return };
    let mut files = examples("deploy/k8s/istio");
    files.extend(examples("deploy/k8s/envoy-gateway"));
    let dir = tempfile::tempdir().unwrap();
    let broken: Vec<PathBuf> = MANIFEST_BREAKS
        .iter()
        .enumerate()
        .map(|(n, b)| b.write(dir.path(), n))
        .collect();

    // One run for all files: loading the CRDs is most of the time.
    let out = Command::new(&python)
        .arg(python::script("validate_manifests.py"))
        .arg("--schemas")
        .arg(&schemas)
        .args(&files)
        .args(&broken)
        .current_dir(repo())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0 | 1) => {}
        Some(3) => return skip(stderr.trim()),
        other => panic!("validate_manifests.py exited with {other:?}:\n{stderr}"),
    }
    let mut by_file: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let doc: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{stderr}"));
        let file = doc["file"].as_str().unwrap().to_string();
        by_file.entry(file).or_default().push(doc);
    }

    for file in &files {
        let docs = by_file
            .get(file)
            .unwrap_or_else(|| panic!("{file}: no documents checked\n{stderr}"));
        for doc in docs {
            assert_eq!(
                doc["valid"], true,
                "{file}, document {} ({} {}):\n{:#}",
                doc["document"], doc["kind"], doc["name"], doc["errors"]
            );
            // A CEL rule cel-python cannot evaluate is not a pass.
            assert_eq!(
                doc["cel"]["not_evaluated"],
                serde_json::json!([]),
                "{file}: {doc:#}"
            );
        }
    }
    for (file, checker) in CHECKED_BY {
        let checked: Vec<&str> = by_file[*file]
            .iter()
            .flat_map(|d| d["checked_by"].as_array().unwrap())
            .filter_map(Value::as_str)
            .collect();
        assert!(
            checked.iter().any(|c| c.starts_with(checker)),
            "{file}: nothing checked it as {checker:?}; checked by {checked:#?}"
        );
    }
    // CEL rules really ran on the SecurityPolicy (its schema has dozens).
    let held: u64 = by_file["deploy/k8s/envoy-gateway/security-policy.yaml"]
        .iter()
        .filter_map(|d| d["cel"]["held"].as_u64())
        .sum();
    assert!(held > 0, "no CEL rule evaluated on the SecurityPolicy");

    for (b, path) in MANIFEST_BREAKS.iter().zip(&broken) {
        let path = path.display().to_string();
        let errors: Vec<&str> = by_file
            .get(&path)
            .unwrap_or_else(|| panic!("{path}: no documents checked"))
            .iter()
            .flat_map(|d| d["errors"].as_array().unwrap())
            .filter_map(Value::as_str)
            .collect();
        assert!(
            errors.iter().any(|e| e.contains(b.expect)),
            "{}: {:?} -> {:?} should be refused with {:?}; errors: {errors:#?}",
            b.file,
            b.from,
            b.to,
            b.expect
        );
    }
}
