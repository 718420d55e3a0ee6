//! `deploy/k8s/` and the `Dockerfile`, checked by what will read them, short
//! of a cluster (none is reachable here):
//!
//! - every overlay renders with real `kustomize build` (v5.8.1, from its Go
//!   module: scripts/install-kustomize.sh);
//! - the rendered objects pass Kubernetes' strict schemas for two releases,
//!   and the custom resources (ClusterSPIFFEID) the CRDs vendored under
//!   `deploy/k8s/base/crds/`
//!   (`tests/python/validate_manifests.py`);
//! - the manifests hold the mesh's deployment invariants: every container
//!   non-root, read-only, unprivileged and limited (a pinned list of
//!   exceptions, each with its reason); every sidecar native; no admin port
//!   open without a NetworkPolicy; identities from the SPIFFE CSI driver;
//!   every mesh workload's pods labelled and run as the account its
//!   ClusterSPIFFEID selects;
//! - the registrations are exactly what `meshward spire entries --format k8s`
//!   makes of `deploy/k8s/mesh.yaml`;
//! - the control plane, given the files its ConfigMaps project where its
//!   Deployment mounts them, accepts the mesh and the policy bundle;
//! - every SPIRE config passes real SPIRE 1.13.3's `validate`, and each of
//!   its built-in plugins' own config check (`spire-plugincheck`, which
//!   calls SPIRE's plugin `Validate`: `validate` does not);
//! - the Dockerfile lints clean with hadolint and builds the release binary
//!   into a non-root image.
//!
//! Every check is also shown to fail on a broken copy.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_meshward");
const OVERLAYS: [&str; 2] = ["dev", "prod"];
/// Two Kubernetes releases the manifests must be valid for: the oldest and
/// the newest that kubernetes-validate 1.37 ships strict schemas for and that
/// are still supported upstream.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.35.0", "1.37.0"];

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

/// A tool from `.tools/bin` (or `$env`), when installed.
fn tool(env: &str, name: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/bin").join(name));
    if path.is_file() {
        return Some(path);
    }
    skip(&format!(
        "{name} not found at {} (set {env})",
        path.display()
    ));
    None
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// --- rendering --------------------------------------------------------------

/// `kustomize build` of an overlay. Its ConfigMaps are generated from files
/// outside the overlay (the mesh file, the policy bundle, the SPIRE
/// configs), hence the load restrictor the README's commands use too.
fn render(kustomize: &Path, overlay: &str) -> String {
    let dir = repo().join("deploy/k8s/overlays").join(overlay);
    let (ok, stdout, stderr) = run(Command::new(kustomize)
        .args(["build", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(&dir));
    assert!(ok, "kustomize build {}:\n{stderr}", dir.display());
    stdout
}

/// Every document of a YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    yaml_rust2::YamlLoader::load_from_str(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}"))
        .iter()
        .filter(|d| !d.is_null())
        .map(to_json)
        .collect()
}

fn to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Null | Yaml::BadValue => Value::Null,
        Yaml::Boolean(b) => json!(b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => r.parse::<f64>().map(|f| json!(f)).unwrap_or(json!(r)),
        Yaml::String(s) => json!(s),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => panic!("unexpected YAML key {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) => panic!("YAML aliases are not expected in rendered manifests"),
    }
}

fn rendered() -> Option<BTreeMap<&'static str, (String, Vec<Value>)>> {
    let kustomize = tool("MESHWARD_KUSTOMIZE", "kustomize")?;
    Some(
        OVERLAYS
            .iter()
            .map(|o| {
                let text = render(&kustomize, o);
                let docs = documents(&text);
                (*o, (text, docs))
            })
            .collect(),
    )
}

fn kind_name(doc: &Value) -> String {
    format!(
        "{} {}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["namespace"].as_str().unwrap_or("-"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The pod template of a workload object, if it is one.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&doc["spec"]["template"])
        }
        "Pod" => Some(doc),
        _ => None,
    }
}

// --- invariants -------------------------------------------------------------

/// Containers allowed to break a securityContext rule, and why. Anything not
/// listed here must be non-root, unprivileged, read-only and capability-free.
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    // (container, rule, why)
    (
        "spiffe-csi-driver",
        "privileged",
        "bind-mounts the Workload API socket into pods: Bidirectional mount propagation needs a privileged container",
    ),
    (
        "spiffe-csi-driver",
        "runAsNonRoot",
        "mounts into the kubelet's pod directories, owned by root",
    ),
    (
        "node-driver-registrar",
        "runAsNonRoot",
        "writes the registration socket into the kubelet's root-owned plugin directory",
    ),
    (
        "spire-agent",
        "runAsNonRoot",
        "creates the Workload API socket in the node's root-owned /run/spire/agent-sockets, which the CSI driver shares (capabilities dropped: root reads no more of /proc than any user)",
    ),
];

