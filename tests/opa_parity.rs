//! The reference bundle gives the same decisions in real OPA as in Meshward's
//! in-process engine (regorus), over a matrix of demo requests in both
//! directions: every agent (and an unregistered caller) against every
//! service, with reads, invokes, writes and deletes.

use std::path::PathBuf;
use std::process::Command;

use http::HeaderMap;
use meshward_controlplane::config;
use meshward_dataplane::policy::{
    CallerFacts, CompiledPolicy, Direction, RequestFacts, ServiceFacts, build_input,
};

fn opa() -> Option<PathBuf> {
    let path = std::env::var_os("MESHWARD_OPA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/opa"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("MESHWARD_REQUIRE_PEERS").as_deref() != Ok("1"),
        "OPA not found at {} (scripts/test.sh installs it)",
        path.display()
    );
    eprintln!("skipping: OPA not found at {}", path.display());
    None
}

#[test]
fn reference_bundle_decides_the_same_in_opa_and_meshward() {
    let Some(opa) = opa() else { return };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mesh = config::load(&root.join("deploy/local/mesh.yaml")).expect("shipped mesh loads");
    let bundle = meshward_controlplane::snapshot::policy_bundle_message(&mesh.policy);
    let policy = CompiledPolicy::compile(&bundle).expect("bundle compiles");

    let mut callers: Vec<(String, Option<CallerFacts>)> = mesh
        .agents
        .values()
        .map(|a| {
            (
                a.spiffe_id.clone(),
                Some(CallerFacts {
                    spiffe_id: &a.spiffe_id,
                    name: &a.name,
                    attributes: &a.attributes,
                    permissions: &a.permissions,
                }),
            )
        })
        .collect();
    callers.push(("spiffe://example.org/agent/unregistered".into(), None));

    let requests = [
        ("GET", "/customers/42"),
        ("POST", "/say-hello"),
        ("PUT", "/records/7"),
        ("DELETE", "/records/7"),
        ("POST", "/write/records"),
        ("GET", "/admin/settings"),
    ];
    let headers = HeaderMap::new();
    let mut inputs = Vec::new();
    for (principal, caller) in &callers {
        for svc in mesh.services.values() {
            for (method, path) in requests {
                for direction in [Direction::Outbound, Direction::Inbound] {
                    inputs.push(
                        build_input(&RequestFacts {
                            checkpoint: direction.into(),
                            method,
                            path,
                            raw_path: path,
                            host: &svc.spec.name,
                            scheme: "https",
                            protocol: "HTTP/2",
                            headers: &headers,
                            body: None,
                            request_id: "00000000-0000-4000-8000-000000000000",
                            source_principal: Some(principal),
                            destination_principal: Some(&svc.spec.spiffe_id),
                            source_address: None,
                            destination_address: None,
                            caller: *caller,
                            service: Some(ServiceFacts {
                                name: &svc.spec.name,
                                spiffe_id: &svc.spec.spiffe_id,
                                metadata: &svc.spec.metadata,
                            }),
                        })
                        .expect("input document"),
                    );
                }
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let input_file = dir.path().join("inputs.json");
    std::fs::write(
        &input_file,
        serde_json::Value::Array(inputs.clone()).to_string(),
    )
    .unwrap();
    let out = Command::new(&opa)
        .arg("eval")
        .arg("--format=json")
        .arg("--bundle")
        .arg(root.join("policies"))
        .arg("--input")
        .arg(&input_file)
        .arg("[d | some x in input; d := data.meshward.authz.decision with input as x]")
        .output()
        .expect("run opa");
    assert!(
        out.status.success(),
        "opa eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let opa_decisions = result["result"][0]["expressions"][0]["value"]
        .as_array()
        .expect("OPA returned a list of decisions")
        .clone();
    assert_eq!(opa_decisions.len(), inputs.len());

    let mut allowed = 0;
    for (input, theirs) in inputs.iter().zip(&opa_decisions) {
        let ours = policy.evaluate(input).expect("meshward evaluates");
        let what = format!(
            "{} {} {} -> {} ({})",
            input["meshward"]["direction"],
            input["attributes"]["request"]["http"]["method"],
            input["attributes"]["source"]["principal"],
            input["meshward"]["service"]["name"],
            input["attributes"]["request"]["http"]["path"],
        );
        assert_eq!(
            Some(ours.allowed),
            theirs["allowed"].as_bool(),
            "allowed differs: {what}"
        );
        assert_eq!(
            ours.reason.as_deref(),
            theirs["reason"].as_str(),
            "reason differs: {what}"
        );
        assert_eq!(
            ours.http_status.map(u64::from),
            theirs["http_status"].as_u64(),
            "http_status differs: {what}"
        );
        allowed += usize::from(ours.allowed);
    }
    // The matrix must exercise both outcomes, or it proves little.
    assert!(
        allowed > 10 && allowed < inputs.len() - 10,
        "allowed {allowed} of {}",
        inputs.len()
    );
}
