//! The mesh model as Envoy resources, for nodes that are Envoys.
//!
//! An Envoy beside an agent gets an outbound listener that routes
//! `/mcp://<service>/...` (prefix stripped) and `Host` / `:authority` to the
//! service clusters; an Envoy beside a service gets an inbound listener that
//! requires a client SVID of the trust domain and tells the app who called
//! (`x-agent-id` from the verified peer). Clusters to services are mTLS h2 to
//! the service's inbound sidecar, with the Envoy's SVID and the trust bundle
//! from SDS under SPIRE's secret names (`default`, `spiffe://<trust
//! domain>`) and the service's SPIFFE ID as the only accepted SAN; per
//! cluster outlier detection and a request cap come from `mesh.yaml`.
//! Routes carry each service's `timeouts` (and one route per `routes`
//! prefix) in Envoy's streaming-friendly reading: see [`timed_action`].
//!
//! Where a node's listeners bind and where its app is come from its node
//! metadata (set by `meshward bootstrap envoy`): that is the node's own
//! business, so the unproven `Node` may say it; what it may see is still
//! decided by its certificate.

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, GrpcService,
    HeaderValue, HeaderValueOption, Http1ProtocolOptions, Http2ProtocolOptions, Node,
    SocketAddress, TransportSocket, address, api_config_source, config_source, grpc_service,
    header_value_option, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value, value};
use meshward_contract::rules;
use meshward_contract::spec::{self, Endpoint, RouteTimeouts, ServiceTimeouts, Timeouts};
use prost::{Message, Name};

use crate::config::{Mesh, Service};

/// The cluster the bootstrap defines for the SPIRE agent's (or the dev
/// server's) SDS socket; secrets in dynamic resources refer to it.
pub const SDS_CLUSTER: &str = "spire_agent";
/// SPIRE agent's SDS name for the workload's own SVID.
pub const SVID_SECRET: &str = "default";
/// The name of the outbound listener and its route configuration.
pub const OUTBOUND: &str = "meshward_outbound";
/// The name of the inbound listener and its route configuration.
pub const INBOUND: &str = "meshward_inbound";
/// The cluster of the app beside an inbound Envoy.
pub const LOCAL_APP: &str = "meshward_local_app";
/// SNI sent to services' sidecars: peers are verified by SPIFFE ID.
const SNI: &str = "spiffe.meshward.invalid";

/// Node metadata keys `meshward bootstrap envoy` sets.
pub mod ext_authz;

pub mod metadata {
    /// `ip:port` of the outbound listener.
    pub const OUTBOUND: &str = "meshward.outbound";
    /// `ip:port` of the inbound listener.
    pub const INBOUND: &str = "meshward.inbound";
    /// `ip:port` of the app behind the inbound listener.
    pub const BACKEND: &str = "meshward.backend";
    /// `ip:port` of the Meshward authorizer the inbound listener asks.
    pub const EXT_AUTHZ: &str = "meshward.ext_authz";
}

/// Where an Envoy node's listeners bind and where its app is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvoyNode {
    pub outbound: Endpoint,
    pub inbound: Endpoint,
    /// The app beside an inbound Envoy; `None` falls back to the service's
    /// `backend` in `mesh.yaml`.
    pub backend: Option<Endpoint>,
    /// The Meshward authorizer its inbound listener asks; `None`: no
    /// `ext_authz` filter.
    pub ext_authz: Option<Endpoint>,
}

impl Default for EnvoyNode {
    /// DESIGN.md's ports: outbound on loopback 15001, inbound on all 15006.
    fn default() -> Self {
        EnvoyNode {
            outbound: Endpoint::Ip(([127, 0, 0, 1], 15001).into()),
            inbound: Endpoint::Ip(([0, 0, 0, 0], 15006).into()),
            backend: None,
            ext_authz: None,
        }
    }
}

impl EnvoyNode {
    /// From a `Node`'s metadata; a missing or malformed value keeps the
    /// default (and is logged), since it only says where this node binds.
    pub fn of(node: Option<&Node>) -> Self {
        let mut out = EnvoyNode::default();
        let Some(fields) = node.and_then(|n| n.metadata.as_ref()).map(|m| &m.fields) else {
            return out;
        };
        let read = |key: &str| -> Option<Endpoint> {
            let Some(value::Kind::StringValue(s)) = fields.get(key)?.kind.as_ref() else {
                tracing::warn!(key, "node metadata value is not a string; ignored");
                return None;
            };
            rules::endpoint(s, false)
                .map_err(|e| tracing::warn!(key, value = %s, "node metadata ignored: {e}"))
                .ok()
        };
        if let Some(e) = read(metadata::OUTBOUND) {
            out.outbound = e;
        }
        if let Some(e) = read(metadata::INBOUND) {
            out.inbound = e;
        }
        out.backend = read(metadata::BACKEND);
        out.ext_authz = read(metadata::EXT_AUTHZ);
        out
    }
}

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn seconds(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}

fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn socket_address(e: &Endpoint) -> Address {
    let (host, port) = match e {
        Endpoint::Ip(a) => (a.ip().to_string(), a.port()),
        Endpoint::Dns { host, port } => (host.clone(), *port),
    };
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: host,
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// A secret from the SDS cluster the bootstrap defines.
fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: api_config_source::ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: SDS_CLUSTER.to_string(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

/// This workload's SVID and the trust domain's bundle, accepting only
/// `peers` as SANs (any workload of the trust domain when empty).
fn tls_context(trust_domain: &str, alpn: &[&str], peers: &[&str]) -> CommonTlsContext {
    let san = |id: &&str| SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(id.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    };
    CommonTlsContext {
        alpn_protocols: alpn.iter().map(|p| p.to_string()).collect(),
        tls_certificate_sds_secret_configs: vec![sds(SVID_SECRET)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: peers.iter().map(san).collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(&format!(
                        "spiffe://{trust_domain}"
                    ))),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

fn transport_socket<M: Message + Name>(context: &M) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(context))),
    }
}

fn protocol_options(options: http_protocol_options::UpstreamProtocolOptions) -> Any {
    any(&HttpProtocolOptions {
        upstream_protocol_options: Some(options),
        ..Default::default()
    })
}

/// The cluster of a service for an Envoy: mTLS h2 to its inbound sidecars,
/// accepting only the service's SPIFFE ID; EDS over ADS, or STRICT_DNS when
/// its endpoints are DNS names; outlier detection from its breaker and a
/// request cap from its per-caller concurrency.
pub fn service_cluster(mesh: &Mesh, service: &Service) -> Cluster {
    let spec = &service.spec;
    let endpoints = endpoints(service);
    let dns = endpoints.iter().any(|e| matches!(e, Endpoint::Dns { .. }));
    let (discovery, eds, load_assignment) = if dns {
        (
            cluster::DiscoveryType::StrictDns,
            None,
            Some(spec::load_assignment(&spec.name, &endpoints)),
        )
    } else {
        (
            cluster::DiscoveryType::Eds,
            Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            None,
        )
    };
    let tls = UpstreamTlsContext {
        common_tls_context: Some(tls_context(
            &mesh.trust_domain,
            &["h2"],
            &[spec.spiffe_id.as_str()],
        )),
        sni: SNI.to_string(),
        ..Default::default()
    };
    let breaker = &spec.breaker;
    let outlier_detection = (breaker.consecutive_failures > 0).then(|| OutlierDetection {
        consecutive_5xx: Some(UInt32Value {
            value: breaker.consecutive_failures,
        }),
        base_ejection_time: Some(duration(breaker.open_for)),
        ..Default::default()
    });
    let max_requests = spec.per_caller_limits.max_concurrent;
    let circuit_breakers = (max_requests > 0).then(|| CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_requests: Some(UInt32Value {
                value: max_requests,
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    Cluster {
        name: spec.name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        eds_cluster_config: eds,
        load_assignment,
        connect_timeout: Some(seconds(5)),
        transport_socket: Some(transport_socket(&tls)),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            protocol_options(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            )),
        )]
        .into_iter()
        .collect(),
        outlier_detection,
        circuit_breakers,
        ..Default::default()
    }
}

/// A service's endpoints with real ports (port-0 placeholders are not
/// filled yet and never sent).
pub fn endpoints(service: &Service) -> Vec<Endpoint> {
    service
        .endpoints
        .iter()
        .filter_map(|addr| rules::endpoint(addr, true).ok())
        .filter(|e| e.port() != 0)
        .collect()
}

/// Whether a service's cluster is EDS (its endpoints are IP addresses).
pub fn uses_eds(service: &Service) -> bool {
    !endpoints(service)
        .iter()
        .any(|e| matches!(e, Endpoint::Dns { .. }))
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    }
}

fn http_connection_manager(name: &str, inbound: bool) -> HttpConnectionManager {
    let mut hcm = HttpConnectionManager {
        stat_prefix: name.to_string(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_string(),
        })),
        http_filters: vec![router()],
        ..Default::default()
    };
    if inbound {
        // The service's policy reads the path: one spelling of it, as the
        // Meshward dataplane's canonicalization does (docs/security.md).
        hcm.normalize_path = Some(BoolValue { value: true });
        hcm.merge_slashes = true;
        hcm.path_with_escaped_slashes_action =
            http_connection_manager::PathWithEscapedSlashesAction::RejectRequest as i32;
        hcm.forward_client_cert_details =
            http_connection_manager::ForwardClientCertDetails::Sanitize as i32;
    }
    hcm
}

