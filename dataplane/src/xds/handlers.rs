//! Validation of each resource type, the "validate, then ACK or NACK with the
//! reason" step.
//!
//! One [`Handler`] per type URL turns a resource into the value the dataplane
//! will use, or explains (naming the resource and field) why it cannot. The
//! cache applies a response only if every resource in it validates, so a bad
//! resource is NACKed and the previous good state keeps serving.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::google::protobuf::Any;
use meshward_proto::meshward::v1 as mw;
use prost::Message;

use crate::breaker::BreakerSettings;
use crate::policy::CompiledPolicy;
use crate::ratelimit::RateLimitSettings;
use crate::state::{AgentInfo, Endpoint, ForwardClientCert, ListenerLimits, PathRules};

/// `envoy.config.cluster.v3.Cluster`.
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment`.
pub const ENDPOINT_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Key of Meshward's entry in `Cluster.metadata.typed_filter_metadata`.
pub const SERVICE_METADATA_KEY: &str = "meshward";
/// Type URL of the `ServiceMetadata` carried there.
pub const SERVICE_METADATA_TYPE_URL: &str = "type.googleapis.com/meshward.v1.ServiceMetadata";

/// Validates resources of one type.
pub trait Handler: Send + Sync + 'static {
    /// What a valid resource becomes.
    type Item: Clone + Send + Sync + 'static;
    /// The type URL this handler accepts.
    const TYPE_URL: &'static str;
    /// Checks `resource` (named `name` on the wire); the error is the NACK
    /// reason for it and should say what is wrong and where.
    fn validate(name: &str, resource: &Any) -> Result<Self::Item, String>;
}

fn decode<M: Message + Default>(expected_type: &str, resource: &Any) -> Result<M, String> {
    if resource.type_url != expected_type {
        return Err(format!(
            "type_url is {:?}, expected {expected_type:?}",
            resource.type_url
        ));
    }
    M::decode(resource.value.as_slice()).map_err(|e| format!("does not decode: {e}"))
}

/// A cluster's Meshward view, before its endpoints are known.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub name: String,
    pub spiffe_id: String,
    pub metadata: BTreeMap<String, String>,
    pub breaker: BreakerSettings,
    pub per_caller_limits: RateLimitSettings,
    pub paths: PathRules,
    pub forward_client_cert: ForwardClientCert,
}

/// CDS: a cluster must carry valid `typed_filter_metadata["meshward"]`.
#[derive(Debug)]
pub struct ClusterHandler;

impl Handler for ClusterHandler {
    type Item = ClusterSpec;
    const TYPE_URL: &'static str = CLUSTER_TYPE_URL;

    fn validate(name: &str, resource: &Any) -> Result<ClusterSpec, String> {
        let cluster: Cluster = decode(Self::TYPE_URL, resource)?;
        if cluster.name != name {
            return Err(format!(
                "resource name {name:?} but cluster.name {:?}",
                cluster.name
            ));
        }
        let any = cluster
            .metadata
            .as_ref()
            .and_then(|m| m.typed_filter_metadata.get(SERVICE_METADATA_KEY))
            .ok_or_else(|| {
                format!("metadata.typed_filter_metadata[{SERVICE_METADATA_KEY:?}] is missing")
            })?;
        let meta: mw::ServiceMetadata = decode(SERVICE_METADATA_TYPE_URL, any)
            .map_err(|e| format!("metadata.typed_filter_metadata[{SERVICE_METADATA_KEY:?}] {e}"))?;
        check_spiffe_id(&meta.spiffe_id).map_err(|e| format!("metadata spiffe_id: {e}"))?;
        let metadata = check_string_map(meta.metadata).map_err(|e| format!("metadata: {e}"))?;
        let breaker = breaker(meta.breaker.as_ref());
        let per_caller_limits = rate_limit(meta.per_caller_limits.as_ref())
            .map_err(|e| format!("metadata per_caller_limits: {e}"))?;
        let paths =
            PathRules::try_from(meta.paths.as_ref()).map_err(|e| format!("metadata {e}"))?;
        let forward_client_cert = ForwardClientCert::from_wire(meta.forward_client_cert)
            .map_err(|e| format!("metadata {e}"))?;
        Ok(ClusterSpec {
            name: cluster.name,
            spiffe_id: meta.spiffe_id,
            metadata,
            breaker,
            per_caller_limits,
            paths,
            forward_client_cert,
        })
    }
}

/// EDS: every endpoint must be an IP literal with a non-zero port.
#[derive(Debug)]
pub struct EndpointHandler;

impl Handler for EndpointHandler {
    type Item = Arc<Vec<Endpoint>>;
    const TYPE_URL: &'static str = ENDPOINT_TYPE_URL;

    fn validate(name: &str, resource: &Any) -> Result<Self::Item, String> {
        let cla: ClusterLoadAssignment = decode(Self::TYPE_URL, resource)?;
        if cla.cluster_name != name {
            return Err(format!(
                "resource name {name:?} but cluster_name {:?}",
                cla.cluster_name
            ));
        }
        let mut endpoints = Vec::new();
        for (i, locality) in cla.endpoints.iter().enumerate() {
            for (j, lb) in locality.lb_endpoints.iter().enumerate() {
                let at = format!("endpoints[{i}].lb_endpoints[{j}]");
                let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier
                else {
                    return Err(format!("{at}: not an endpoint"));
                };
                let Some(address::Address::SocketAddress(sa)) =
                    endpoint.address.as_ref().and_then(|a| a.address.as_ref())
                else {
                    return Err(format!("{at}: no socket address"));
                };
                if sa.protocol != socket_address::Protocol::Tcp as i32 {
                    return Err(format!("{at}: protocol is not TCP"));
                }
                let port = match sa.port_specifier {
                    Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("{at}: port {p} is out of range"))?,
                    _ => return Err(format!("{at}: no numeric port")),
                };
                let endpoint = match sa.address.parse::<IpAddr>() {
                    Ok(ip) => Endpoint::Ip(SocketAddr::new(ip, port)),
                    Err(_) if is_dns_name(&sa.address) => Endpoint::Dns {
                        host: sa.address.clone(),
                        port,
                    },
                    Err(_) => {
                        return Err(format!(
                            "{at}: {:?} is neither an IP address nor a DNS name",
                            sa.address
                        ));
                    }
                };
                endpoints.push(endpoint);
            }
        }
        Ok(Arc::new(endpoints))
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner
/// hyphens, at most 63 bytes each and 253 in all.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // All-numeric names are malformed IPv4 addresses, not hosts.
        && !host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// A compiled bundle and the revision it was compiled from.
pub type PolicyItem = Arc<CompiledPolicy>;

/// Meshward `PolicyBundle`: must compile.
#[derive(Debug)]
pub struct PolicyHandler;

impl Handler for PolicyHandler {
    type Item = PolicyItem;
    const TYPE_URL: &'static str = mw::POLICY_BUNDLE_TYPE_URL;

    fn validate(name: &str, resource: &Any) -> Result<PolicyItem, String> {
        let bundle: mw::PolicyBundle = decode(Self::TYPE_URL, resource)?;
        if bundle.name != name {
            return Err(format!(
                "resource name {name:?} but bundle name {:?}",
                bundle.name
            ));
        }
        CompiledPolicy::compile(&bundle)
            .map(Arc::new)
            .map_err(|e| format!("does not compile: {e}"))
    }
}

/// Meshward `DataplaneSettings`: listener limits in range.
#[derive(Debug)]
pub struct SettingsHandler;

impl Handler for SettingsHandler {
    type Item = ListenerLimits;
    const TYPE_URL: &'static str = meshward_proto::spec::DATAPLANE_SETTINGS_TYPE_URL;

    fn validate(name: &str, resource: &Any) -> Result<ListenerLimits, String> {
        let settings: mw::DataplaneSettings = decode(Self::TYPE_URL, resource)?;
        if settings.name != name {
            return Err(format!(
                "resource name {name:?} but settings name {:?}",
                settings.name
            ));
        }
        ListenerLimits::try_from(settings.listeners.as_ref())
    }
}

/// Meshward `Agent`: named by its SPIFFE ID.
#[derive(Debug)]
pub struct AgentHandler;

impl Handler for AgentHandler {
    type Item = Arc<AgentInfo>;
    const TYPE_URL: &'static str = mw::AGENT_TYPE_URL;

    fn validate(name: &str, resource: &Any) -> Result<Self::Item, String> {
        let agent: mw::Agent = decode(Self::TYPE_URL, resource)?;
        check_spiffe_id(&agent.spiffe_id).map_err(|e| format!("spiffe_id: {e}"))?;
        if agent.spiffe_id != name {
            return Err(format!(
                "resource name {name:?} but spiffe_id {:?}",
                agent.spiffe_id
            ));
        }
        let attributes =
            check_string_map(agent.attributes).map_err(|e| format!("attributes: {e}"))?;
        let limits = rate_limit(agent.limits.as_ref()).map_err(|e| format!("limits: {e}"))?;
        Ok(Arc::new(AgentInfo {
            name: agent.name,
            spiffe_id: agent.spiffe_id,
            attributes,
            permissions: agent.permissions,
            limits,
        }))
    }
}

/// `spiffe://<trust domain>/<path>`, both non-empty, no query or fragment.
fn check_spiffe_id(id: &str) -> Result<(), String> {
    let ok = id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(td, path)| {
            !td.is_empty() && !path.is_empty() && !id.contains(['?', '#']) && !td.contains(':')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{id:?} is not a SPIFFE ID"))
    }
}

