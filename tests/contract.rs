//! `meshward validate` accepts exactly what a dataplane ACKs.
//!
//! Both sides run the contract's rules ([`meshward_contract`]); these tests
//! hold them to it from the outside: every snapshot the control plane builds
//! from a valid `mesh.yaml` is ACKed by a dataplane's caches, and each
//! content check a dataplane can NACK on is reachable from a value
//! `meshward validate` refuses, for a matrix of hosts and SPIFFE IDs.

use std::path::PathBuf;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use envoy_types::pb::google::protobuf::Any;
use meshward_contract::pb::v1 as mw;
use meshward_contract::spec::{self, Endpoint};
use meshward_contract::type_url;
use meshward_controlplane::config::{self, Mesh};
use meshward_controlplane::snapshot::{self, NodeIdentity};
use meshward_dataplane::xds::cache::Caches;
use meshward_dataplane::xds::handlers::{AgentHandler, EndpointHandler, Handler};
use prost::Message;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A mesh file next to a copy of the reference policy bundle.
struct MeshDir(tempfile::TempDir);

impl MeshDir {
    fn new() -> MeshDir {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies/meshward");
        std::fs::create_dir_all(&policies).unwrap();
        for entry in std::fs::read_dir(repo().join("policies/meshward")).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), policies.join(entry.file_name())).unwrap();
            }
        }
        MeshDir(dir)
    }

    fn load(&self, yaml: &str) -> Result<Mesh, config::ConfigErrors> {
        let yaml = yaml
            .replace("dir: ../../policies", "dir: policies")
            .replace("dir: ../policies", "dir: policies");
        config::load_str(&yaml, &self.0.path().join("mesh.yaml"))
    }
}

fn shipped(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap()
}

