//! Loading and validation scenarios, each on a mesh written to a temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A scratch directory, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("meshward-config-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `rel` (creating parent directories) and returns its path.
    pub(super) fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) const POLICY: &str = "package meshward.authz

default decision := false

decision if input.meshward.caller.spiffe_id == \"spiffe://example.org/agent/a\"
";

/// A valid mesh. Tests break it by replacing one line.
pub(super) const MESH: &str = "trust_domain: example.org
policy:
  dir: policies
  decision: data.meshward.authz.decision
agents:
  - name: agent-a
    spiffe_id: spiffe://example.org/agent/a
    attributes:
      team: support
    permissions: [skills:invoke]
    limits:
      requests_per_second: 5
      burst: 10
      max_concurrent: 20
  - name: agent-b
    spiffe_id: spiffe://example.org/agent/b
services:
  - name: hello
    spiffe_id: spiffe://example.org/service/hello
    endpoints: [\"127.0.0.1:0\"]
    backend: 127.0.0.1:8080
    metadata:
      team: platform
    breaker:
      consecutive_failures: 5
      open_for: 10s
      half_open_probes: 1
    per_caller_limits:
      requests_per_second: 0.5
      burst: 1
      per_destination: true
  - name: world
    spiffe_id: spiffe://example.org/service/world
    endpoints: [\"10.0.0.1:15006\", \"[::1]:15006\"]
";

/// A mesh file plus its policy bundle, in a fresh temp dir.
pub(super) fn mesh_dir(name: &str, mesh: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(name);
    dir.write("policies/meshward/authz.rego", POLICY);
    let path = dir.write("mesh.yaml", mesh);
    (dir, path)
}

/// 1-based line of the first line of `text` containing `needle`.
pub(super) fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
}

/// `MESH` with the (first) line containing `needle` replaced by `with`.
fn edit(needle: &str, with: &str) -> String {
    let line = line_of(MESH, needle);
    MESH.lines()
        .enumerate()
        .map(|(i, l)| if i + 1 == line { with } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn errors_of(mesh: &str) -> (PathBuf, ConfigErrors, TempDir) {
    let (dir, path) = mesh_dir("invalid", mesh);
    match load(&path) {
        Ok(_) => panic!("expected errors for:\n{mesh}"),
        Err(errors) => (path, errors, dir),
    }
}

/// Asserts one error names `field` at `line`, with `message_part` in it.
#[track_caller]
fn assert_error(errors: &ConfigErrors, field: &str, line: usize, message_part: &str) {
    let found = errors
        .iter()
        .find(|e| e.field == field)
        .unwrap_or_else(|| panic!("no error for {field}; got:\n{errors}"));
    assert_eq!(found.line, Some(line), "line of {field}; got:\n{errors}");
    assert!(
        found.message.contains(message_part),
        "message of {field} should contain {message_part:?}; got:\n{errors}"
    );
}

#[test]
fn valid_mesh_loads_into_the_model() {
    let (dir, path) = mesh_dir("valid", MESH);
    let mesh = load(&path).unwrap();
    assert_eq!(mesh.source, path);
    assert_eq!(mesh.trust_domain, "example.org");
    assert_eq!(mesh.agents.len(), 2);
    let a = &mesh.agents["agent-a"];
    assert_eq!(a.spiffe_id, "spiffe://example.org/agent/a");
    assert_eq!(a.attributes["team"], "support");
    assert_eq!(a.permissions, vec!["skills:invoke"]);
    assert_eq!(
        a.limits,
        RateLimitSettings {
            requests_per_second: 5.0,
            burst: 10,
            max_concurrent: 20,
            per_destination: false,
            count_denied: true,
        }
    );
    assert_eq!(mesh.agents["agent-b"].limits, RateLimitSettings::default());

    let hello = &mesh.services["hello"];
    assert_eq!(hello.endpoints, vec!["127.0.0.1:0"]);
    assert_eq!(hello.backend.as_deref(), Some("127.0.0.1:8080"));
    assert_eq!(
        hello.spec.breaker.open_for,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(hello.spec.per_caller_limits.requests_per_second, 0.5);
    assert!(hello.spec.per_caller_limits.per_destination);
    let world = &mesh.services["world"];
    assert_eq!(world.backend, None);
    assert_eq!(world.spec.breaker, BreakerSettings::default());

    assert_eq!(mesh.policy.dir, dir.path().join("policies"));
    assert_eq!(mesh.policy.decision, "data.meshward.authz.decision");
    assert_eq!(
        mesh.policy.modules,
        vec![("meshward/authz.rego".to_string(), POLICY.to_string())]
    );
    assert_eq!(mesh.policy.revision.len(), 64);
    assert_eq!(
        mesh.agent_by_spiffe_id("spiffe://example.org/agent/b")
            .unwrap()
            .name,
        "agent-b"
    );
    assert_eq!(validate_file(&path).unwrap(), mesh);
}

/// The shipped demo config, with a stand-in bundle at the same relative
/// place (`../../policies`), so this test checks the file and not the
/// reference policy, which has its own tests.
#[test]
fn shipped_local_mesh_loads() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/mesh.yaml");
    let text = fs::read_to_string(&shipped).unwrap();
    let dir = TempDir::new("shipped");
    dir.write("policies/meshward/authz.rego", POLICY);
    let path = dir.write("deploy/local/mesh.yaml", &text);
    let mesh = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mesh.trust_domain, "example.org");
    assert_eq!(
        mesh.agents.keys().collect::<Vec<_>>(),
        vec!["billing-bot", "support-triage"]
    );
    assert_eq!(mesh.services.len(), 5);
    assert!(
        mesh.services
            .values()
            .all(|s| s.endpoints == vec!["127.0.0.1:0"])
    );
    assert_eq!(mesh.agents["support-triage"].limits.burst, 10);
    assert_eq!(
        mesh.services["hello-skill"]
            .spec
            .breaker
            .consecutive_failures,
        5
    );
}

/// The shipped file in place: the mesh part must be valid. The reference
/// bundle may still be in progress, so only bundle problems are tolerated
/// here, and only while the bundle has no modules.
#[test]
fn shipped_local_mesh_is_valid_in_place() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("deploy/local/mesh.yaml");
    if let Err(errors) = load(&path) {
        let (modules, _) = bundle::files(&root.join("policies"));
        let has_modules = modules.iter().any(|f| f.kind == bundle::FileKind::Module);
        assert!(
            !has_modules,
            "the shipped mesh and bundle must load:\n{errors}"
        );
        for e in &errors {
            assert!(
                e.field.starts_with("policy"),
                "only bundle errors are tolerated while policies/ is empty:\n{errors}"
            );
        }
    }
}

#[test]
fn each_rule_names_field_and_line() {
    // (line to find, its replacement, field, message part)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "trust_domain:",
            "trust_domain: Example.org",
            "trust_domain",
            "lowercase",
        ),
        (
            "spiffe://example.org/service/world",
            "    spiffe_id: spiffe://other.org/service/world",
            "services[1].spiffe_id",
            "must be a spiffe:// URI in trust domain example.org",
        ),
        (
            "spiffe://example.org/agent/b",
            "    spiffe_id: example.org/agent/b",
            "agents[1].spiffe_id",
            "does not start with spiffe://",
        ),
        (
            "spiffe://example.org/agent/b",
            "    spiffe_id: spiffe://example.org/agent/a",
            "agents[1].spiffe_id",
            "already used by agents[0].spiffe_id (line 7)",
        ),
        (
            "spiffe://example.org/service/hello",
            "    spiffe_id: spiffe://example.org/agent/a",
            "services[0].spiffe_id",
            "duplicate SPIFFE ID",
        ),
        (
            "name: world",
            "  - name: hello",
            "services[1].name",
            "already used by services[0].name",
        ),
        (
            "name: world",
            "  - name: agent-a",
            "services[1].name",
            "already used by agents[0].name",
        ),
        (
            "name: world",
            "  - name: World_1",
            "services[1].name",
            "DNS label",
        ),
        (
            "10.0.0.1:15006",
            "    endpoints: [\"10.0.0.1\"]",
            "services[1].endpoints[0]",
            "host:port",
        ),
        (
            "10.0.0.1:15006",
            "    endpoints: []",
            "services[1].endpoints",
            "at least one",
        ),
        (
            "10.0.0.1:15006",
            "    endpoints: [\"h:1\", \"h:99999\"]",
            "services[1].endpoints[1]",
            "0-65535",
        ),
        (
            "backend:",
            "    backend: 127.0.0.1:0",
            "services[0].backend",
            "1-65535",
        ),
        (
            "backend:",
            "    backend: [x]",
            "services[0].backend",
            "must be a string",
        ),
        (
            "requests_per_second: 5",
            "      requests_per_second: -1",
            "agents[0].limits.requests_per_second",
            "negative",
        ),
        (
            "burst: 10",
            "      burst: 0",
            "agents[0].limits.burst",
            "at least 1 when requests_per_second > 0",
        ),
        (
            "max_concurrent: 20",
            "      max_concurrent: -3",
            "agents[0].limits.max_concurrent",
            "negative",
        ),
        (
            "max_concurrent: 20",
            "      max_concurrent: \"20\"",
            "agents[0].limits.max_concurrent",
            "whole number",
        ),
        (
            "per_destination:",
            "      per_destination: yes",
            "services[0].per_caller_limits.per_destination",
            "true or false",
        ),
        (
            "consecutive_failures:",
            "      consecutive_failures: 0",
            "services[0].breaker.consecutive_failures",
            "at least 1",
        ),
        (
            "open_for:",
            "      open_for: 0s",
            "services[0].breaker.open_for",
            "longer than 0s",
        ),
        (
            "open_for:",
            "      open_for: 10",
            "services[0].breaker.open_for",
            "duration",
        ),
        (
            "half_open_probes:",
            "      half_open_probes: 0",
            "services[0].breaker.half_open_probes",
            "at least 1",
        ),
        (
            "dir: policies",
            "  dir: no-such-dir",
            "policy.dir",
            "cannot be read",
        ),
        (
            "decision:",
            "  decision: meshward.authz.decision",
            "policy.decision",
            "data.meshward.authz.decision",
        ),
        (
            "decision:",
            "  decision: data.meshward.authz.nope",
            "policy.decision",
            "not defined",
        ),
        (
            "burst: 10",
            "      brust: 10",
            "agents[0].limits.brust",
            "unknown key (did you mean `burst`?)",
        ),
        (
            "permissions:",
            "    permissions: [a, a]",
            "agents[0].permissions[1]",
            "duplicate permission",
        ),
        (
            "team: support",
            "      team: [a]",
            "agents[0].attributes.team",
            "must be a string",
        ),
    ];
    for (needle, with, field, message) in cases {
        let mesh = edit(needle, with);
        let (_, errors, _dir) = errors_of(&mesh);
        assert_error(&errors, field, line_of(MESH, needle), message);
    }
}