fn excepted(container: &str, rule: &str) -> bool {
    EXCEPTIONS
        .iter()
        .any(|(c, r, _)| *c == container && *r == rule)
}

/// `--flag value` from a container's args.
fn arg<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let args = container["args"].as_array()?;
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(Value::as_str)
}

fn runs_meshward(container: &Value) -> bool {
    container["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("meshward/meshward:"))
}

/// Whether a NetworkPolicy in `namespace` selects pods labelled `labels`
/// for ingress and admits `port` only from named sources (never from
/// everywhere).
fn port_guarded(docs: &[Value], namespace: &str, labels: &Value, port: &str) -> bool {
    let selects = |np: &Value| {
        np["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .is_none_or(|m| m.iter().all(|(k, v)| labels[k] == *v))
    };
    let policies: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy" && d["metadata"]["namespace"] == namespace)
        .filter(|d| selects(d))
        .filter(|d| {
            d["spec"]["policyTypes"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "Ingress"))
        })
        .collect();
    if policies.is_empty() {
        return false;
    }
    // Any rule naming the port (or no port: all ports) must name sources.
    policies.iter().all(|np| {
        np["spec"]["ingress"].as_array().is_none_or(|rules| {
            rules.iter().all(|rule| {
                let covers = rule["ports"].as_array().is_none_or(|ports| {
                    ports
                        .iter()
                        .any(|p| p["port"] == port || p["port"].as_str().is_none())
                });
                !covers || rule["from"].as_array().is_some_and(|from| !from.is_empty())
            })
        })
    })
}

/// Every violation of the deployment invariants in rendered manifests.
fn violations(docs: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for doc in docs {
        let Some(template) = pod_spec(doc) else {
            continue;
        };
        let what = kind_name(doc);
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("");
        let labels = &template["metadata"]["labels"];
        let spec = &template["spec"];
        let pod_sc = &spec["securityContext"];
        if pod_sc["seccompProfile"]["type"] != "RuntimeDefault" {
            out.push(format!("{what}: pod seccompProfile is not RuntimeDefault"));
        }
        let mains = spec["containers"].as_array().cloned().unwrap_or_default();
        let inits = spec["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if mains.len() != 1 {
            out.push(format!(
                "{what}: {} containers; sidecars must be native (initContainers with restartPolicy: Always)",
                mains.len()
            ));
        }
        for init in &inits {
            if init["restartPolicy"] != "Always" {
                out.push(format!(
                    "{what}: init container {} is not a native sidecar (restartPolicy: Always)",
                    init["name"]
                ));
            }
        }
        for c in mains.iter().chain(&inits) {
            let name = c["name"].as_str().unwrap_or("?");
            let at = format!("{what} container {name}");
            let sc = &c["securityContext"];
            let non_root = sc["runAsNonRoot"] == true
                || (sc["runAsNonRoot"].is_null() && pod_sc["runAsNonRoot"] == true);
            let user = if sc["runAsUser"].is_null() {
                &pod_sc["runAsUser"]
            } else {
                &sc["runAsUser"]
            };
            if !excepted(name, "runAsNonRoot")
                && (!non_root || user.as_i64().is_none_or(|u| u == 0))
            {
                out.push(format!("{at}: not runAsNonRoot with a non-zero runAsUser"));
            }
            if sc["privileged"] == true && !excepted(name, "privileged") {
                out.push(format!("{at}: privileged"));
            }
            if !excepted(name, "privileged") {
                if sc["allowPrivilegeEscalation"] != false {
                    out.push(format!("{at}: allowPrivilegeEscalation is not false"));
                }
                if sc["readOnlyRootFilesystem"] != true {
                    out.push(format!("{at}: root filesystem is not read-only"));
                }
                let drops_all = sc["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|c| c == "ALL"));
                if !drops_all || !sc["capabilities"]["add"].is_null() {
                    out.push(format!("{at}: capabilities are not exactly `drop: [ALL]`"));
                }
            }
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    if c["resources"][kind][resource].is_null() {
                        out.push(format!("{at}: no {kind}.{resource}"));
                    }
                }
            }
            let image = c["image"].as_str().unwrap_or("");
            if image.ends_with(":latest") || !image.contains(':') {
                out.push(format!("{at}: image {image:?} has no pinned tag"));
            }
            if runs_meshward(c) {
                check_meshward_container(docs, namespace, labels, spec, c, &at, &mut out);
            }
        }
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            if !volume["hostPath"].is_null()
                && !matches!(
                    doc["metadata"]["name"].as_str(),
                    Some("spire-agent" | "spiffe-csi-driver")
                )
            {
                out.push(format!(
                    "{what}: hostPath volume {} (only the SPIRE agent and the CSI driver share the node's socket directory)",
                    volume["name"]
                ));
            }
        }
    }
    out
}

