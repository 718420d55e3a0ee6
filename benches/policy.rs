//! Policy evaluation cost: Meshward's per-request path (a pooled Rego VM running the
//! compiled bundle) against recompiling per request, on the
//! reference bundle and the demo's inputs. `benches/policy.sh` runs this and
//! `opa bench` on the same bundle and inputs and reports the ratio.
//!
//! Run: `cargo bench --bench policy -- [iterations] [input-dir]`.
//! Prints one line per case: `case ns_per_op`, then `case p50 <ns> p99 <ns>`
//! lines for the per-request paths timed one call at a time:
//!
//! - `meshward_decide`: input building from the request facts plus the
//!   evaluation (what a request costs when the decision cache misses, or the
//!   bundle declares none);
//! - `meshward_cached`: the decision cache's hit path as the sidecar runs it
//!   (the key from the facts, the lookup, the input document's 400 checks,
//!   the decision copied out).
//!
//! Writes the inputs as JSON into `input-dir` (default `target/bench-inputs`)
//! so OPA evaluates the same bytes.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use http::HeaderMap;
use meshward_controlplane::config::bundle;
use meshward_dataplane::policy::{
    CallerFacts, CompiledPolicy, Decision, Direction, RequestFacts, ServiceFacts, build_input,
    check_request,
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
        let owned = Owned::demo(agent, service);
        let facts = owned.facts(agent, service, method, path);
        let input = build_input(&facts).expect("input document");
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

        let decide = percentiles(iterations, || {
            let input = build_input(black_box(&facts)).expect("input document");
            black_box(policy.evaluate(&input).expect("decision"));
        });
        println!("meshward_decide/{case} p50 {} p99 {}", decide.0, decide.1);

        let cache = policy
            .decision_cache()
            .ok_or_else(|| anyhow::anyhow!("policies/ declares no decision cache"))?;
        cache.insert(cache.key(&facts), std::sync::Arc::new(decision.clone()));
        let cached = percentiles(iterations, || {
            let f = black_box(&facts);
            let hit = cache.get(&cache.key(f)).expect("a hit");
            check_request(f.path, f.headers, f.body).expect("valid request");
            black_box(Decision::clone(&hit));
        });
        println!("meshward_cached/{case} p50 {} p99 {}", cached.0, cached.1);
    }
    Ok(())
}

/// Runs `op` `iterations` times, timing each call; (p50, p99) in ns.
fn percentiles(iterations: u32, mut op: impl FnMut()) -> (u128, u128) {
    for _ in 0..iterations / 10 {
        op();
    }
    let mut samples: Vec<u128> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed().as_nanos()
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.50), at(0.99))
}

/// The registry facts of one demo request, owned.
struct Owned {
    attributes: BTreeMap<String, String>,
    permissions: Vec<String>,
    metadata: BTreeMap<String, String>,
    agent_id: String,
    service_id: String,
    headers: HeaderMap,
}

impl Owned {
    fn demo(agent: &str, service: &str) -> Owned {
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
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/json".parse().expect("static header"),
        );
        headers.insert("user-agent", "bench/1".parse().expect("static header"));
        Owned {
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            permissions: vec!["skills:invoke".to_string(), "data:read".to_string()],
            metadata: [
                ("team", "platform"),
                ("environment", "production"),
                ("data_classification", "public"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            agent_id: format!("spiffe://example.org/agent/{agent}"),
            service_id: format!("spiffe://example.org/service/{service}"),
            headers,
        }
    }

    /// A JSON POST/GET as the inbound sidecar describes it.
    fn facts<'a>(
        &'a self,
        agent: &'a str,
        service: &'a str,
        method: &'a str,
        path: &'a str,
    ) -> RequestFacts<'a> {
        RequestFacts {
            checkpoint: Direction::Inbound.into(),
            method,
            path,
            raw_path: path,
            host: service,
            scheme: "https",
            protocol: "HTTP/2",
            headers: &self.headers,
            body: Some(br#"{"name":"Ada"}"#),
            request_id: "00000000-0000-4000-8000-000000000000",
            source_principal: Some(&self.agent_id),
            destination_principal: Some(&self.service_id),
            source_address: "127.0.0.1:40000".parse().ok(),
            destination_address: "127.0.0.1:15006".parse().ok(),
            caller: Some(CallerFacts {
                spiffe_id: &self.agent_id,
                name: agent,
                attributes: &self.attributes,
                permissions: &self.permissions,
            }),
            service: Some(ServiceFacts {
                name: service,
                spiffe_id: &self.service_id,
                metadata: &self.metadata,
            }),
        }
    }
}