#[test]
fn missing_required_fields_point_at_their_mapping() {
    let mesh = edit("    endpoints: [\"10.0.0.1:15006\"", "    metadata: {}");
    let (_, errors, _dir) = errors_of(&mesh);
    assert_error(
        &errors,
        "services[1].endpoints",
        line_of(MESH, "name: world"),
        "required",
    );

    let mesh = edit(
        "name: agent-b",
        "  - spiffe_id: spiffe://example.org/agent/c",
    );
    let (_, errors, _dir) = errors_of(&mesh);
    assert_error(
        &errors,
        "agents[1].name",
        line_of(MESH, "name: agent-b"),
        "required",
    );

    let mesh = MESH.replacen("trust_domain: example.org\n", "", 1);
    let (_, errors, _dir) = errors_of(&mesh);
    assert!(
        errors
            .iter()
            .any(|e| e.field == "trust_domain" && e.message == "is required")
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let mesh = MESH.replace("services:\n", "servcies:\n");
    let (path, errors, _dir) = errors_of(&mesh);
    let e = errors.iter().find(|e| e.field == "servcies").unwrap();
    assert_eq!(e.line, Some(line_of(MESH, "services:")));
    assert!(e.message.contains("did you mean `services`?"), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:{}: servcies: unknown key (did you mean `services`?); expected one of: trust_domain, policy, listeners, authorizers, telemetry, agents, services",
            path.display(),
            line_of(MESH, "services:")
        )
    );

    let mesh = edit(
        "half_open_probes:",
        "      half_open_probes: 1\n      max_failures: 3",
    );
    let (_, errors, _dir) = errors_of(&mesh);
    assert_error(
        &errors,
        "services[0].breaker.max_failures",
        line_of(MESH, "half_open_probes:") + 1,
        "unknown key",
    );
}