/// A Meshward container: probes on `/ready` at the named admin port, an admin
/// listener on loopback or guarded by a NetworkPolicy, and its identity from
/// the SPIFFE CSI driver.
fn check_meshward_container(
    docs: &[Value],
    namespace: &str,
    labels: &Value,
    spec: &Value,
    c: &Value,
    at: &str,
    out: &mut Vec<String>,
) {
    let subcommand = c["args"][0].as_str().unwrap_or("");
    if !matches!(subcommand, "controlplane" | "dataplane") {
        return;
    }
    let probed = ["readinessProbe", "startupProbe"]
        .iter()
        .any(|p| c[p]["httpGet"]["path"] == "/ready" && c[p]["httpGet"]["port"] == "admin");
    if !probed {
        out.push(format!(
            "{at}: no readiness or startup probe on /ready at the `admin` port"
        ));
    }
    match arg(c, "--admin") {
        None => out.push(format!("{at}: no --admin listener")),
        Some(admin) => {
            let loopback = admin.starts_with("127.") || admin.starts_with("[::1]");
            if !loopback && !port_guarded(docs, namespace, labels, "admin") {
                out.push(format!(
                    "{at}: admin {admin} is reachable without a NetworkPolicy guarding the `admin` port"
                ));
            }
        }
    }
    let socket = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "SPIFFE_ENDPOINT_SOCKET")
        .and_then(|e| e["value"].as_str());
    let Some(socket) = socket.and_then(|s| s.strip_prefix("unix:")) else {
        out.push(format!("{at}: no SPIFFE_ENDPOINT_SOCKET"));
        return;
    };
    let from_csi = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| socket.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
        .any(|m| {
            spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["name"] == m["name"] && v["csi"]["driver"] == "csi.spiffe.io")
        });
    if !from_csi {
        out.push(format!(
            "{at}: the Workload API socket {socket} is not mounted from the csi.spiffe.io driver"
        ));
    }
}

#[test]
fn rendered_overlays_hold_the_deployment_invariants() {
    let Some(rendered) = rendered() else { return };
    for (overlay, (_, docs)) in &rendered {
        let found = violations(docs);
        assert!(found.is_empty(), "overlay {overlay}:\n{}", found.join("\n"));
        // The check looked at something: pods with Meshward in them.
        let meshward_pods = docs
            .iter()
            .filter_map(pod_spec)
            .filter(|t| {
                t["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .chain(t["spec"]["containers"].as_array())
                    .flatten()
                    .any(runs_meshward)
            })
            .count();
        assert!(
            meshward_pods >= 3,
            "overlay {overlay}: {meshward_pods} pods run Meshward"
        );
    }
    // Every exception is used: a stale one would hide a regression.
    let (_, dev) = &rendered["dev"];
    for (container, rule, _) in EXCEPTIONS {
        let used = dev.iter().filter_map(pod_spec).any(|t| {
            t["spec"]["containers"]
                .as_array()
                .into_iter()
                .chain(t["spec"]["initContainers"].as_array())
                .flatten()
                .any(|c| c["name"] == *container)
        });
        assert!(
            used,
            "exception for {container} ({rule}) names no container"
        );
    }
}

/// Applies `edit` to the first document `pick` selects, and returns the
/// violations of the edited set.
fn violations_after(
    docs: &[Value],
    pick: impl Fn(&Value) -> bool,
    edit: impl FnOnce(&mut Value),
) -> Vec<String> {
    let mut docs = docs.to_vec();
    let doc = docs
        .iter_mut()
        .find(|d| pick(d))
        .expect("no document to break");
    edit(doc);
    violations(&docs)
}

fn is_deployment(name: &'static str) -> impl Fn(&Value) -> bool {
    move |d| d["kind"] == "Deployment" && d["metadata"]["name"] == name
}

#[test]
fn the_invariant_check_refuses_each_kind_of_violation() {
    let Some(rendered) = rendered() else { return };
    let (_, docs) = &rendered["dev"];
    let cp = is_deployment("meshward-controlplane");
    let skill = is_deployment("hello-skill");
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "no limits.memory",
            violations_after(docs, &cp, |d| {
                d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
                    .as_object_mut()
                    .unwrap()
                    .remove("memory");
            }),
        ),
        (
            "not runAsNonRoot",
            violations_after(docs, &cp, |d| {
                let c = &mut d["spec"]["template"]["spec"]["containers"][0];
                c["securityContext"]["runAsNonRoot"] = json!(false);
            }),
        ),
        (
            "root filesystem is not read-only",
            violations_after(docs, &cp, |d| {
                let c = &mut d["spec"]["template"]["spec"]["containers"][0];
                c["securityContext"]["readOnlyRootFilesystem"] = json!(false);
            }),
        ),
        (
            "sidecars must be native",
            violations_after(docs, &skill, |d| {
                let spec = &mut d["spec"]["template"]["spec"];
                let sidecar = spec["initContainers"].as_array_mut().unwrap().remove(0);
                spec["containers"].as_array_mut().unwrap().push(sidecar);
            }),
        ),
        (
            "reachable without a NetworkPolicy",
            violations_after(
                docs,
                |d| d["kind"] == "NetworkPolicy",
                |d| d["spec"]["podSelector"] = json!({"matchLabels": {"nothing": "here"}}),
            )
            .into_iter()
            .chain(violations_after(
                docs,
                |d| d["kind"] == "NetworkPolicy" && d.to_string().contains("\"admin\""),
                |d| {
                    for rule in d["spec"]["ingress"].as_array_mut().unwrap() {
                        rule["from"] = json!([]);
                    }
                },
            ))
            .collect(),
        ),
        (
            "not mounted from the csi.spiffe.io driver",
            violations_after(docs, &cp, |d| {
                for v in d["spec"]["template"]["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                {
                    if !v["csi"].is_null() {
                        v["csi"] = Value::Null;
                        v["hostPath"] = json!({"path": "/run/spire/agent-sockets"});
                    }
                }
            }),
        ),
        (
            "no readiness or startup probe",
            violations_after(docs, &skill, |d| {
                let sidecar = &mut d["spec"]["template"]["spec"]["initContainers"][0];
                let obj = sidecar.as_object_mut().unwrap();
                obj.remove("readinessProbe");
                obj.remove("startupProbe");
            }),
        ),
        (
            "has no pinned tag",
            violations_after(docs, &cp, |d| {
                d["spec"]["template"]["spec"]["containers"][0]["image"] =
                    json!("meshward/meshward:latest");
            }),
        ),
    ];
    for (expect, found) in cases {
        assert!(
            found.iter().any(|v| v.contains(expect)),
            "breaking {expect:?} went unnoticed: {found:#?}"
        );
    }
}