fn listener(name: &str, at: &Endpoint, chain: FilterChain) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket_address(at)),
        filter_chains: vec![chain],
        ..Default::default()
    }
}

fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(hcm))),
    }
}

/// The agent-facing listener: plain HTTP on loopback, routes by RDS.
pub fn outbound_listener(node: &EnvoyNode) -> Listener {
    let chain = FilterChain {
        filters: vec![hcm_filter(&http_connection_manager(OUTBOUND, false))],
        ..Default::default()
    };
    listener(OUTBOUND, &node.outbound, chain)
}

/// `/mcp://<service>/...` (prefix stripped, as the Meshward sidecar does)
/// and `Host` / `:authority` (`<service>`, `<service>:<port>`,
/// `<service>.<anything>`) to each service's cluster.
pub fn outbound_routes(mesh: &Mesh) -> RouteConfiguration {
    let mut virtual_hosts: Vec<VirtualHost> = mesh
        .services
        .values()
        .map(|s| {
            let name = &s.spec.name;
            VirtualHost {
                name: name.clone(),
                domains: vec![name.clone(), format!("{name}:*"), format!("{name}.*")],
                routes: timed_routes(&s.spec.timeouts, "", name, false),
                ..Default::default()
            }
        })
        .collect();
    virtual_hosts.push(VirtualHost {
        name: "mcp".to_string(),
        domains: vec!["*".to_string()],
        routes: mesh
            .services
            .values()
            .flat_map(|s| {
                let name = &s.spec.name;
                timed_routes(&s.spec.timeouts, &format!("/mcp://{name}"), name, true)
            })
            .collect(),
        ..Default::default()
    });
    RouteConfiguration {
        name: OUTBOUND.to_string(),
        virtual_hosts,
        ..Default::default()
    }
}

/// A service's routes to `cluster`, one per timeout prefix (longest first:
/// Envoy takes the first match, Meshward the longest) and then `/`, each
/// matching `at` + the prefix; with `strip`, `at` is removed on the way
/// (`/mcp://<service>/x` is sent as `/x`).
fn timed_routes(timeouts: &ServiceTimeouts, at: &str, cluster: &str, strip: bool) -> Vec<Route> {
    let mut prefixed: Vec<&RouteTimeouts> = timeouts.routes.iter().collect();
    prefixed.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    prefixed
        .into_iter()
        .map(|r| (r.prefix.as_str(), &r.timeouts))
        .chain([("/", &timeouts.default)])
        .map(|(prefix, t)| Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix(format!("{at}{prefix}"))),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    cluster.to_string(),
                )),
                prefix_rewrite: if strip {
                    prefix.to_string()
                } else {
                    String::new()
                },
                ..timed_action(t)
            })),
            ..Default::default()
        })
        .collect()
}

/// A service's timeouts as Envoy reads a route. Envoy's route `timeout`
/// runs until the *complete* response, streaming included, so it carries
/// `total` (0 disables it, for streams of any length); `idle` is the
/// route's `idle_timeout`. Envoy has no timer for the response headers
/// alone: `response` is enforced by Meshward dataplanes only, and an Envoy
/// catches a silent upstream by `idle_timeout` (docs/decisions.md, Timeouts).
fn timed_action(t: &Timeouts) -> RouteAction {
    RouteAction {
        timeout: Some(t.total.map_or(seconds(0), duration)),
        idle_timeout: Some(duration(t.idle)),
        ..Default::default()
    }
}

/// The listener in front of a service: mTLS requiring an SVID of the trust
/// domain (the handshake refuses anything else), then RDS.
pub fn inbound_listener(mesh: &Mesh, node: &EnvoyNode) -> Listener {
    let tls = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(tls_context(&mesh.trust_domain, &["h2", "http/1.1"], &[])),
        ..Default::default()
    };
    let mut hcm = http_connection_manager(INBOUND, true);
    if node.ext_authz.is_some() {
        // Policy, limits and breakers from the Meshward authorizer beside
        // the Envoy, before the router; outcomes back over the access log.
        hcm.http_filters.insert(0, ext_authz::filter());
        hcm.access_log.push(ext_authz::outcome_log());
    }
    let chain = FilterChain {
        filters: vec![hcm_filter(&hcm)],
        transport_socket: Some(transport_socket(&tls)),
        ..Default::default()
    };
    listener(INBOUND, &node.inbound, chain)
}