#[test]
fn duplicate_yaml_keys_are_errors() {
    let mesh = edit("burst: 10", "      burst: 10\n      burst: 0");
    let (_, errors, _dir) = errors_of(&mesh);
    let e = errors
        .iter()
        .find(|e| e.message.contains("duplicate key `burst`"))
        .unwrap();
    assert_eq!(e.line, Some(line_of(MESH, "burst: 10") + 1));
}

#[test]
fn all_errors_are_reported_together_in_line_order() {
    let mut mesh = edit("trust_domain:", "trust_domain: example.org");
    for (needle, with) in [
        ("burst: 10", "      burst: 0"),
        (
            "spiffe://example.org/service/world",
            "    spiffe_id: spiffe://other.org/w",
        ),
        ("open_for:", "      open_for: forever"),
        ("name: agent-b", "  - name: Agent-B"),
    ] {
        let line = line_of(&mesh, needle);
        mesh = mesh
            .lines()
            .enumerate()
            .map(|(i, l)| if i + 1 == line { with } else { l })
            .collect::<Vec<_>>()
            .join("\n");
    }
    let (_, errors, _dir) = errors_of(&mesh);
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "agents[0].limits.burst",
            "agents[1].name",
            "services[0].breaker.open_for",
            "services[1].spiffe_id"
        ],
        "{errors}"
    );
    let lines: Vec<_> = errors.iter().map(|e| e.line.unwrap()).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{errors}");
    assert_eq!(errors.to_string().lines().count(), 4);
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let mesh = edit("permissions:", "    permissions: [skills:invoke");
    let (path, errors, _dir) = errors_of(&mesh);
    assert_eq!(errors.len(), 1, "{errors}");
    assert_eq!(errors.0[0].file, path);
    assert!(
        errors.0[0]
            .line
            .is_some_and(|l| l >= line_of(MESH, "permissions:"))
    );
    assert!(errors.0[0].message.starts_with("invalid YAML"), "{errors}");
}