// --- schemas ------------------------------------------------------------------

/// The CRDs the manifests install, vendored with their source named.
fn vendored_crds() -> PathBuf {
    repo().join("deploy/k8s/base/crds")
}

/// Runs the strict validator on `files`; one JSON value per document.
fn validate_strict(files: &[PathBuf], kubernetes: &str) -> Option<Vec<Value>> {
    let python = common::python::find()?;
    let schemas = std::env::var_os("MESHWARD_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/schemas"));
    if !schemas.join("SOURCES").is_file() {
        skip(&format!(
            "no schemas at {} (run scripts/install-schemas.sh)",
            schemas.display()
        ));
        return None;
    }
    let (_, stdout, stderr) = run(Command::new(python)
        .arg(common::python::script("validate_manifests.py"))
        .arg("--schemas")
        .arg(&schemas)
        .arg("--schemas")
        .arg(vendored_crds())
        .args(["--kubernetes-version", kubernetes])
        .args(files)
        .current_dir(repo()));
    let docs: Vec<Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}"))
        })
        .collect();
    assert!(!docs.is_empty(), "validator printed nothing:\n{stderr}");
    Some(docs)
}

#[test]
fn rendered_overlays_pass_strict_schemas_of_two_kubernetes_releases() {
    let Some(rendered) = rendered() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (overlay, (text, _)) in &rendered {
        let path = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    // A broken copy: a field Kubernetes does not know, in a Deployment,
    // and a ClusterSPIFFEID with a selector of the wrong type.
    let (dev, _) = &rendered["dev"];
    let broken = dev
        .replacen(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
            1,
        )
        .replacen(
            "podSelector:\n    matchLabels:",
            "podSelector:\n    matchLabel:",
            1,
        );
    assert_ne!(&broken, dev);
    let broken_path = dir.path().join("broken.yaml");
    std::fs::write(&broken_path, &broken).unwrap();
    files.push(broken_path.clone());

    for version in KUBERNETES_VERSIONS {
        let Some(results) = validate_strict(&files, version) else {
            return;
        };
        let mut kinds = BTreeSet::new();
        let mut broken_errors = Vec::new();
        for doc in &results {
            let file = doc["file"].as_str().unwrap();
            if file == broken_path.to_str().unwrap() {
                broken_errors.extend(doc["errors"].as_array().unwrap().iter().cloned());
                continue;
            }
            assert_eq!(
                doc["valid"], true,
                "Kubernetes {version}, {file} document {} ({} {}):\n{:#}",
                doc["document"], doc["kind"], doc["name"], doc["errors"]
            );
            kinds.insert(doc["kind"].as_str().unwrap().to_string());
            let checked = doc["checked_by"].to_string();
            assert!(
                checked.contains(version) || checked.contains("CRD"),
                "{doc:#}"
            );
        }
        for kind in [
            "apps/v1 Deployment",
            "apps/v1 DaemonSet",
            "apps/v1 StatefulSet",
            "networking.k8s.io/v1 NetworkPolicy",
            "storage.k8s.io/v1 CSIDriver",
            "apiextensions.k8s.io/v1 CustomResourceDefinition",
            "spire.spiffe.io/v1alpha1 ClusterSPIFFEID",
        ] {
            assert!(
                kinds.contains(kind),
                "Kubernetes {version}: no {kind} checked: {kinds:?}"
            );
        }
        let errors = serde_json::to_string(&broken_errors).unwrap();
        assert!(
            errors.contains("readOnlyRootFileSystem") && errors.contains("matchLabel"),
            "Kubernetes {version}: the broken copy was not refused for both fields: {errors}"
        );
    }
}

// --- registrations ------------------------------------------------------------

const REGISTRATIONS: &str = "deploy/k8s/base/registrations.yaml";

#[test]
fn registrations_are_what_spire_entries_makes_of_the_mesh_file() {
    let (ok, stdout, stderr) = run(Command::new(BIN)
        .args([
            "spire",
            "entries",
            "--config",
            "deploy/k8s/mesh.yaml",
            "--format",
            "k8s",
        ])
        .current_dir(repo()));
    assert!(ok, "{stderr}");
    let committed = std::fs::read_to_string(repo().join(REGISTRATIONS)).unwrap();
    assert!(
        committed == stdout,
        "{REGISTRATIONS} is stale: regenerate it with\n  \
         target/debug/meshward spire entries --config deploy/k8s/mesh.yaml --format k8s > {REGISTRATIONS}"
    );
    // One resource per workload of the mesh file, control plane included.
    let docs = documents(&stdout);
    let (ok, validated, stderr) = run(Command::new(BIN)
        .args(["validate", "deploy/k8s/mesh.yaml"])
        .current_dir(repo()));
    assert!(ok, "meshward validate deploy/k8s/mesh.yaml: {stderr}");
    // "<file>: ok (N agents, M services, policy revision ...)"
    let counts: Vec<usize> = validated
        .split_once("ok (")
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split(", ")
        .take(2)
        .map(|part| {
            part.split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("cannot read a count in {validated:?}"))
        })
        .collect();
    assert_eq!(docs.len(), 1 + counts[0] + counts[1], "{validated}");
}