fn check_string_map(
    map: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    if map.keys().any(String::is_empty) {
        return Err("empty key".to_string());
    }
    Ok(map.into_iter().collect())
}

/// Absent means "no limit" (every dimension zero).
fn rate_limit(limit: Option<&mw::RateLimit>) -> Result<RateLimitSettings, String> {
    let limit = limit.cloned().unwrap_or_default();
    if !limit.requests_per_second.is_finite() || limit.requests_per_second < 0.0 {
        return Err(format!(
            "requests_per_second {} is not a finite, non-negative number",
            limit.requests_per_second
        ));
    }
    Ok(RateLimitSettings {
        requests_per_second: limit.requests_per_second,
        burst: limit.burst,
        max_concurrent: limit.max_concurrent,
        per_destination: limit.per_destination,
        count_denied: limit.count_denied.unwrap_or(true),
    })
}

/// Absent means the dataplane's defaults; zero values keep the meaning
/// [`BreakerSettings`] gives them (`consecutive_failures == 0` disables).
fn breaker(breaker: Option<&mw::CircuitBreaker>) -> BreakerSettings {
    match breaker {
        Some(b) => BreakerSettings {
            consecutive_failures: b.consecutive_failures,
            open_for: Duration::from_millis(b.open_for_ms),
            half_open_probes: b.half_open_probes,
        },
        None => BreakerSettings::default(),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};

    use super::*;

    fn any<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: m.encode_to_vec(),
        }
    }

    fn cla(name: &str, host: &str, port: u32) -> Any {
        let endpoint = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: host.to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        any(
            ENDPOINT_TYPE_URL,
            &ClusterLoadAssignment {
                cluster_name: name.to_string(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![endpoint],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    #[test]
    fn endpoints_are_ip_or_dns_name_and_port() {
        let ok = EndpointHandler::validate("s", &cla("s", "127.0.0.1", 80));
        assert_eq!(
            ok.map(|e| e.to_vec()),
            Ok(vec![crate::state::Endpoint::Ip(SocketAddr::from((
                [127, 0, 0, 1],
                80
            )))])
        );
        let dns = EndpointHandler::validate("s", &cla("s", "hello-skill.meshward.svc", 15006));
        assert_eq!(
            dns.map(|e| e.to_vec()),
            Ok(vec![crate::state::Endpoint::Dns {
                host: "hello-skill.meshward.svc".into(),
                port: 15006
            }])
        );
        for (host, port) in [
            ("127.0.0.1", 0),
            ("127.0.0.1", 70000),
            ("999.1.1.1", 80),
            ("bad_name!", 80),
            ("-leading.example", 80),
        ] {
            assert!(
                EndpointHandler::validate("s", &cla("s", host, port)).is_err(),
                "{host}:{port}"
            );
        }
        assert!(EndpointHandler::validate("other", &cla("s", "127.0.0.1", 80)).is_err());
    }

    #[test]
    fn garbage_and_wrong_type_are_rejected() {
        let garbage = Any {
            type_url: mw::AGENT_TYPE_URL.to_string(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(AgentHandler::validate("x", &garbage).is_err());
        let wrong = Any {
            type_url: CLUSTER_TYPE_URL.to_string(),
            value: vec![],
        };
        assert!(AgentHandler::validate("x", &wrong).is_err());
    }

    #[test]
    fn agent_name_must_be_its_spiffe_id_and_limits_sane() {
        let id = "spiffe://example.org/agent/a";
        let mut agent = mw::Agent {
            name: "a".into(),
            spiffe_id: id.into(),
            ..Default::default()
        };
        assert!(AgentHandler::validate(id, &any(mw::AGENT_TYPE_URL, &agent)).is_ok());
        assert!(AgentHandler::validate("a", &any(mw::AGENT_TYPE_URL, &agent)).is_err());
        agent.limits = Some(mw::RateLimit {
            requests_per_second: f64::NAN,
            ..Default::default()
        });
        assert!(AgentHandler::validate(id, &any(mw::AGENT_TYPE_URL, &agent)).is_err());
    }

    fn cluster_with(meta: mw::ServiceMetadata) -> Any {
        let cluster = Cluster {
            name: "s".into(),
            metadata: Some(envoy_types::pb::envoy::config::core::v3::Metadata {
                typed_filter_metadata: [(
                    SERVICE_METADATA_KEY.to_string(),
                    any(SERVICE_METADATA_TYPE_URL, &meta),
                )]
                .into_iter()
                .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        any(CLUSTER_TYPE_URL, &cluster)
    }

    #[test]
    fn cluster_path_rules_and_client_cert_mode_are_checked() {
        let meta = mw::ServiceMetadata {
            spiffe_id: "spiffe://example.org/service/s".into(),
            paths: Some(mw::PathRules {
                escaped_slashes: mw::PathAction::Keep as i32,
                path_parameters: mw::PathAction::Reject as i32,
            }),
            forward_client_cert: mw::ForwardClientCert::SanitizeSet as i32,
            ..Default::default()
        };
        let spec = ClusterHandler::validate("s", &cluster_with(meta.clone())).unwrap();
        assert_eq!(
            spec.paths.escaped_slashes,
            meshward_proto::spec::PathAction::Keep
        );
        assert_eq!(spec.forward_client_cert, ForwardClientCert::SanitizeSet);
        // Absent: the safe defaults.
        let bare = mw::ServiceMetadata {
            spiffe_id: meta.spiffe_id.clone(),
            ..Default::default()
        };
        let spec = ClusterHandler::validate("s", &cluster_with(bare)).unwrap();
        assert_eq!(spec.paths, PathRules::default());
        assert_eq!(spec.forward_client_cert, ForwardClientCert::Sanitize);
        assert!(spec.per_caller_limits.count_denied);
        // Values this dataplane does not know are NACKed, not guessed.
        let unknown_action = mw::ServiceMetadata {
            paths: Some(mw::PathRules {
                escaped_slashes: 7,
                path_parameters: 0,
            }),
            ..meta.clone()
        };
        let err = ClusterHandler::validate("s", &cluster_with(unknown_action)).unwrap_err();
        assert!(err.contains("paths.escaped_slashes"), "{err}");
        let unknown_mode = mw::ServiceMetadata {
            forward_client_cert: 9,
            ..meta
        };
        let err = ClusterHandler::validate("s", &cluster_with(unknown_mode)).unwrap_err();
        assert!(err.contains("forward_client_cert"), "{err}");
    }

    #[test]
    fn cluster_requires_meshward_metadata() {
        let cluster = Cluster {
            name: "s".into(),
            ..Default::default()
        };
        let err = ClusterHandler::validate("s", &any(CLUSTER_TYPE_URL, &cluster));
        assert!(err.is_err_and(|e| e.contains("typed_filter_metadata")));
    }

    #[test]
    fn spiffe_ids() {
        assert!(check_spiffe_id("spiffe://example.org/a").is_ok());
        for bad in [
            "",
            "spiffe://",
            "spiffe://example.org",
            "spiffe:///a",
            "http://x/y",
            "spiffe://e.org/a?x",
        ] {
            assert!(check_spiffe_id(bad).is_err(), "{bad}");
        }
    }
}
