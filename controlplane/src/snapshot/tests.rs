use std::collections::BTreeMap;
use std::path::PathBuf;

use meshward_contract::pb::v1 as mw;
use prost::Message;

use super::*;
use crate::config::{Agent, PolicyBundle, RateLimitSettings, Service};

/// A small mesh: two agents, two services.
pub(crate) fn mesh() -> Mesh {
    let agent = |name: &str, team: &str| Agent {
        name: name.to_string(),
        spiffe_id: format!("spiffe://example.org/agent/{name}"),
        attributes: [("team", team), ("type", "support"), ("environment", "prod")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        permissions: vec!["skills:invoke".to_string()],
        limits: RateLimitSettings {
            requests_per_second: 5.0,
            burst: 10,
            max_concurrent: 20,
            per_destination: false,
            count_denied: true,
        },
    };
    let service = |name: &str, port: u16| Service {
        spec: meshward_contract::spec::Service {
            name: name.to_string(),
            spiffe_id: format!("spiffe://example.org/service/{name}"),
            metadata: [("team", "platform"), ("data_classification", "public")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            breaker: Default::default(),
            per_caller_limits: RateLimitSettings::default(),
            paths: Default::default(),
            forward_client_cert: Default::default(),
        },
        endpoints: vec![format!("127.0.0.1:{port}")],
        backend: None,
    };
    Mesh {
        source: PathBuf::from("mesh.yaml"),
        trust_domain: "example.org".to_string(),
        listeners: Default::default(),
        services: [service("hello", 7001), service("billing", 7002)]
            .into_iter()
            .map(|s| (s.spec.name.clone(), s))
            .collect(),
        agents: [agent("triage", "cs"), agent("billing-bot", "finance")]
            .into_iter()
            .map(|a| (a.name.clone(), a))
            .collect(),
        policy: PolicyBundle {
            dir: PathBuf::from("policies"),
            revision: "r1".to_string(),
            modules: vec![(
                "authz.rego".to_string(),
                "package meshward.authz\ndefault decision := false\n".to_string(),
            )],
            data: serde_json::json!({"b": 1, "a": {"z": true, "c": [1, 2]}}),
            decision: "data.meshward.authz.decision".to_string(),
        },
    }
}

pub(crate) fn node(spiffe_id: &str) -> NodeIdentity {
    NodeIdentity {
        client: ClientKind::Meshward,
        spiffe_id: spiffe_id.to_string(),
        node_id: "test-node".to_string(),
    }
}

const TRIAGE: &str = "spiffe://example.org/agent/triage";
const BILLING_BOT: &str = "spiffe://example.org/agent/billing-bot";
const HELLO: &str = "spiffe://example.org/service/hello";

fn names(snapshot: &Snapshot, type_url: &str) -> Vec<String> {
    snapshot
        .resources(type_url)
        .map(|(n, _)| n.to_string())
        .collect()
}

fn versions(snapshot: &Snapshot) -> BTreeMap<(String, String), String> {
    type_url::PUSH_ORDER
        .iter()
        .flat_map(|t| {
            snapshot
                .resources(t)
                .map(move |(n, r)| ((t.to_string(), n.to_string()), r.version.clone()))
        })
        .collect()
}

#[test]
fn identical_builds_have_identical_versions() {
    let mesh = mesh();
    let first = build(&mesh, &node(HELLO));
    for _ in 0..10 {
        // A fresh clone has fresh HashMaps inside prost types: versions
        // must not depend on their iteration order.
        let again = build(&mesh.clone(), &node(HELLO));
        assert_eq!(versions(&first), versions(&again));
        assert_eq!(first, again);
    }
    assert!(!versions(&first).is_empty());
}

#[test]
fn version_is_sha256_of_encoded_resource() {
    let snapshot = build(&mesh(), &node(HELLO));
    for (_, resource) in snapshot.resources(type_url::CLUSTER) {
        let expected = hex::encode(Sha256::digest(&resource.resource.value));
        assert_eq!(resource.version, expected);
        assert_eq!(resource.resource.type_url, type_url::CLUSTER);
    }
}

#[test]
fn a_change_touches_only_the_changed_resource() {
    let before_mesh = mesh();
    let mut after_mesh = before_mesh.clone();
    if let Some(s) = after_mesh.services.get_mut("hello") {
        s.endpoints = vec!["127.0.0.1:9999".to_string()];
    }
    if let Some(a) = after_mesh.agents.get_mut("triage") {
        a.permissions.push("data:read".to_string());
    }
    let before = versions(&build(&before_mesh, &node(HELLO)));
    let after = versions(&build(&after_mesh, &node(HELLO)));
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        changed,
        vec![
            (
                type_url::CLUSTER_LOAD_ASSIGNMENT.to_string(),
                "hello".to_string()
            ),
            (type_url::AGENT.to_string(), TRIAGE.to_string()),
        ]
    );
}

#[test]
fn agent_node_gets_only_its_own_agent() {
    let snapshot = build(&mesh(), &node(TRIAGE));
    assert_eq!(names(&snapshot, type_url::AGENT), vec![TRIAGE.to_string()]);
    assert_eq!(names(&snapshot, type_url::POLICY_BUNDLE), vec!["default"]);
    assert_eq!(
        names(&snapshot, type_url::DATAPLANE_SETTINGS),
        vec!["default"]
    );
    assert_eq!(
        names(&snapshot, type_url::CLUSTER),
        vec!["billing", "hello"]
    );
    assert_eq!(
        names(&snapshot, type_url::CLUSTER_LOAD_ASSIGNMENT),
        vec!["billing", "hello"]
    );
}

#[test]
fn service_node_gets_every_agent() {
    let snapshot = build(&mesh(), &node(HELLO));
    assert_eq!(
        names(&snapshot, type_url::AGENT),
        vec![BILLING_BOT.to_string(), TRIAGE.to_string()]
    );
    assert_eq!(names(&snapshot, type_url::POLICY_BUNDLE), vec!["default"]);
    assert_eq!(
        names(&snapshot, type_url::DATAPLANE_SETTINGS),
        vec!["default"]
    );
    assert_eq!(snapshot.len(type_url::CLUSTER), 2);
}

#[test]
fn unregistered_and_control_plane_ids_get_no_agents_and_no_policy() {
    for id in [
        "spiffe://example.org/meshward/controlplane",
        "spiffe://example.org/gateway/envoy",
    ] {
        let snapshot = build(&mesh(), &node(id));
        assert_eq!(snapshot.len(type_url::AGENT), 0, "{id}");
        assert_eq!(snapshot.len(type_url::POLICY_BUNDLE), 0, "{id}");
        assert_eq!(snapshot.len(type_url::DATAPLANE_SETTINGS), 0, "{id}");
        assert_eq!(snapshot.len(type_url::CLUSTER), 2, "{id}");
    }
}

#[test]
fn foreign_trust_domain_gets_nothing() {
    for id in [
        "spiffe://evil.org/agent/triage",
        "spiffe://example.org.evil.org/agent/triage",
        "spiffe://example.org",
        "https://example.org/agent/triage",
        "",
    ] {
        assert!(build(&mesh(), &node(id)).is_empty(), "{id}");
    }
}

#[test]
fn cluster_carries_service_metadata_and_uses_ads_eds() {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;

    let snapshot = build(&mesh(), &node(TRIAGE));
    let Some(resource) = snapshot.get(type_url::CLUSTER, "hello") else {
        panic!("no hello cluster");
    };
    let cluster = Cluster::decode(resource.resource.value.as_slice())
        .unwrap_or_else(|e| panic!("cluster does not decode: {e}"));
    assert_eq!(
        cluster.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32
        ))
    );
    let eds = cluster
        .eds_cluster_config
        .and_then(|c| c.eds_config)
        .and_then(|c| c.config_source_specifier);
    assert!(matches!(eds, Some(ConfigSourceSpecifier::Ads(_))));
    let any = cluster
        .metadata
        .and_then(|m| m.typed_filter_metadata.get("meshward").cloned())
        .unwrap_or_else(|| panic!("no meshward metadata"));
    let meta = mw::ServiceMetadata::decode(any.value.as_slice())
        .unwrap_or_else(|e| panic!("metadata does not decode: {e}"));
    assert_eq!(meta.spiffe_id, HELLO);
    assert_eq!(
        meta.metadata.get("team").map(String::as_str),
        Some("platform")
    );
    assert_eq!(meta.breaker.map(|b| b.open_for_ms), Some(10_000));
}

