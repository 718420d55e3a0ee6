//! Policy evaluation cost: Meshward's per-request path (a pooled Rego VM running the
//! compiled bundle) against recompiling per request, on the
//! reference bundle and the demo's inputs. `benches/policy.sh` runs this and
//! `opa bench` on the same bundle and inputs and reports the ratio.
//!
//! Run: `cargo bench --bench policy -- [iterations] [input-dir]`.
//! Prints one line per case: `case ns_per_op`. Writes the inputs as JSON into
//! `input-dir` (default `target/bench-inputs`) so OPA evaluates the same bytes.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use http::HeaderMap;
use meshward_controlplane::config::bundle;
use meshward_dataplane::policy::{
    CallerFacts, CompiledPolicy, Direction, RequestFacts, ServiceFacts, build_input,
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let iterations: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let out_dir = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-inputs"));
    std::fs::create_dir_all(&out_dir)?;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let loaded = bundle::load(&root.join("policies"), "data.meshward.authz.decision")
        .map_err(|e| anyhow::anyhow!("loading policies/: {e:?}"))?;
    let proto = meshward_controlplane::snapshot::policy_bundle_message(&loaded);
    let policy = CompiledPolicy::compile(&proto)?;

    let cases = [
        (
            "allow",
            "support-triage",
            "hello-skill",
            "POST",
            "/say-hello",
            true,
        ),
        (
            "deny",
            "support-triage",
            "billing-system",
            "GET",
            "/invoices",
            false,
        ),
    ];
    for (case, agent, service, method, path, expect) in cases {
        let input = demo_input(agent, service, method, path);
        std::fs::write(out_dir.join(format!("{case}.json")), input.to_string())?;
        let decision = policy.evaluate(&input)?;
        anyhow::ensure!(
            decision.allowed == expect,
            "{case}: unexpected decision {decision:?}"
        );

        let start = Instant::now();
        for _ in 0..iterations {
            black_box(policy.evaluate(black_box(&input))?);
        }
        let prepared = start.elapsed().as_nanos() as f64 / f64::from(iterations);
        println!("meshward_eval/{case} {prepared:.0}");

        let fresh_iterations = (iterations / 20).max(50);
        let start = Instant::now();
        for _ in 0..fresh_iterations {
            let p = CompiledPolicy::compile(&proto)?;
            black_box(p.evaluate(black_box(&input))?);
        }
        let fresh = start.elapsed().as_nanos() as f64 / f64::from(fresh_iterations);
        println!("meshward_compile_per_request/{case} {fresh:.0}");
    }
    Ok(())
}

fn demo_input(agent: &str, service: &str, method: &str, path: &str) -> serde_json::Value {
    let attributes = match agent {
        "support-triage" => [
            ("team", "customer-success"),
            ("type", "support"),
            ("environment", "production"),
        ],
        _ => [
            ("team", "finance"),
            ("type", "analysis"),
            ("environment", "production"),
        ],
    };
    let attributes: BTreeMap<String, String> = attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let permissions = vec!["skills:invoke".to_string(), "data:read".to_string()];
    let metadata: BTreeMap<String, String> = [
        ("team", "platform"),
        ("environment", "production"),
        ("data_classification", "public"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let agent_id = format!("spiffe://example.org/agent/{agent}");
    let service_id = format!("spiffe://example.org/service/{service}");
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    headers.insert("user-agent", "bench/1".parse().expect("static header"));
    let body = br#"{"name":"Ada"}"#;
    build_input(&RequestFacts {
        checkpoint: Direction::Inbound.into(),
        method,
        path,
        raw_path: path,
        host: service,
        scheme: "https",
        protocol: "HTTP/2",
        headers: &headers,
        body: Some(body),
        request_id: "00000000-0000-4000-8000-000000000000",
        source_principal: Some(&agent_id),
        destination_principal: Some(&service_id),
        source_address: "127.0.0.1:40000".parse().ok(),
        destination_address: "127.0.0.1:15006".parse().ok(),
        caller: Some(CallerFacts {
            spiffe_id: &agent_id,
            name: agent,
            attributes: &attributes,
            permissions: &permissions,
        }),
        service: Some(ServiceFacts {
            name: service,
            spiffe_id: &service_id,
            metadata: &metadata,
        }),
    })
    .expect("input document")
}