#[test]
fn generated_registrations_match_the_clusterspiffeid_schema() {
    let dir = tempfile::tempdir().unwrap();
    // Every option the k8s format has, so each field meets the schema.
    let (ok, stdout, stderr) = run(Command::new(BIN)
        .args(["spire", "entries", "--config", "deploy/local/mesh.yaml"])
        .args(["--format", "k8s", "--k8s-namespace", "agents"])
        .args(["--k8s-class-name", "meshward", "--x509-svid-ttl", "900"])
        .current_dir(repo()));
    assert!(ok, "{stderr}");
    let path = dir.path().join("registrations.yaml");
    std::fs::write(&path, &stdout).unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, stdout.replacen("ttl: 900s", "ttl: 900", 1)).unwrap();
    let Some(results) = validate_strict(&[path.clone(), broken.clone()], KUBERNETES_VERSIONS[1])
    else {
        return;
    };
    let ours: Vec<&Value> = results
        .iter()
        .filter(|d| d["file"] == path.to_str().unwrap())
        .collect();
    assert!(ours.len() >= 8, "{results:#?}");
    for doc in ours {
        assert_eq!(doc["valid"], true, "{doc:#}");
        assert!(
            doc["checked_by"].to_string().contains("ClusterSPIFFEID"),
            "{doc:#}"
        );
    }
    assert!(
        results
            .iter()
            .any(|d| d["file"] == broken.to_str().unwrap() && d["valid"] == false),
        "a numeric ttl was accepted: {results:#?}"
    );
}