#[test]
fn unreadable_or_empty_file_is_one_error() {
    let dir = TempDir::new("missing");
    let errors = load(&dir.path().join("nope.yaml")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors.0[0].message.contains("cannot read"), "{errors}");
    let path = dir.write("empty.yaml", "# nothing\n");
    assert!(load(&path).unwrap_err().0[0].message.contains("empty"));
    let path = dir.write("list.yaml", "- a\n");
    assert!(
        load(&path).unwrap_err().0[0]
            .message
            .contains("must be a mapping")
    );
}

#[test]
fn rego_syntax_error_names_file_and_line() {
    let (dir, path) = mesh_dir("rego-syntax", MESH);
    let broken = "package meshward.extra\n\nallow if {\n  input.x ==\n}\n";
    let rego = dir.write("policies/meshward/extra.rego", broken);
    let errors = load(&path).unwrap_err();
    let e = errors
        .iter()
        .find(|e| e.file == rego)
        .unwrap_or_else(|| panic!("{errors}"));
    assert!(matches!(e.line, Some(4..=5)), "{e}");
    assert!(e.field.is_empty());
    assert!(
        e.to_string().starts_with(&format!("{}:", rego.display())),
        "{e}"
    );
}

#[test]
fn rego_semantic_error_names_file_and_line() {
    let (dir, path) = mesh_dir("rego-unsafe", MESH);
    let rego = dir.write(
        "policies/meshward/unsafe.rego",
        "package meshward.unsafe\n\nallow if {\n  x == 1\n}\n",
    );
    let errors = load(&path).unwrap_err();
    let e = errors
        .iter()
        .find(|e| e.file == rego)
        .unwrap_or_else(|| panic!("{errors}"));
    assert_eq!(e.line, Some(4), "{e}");
}

