//! A small mesh state for the stages' unit tests: one agent, one service
//! (`svc`) and a bundle that allows everything but `/denied` and the MCP
//! tool `denied_tool`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use meshward_contract::spec;

use crate::policy::CompiledPolicy;
use crate::state::{Agent, MeshState, Upstream};

pub const AGENT: &str = "spiffe://example.org/agent/agent";
pub const SERVICE: &str = "spiffe://example.org/service/svc";

const POLICY: &str = r#"package meshward.authz

default decision := {"allowed": true}

decision := {"allowed": false, "reason": "denied path"} if {
	input.attributes.request.http.path == "/denied"
}

decision := {"allowed": false, "reason": "denied tool"} if {
	input.meshward.mcp.tool == "denied_tool"
}
"#;

pub fn service() -> spec::Service {
    spec::Service {
        name: "svc".into(),
        spiffe_id: SERVICE.into(),
        metadata: BTreeMap::new(),
        breaker: spec::BreakerSettings::default(),
        per_caller_limits: spec::RateLimitSettings {
            requests_per_second: 1.0,
            burst: 2,
            ..Default::default()
        },
        paths: spec::PathRules::default(),
        forward_client_cert: spec::ForwardClientCert::Sanitize,
        mcp: None,
        timeouts: Default::default(),
    }
}

pub fn agent() -> Agent {
    Agent {
        name: "agent".into(),
        spiffe_id: AGENT.into(),
        attributes: BTreeMap::from([("team".to_string(), "t".to_string())]),
        permissions: vec![],
        limits: spec::RateLimitSettings {
            requests_per_second: 1.0,
            burst: 3,
            max_concurrent: 1,
            ..Default::default()
        },
    }
}

pub fn state() -> Arc<MeshState> {
    state_with_data("{}")
}

/// The same state, with a bundle that declares a decision cache keyed by
/// `inputs`.
pub fn state_with_cache(inputs: &[&str]) -> Arc<MeshState> {
    state_with_policy(POLICY, inputs)
}

/// A state whose bundle is `policy`, declaring a decision cache keyed by
/// `inputs`.
pub fn state_with_policy(policy: &str, inputs: &[&str]) -> Arc<MeshState> {
    let data = serde_json::json!({"meshward": {"decision_cache": {"inputs": inputs}}});
    state_from(policy, &data.to_string())
}

fn state_with_data(data_json: &str) -> Arc<MeshState> {
    state_from(POLICY, data_json)
}

fn state_from(policy: &str, data_json: &str) -> Arc<MeshState> {
    let bundle = spec::policy_bundle(
        "r1",
        &[("authz.rego".to_string(), policy.to_string())],
        data_json.into(),
        "data.meshward.authz.decision",
    );
    let policy = CompiledPolicy::compile(&bundle).unwrap_or_else(|e| panic!("{e}"));
    let upstream = Upstream {
        service: service(),
        endpoints: vec![
            "127.0.0.1:1"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        ],
    };
    Arc::new(MeshState {
        clusters: HashMap::from([("svc".to_string(), Arc::new(upstream))]),
        agents: HashMap::from([(AGENT.to_string(), Arc::new(agent()))]),
        policy: Arc::new(policy),
        versions: Default::default(),
        listeners: Default::default(),
    })
}
