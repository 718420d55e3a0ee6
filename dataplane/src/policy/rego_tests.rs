//! Runs the reference bundle's Rego unit tests (`policies/**/*_test.rego`)
//! under `cargo test`, and checks [`CompiledPolicy`] against the real bundle.
//!
//! regorus has no `opa test` runner, so this is one: every rule whose name
//! starts with `test_` in a loaded module is evaluated on its own clone of
//! the engine and must be `true`. The same files run unchanged under
//! `opa test policies/`, which the interop tests use for parity.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshward_contract::pb::v1::{PolicyBundle, RegoModule};
use serde_json::{Value, json};

use super::decision::UNDEFINED_REASON;
use super::input::{CallerFacts, Direction, RequestFacts, ServiceFacts, build_input};
use super::{CompiledPolicy, PolicyError};

const DECISION: &str = "data.meshward.authz.decision";

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Every file under `dir`, sorted, as (path relative to `root`, contents).
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            out.push((rel, text));
        }
    }
}

/// Loads `policies/` the way the control plane does: every `*.rego`
/// (tests only when asked) and every `data.json` at its directory's path.
fn load_bundle(with_tests: bool) -> PolicyBundle {
    let root = policies_dir();
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    let mut modules = Vec::new();
    let mut data = json!({});
    for (rel, text) in files {
        if rel.ends_with(".rego") {
            if with_tests || !rel.ends_with("_test.rego") {
                modules.push(RegoModule {
                    path: rel,
                    source: text,
                });
            }
        } else if rel == "data.json" || rel.ends_with("/data.json") {
            let mut doc: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
            let dir = rel.trim_end_matches("data.json").trim_end_matches('/');
            for segment in dir.split('/').filter(|s| !s.is_empty()).rev() {
                doc = json!({ segment: doc });
            }
            merge(&mut data, doc);
        }
    }
    PolicyBundle {
        name: "reference".into(),
        revision: "test".into(),
        modules,
        data_json: data.to_string(),
        decision: DECISION.into(),
    }
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `test_*` rule names declared at the start of a line, in source order.
fn test_rule_names(source: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in source.lines() {
        if let Some(rest) = line.strip_prefix("test_") {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = format!("test_{ident}");
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Evaluates every `test_*` rule of `modules` (with `data_json`); returns
/// how many ran and a line per failure naming file and rule.
fn run_rego_tests(modules: &[RegoModule], data_json: &str) -> (usize, Vec<String>) {
    let mut engine = regorus::Engine::new();
    let mut tests = Vec::new();
    for module in modules {
        let package = engine
            .add_policy(module.path.clone(), module.source.clone())
            .unwrap_or_else(|e| panic!("{}: {e:#}", module.path));
        for name in test_rule_names(&module.source) {
            tests.push((module.path.clone(), format!("{package}.{name}")));
        }
    }
    engine.add_data_json(data_json).expect("bundle data loads");
    let mut failures = Vec::new();
    for (file, rule) in &tests {
        let mut e = engine.clone();
        match e.eval_rule(rule.clone()) {
            Ok(regorus::Value::Bool(true)) => {}
            Ok(regorus::Value::Undefined) => {
                failures.push(format!("{file}: {rule} is undefined (FAIL)"))
            }
            Ok(other) => failures.push(format!("{file}: {rule} = {other}")),
            Err(err) => failures.push(format!("{file}: {rule} errored: {err:#}")),
        }
    }
    (tests.len(), failures)
}

#[test]
fn rego_unit_tests_pass() {
    let bundle = load_bundle(true);
    let (ran, failures) = run_rego_tests(&bundle.modules, &bundle.data_json);
    assert!(ran >= 30, "only {ran} Rego tests found");
    assert!(
        failures.is_empty(),
        "{} of {ran} Rego tests failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn rego_runner_reports_failures() {
    let module = RegoModule {
        path: "t/x_test.rego".into(),
        source: "package x_test\n\ntest_ok if true\n\ntest_bad if false\n\ntest_err if to_number(\"x\") > 1\n".into(),
    };
    let (ran, failures) = run_rego_tests(&[module], "{}");
    assert_eq!(ran, 3);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures[0].contains("data.x_test.test_bad"), "{failures:?}");
    assert!(failures[1].contains("data.x_test.test_err"), "{failures:?}");
}

#[test]
fn finds_test_rules() {
    let src = "package x\ntest_a if true\ntest_b if {\n}\n  test_c if true\ntest_a if false\n";
    assert_eq!(test_rule_names(src), vec!["test_a", "test_b"]);
}

// --- CompiledPolicy against the reference bundle ---

struct Agent {
    spiffe_id: String,
    name: &'static str,
    attributes: BTreeMap<String, String>,
    permissions: Vec<String>,
}

fn agent(name: &'static str, team: &str, kind: &str, env: &str, perms: &[&str]) -> Agent {
    Agent {
        spiffe_id: format!("spiffe://example.org/agent/{name}"),
        name,
        attributes: BTreeMap::from([
            ("team".to_string(), team.to_string()),
            ("type".to_string(), kind.to_string()),
            ("environment".to_string(), env.to_string()),
        ]),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
    }
}

fn support_triage() -> Agent {
    agent(
        "support-triage",
        "customer-success",
        "support",
        "production",
        &["skills:invoke", "data:read"],
    )
}

fn billing_bot() -> Agent {
    agent(
        "billing-bot",
        "finance",
        "analysis",
        "production",
        &["skills:invoke", "billing:read", "finance:access"],
    )
}

struct Service {
    name: &'static str,
    spiffe_id: String,
    metadata: BTreeMap<String, String>,
}

fn service(name: &'static str, team: &str, classification: &str) -> Service {
    Service {
        name,
        spiffe_id: format!("spiffe://example.org/service/{name}"),
        metadata: BTreeMap::from([
            ("team".to_string(), team.to_string()),
            ("environment".to_string(), "production".to_string()),
            (
                "data_classification".to_string(),
                classification.to_string(),
            ),
        ]),
    }
}

/// Evaluates a JSON POST from `caller` (None: an unregistered peer with
/// `principal`) to `svc` as the inbound sidecar would.
fn decide(
    policy: &CompiledPolicy,
    principal: &str,
    caller: Option<&Agent>,
    svc: &Service,
    method: &str,
    path: &str,
) -> super::Decision {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    let facts = RequestFacts {
        checkpoint: Direction::Inbound.into(),
        method,
        path,
        raw_path: path,
        host: svc.name,
        scheme: "https",
        protocol: "HTTP/1.1",
        headers: &headers,
        body: Some(br#"{"name":"Ada"}"#),
        request_id: "req-1",
        source_principal: (!principal.is_empty()).then_some(principal),
        destination_principal: Some(&svc.spiffe_id),
        source_address: Some("127.0.0.1:41000".parse().unwrap()),
        destination_address: Some("127.0.0.1:15006".parse().unwrap()),
        caller: caller.map(|a| CallerFacts {
            spiffe_id: &a.spiffe_id,
            name: a.name,
            attributes: &a.attributes,
            permissions: &a.permissions,
        }),
        service: Some(ServiceFacts {
            name: svc.name,
            spiffe_id: &svc.spiffe_id,
            metadata: &svc.metadata,
        }),
    };
    policy
        .evaluate(&build_input(&facts).expect("input"))
        .unwrap_or_else(|e| panic!("evaluation failed: {e}"))
}

fn reference() -> CompiledPolicy {
    CompiledPolicy::compile(&load_bundle(false)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn demo_support_triage_invokes_hello_skill() {
    let p = reference();
    let a = support_triage();
    let d = decide(
        &p,
        &a.spiffe_id,
        Some(&a),
        &service("hello-skill", "platform", "public"),
        "POST",
        "/say-hello",
    );
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.http_status, None);
}

#[test]
fn demo_support_triage_denied_billing_system() {
    let p = reference();
    let a = support_triage();
    let d = decide(
        &p,
        &a.spiffe_id,
        Some(&a),
        &service("billing-system", "finance", "restricted"),
        "POST",
        "/invoices",
    );
    assert!(!d.allowed);
    assert_eq!(d.http_status, Some(403));
    assert_eq!(
        d.reason.as_deref(),
        Some("customer-success agents may not reach billing-system")
    );
}

#[test]
fn demo_billing_bot_reaches_billing_system() {
    let p = reference();
    let a = billing_bot();
    let d = decide(
        &p,
        &a.spiffe_id,
        Some(&a),
        &service("billing-system", "finance", "restricted"),
        "GET",
        "/invoices/7",
    );
    assert!(d.allowed, "{d:?}");
}

#[test]
fn unknown_caller_denied() {
    let p = reference();
    let d = decide(
        &p,
        "spiffe://example.org/agent/stranger",
        None,
        &service("hello-skill", "platform", "public"),
        "POST",
        "/say-hello",
    );
    assert!(!d.allowed);
    assert_eq!(
        d.reason.as_deref(),
        Some("spiffe://example.org/agent/stranger is not a registered agent")
    );
    let d = decide(
        &p,
        "",
        None,
        &service("hello-skill", "platform", "public"),
        "POST",
        "/say-hello",
    );
    assert!(!d.allowed);
    assert_eq!(
        d.reason.as_deref(),
        Some("request has no verified SPIFFE identity")
    );
}

#[test]
fn environment_mismatch_denied() {
    let p = reference();
    let a = agent(
        "support-triage",
        "customer-success",
        "support",
        "staging",
        &["skills:invoke", "data:read"],
    );
    let d = decide(
        &p,
        &a.spiffe_id,
        Some(&a),
        &service("hello-skill", "platform", "public"),
        "POST",
        "/say-hello",
    );
    assert!(!d.allowed);
    assert_eq!(
        d.reason.as_deref(),
        Some(
            r#"agent support-triage is in environment "staging" but hello-skill is in "production""#
        )
    );
}

#[test]
fn allow_rule_is_a_bool_decision() {
    let mut bundle = load_bundle(false);
    bundle.decision = "data.meshward.authz.allow".into();
    let p = CompiledPolicy::compile(&bundle).unwrap();
    let a = support_triage();
    let hello = service("hello-skill", "platform", "public");
    let d = decide(&p, &a.spiffe_id, Some(&a), &hello, "POST", "/say-hello");
    assert!(d.allowed);
    assert_eq!(d.reason, None);
    let d = decide(&p, &a.spiffe_id, Some(&a), &hello, "DELETE", "/say-hello");
    assert!(!d.allowed);
}

#[test]
fn broken_module_names_file() {
    let mut bundle = load_bundle(false);
    let teams = bundle
        .modules
        .iter_mut()
        .find(|m| m.path == "meshward/teams.rego")
        .expect("teams.rego in bundle");
    teams.source.push_str("\nbroken if {\n");
    let e = CompiledPolicy::compile(&bundle).unwrap_err();
    assert!(
        matches!(e, PolicyError::Compile { ref module, .. } if module == "meshward/teams.rego"),
        "{e}"
    );
    assert!(e.to_string().contains("meshward/teams.rego"), "{e}");
}

#[test]
fn string_decision_rejected() {
    let mut bundle = load_bundle(false);
    bundle.modules.push(RegoModule {
        path: "extra/str.rego".into(),
        source: "package extra\n\ndecision := \"allowed\"\n".into(),
    });
    bundle.decision = "data.extra.decision".into();
    let p = CompiledPolicy::compile(&bundle).unwrap();
    let e = p.evaluate(&json!({})).unwrap_err();
    assert!(matches!(e, PolicyError::InvalidDecision { .. }), "{e}");
}

#[test]
fn undefined_decision_denies() {
    let mut bundle = load_bundle(false);
    bundle.modules.push(RegoModule {
        path: "extra/undef.rego".into(),
        source: "package extra\n\ndecision := {\"allowed\": true} if input.meshward.caller.never\n"
            .into(),
    });
    bundle.decision = "data.extra.decision".into();
    let p = CompiledPolicy::compile(&bundle).unwrap();
    let d = p.evaluate(&json!({})).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.reason.as_deref(), Some(UNDEFINED_REASON));
}

/// The reference bundle declares a decision cache, and what it leaves out
/// of the key does not change its decisions: for each caller, service,
/// method and path, requests that differ only in undeclared facts (id,
/// headers, body, addresses, the path as it arrived, host, protocol) share a key
/// and get the decision the first one got.
#[test]
fn reference_decisions_depend_only_on_the_declared_inputs() {
    let p = reference();
    let cache = p
        .decision_cache()
        .expect("the reference bundle declares a cache");
    let agents = [support_triage(), billing_bot()];
    let services = [
        service("hello-skill", "platform", "public"),
        service("billing-system", "finance", "restricted"),
        service("customer-lookup", "customer-success", "internal"),
    ];
    let plain = http::HeaderMap::new();
    let mut noisy = http::HeaderMap::new();
    noisy.insert("user-agent", "other/2".parse().unwrap());
    noisy.insert("x-request-id", "req-2".parse().unwrap());
    noisy.insert("content-type", "application/json".parse().unwrap());
    let mut outcomes = std::collections::HashSet::new();
    for caller in agents.iter().map(Some).chain([None]) {
        for svc in &services {
            for method in ["GET", "POST", "DELETE"] {
                for path in ["/say-hello", "/admin/x", "/update-record", "/invoices?x=1"] {
                    let facts =
                        |headers, request_id, raw_path, host, protocol, port| RequestFacts {
                            checkpoint: Direction::Inbound.into(),
                            method,
                            path,
                            raw_path,
                            host,
                            scheme: "https",
                            protocol,
                            headers,
                            body: None,
                            request_id,
                            source_principal: Some(
                                caller.map_or("spiffe://example.org/agent/stranger", |a| {
                                    a.spiffe_id.as_str()
                                }),
                            ),
                            destination_principal: Some(&svc.spiffe_id),
                            source_address: Some(std::net::SocketAddr::from((
                                [127, 0, 0, 1],
                                port,
                            ))),
                            destination_address: None,
                            caller: caller.map(|a| CallerFacts {
                                spiffe_id: &a.spiffe_id,
                                name: a.name,
                                attributes: &a.attributes,
                                permissions: &a.permissions,
                            }),
                            service: Some(ServiceFacts {
                                name: svc.name,
                                spiffe_id: &svc.spiffe_id,
                                metadata: &svc.metadata,
                            }),
                        };
                    let first = facts(&plain, "req-1", path, svc.name, "HTTP/1.1", 41000);
                    let other = facts(&noisy, "req-2", "/x/../y", "elsewhere", "HTTP/2", 42000);
                    let mut other = other;
                    other.body = Some(br#"{"name":"Ada"}"#);
                    assert_eq!(cache.key(&other), cache.key(&first));
                    let eval = |f: &RequestFacts| {
                        p.evaluate(&build_input(f).expect("input"))
                            .unwrap_or_else(|e| panic!("{e}"))
                    };
                    let decision = eval(&first);
                    assert_eq!(eval(&other), decision, "{method} {path} to {}", svc.name);
                    outcomes.insert((decision.allowed, decision.reason.clone()));
                }
            }
        }
    }
    // The matrix reaches allows and several distinct denials.
    assert!(outcomes.iter().any(|(allowed, _)| *allowed), "{outcomes:?}");
    assert!(
        outcomes.iter().filter(|(allowed, _)| !allowed).count() >= 4,
        "{outcomes:?}"
    );
}