#[test]
fn a_decision_cache_declaration_the_modules_do_not_honour_names_file_and_line() {
    let (dir, path) = mesh_dir("cache-declaration", MESH);
    dir.write(
        "policies/meshward/decision_cache/data.json",
        r#"{"inputs": ["attributes.request.http.method", "meshward.caller"]}"#,
    );
    let mesh = load(&path).unwrap_or_else(|e| panic!("a covered bundle loads: {e}"));
    assert!(mesh.policy.data["meshward"]["decision_cache"].is_object());
    let rego = dir.write(
        "policies/meshward/team.rego",
        "package meshward.team\n\nops if {\n  input.attributes.request.http.headers[\"x-team\"] == \"ops\"\n}\n",
    );
    let errors = load(&path).unwrap_err();
    let e = errors
        .iter()
        .find(|e| e.file == rego)
        .unwrap_or_else(|| panic!("{errors}"));
    assert_eq!(e.line, Some(4), "{e}");
    assert!(
        e.message
            .starts_with("reads input.attributes.request.http.headers.x-team, which"),
        "{e}"
    );
    // An input that changes per request cannot be declared at all.
    std::fs::remove_file(&rego).unwrap();
    dir.write(
        "policies/meshward/decision_cache/data.json",
        r#"{"inputs": ["attributes.request.http.id"]}"#,
    );
    let errors = load(&path).unwrap_err();
    assert!(
        errors.to_string().contains("changes with every request"),
        "{errors}"
    );
}

#[test]
fn test_modules_and_hidden_entries_are_not_part_of_the_bundle() {
    let (dir, path) = mesh_dir("test-files", MESH);
    dir.write("policies/meshward/authz_test.rego", "this is not rego {");
    dir.write("policies/.git/x.rego", "this is not rego {");
    dir.write("policies/..2026_01_01/authz.rego", "this is not rego {");
    dir.write("policies/README.md", "# docs");
    let mesh = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mesh.policy.modules.len(), 1);
}