/// Everything to the app, with `x-agent-id` set from the verified peer's
/// SPIFFE ID and every client-sent copy of the mesh's identity headers
/// (`x-agent-id` and the registry attributes) removed first. The route
/// names `service` to an `ext_authz` filter, if the listener has one
/// (`authorized`); that authorizer then owns the attribute headers: it
/// strips forged ones and sets the verified ones, which a route-level
/// removal (applied after the filter) would undo.
pub fn inbound_routes(mesh: &Mesh, service: &str, authorized: bool) -> RouteConfiguration {
    let mut remove: Vec<String> = vec!["x-agent-id".to_string()];
    for agent in mesh.agents.values().filter(|_| !authorized) {
        for key in agent.attributes.keys() {
            let header = format!("x-agent-{}", key.to_ascii_lowercase().replace('_', "-"));
            if !remove.contains(&header) {
                remove.push(header);
            }
        }
    }
    let set_caller = HeaderValueOption {
        header: Some(HeaderValue {
            key: "x-agent-id".to_string(),
            value: "%DOWNSTREAM_PEER_URI_SAN%".to_string(),
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    RouteConfiguration {
        name: INBOUND.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "app".to_string(),
            domains: vec!["*".to_string()],
            routes: mesh
                .services
                .get(service)
                .map(|s| timed_routes(&s.spec.timeouts, "", LOCAL_APP, false))
                .unwrap_or_else(|| timed_routes(&ServiceTimeouts::default(), "", LOCAL_APP, false)),
            request_headers_to_remove: remove,
            request_headers_to_add: vec![set_caller],
            typed_per_filter_config: [(
                ext_authz::FILTER.to_string(),
                ext_authz::per_route(service),
            )]
            .into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The app beside an inbound Envoy, on loopback in plain text, speaking
/// whatever the caller spoke (h2 for gRPC).
pub fn local_app_cluster(backend: &Endpoint) -> Cluster {
    plain_cluster(
        LOCAL_APP,
        backend,
        http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            http_protocol_options::UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            },
        ),
    )
}

/// A cluster of one endpoint in plain text (beside the Envoy, on the pod's
/// loopback): STATIC for an IP, STRICT_DNS for a name.
fn plain_cluster(
    name: &str,
    at: &Endpoint,
    protocol: http_protocol_options::UpstreamProtocolOptions,
) -> Cluster {
    let discovery = match at {
        Endpoint::Ip(_) => cluster::DiscoveryType::Static,
        Endpoint::Dns { .. } => cluster::DiscoveryType::StrictDns,
    };
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(seconds(2)),
        load_assignment: Some(spec::load_assignment(name, std::slice::from_ref(at))),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            protocol_options(protocol),
        )]
        .into(),
        ..Default::default()
    }
}

/// gRPC's xDS client has no SDS: it names certificate provider instances
/// from its own bootstrap. Meshward's gRPC bootstraps define one, `default`
/// (the workload's SVID, key and trust bundle, e.g. file-watched).
pub const GRPC_CERTIFICATES: &str = "default";

/// The `api_listener` a proxyless gRPC client resolves `xds:///<service>`
/// to: every call to the service's cluster.
pub fn grpc_listener(service: &Service) -> Listener {
    use envoy_types::pb::envoy::config::listener::v3::ApiListener;
    let name = &service.spec.name;
    let routes = RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vec![VirtualHost {
            name: name.clone(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name.clone())),
                    // gRPC's xDS client reads only this timeout (gRFC A31):
                    // the service's `total`, if it has one.
                    max_stream_duration: service.spec.timeouts.default.total.map(|t| {
                        route_action::MaxStreamDuration {
                            max_stream_duration: Some(duration(t)),
                            ..Default::default()
                        }
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: name.clone(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![router()],
        ..Default::default()
    };
    Listener {
        name: name.clone(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        ..Default::default()
    }
}

/// The cluster of a service for a proxyless gRPC client: EDS, and mTLS with
/// the client's certificate provider instance, accepting only the
/// service's SPIFFE ID (gRPC's xDS security, gRFC A29).
pub fn grpc_cluster(service: &Service) -> Cluster {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CertificateProviderPluginInstance;
    let instance = || CertificateProviderPluginInstance {
        instance_name: GRPC_CERTIFICATES.to_string(),
        certificate_name: String::new(),
    };
    #[allow(deprecated)]
    let validation = CertificateValidationContext {
        ca_certificate_provider_instance: Some(instance()),
        match_subject_alt_names: vec![StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(
                service.spec.spiffe_id.clone(),
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    let tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_provider_instance: Some(instance()),
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(validation),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    Cluster {
        name: service.spec.name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(seconds(5)),
        transport_socket: Some(transport_socket(&tls)),
        ..Default::default()
    }
}