/// Feeds every resource of `node`'s snapshot to a fresh dataplane cache, type
/// by type as the server pushes them; each response must be ACKed and the
/// cache must end up warm.
fn assert_acked(mesh: &Mesh, node: &str) {
    let snapshot = snapshot::build(
        mesh,
        &NodeIdentity {
            spiffe_id: node.to_string(),
            node_id: "test".into(),
            client: snapshot::ClientKind::Meshward,
            envoy: Default::default(),
        },
    );
    let mut caches = Caches::default();
    for type_url in caches.type_urls() {
        let response = DeltaDiscoveryResponse {
            type_url: type_url.to_string(),
            system_version_info: "v1".into(),
            nonce: "n".into(),
            resources: snapshot
                .resources(type_url)
                .map(|(name, r)| Resource {
                    name: name.to_string(),
                    version: r.version.clone(),
                    resource: Some(r.resource.clone()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        if let Err(nack) = caches.apply(&response) {
            panic!("{node}: the dataplane NACKs {type_url}: {nack}");
        }
    }
    assert!(caches.state().is_some(), "{node}: not warm");
}

fn assert_every_node_acks(mesh: &Mesh) {
    for agent in mesh.agents.values() {
        assert_acked(mesh, &agent.spiffe_id);
    }
    for service in mesh.services.values() {
        assert_acked(mesh, &service.spec.spiffe_id);
    }
}

/// A mesh using every setting at an edge: IPv6 and DNS endpoints (port-0
/// placeholders among them), the extremes of the listener limits, kept path
/// features, every client-cert mode, fractional rates and free denials.
const EDGES: &str = "trust_domain: example.org
policy:
  dir: policies
  decision: data.meshward.authz.decision
listeners:
  header_read_timeout: 100ms
  idle_timeout: 100ms
  max_connections: 1
  max_connections_per_client_ip: 1
  max_request_headers_kb: 1024
  max_concurrent_streams: 2147483647
  admin_max_connections: 1
agents:
  - name: a
    spiffe_id: spiffe://example.org/ns/x_y/sa/a.b-c
    attributes: {team: t, \"with space\": \"v:1\"}
    permissions: [p]
    limits:
      requests_per_second: 0.001
      burst: 1
      max_concurrent: 4294967295
      per_destination: true
      count_denied: false
services:
  - name: s1
    spiffe_id: spiffe://example.org/service/s1
    endpoints: [\"[::1]:15006\", \"[2001:db8::1]:1\", \"127.0.0.1:0\", \"s1.ns.svc.cluster.local.:65535\"]
    paths: {escaped_slashes: keep, path_parameters: keep}
    forward_client_cert: append_forward
    breaker: {consecutive_failures: 1, open_for: 1ms, half_open_probes: 100}
  - name: s2
    spiffe_id: spiffe://example.org/service/s2
    endpoints: [\"127.0.0.1:0\"]
    forward_client_cert: sanitize_set
    per_caller_limits: {requests_per_second: 1e9, burst: 4294967295}
";

#[test]
fn every_valid_config_is_acked_by_every_node() {
    let dir = MeshDir::new();
    for yaml in [
        shipped("deploy/local/mesh.yaml"),
        shipped("deploy/k8s/mesh.yaml"),
        EDGES.to_string(),
    ] {
        let mesh = dir.load(&yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_every_node_acks(&mesh);
    }
}

/// The validate side of one endpoint host: a service whose only endpoint
/// is `addr`.
fn validate_endpoint(dir: &MeshDir, addr: &str) -> bool {
    let yaml = EDGES.replace("[\"127.0.0.1:0\"]", &format!("[\"{addr}\"]"));
    dir.load(&yaml).is_ok()
}

/// The ACK side: an EDS resource carrying `address`:`port` as a control
/// plane (or anyone on the stream) could send it.
fn ack_endpoint(address: &str, port: u16) -> bool {
    let mut cla = spec::load_assignment("s", &[Endpoint::Ip("127.0.0.1:1".parse().unwrap())]);
    let sa = match cla.endpoints[0].lb_endpoints[0].host_identifier.as_mut() {
        Some(
            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e),
        ) => match e.address.as_mut().and_then(|a| a.address.as_mut()) {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) => {
                sa
            }
            _ => unreachable!(),
        },
        _ => unreachable!(),
    };
    sa.address = address.to_string();
    sa.port_specifier = Some(
        envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
            u32::from(port),
        ),
    );
    let any = Any {
        type_url: type_url::CLUSTER_LOAD_ASSIGNMENT.into(),
        value: cla.encode_to_vec(),
    };
    EndpointHandler::validate("s", &any).is_ok()
}

/// One rule for hosts: each case is accepted or refused alike by
/// `meshward validate` and by a dataplane's EDS check. `my_svc.ns` is the
/// case that once passed validate and then made every dataplane NACK.
#[test]
fn hosts_are_judged_alike_by_validate_and_ack() {
    let dir = MeshDir::new();
    let long_label = "a".repeat(64);
    let long_name = format!("{}.b", "a.".repeat(126));
    let cases: Vec<(&str, bool)> = vec![
        ("my_svc.ns", false),
        ("svc.ns.svc.cluster.local", true),
        ("svc.ns.svc.cluster.local.", true),
        ("localhost", true),
        ("127.0.0.1", true),
        ("999.1.1.1", false),
        ("1.2.3", false),
        ("1.2.3.4.5", false),
        ("-a.b", false),
        ("a-.b", false),
        ("a..b", false),
        ("bad host", false),
        ("a!b", false),
        (&long_label, false),
        (&long_name, false),
        ("xn--bcher-kva.example", true),
        ("9lives.example", true),
    ];
    for (host, valid) in &cases {
        assert_eq!(
            validate_endpoint(&dir, &format!("{host}:8080")),
            *valid,
            "validate {host}"
        );
        assert_eq!(ack_endpoint(host, 8080), *valid, "ACK {host}");
    }
    for (v6, valid) in [("::1", true), ("2001:db8::1", true), ("zz::1", false)] {
        assert_eq!(
            validate_endpoint(&dir, &format!("[{v6}]:8080")),
            valid,
            "validate {v6}"
        );
        assert_eq!(ack_endpoint(v6, 8080), valid, "ACK {v6}");
    }
    // Port 0 is a placeholder in mesh.yaml, never sent: the snapshot leaves
    // it out (every_valid_config_is_acked_by_every_node) and the ACK side
    // refuses it.
    assert!(validate_endpoint(&dir, "127.0.0.1:0"));
    assert!(!ack_endpoint("127.0.0.1", 0));
}

fn ack_agent(spiffe_id: &str) -> bool {
    let agent = mw::Agent {
        name: "a".into(),
        spiffe_id: spiffe_id.into(),
        ..Default::default()
    };
    let any = Any {
        type_url: type_url::AGENT.into(),
        value: agent.encode_to_vec(),
    };
    AgentHandler::validate(spiffe_id, &any).is_ok()
}

/// One rule for SPIFFE IDs, from `mesh.yaml`, the ACK check and a peer
/// certificate alike (`meshward_contract::rules::spiffe_id`).
#[test]
fn spiffe_ids_are_judged_alike_by_validate_and_ack() {
    let dir = MeshDir::new();
    for (id, valid) in [
        ("spiffe://example.org/agent/b", true),
        ("spiffe://example.org/ns/x_y/sa/a.b-c", true),
        ("spiffe://example.org/agent/../b", false),
        ("spiffe://example.org/agent/./b", false),
        ("spiffe://example.org/agent//b", false),
        ("spiffe://example.org/agent/b/", false),
        ("spiffe://example.org", false),
        ("spiffe://example.org/a%20b", false),
        ("spiffe://example.org/a?b", false),
        ("spiffe://example.org/é", false),
        ("spiffe://Example.org/agent/b", false),
        ("SPIFFE://example.org/agent/b", false),
        ("spiffe://example.org:443/agent/b", false),
    ] {
        let yaml = EDGES.replace("spiffe://example.org/ns/x_y/sa/a.b-c", id);
        // validate also requires the mesh's trust domain; every ID here that
        // passes the syntax rule is in example.org.
        assert_eq!(dir.load(&yaml).is_ok(), valid, "validate {id}");
        assert_eq!(ack_agent(id), valid, "ACK {id}");
    }
}

/// The content checks a dataplane NACKs on, each reached from a value
/// `meshward validate` refuses (what only a broken or hostile control plane
/// could still send). Envelope checks (type URL, decoding, a resource named
/// for something else, enum values this build does not know) have no
/// `mesh.yaml` spelling and are covered by the handlers' own tests.
#[test]
fn every_nack_reason_has_a_config_that_validate_refuses() {
    let dir = MeshDir::new();
    let refused = |edit: &dyn Fn(&str) -> String| {
        let yaml = edit(EDGES);
        assert!(dir.load(&yaml).is_err(), "validate accepted:\n{yaml}");
    };
    // Rate not finite / negative.
    refused(&|y| y.replace("requests_per_second: 0.001", "requests_per_second: .nan"));
    refused(&|y| y.replace("requests_per_second: 0.001", "requests_per_second: -1"));
    let nack = |limit: mw::RateLimit| {
        let agent = mw::Agent {
            name: "a".into(),
            spiffe_id: "spiffe://example.org/agent/a".into(),
            limits: Some(limit),
            ..Default::default()
        };
        let any = Any {
            type_url: type_url::AGENT.into(),
            value: agent.encode_to_vec(),
        };
        AgentHandler::validate("spiffe://example.org/agent/a", &any).is_err()
    };
    for rate in [f64::NAN, -1.0, f64::INFINITY] {
        assert!(nack(mw::RateLimit {
            requests_per_second: rate,
            ..Default::default()
        }));
    }
    // Empty attribute / metadata key.
    refused(&|y| y.replace("attributes: {team: t,", "attributes: {\"\": t,"));
    // Listener limits out of range.
    refused(&|y| {
        y.replace(
            "max_request_headers_kb: 1024",
            "max_request_headers_kb: 1025",
        )
    });
    refused(&|y| y.replace("header_read_timeout: 100ms", "header_read_timeout: 99ms"));
    refused(&|y| y.replace("max_connections: 1\n", "max_connections: 0\n"));
    for limits in [
        mw::ListenerLimits {
            max_request_headers_bytes: 1025 * 1024,
            ..Default::default()
        },
        mw::ListenerLimits {
            header_read_timeout_ms: 99,
            ..Default::default()
        },
    ] {
        let settings = mw::DataplaneSettings {
            name: "default".into(),
            listeners: Some(limits),
        };
        let any = Any {
            type_url: type_url::DATAPLANE_SETTINGS.into(),
            value: settings.encode_to_vec(),
        };
        assert!(
            meshward_dataplane::xds::handlers::SettingsHandler::validate("default", &any).is_err()
        );
    }
    // Decision path and Rego that does not compile.
    refused(&|y| {
        y.replace(
            "decision: data.meshward.authz.decision",
            "decision: meshward.authz",
        )
    });
    let bundle = spec::policy_bundle("r", &[], "{}".into(), "meshward.authz");
    let any = Any {
        type_url: type_url::POLICY_BUNDLE.into(),
        value: bundle.encode_to_vec(),
    };
    assert!(meshward_dataplane::xds::handlers::PolicyHandler::validate("default", &any).is_err());
    std::fs::write(
        dir.0.path().join("policies/meshward/broken.rego"),
        "package {{{",
    )
    .unwrap();
    refused(&|y| y.to_string());
}