#[test]
fn data_files_land_at_their_directory_path() {
    let (dir, path) = mesh_dir("data", MESH);
    dir.write("policies/data.json", r#"{"top": true}"#);
    dir.write("policies/x/y/data.json", r#"{"a": 1, "list": [1, 2]}"#);
    dir.write(
        "policies/x/data.yaml",
        "z:\n  - 1\n  - \"2\"\n  - 2.5\n  - true\n  - ~\n  - text\n",
    );
    dir.write("policies/x/y/z/data.json", "[\"not an object\"]");
    dir.write(
        "policies/meshward/uses.rego",
        "package meshward.uses\n\nok if data.x.y.a == 1\n",
    );
    let mesh = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        mesh.policy.data,
        serde_json::json!({
            "top": true,
            "x": {
                "y": {"a": 1, "list": [1, 2], "z": ["not an object"]},
                "z": [1, "2", 2.5, true, null, "text"]
            }
        })
    );
    let mut engine = bundle::compile(&mesh.policy).unwrap();
    assert_eq!(
        engine.eval_rule("data.meshward.uses.ok".into()).unwrap(),
        regorus::Value::from(true)
    );
}

#[test]
fn conflicting_data_names_both_files() {
    let (dir, path) = mesh_dir("data-conflict", MESH);
    dir.write("policies/x/data.json", r#"{"y": {"a": 1}}"#);
    let second = dir.write("policies/x/y/data.json", r#"{"a": 2}"#);
    let errors = load(&path).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    assert_eq!(errors.0[0].file, second);
    assert!(errors.0[0].message.contains("data.x.y.a"), "{errors}");
    assert!(errors.0[0].message.contains("x/data.json"), "{errors}");

    let bad = dir.write("policies/x/y/data.json", "{\n  \"a\": 2,\n}\n");
    let errors = load(&path).unwrap_err();
    assert_eq!(errors.0[0].file, bad);
    assert_eq!(errors.0[0].line, Some(3), "{errors}");
}

#[test]
fn revision_follows_content() {
    let (dir, path) = mesh_dir("revision", MESH);
    let first = load(&path).unwrap().policy.revision;
    assert_eq!(load(&path).unwrap().policy.revision, first);
    dir.write("policies/data.json", r#"{"k": 1}"#);
    let with_data = load(&path).unwrap().policy.revision;
    assert_ne!(with_data, first);
    dir.write("policies/data.json", r#"{"k": 2}"#);
    assert_ne!(load(&path).unwrap().policy.revision, with_data);
}

#[test]
fn empty_bundle_names_the_decision() {
    let dir = TempDir::new("empty-bundle");
    fs::create_dir_all(dir.path().join("policies")).unwrap();
    let path = dir.write("mesh.yaml", MESH);
    let errors = load(&path).unwrap_err();
    assert_error(
        &errors,
        "policy.decision",
        line_of(MESH, "decision:"),
        "no .rego modules",
    );
}

#[test]
fn hardening_settings_load_with_their_defaults() {
    let (_dir, path) = mesh_dir("defaults", MESH);
    let mesh = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mesh.listeners, ListenerLimits::default());
    assert_eq!(mesh.services["hello"].spec.paths, PathRules::default());
    assert_eq!(
        mesh.services["hello"].spec.forward_client_cert,
        ForwardClientCert::Sanitize
    );
    assert!(mesh.agents["agent-a"].limits.count_denied);

    let custom = MESH.replace(
        "agents:\n",
        "listeners:
  header_read_timeout: 2s
  idle_timeout: 1m
  max_connections: 100
  max_connections_per_client_ip: 10
  max_request_headers_kb: 16
  max_concurrent_streams: 8
  admin_max_connections: 4
agents:
",
    ) + "    paths:
      escaped_slashes: keep
      path_parameters: keep
    forward_client_cert: sanitize_set
";
    let custom = custom.replace(
        "      max_concurrent: 20\n",
        "      max_concurrent: 20\n      count_denied: false\n",
    );
    let (_dir, path) = mesh_dir("custom", &custom);
    let mesh = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        mesh.listeners,
        ListenerLimits {
            header_read_timeout: std::time::Duration::from_secs(2),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connections: 100,
            max_connections_per_client_ip: 10,
            max_request_headers_bytes: 16 * 1024,
            max_concurrent_streams: 8,
            admin_max_connections: 4,
        }
    );
    let world = &mesh.services["world"];
    assert_eq!(world.spec.paths.escaped_slashes, PathAction::Keep);
    assert_eq!(world.spec.paths.path_parameters, PathAction::Keep);
    assert_eq!(
        world.spec.forward_client_cert,
        ForwardClientCert::SanitizeSet
    );
    assert!(!mesh.agents["agent-a"].limits.count_denied);
}

#[test]
fn hardening_settings_out_of_range_name_field_and_line() {
    let mesh = MESH.replace(
        "agents:\n",
        "listeners:
  max_request_headers_kb: 4
  max_connections: 0
  idle_timeout: 1ms
agents:
",
    ) + "    paths:
      escaped_slashes: decode
    forward_client_cert: always
";
    let (_, errors, _dir) = errors_of(&mesh);
    assert_error(
        &errors,
        "listeners.max_request_headers_kb",
        line_of(&mesh, "max_request_headers_kb: 4"),
        "between 8 and 1024 KiB",
    );
    assert_error(
        &errors,
        "services[1].paths.escaped_slashes",
        line_of(&mesh, "escaped_slashes: decode"),
        "must be one of reject, keep",
    );
    assert_error(
        &errors,
        "services[1].forward_client_cert",
        line_of(&mesh, "forward_client_cert: always"),
        "sanitize, sanitize_set, append_forward",
    );
    assert_error(
        &errors,
        "listeners.max_connections",
        line_of(&mesh, "max_connections: 0"),
        "at least 1",
    );
    assert_error(
        &errors,
        "listeners.idle_timeout",
        line_of(&mesh, "idle_timeout: 1ms"),
        "at least 100ms",
    );
}

#[test]
fn spire_registry_lists_every_agent_and_service() {
    let (_dir, path) = mesh_dir("registry", MESH);
    let mesh = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let registry = mesh.spire_registry();
    assert_eq!(registry.trust_domain, "example.org");
    assert_eq!(
        registry.agents,
        vec![
            (
                "agent-a".to_string(),
                "spiffe://example.org/agent/a".to_string()
            ),
            (
                "agent-b".to_string(),
                "spiffe://example.org/agent/b".to_string()
            ),
        ]
    );
    assert_eq!(
        registry
            .services
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        vec!["hello", "world"]
    );
}

#[test]
fn authorizers_are_spiffe_ids_of_the_trust_domain_unique_across_the_mesh() {
    let mesh = MESH.replace(
        "agents:\n",
        "authorizers:\n  - spiffe://example.org/meshward/ext-authz\nagents:\n",
    );
    let (_dir, path) = mesh_dir("authorizers", &mesh);
    let loaded = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.authorizers,
        ["spiffe://example.org/meshward/ext-authz"]
    );
    let bad = MESH.replace(
        "agents:\n",
        "authorizers:\n  - spiffe://other.org/meshward/ext-authz\n  - spiffe://example.org/agent/a\nagents:\n",
    );
    let (_, errors, _dir) = errors_of(&bad);
    assert!(
        errors.iter().any(|e| e.field == "authorizers[0]"),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.message.contains("SPIFFE ID")),
        "duplicate of an agent's ID: {errors:?}"
    );
}

#[test]
fn tracing_in_the_mesh_file_is_read_and_checked() {
    let with = |tracing: &str| format!("{MESH}telemetry:\n  tracing:\n{tracing}");
    let (dir, path) = mesh_dir(
        "tracing",
        &with(
            "    endpoint: http://127.0.0.1:4317\n    protocol: grpc\n    sampler: parentbased_traceidratio\n    sampler_arg: 0.05\n",
        ),
    );
    let mesh = load(&path).expect("valid");
    drop(dir);
    let t = mesh.tracing.expect("tracing read");
    assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
    assert_eq!(t.protocol, Some(meshward_telemetry::Protocol::Grpc));
    assert_eq!(t.sampler_arg, Some(0.05));

    let text = with("    endpoint: http://127.0.0.1:4317\n    protocol: http/json\n");
    let (_, errors, _dir) = errors_of(&text);
    assert_error(
        &errors,
        "telemetry.tracing.protocol",
        line_of(&text, "http/json"),
        "not an OTLP protocol",
    );

    let text = with("    endpoint: http://127.0.0.1:4317\n    sampler: sometimes\n");
    let (_, errors, _dir) = errors_of(&text);
    assert_error(
        &errors,
        "telemetry.tracing.sampler",
        line_of(&text, "sometimes"),
        "not a supported sampler",
    );

    let text = with("    endpoint: 127.0.0.1:4317\n");
    let (_, errors, _dir) = errors_of(&text);
    assert_error(
        &errors,
        "telemetry.tracing.endpoint",
        line_of(&text, "endpoint: 127"),
        "http://",
    );

    let text = format!("{MESH}telemetry:\n  traces: {{}}\n");
    let (_, errors, _dir) = errors_of(&text);
    assert_error(
        &errors,
        "telemetry.traces",
        line_of(&text, "traces:"),
        "unknown key",
    );
}

#[test]
fn mcp_services_load_with_their_settings() {
    let mesh = MESH.to_string()
        + "    protocol: mcp
    mcp:
      path: /v1/mcp
      max_message_bytes: 4096
      filter_tools_list: true
      tool_limits:
        refund_invoice: { requests_per_second: 1, burst: 2 }
";
    let (_dir, path) = mesh_dir("mcp", &mesh);
    let mesh = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mcp = mesh.services["world"]
        .spec
        .mcp
        .clone()
        .expect("mcp settings");
    assert_eq!(mcp.path, "/v1/mcp");
    assert_eq!(mcp.max_message_bytes, 4096);
    assert!(mcp.filter_tools_list);
    assert_eq!(mcp.tool_limits["refund_invoice"].burst, 2);
    assert_eq!(mesh.services["hello"].spec.mcp, None);

    let bare = MESH.to_string() + "    protocol: mcp\n";
    let (_dir, path) = mesh_dir("mcp-bare", &bare);
    let mesh = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        mesh.services["world"].spec.mcp,
        Some(meshward_contract::spec::McpSettings::default())
    );
}

