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
            mcp: None,
            timeouts: Default::default(),
        },
        endpoints: vec![format!("127.0.0.1:{port}")],
        backend: None,
    };
    Mesh {
        tracing: None,
        source: PathBuf::from("mesh.yaml"),
        trust_domain: "example.org".to_string(),
        listeners: Default::default(),
        authorizers: vec![AUTHORIZER.to_string()],
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
        envoy: Default::default(),
        spiffe_id: spiffe_id.to_string(),
        node_id: "test-node".to_string(),
    }
}

const TRIAGE: &str = "spiffe://example.org/agent/triage";
const BILLING_BOT: &str = "spiffe://example.org/agent/billing-bot";
const HELLO: &str = "spiffe://example.org/service/hello";
const AUTHORIZER: &str = "spiffe://example.org/meshward/ext-authz";

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

mod envoy_nodes {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_match};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, UpstreamTlsContext,
    };

    use super::*;
    use crate::snapshot::envoy::{self, EnvoyNode};

    fn envoy_node(spiffe_id: &str) -> NodeIdentity {
        NodeIdentity {
            client: ClientKind::Envoy,
            envoy: EnvoyNode {
                backend: Some(meshward_contract::spec::Endpoint::Ip(
                    "127.0.0.1:8080".parse().unwrap(),
                )),
                ..EnvoyNode::default()
            },
            ..node(spiffe_id)
        }
    }

    /// The TLS context inside a transport socket.
    fn tls<M: Message + Default>(
        socket: Option<&envoy_types::pb::envoy::config::core::v3::TransportSocket>,
    ) -> M {
        use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
        let Some(ConfigType::TypedConfig(any)) = socket.and_then(|s| s.config_type.as_ref()) else {
            panic!("no TLS transport socket");
        };
        M::decode(any.value.as_slice()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn decode<M: Message + Default>(snapshot: &Snapshot, type_url: &str, name: &str) -> M {
        let r = snapshot
            .get(type_url, name)
            .unwrap_or_else(|| panic!("no {type_url} {name}"));
        M::decode(r.resource.value.as_slice()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_envoy_agent_gets_the_outbound_listener_routes_and_mtls_clusters() {
        let snapshot = build(&mesh(), &envoy_node("spiffe://example.org/agent/triage"));
        assert_eq!(names(&snapshot, type_url::LISTENER), vec![envoy::OUTBOUND]);
        assert_eq!(
            names(&snapshot, type_url::POLICY_BUNDLE),
            Vec::<String>::new()
        );
        let listener: Listener = decode(&snapshot, type_url::LISTENER, envoy::OUTBOUND);
        assert!(format!("{:?}", listener.address).contains("15001"));
        let routes: RouteConfiguration =
            decode(&snapshot, type_url::ROUTE_CONFIGURATION, envoy::OUTBOUND);
        let hello = routes
            .virtual_hosts
            .iter()
            .find(|v| v.name == "hello")
            .unwrap();
        assert_eq!(hello.domains, ["hello", "hello:*", "hello.*"]);
        let mcp = routes
            .virtual_hosts
            .iter()
            .find(|v| v.name == "mcp")
            .unwrap();
        let prefixes: Vec<String> = mcp
            .routes
            .iter()
            .filter_map(|r| match r.r#match.as_ref()?.path_specifier.as_ref()? {
                route_match::PathSpecifier::Prefix(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(prefixes, ["/mcp://billing/", "/mcp://hello/"]);
        let Some(route::Action::Route(action)) = mcp.routes[0].action.as_ref() else {
            panic!("not a route action");
        };
        assert_eq!(action.prefix_rewrite, "/");

        let hello: Cluster = decode(&snapshot, type_url::CLUSTER, "hello");
        assert!(hello.metadata.is_none());
        let upstream: UpstreamTlsContext = tls(hello.transport_socket.as_ref());
        let common = format!("{:?}", upstream.common_tls_context);
        assert!(
            common.contains("spiffe://example.org/service/hello"),
            "SAN pinned"
        );
        assert!(common.contains("name: \"default\""), "SVID from SDS");
        assert!(
            common.contains("name: \"spiffe://example.org\""),
            "bundle from SDS"
        );
        let outlier = hello.outlier_detection.expect("outlier detection");
        assert_eq!(outlier.consecutive_5xx.map(|v| v.value), Some(5));
        assert_eq!(outlier.base_ejection_time.map(|d| d.seconds), Some(10));
        assert!(
            snapshot
                .get(type_url::CLUSTER_LOAD_ASSIGNMENT, "hello")
                .is_some()
        );
    }

    #[test]
    fn an_envoy_service_gets_the_inbound_listener_and_its_app() {
        let snapshot = build(&mesh(), &envoy_node("spiffe://example.org/service/hello"));
        assert_eq!(names(&snapshot, type_url::LISTENER), vec![envoy::INBOUND]);
        let listener: Listener = decode(&snapshot, type_url::LISTENER, envoy::INBOUND);
        let downstream: DownstreamTlsContext =
            tls(listener.filter_chains[0].transport_socket.as_ref());
        assert_eq!(
            downstream.require_client_certificate.map(|b| b.value),
            Some(true)
        );
        let routes: RouteConfiguration =
            decode(&snapshot, type_url::ROUTE_CONFIGURATION, envoy::INBOUND);
        let vhost = &routes.virtual_hosts[0];
        assert!(
            vhost
                .request_headers_to_remove
                .contains(&"x-agent-id".to_string())
        );
        assert!(
            vhost
                .request_headers_to_remove
                .contains(&"x-agent-team".to_string())
        );
        assert_eq!(
            vhost.request_headers_to_add[0]
                .header
                .as_ref()
                .map(|h| h.value.as_str()),
            Some("%DOWNSTREAM_PEER_URI_SAN%")
        );
        let app: Cluster = decode(&snapshot, type_url::CLUSTER, envoy::LOCAL_APP);
        assert!(format!("{:?}", app.load_assignment).contains("8080"));
        // Without a backend there is nothing to serve: no listener.
        let bare = NodeIdentity {
            envoy: EnvoyNode::default(),
            ..envoy_node("spiffe://example.org/service/hello")
        };
        assert!(names(&build(&mesh(), &bare), type_url::LISTENER).is_empty());
    }

    /// `(prefix, rewrite, timeout, idle_timeout)` of each route, in order.
    fn timed(
        routes: &[envoy_types::pb::envoy::config::route::v3::Route],
    ) -> Vec<(String, String, i64, i64)> {
        routes
            .iter()
            .map(|r| {
                let Some(route_match::PathSpecifier::Prefix(p)) =
                    r.r#match.as_ref().and_then(|m| m.path_specifier.clone())
                else {
                    panic!("not a prefix route");
                };
                let Some(route::Action::Route(a)) = r.action.as_ref() else {
                    panic!("not a route action");
                };
                (
                    p,
                    a.prefix_rewrite.clone(),
                    a.timeout.as_ref().map_or(-1, |d| d.seconds),
                    a.idle_timeout.as_ref().map_or(-1, |d| d.seconds),
                )
            })
            .collect()
    }

    #[test]
    fn envoy_routes_carry_total_and_idle_per_prefix_longest_first() {
        use meshward_contract::spec::{RouteTimeouts, ServiceTimeouts, Timeouts};
        let mut mesh = mesh();
        let t = |idle: u64, total: Option<u64>| Timeouts {
            response: std::time::Duration::from_secs(30),
            idle: std::time::Duration::from_secs(idle),
            total: total.map(std::time::Duration::from_secs),
        };
        mesh.services.get_mut("hello").unwrap().spec.timeouts = ServiceTimeouts {
            default: t(60, Some(120)),
            routes: vec![
                RouteTimeouts {
                    prefix: "/s".into(),
                    timeouts: t(10, Some(120)),
                },
                RouteTimeouts {
                    prefix: "/stream/".into(),
                    timeouts: t(3600, None),
                },
            ],
        };
        let snapshot = build(&mesh, &envoy_node("spiffe://example.org/agent/triage"));
        let routes: RouteConfiguration =
            decode(&snapshot, type_url::ROUTE_CONFIGURATION, envoy::OUTBOUND);
        let vhost = |name: &str| {
            routes
                .virtual_hosts
                .iter()
                .find(|v| v.name == name)
                .unwrap()
                .routes
                .clone()
        };
        let s = |v: &str| v.to_string();
        // No total: Envoy's route timeout is disabled (0), so streams live.
        assert_eq!(
            timed(&vhost("hello")),
            [
                (s("/stream/"), s(""), 0, 3600),
                (s("/s"), s(""), 120, 10),
                (s("/"), s(""), 120, 60),
            ]
        );
        assert_eq!(timed(&vhost("billing")), [(s("/"), s(""), 0, 300)]);
        assert_eq!(
            timed(&vhost("mcp")),
            [
                (s("/mcp://billing/"), s("/"), 0, 300),
                (s("/mcp://hello/stream/"), s("/stream/"), 0, 3600),
                (s("/mcp://hello/s"), s("/s"), 120, 10),
                (s("/mcp://hello/"), s("/"), 120, 60),
            ]
        );

        let snapshot = build(&mesh, &envoy_node("spiffe://example.org/service/hello"));
        let routes: RouteConfiguration =
            decode(&snapshot, type_url::ROUTE_CONFIGURATION, envoy::INBOUND);
        assert_eq!(
            timed(&routes.virtual_hosts[0].routes),
            [
                (s("/stream/"), s(""), 0, 3600),
                (s("/s"), s(""), 120, 10),
                (s("/"), s(""), 120, 60),
            ]
        );
    }

    #[test]
    fn dns_endpoints_make_strict_dns_clusters_without_eds() {
        let mut mesh = mesh();
        if let Some(s) = mesh.services.get_mut("hello") {
            s.endpoints = vec!["hello.meshward.svc:15006".into()];
        }
        let snapshot = build(&mesh, &envoy_node("spiffe://example.org/agent/triage"));
        let hello: Cluster = decode(&snapshot, type_url::CLUSTER, "hello");
        assert_eq!(
            hello.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::StrictDns as i32
            ))
        );
        assert!(format!("{:?}", hello.load_assignment).contains("hello.meshward.svc"));
        assert!(
            snapshot
                .get(type_url::CLUSTER_LOAD_ASSIGNMENT, "hello")
                .is_none()
        );
    }

    #[test]
    fn node_metadata_sets_where_listeners_bind_and_bad_values_keep_defaults() {
        use envoy_types::pb::google::protobuf::{Struct, Value, value};
        let s = |v: &str| Value {
            kind: Some(value::Kind::StringValue(v.to_string())),
        };
        let node = envoy_types::pb::envoy::config::core::v3::Node {
            metadata: Some(Struct {
                fields: [
                    (envoy::metadata::OUTBOUND.to_string(), s("127.0.0.1:25001")),
                    (envoy::metadata::INBOUND.to_string(), s("not an address")),
                    (envoy::metadata::BACKEND.to_string(), s("127.0.0.1:9000")),
                ]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        };
        let parsed = EnvoyNode::of(Some(&node));
        assert_eq!(parsed.outbound.port(), 25001);
        assert_eq!(parsed.inbound, EnvoyNode::default().inbound);
        assert_eq!(parsed.backend.map(|b| b.port()), Some(9000));
    }

    #[test]
    fn client_kind_follows_the_user_agent() {
        let of = |ua: &str| {
            ClientKind::of(Some(&envoy_types::pb::envoy::config::core::v3::Node {
                user_agent_name: ua.to_string(),
                ..Default::default()
            }))
        };
        assert_eq!(of("meshward"), ClientKind::Meshward);
        assert_eq!(of("gRPC Python"), ClientKind::Grpc);
        assert_eq!(of("envoy"), ClientKind::Envoy);
        assert_eq!(ClientKind::of(None), ClientKind::Envoy);
    }

    #[test]
    fn a_grpc_client_gets_api_listeners_and_eds_clusters_with_its_certificate_provider() {
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        };
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
        let snapshot = build(
            &mesh(),
            &NodeIdentity {
                client: ClientKind::Grpc,
                ..node("spiffe://example.org/agent/triage")
            },
        );
        // xds:///<service> resolves to the listener named after it.
        assert_eq!(names(&snapshot, type_url::LISTENER), ["billing", "hello"]);
        assert_eq!(
            names(&snapshot, type_url::POLICY_BUNDLE),
            Vec::<String>::new()
        );
        let listener: Listener = decode(&snapshot, type_url::LISTENER, "hello");
        assert!(listener.address.is_none(), "an api_listener binds nothing");
        let any = listener.api_listener.unwrap().api_listener.unwrap();
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let Some(RouteSpecifier::RouteConfig(routes)) = hcm.route_specifier else {
            panic!("routes are inline");
        };
        let Some(route::Action::Route(action)) = routes.virtual_hosts[0].routes[0].action.as_ref()
        else {
            panic!("not a route action");
        };
        assert_eq!(
            format!("{:?}", action.cluster_specifier),
            r#"Some(Cluster("hello"))"#
        );

        let hello: Cluster = decode(&snapshot, type_url::CLUSTER, "hello");
        assert_eq!(
            hello.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32
            ))
        );
        let upstream: UpstreamTlsContext = tls(hello.transport_socket.as_ref());
        let common = upstream.common_tls_context.unwrap();
        assert_eq!(
            common
                .tls_certificate_provider_instance
                .unwrap()
                .instance_name,
            envoy::GRPC_CERTIFICATES
        );
        let Some(ValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!("no validation context");
        };
        let validation = combined.default_validation_context.unwrap();
        #[allow(deprecated)]
        let sans = format!("{:?}", validation.match_subject_alt_names);
        assert!(
            sans.contains("Exact(\"spiffe://example.org/service/hello\")"),
            "{sans}"
        );
        assert!(!sans.contains("billing"), "{sans}");

        // gRPC refuses a locality that is absent and drops one without weight.
        let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
            decode(&snapshot, type_url::CLUSTER_LOAD_ASSIGNMENT, "hello");
        assert!(cla.endpoints[0].locality.is_some());
        assert_eq!(
            cla.endpoints[0].load_balancing_weight.map(|w| w.value),
            Some(1)
        );
        assert!(!cla.endpoints[0].lb_endpoints.is_empty());
    }
}

#[test]
fn an_authorizer_sees_what_a_service_sees() {
    let mesh = mesh();
    assert_eq!(classify(&mesh, AUTHORIZER), NodeKind::Authorizer);
    let s = build(&mesh, &node(AUTHORIZER));
    assert_eq!(s.len(type_url::AGENT), 2);
    assert_eq!(s.len(type_url::POLICY_BUNDLE), 1);
    assert_eq!(s.len(type_url::DATAPLANE_SETTINGS), 1);
    assert_eq!(s.len(type_url::CLUSTER), 2);
    // Another ID under /meshward/ is not one unless listed.
    let other = "spiffe://example.org/meshward/other";
    assert_eq!(classify(&mesh, other), NodeKind::Unregistered);
    assert_eq!(build(&mesh, &node(other)).len(type_url::AGENT), 0);
}