#[test]
fn dataplane_settings_carry_the_listener_limits() {
    use meshward_contract::spec::ListenerLimits;
    let mut mesh = mesh();
    mesh.listeners.max_connections = 17;
    mesh.listeners.idle_timeout = std::time::Duration::from_millis(1500);
    let snapshot = build(&mesh, &node(HELLO));
    let Some(resource) = snapshot.get(type_url::DATAPLANE_SETTINGS, "default") else {
        panic!("no settings resource");
    };
    let decoded = mw::DataplaneSettings::decode(resource.resource.value.as_slice())
        .unwrap_or_else(|e| panic!("settings do not decode: {e}"));
    assert_eq!(decoded.name, "default");
    assert_eq!(
        ListenerLimits::try_from(decoded.listeners.as_ref()),
        Ok(mesh.listeners)
    );
}

#[test]
fn policy_bundle_round_trips() {
    let snapshot = build(&mesh(), &node(TRIAGE));
    let Some(resource) = snapshot.get(type_url::POLICY_BUNDLE, "default") else {
        panic!("no policy bundle");
    };
    let bundle = mw::PolicyBundle::decode(resource.resource.value.as_slice())
        .unwrap_or_else(|e| panic!("bundle does not decode: {e}"));
    assert_eq!(bundle.revision, "r1");
    assert_eq!(bundle.modules.len(), 1);
    assert_eq!(bundle.decision, "data.meshward.authz.decision");
    let data: serde_json::Value = serde_json::from_str(&bundle.data_json)
        .unwrap_or_else(|e| panic!("data_json is not JSON: {e}"));
    assert_eq!(data, mesh().policy.data);
}

#[test]
fn push_order_is_cds_eds_lds_rds_settings_policy_agent() {
    let ranks: Vec<_> = [
        type_url::AGENT,
        type_url::CLUSTER,
        type_url::POLICY_BUNDLE,
        type_url::ROUTE_CONFIGURATION,
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        type_url::LISTENER,
        type_url::DATAPLANE_SETTINGS,
    ]
    .iter()
    .map(|t| type_url::push_rank(t))
    .collect();
    assert_eq!(ranks, vec![6, 0, 5, 3, 1, 2, 4]);
}