#[test]
fn mcp_settings_out_of_range_name_field_and_line() {
    let mesh = MESH.to_string()
        + "    protocol: grpc
    mcp:
      path: /mcp/../admin
      max_message_bytes: 4194304
      tool_limits:
        \"bad name\": { requests_per_second: 1, burst: 1 }
        slow: { requests_per_second: 1, burst: 1, max_concurrent: 2 }
";
    let (_, errors, _dir) = errors_of(&mesh);
    assert_error(
        &errors,
        "services[1].protocol",
        line_of(&mesh, "protocol: grpc"),
        "must be one of http, mcp",
    );
    assert_error(
        &errors,
        "services[1].mcp",
        // A block mapping is reported at its first entry.
        line_of(&mesh, "path: /mcp/../admin"),
        "needs `protocol: mcp`",
    );
    let mesh = mesh.replace("protocol: grpc", "protocol: mcp");
    let (_, errors, _dir) = errors_of(&mesh);
    assert_error(
        &errors,
        "services[1].mcp.path",
        line_of(&mesh, "path: /mcp/../admin"),
        "canonical",
    );
    assert_error(
        &errors,
        "services[1].mcp.max_message_bytes",
        line_of(&mesh, "max_message_bytes: 4194304"),
        "outside 1024..=1048576",
    );
    assert_error(
        &errors,
        "services[1].mcp.tool_limits.bad name",
        line_of(&mesh, "\"bad name\""),
        "must be 1..=128",
    );
    assert_error(
        &errors,
        "services[1].mcp.tool_limits.slow.max_concurrent",
        line_of(&mesh, "slow:"),
        "not supported per tool",
    );
}