#[test]
fn every_registered_workload_runs_as_the_pods_its_clusterspiffeid_selects() {
    let Some(rendered) = rendered() else { return };
    for (overlay, (_, docs)) in &rendered {
        let pods: Vec<(&Value, &Value)> = docs
            .iter()
            .filter_map(|d| pod_spec(d).map(|t| (d, t)))
            .collect();
        let registrations: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterSPIFFEID")
            .collect();
        assert!(
            !registrations.is_empty(),
            "overlay {overlay}: no ClusterSPIFFEID"
        );
        for r in registrations {
            let namespace =
                &r["spec"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"];
            let name = &r["spec"]["podSelector"]["matchLabels"]["meshward.io/workload"];
            let id = r["spec"]["spiffeIDTemplate"].as_str().unwrap();
            // Authorizers serve existing meshes; the demo has none to run.
            let Some((doc, template)) = pods.iter().find(|(d, t)| {
                d["metadata"]["namespace"] == *namespace
                    && t["metadata"]["labels"]["meshward.io/workload"] == *name
            }) else {
                panic!("overlay {overlay}: no pod runs {id} (label meshward.io/workload={name})");
            };
            assert_eq!(
                &template["spec"]["serviceAccountName"],
                name,
                "overlay {overlay}: {} runs {id} under another service account",
                kind_name(doc)
            );
        }
        // Every dataplane trusts the control plane's registered ID.
        let cp_id = docs
            .iter()
            .find(|d| {
                d["kind"] == "ClusterSPIFFEID" && d["metadata"]["name"] == "meshward-controlplane"
            })
            .map(|d| d["spec"]["spiffeIDTemplate"].clone())
            .expect("no control plane registration");
        for (doc, template) in &pods {
            for c in template["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .chain(template["spec"]["containers"].as_array())
                .flatten()
                .filter(|c| c["args"][0] == "dataplane")
            {
                assert_eq!(
                    arg(c, "--xds-spiffe-id"),
                    cp_id.as_str(),
                    "overlay {overlay}: {}",
                    kind_name(doc)
                );
            }
        }
    }
}

// --- images and overlays ------------------------------------------------------

fn workspace_version() -> String {
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    cargo
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("no [workspace.package] version in Cargo.toml")
}

fn images(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(pod_spec)
        .flat_map(|t| {
            t["spec"]["containers"]
                .as_array()
                .into_iter()
                .chain(t["spec"]["initContainers"].as_array())
                .flatten()
                .filter_map(|c| c["image"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn overlays_pick_the_image_tags_and_prod_runs_the_control_plane_highly_available() {
    let Some(rendered) = rendered() else { return };
    let version = workspace_version();
    let dev = images(&rendered["dev"].1);
    let prod = images(&rendered["prod"].1);
    assert!(dev.contains("meshward/meshward:dev"), "{dev:?}");
    assert!(dev.contains("meshward/demo-agent:dev"), "{dev:?}");
    assert!(
        prod.contains(&format!("meshward/meshward:{version}")),
        "{prod:?}"
    );
    assert!(
        prod.contains(&format!("meshward/demo-agent:{version}")),
        "{prod:?}"
    );
    for set in [&dev, &prod] {
        // Every Meshward image went through the override.
        assert!(
            set.iter()
                .all(|i| !i.starts_with("meshward:") && !i.starts_with("meshward-demo-agent")),
            "{set:?}"
        );
    }

    let prod_docs = &rendered["prod"].1;
    let cp = prod_docs
        .iter()
        .find(|d| is_deployment("meshward-controlplane")(d))
        .unwrap();
    assert!(cp["spec"]["replicas"].as_i64().unwrap_or(1) >= 2, "{cp:#}");
    let spread = cp["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
        || !cp["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_null();
    assert!(spread, "prod control plane replicas may share a node");
    let cp_labels = &cp["spec"]["template"]["metadata"]["labels"];
    let pdb = prod_docs.iter().find(|d| {
        d["kind"] == "PodDisruptionBudget"
            && d["spec"]["selector"]["matchLabels"]
                .as_object()
                .is_some_and(|m| m.iter().all(|(k, v)| cp_labels[k] == *v))
    });
    assert!(
        pdb.is_some(),
        "no PodDisruptionBudget covers the control plane"
    );
    let dev_cp = rendered["dev"]
        .1
        .iter()
        .find(|d| is_deployment("meshward-controlplane")(d))
        .unwrap();
    let limit = |d: &Value| {
        d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_ne!(
        limit(cp),
        limit(dev_cp),
        "prod sizes the control plane like dev"
    );
}

// --- the mounted bundle -------------------------------------------------------

/// Writes what a pod's volume mounts show of ConfigMaps into `root`: each
/// projected key (or every key, without `items`) at its path under the
/// mount path, as the kubelet would.
fn materialize(docs: &[Value], template: &Value, container: &Value, root: &Path) -> usize {
    let mut written = 0;
    let namespace_maps: BTreeMap<&str, &Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .filter_map(|d| Some((d["metadata"]["name"].as_str()?, &d["data"])))
        .collect();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = template["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let Some(map) = volume["configMap"]["name"].as_str() else {
            continue;
        };
        let data = namespace_maps.get(map).unwrap_or_else(|| {
            panic!(
                "volume {} names ConfigMap {map}, which is not rendered",
                volume["name"]
            )
        });
        let base = root.join(mount["mountPath"].as_str().unwrap().trim_start_matches('/'));
        let entries: Vec<(String, String)> = match volume["configMap"]["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        i["key"].as_str().unwrap().to_string(),
                        i["path"].as_str().unwrap().to_string(),
                    )
                })
                .collect(),
            None => data
                .as_object()
                .unwrap()
                .keys()
                .map(|k| (k.clone(), k.clone()))
                .collect(),
        };
        for (key, path) in entries {
            let text = data[&key]
                .as_str()
                .unwrap_or_else(|| panic!("ConfigMap {map} has no key {key}"));
            let target = base.join(&path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(target, text).unwrap();
            written += 1;
        }
    }
    written
}

/// The policy files of the bundle in the repository (tests excluded).
fn bundle_files(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bundle_files(&path, out);
        } else if !path.to_string_lossy().ends_with("_test.rego") {
            out.insert(path);
        }
    }
}

#[test]
fn the_control_plane_accepts_the_mesh_and_bundle_its_configmaps_project() {
    let Some(rendered) = rendered() else { return };
    for (overlay, (_, docs)) in &rendered {
        let cp = docs
            .iter()
            .find(|d| is_deployment("meshward-controlplane")(d))
            .unwrap();
        let template = &cp["spec"]["template"];
        let container = &template["spec"]["containers"][0];
        let dir = tempfile::tempdir().unwrap();
        let written = materialize(docs, template, container, dir.path());
        let config = arg(container, "--config").expect("control plane without --config");
        let mesh = dir.path().join(config.trim_start_matches('/'));
        assert!(
            mesh.is_file(),
            "overlay {overlay}: nothing projected at {config}"
        );

        // The same bundle as the repository's: every non-test file, same bytes.
        let mut files = BTreeSet::new();
        bundle_files(&repo().join("policies/meshward"), &mut files);
        let mesh_dir = mesh.parent().unwrap();
        let policy_root = mesh_dir.join("../../policies/meshward");
        for file in &files {
            let rel = file.strip_prefix(repo().join("policies/meshward")).unwrap();
            let projected = std::fs::read(policy_root.join(rel)).unwrap_or_else(|e| {
                panic!(
                    "overlay {overlay}: policies/meshward/{} is not projected: {e}",
                    rel.display()
                )
            });
            assert_eq!(projected, std::fs::read(file).unwrap(), "{}", rel.display());
        }
        assert_eq!(
            written,
            files.len() + 1,
            "overlay {overlay}: projected files"
        );

        let (ok, stdout, stderr) = run(Command::new(BIN).arg("validate").arg(&mesh));
        assert!(ok, "overlay {overlay}: {stdout}{stderr}");
        let (_, repo_out, _) = run(Command::new(BIN)
            .args(["validate", "deploy/k8s/mesh.yaml"])
            .current_dir(repo()));
        let revision = |s: &str| s.rsplit(' ').next().unwrap_or("").trim().to_string();
        assert_eq!(
            revision(&stdout),
            revision(&repo_out),
            "bundle revisions differ"
        );
    }
}

// --- SPIRE configs --------------------------------------------------------------

/// Every SPIRE config the repository ships.
fn spire_configs() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["spire/conf/local", "spire/conf/k8s"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "conf") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `server` or `agent`, from the file name.
fn spire_role(path: &Path) -> &'static str {
    let name = path.file_name().unwrap().to_string_lossy();
    if name.starts_with("server") {
        "server"
    } else if name.starts_with("agent") {
        "agent"
    } else {
        panic!("{}: neither a server nor an agent config", path.display())
    }
}

/// What the local configs expand (`-expandEnv`), as scripts set it.
fn spire_env(cmd: &mut Command) -> &mut Command {
    cmd.env("MESHWARD_SPIRE_DIR", "/tmp/meshward-spire")
        .env("MESHWARD_SPIRE_SERVER_PORT", "8081")
        .env("MESHWARD_SPIRE_SVID_TTL", "1h")
        .env("MESHWARD_TRUST_DOMAIN", "example.org")
}

#[test]
fn every_spire_config_passes_spire_validate() {
    let Some(dir) = std::env::var_os("MESHWARD_SPIRE_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(repo().join(".tools/bin")))
        .filter(|d| d.join("spire-server").is_file())
    else {
        return skip("spire-server not found (run scripts/install-spire.sh)");
    };
    let configs = spire_configs();
    assert!(configs.len() >= 4, "{configs:?}");
    let check = |path: &Path| {
        let role = spire_role(path);
        run(spire_env(
            Command::new(dir.join(format!("spire-{role}")))
                .args(["validate", "-expandEnv", "-config"])
                .arg(path),
        ))
    };
    for path in &configs {
        let (ok, stdout, stderr) = check(path);
        assert!(ok, "{}: {stdout}{stderr}", path.display());
        assert!(stdout.contains("is valid"), "{stdout}");
    }
    // `validate` never configures plugins; spire-plugincheck runs each
    // built-in plugin's own Validate on its plugin_data.
    if let Some(check) = tool("MESHWARD_SPIRE_PLUGINCHECK", "spire-plugincheck") {
        let plugins = |path: &Path| {
            run(spire_env(
                Command::new(&check)
                    .args([spire_role(path), "-expandEnv"])
                    .arg(path),
            ))
        };
        for path in &configs {
            let (ok, stdout, stderr) = plugins(path);
            assert!(ok, "{}: {stdout}{stderr}", path.display());
            assert!(stdout.lines().any(|l| l.starts_with("ok ")), "{stdout}");
        }
        // The bug SPIRE's own validate let through: the bundle publisher
        // without a format (the server refuses to start in the cluster).
        let tmp = tempfile::tempdir().unwrap();
        let broken = tmp.path().join("server.conf");
        let text = std::fs::read_to_string(repo().join("spire/conf/k8s/server.conf")).unwrap();
        let without = text
            .lines()
            .filter(|l| l.trim() != "format = \"pem\"")
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(without.lines().count(), text.lines().count());
        std::fs::write(&broken, without).unwrap();
        let (ok, stdout, _) = plugins(&broken);
        assert!(
            !ok && stdout.contains("missing bundle format"),
            "a bundle publisher without a format passed: {stdout}"
        );
    }
    // And validate can fail: a server config with a misspelt key.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("server.conf");
    let text = std::fs::read_to_string(repo().join("spire/conf/k8s/server.conf")).unwrap();
    std::fs::write(&broken, text.replacen("trust_domain", "trust_domian", 1)).unwrap();
    let (ok, stdout, stderr) = check(&broken);
    assert!(!ok, "a misspelt trust_domain passed: {stdout}{stderr}");
}

// --- the Dockerfile -------------------------------------------------------------

#[test]
fn the_dockerfile_lints_clean_and_ships_the_release_binary_as_non_root() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    // The image is built from the repository alone: the release build of the
    // one binary, copied into a distroless runtime as a numeric non-root user.
    assert!(
        dockerfile.contains("cargo build --release --locked --bin meshward"),
        "the build stage does not build the release binary"
    );
    let stages: Vec<&str> = dockerfile.split("\nFROM ").skip(1).collect();
    let runtime = stages
        .iter()
        .find(|s| s.contains(" AS meshward"))
        .expect("no `meshward` stage");
    assert!(runtime.starts_with("gcr.io/distroless/"), "{runtime}");
    assert!(
        runtime.contains("/target/release/meshward /usr/local/bin/meshward"),
        "{runtime}"
    );
    for stage in &stages[1..] {
        let user = stage
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("stage without USER: {stage}"));
        let uid: u32 = user
            .split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("USER {user} is not numeric (runAsNonRoot needs a UID)"));
        assert_ne!(uid, 0, "a stage runs as root");
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for dir in ["target", ".git", ".venv", ".tools"] {
        assert!(
            ignore.lines().any(|l| l.trim_matches('/') == dir),
            ".dockerignore misses {dir}"
        );
    }

    let hadolint = std::env::var_os("MESHWARD_HADOLINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/hadolint"));
    if !hadolint.is_file() {
        return skip(&format!(
            "hadolint not found at {} (scripts/install-python-peers.sh installs it)",
            hadolint.display()
        ));
    }
    let lint = |path: &Path| {
        run(Command::new(&hadolint)
            .args(["--no-color", "--failure-threshold", "info"])
            .arg(path))
    };
    let (ok, stdout, stderr) = lint(&repo().join("Dockerfile"));
    assert!(ok, "hadolint Dockerfile:\n{stdout}{stderr}");
    // A broken copy: an unpinned base image.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("Dockerfile");
    let unpinned = dockerfile.replacen(
        &format!("FROM {}", runtime.split_whitespace().next().unwrap()),
        "FROM debian",
        1,
    );
    assert_ne!(unpinned, dockerfile);
    std::fs::write(&broken, unpinned).unwrap();
    let (ok, stdout, _) = lint(&broken);
    assert!(
        !ok && stdout.contains("DL3006"),
        "hadolint let an untagged image pass: {stdout}"
    );
}