#[test]
fn timeouts_default_parse_and_routes_inherit_what_they_omit() {
    use std::time::Duration;
    let mesh = load(&mesh_dir("timeouts-default", MESH).1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        mesh.services["world"].spec.timeouts,
        ServiceTimeouts::default()
    );

    let custom = MESH.to_string()
        + "    timeouts: { response: 2s, idle: 1m, total: 1h }
    routes:
      - prefix: /stream
        timeouts: { idle: 10m }
      - prefix: /stream/fast
        timeouts:
          response: 500ms
          total: 30s
";
    let (_dir, path) = mesh_dir("timeouts", &custom);
    let mesh = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let t = &mesh.services["world"].spec.timeouts;
    let secs = Duration::from_secs;
    assert_eq!(
        t.default,
        Timeouts {
            response: secs(2),
            idle: secs(60),
            total: Some(secs(3600)),
        }
    );
    assert_eq!(
        t.routes,
        [
            RouteTimeouts {
                prefix: "/stream".into(),
                timeouts: Timeouts {
                    idle: secs(600),
                    ..t.default
                },
            },
            RouteTimeouts {
                prefix: "/stream/fast".into(),
                timeouts: Timeouts {
                    response: Duration::from_millis(500),
                    idle: secs(60),
                    total: Some(secs(30)),
                },
            },
        ]
    );
    assert_eq!(
        t.for_path("/stream/fast/x").response,
        Duration::from_millis(500)
    );
    assert_eq!(t.for_path("/streams").idle, secs(600));
    assert_eq!(t.for_path("/other").idle, secs(60));
    // What the control plane sends is what a dataplane ACKs.
    let cluster = mesh.services["world"].spec.to_cluster();
    assert_eq!(
        meshward_contract::spec::Service::from_cluster("world", &cluster).map(|s| s.timeouts),
        Ok(t.clone())
    );
}

#[test]
fn bad_timeouts_name_the_service_field_and_line() {
    let mesh = MESH.to_string()
        + "    timeouts:
      response: 2h
      idle: 500ms
      colour: red
    routes:
      - prefix: stream
      - prefix: /ok
        timeouts: { total: 10s, response: 20s }
      - prefix: /ok
      - prefix: /a/../b
      - prefix: /x
        timeouts: { idle: forever }
      - timeouts: { idle: 1m }
";
    let (_, errors, _dir) = errors_of(&mesh);
    assert_error(
        &errors,
        "services[1].timeouts.response",
        line_of(&mesh, "response: 2h"),
        "of service world must be between 1ms and 1h, found 2h",
    );
    assert_error(
        &errors,
        "services[1].timeouts.idle",
        line_of(&mesh, "idle: 500ms"),
        "between 1s and 24h",
    );
    assert_error(
        &errors,
        "services[1].timeouts.colour",
        line_of(&mesh, "colour: red"),
        "unknown key",
    );
    assert_error(
        &errors,
        "services[1].routes[0].prefix",
        line_of(&mesh, "prefix: stream"),
        "of service world must start with '/'",
    );
    assert_error(
        &errors,
        "services[1].routes[1].timeouts.total",
        line_of(&mesh, "total: 10s"),
        "at least response (20s)",
    );
    assert_error(
        &errors,
        "services[1].routes[2].prefix",
        line_of(&mesh, "prefix: /ok") + 2,
        "duplicate prefix `/ok` of service world",
    );
    assert_error(
        &errors,
        "services[1].routes[3].prefix",
        line_of(&mesh, "prefix: /a/../b"),
        "dot segment",
    );
    assert_error(
        &errors,
        "services[1].routes[4].timeouts.idle",
        line_of(&mesh, "idle: forever"),
        "must be a duration",
    );
    assert_error(
        &errors,
        "services[1].routes[5].prefix",
        line_of(&mesh, "- timeouts: { idle: 1m }"),
        "is required",
    );
}
