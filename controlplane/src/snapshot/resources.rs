//! One function per xDS resource built from the model.
//!
//! Encodings are canonical (map entries sorted by key) so that a resource's
//! version, the hash of its bytes, depends only on its content: prost encodes
//! `map<>` fields from a `HashMap` in arbitrary order, which would give an
//! unchanged resource a new version on every rebuild.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::{Any, Duration};
use meshward_proto::meshward::v1 as mw;
pub use meshward_proto::spec::DATAPLANE_SETTINGS_NAME;
use prost::Message;
use tracing::warn;

use super::VersionedResource;
use super::type_url;
use crate::config::{self, Agent, BreakerSettings, RateLimitSettings, Service};

/// Name of the mesh-wide policy bundle resource.
pub const POLICY_BUNDLE_NAME: &str = "default";

/// Key of Meshward's entry in `Cluster.metadata.typed_filter_metadata`.
pub const SERVICE_METADATA_KEY: &str = "meshward";

/// Type URL of [`mw::ServiceMetadata`] inside a cluster's metadata.
pub const SERVICE_METADATA_TYPE_URL: &str = "type.googleapis.com/meshward.v1.ServiceMetadata";

/// How long Envoy waits for a TCP connection to a service's dataplane.
const CONNECT_TIMEOUT_SECS: i64 = 5;

/// The CDS resource of a service: EDS over ADS, with Meshward's view of the
/// service (expected SPIFFE ID, metadata, breaker, per-caller limits) in
/// `typed_filter_metadata["meshward"]`.
pub fn cluster(service: &Service) -> VersionedResource {
    let metadata = Any {
        type_url: SERVICE_METADATA_TYPE_URL.to_string(),
        value: service_metadata_bytes(service),
    };
    let cluster = Cluster {
        name: service.name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3 as i32,
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        connect_timeout: Some(Duration {
            seconds: CONNECT_TIMEOUT_SECS,
            nanos: 0,
        }),
        // One map entry only, so its encoding is deterministic.
        metadata: Some(Metadata {
            typed_filter_metadata: [(SERVICE_METADATA_KEY.to_string(), metadata)]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    VersionedResource::from_encoded(type_url::CLUSTER, cluster.encode_to_vec())
}

/// The EDS resource of a service: one locality with its endpoints.
///
/// Endpoints were validated by the config loader; one that still does not
/// split into host and port is skipped (and logged) rather than sent, so a
/// dataplane never has to NACK the whole type for it.
pub fn load_assignment(service: &Service) -> VersionedResource {
    let lb_endpoints = service
        .endpoints
        .iter()
        .filter_map(|endpoint| match split_host_port(endpoint) {
            Some((host, port)) => Some(lb_endpoint(host, port)),
            None => {
                warn!(
                    service = %service.name,
                    %endpoint,
                    "endpoint is not host:port; left out of the load assignment"
                );
                None
            }
        })
        .collect();
    let assignment = ClusterLoadAssignment {
        cluster_name: service.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    };
    VersionedResource::from_encoded(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        assignment.encode_to_vec(),
    )
}

/// The mesh-wide policy bundle as the `meshward.v1.PolicyBundle` message
/// (also used by tests and benchmarks that compile the bundle directly).
pub fn policy_bundle_message(policy: &config::PolicyBundle) -> mw::PolicyBundle {
    mw::PolicyBundle {
        name: POLICY_BUNDLE_NAME.to_string(),
        revision: policy.revision.clone(),
        modules: policy
            .modules
            .iter()
            .map(|(path, source)| mw::RegoModule {
                path: path.clone(),
                source: source.clone(),
            })
            .collect(),
        data_json: policy.data.to_string(),
        decision: policy.decision.clone(),
    }
}

/// The mesh-wide policy bundle resource.
pub fn policy_bundle(policy: &config::PolicyBundle) -> VersionedResource {
    VersionedResource::from_encoded(
        type_url::POLICY_BUNDLE,
        policy_bundle_message(policy).encode_to_vec(),
    )
}

/// The settings every dataplane applies to itself (listener limits).
pub fn dataplane_settings(mesh: &config::Mesh) -> VersionedResource {
    let message = mw::DataplaneSettings {
        name: DATAPLANE_SETTINGS_NAME.to_string(),
        listeners: Some((&mesh.listeners).into()),
    };
    VersionedResource::from_encoded(type_url::DATAPLANE_SETTINGS, message.encode_to_vec())
}

/// One agent's registry entry, named by its SPIFFE ID.
pub fn agent(agent: &Agent) -> VersionedResource {
    let message = mw::Agent {
        name: agent.name.clone(),
        spiffe_id: agent.spiffe_id.clone(),
        attributes: Default::default(),
        permissions: agent.permissions.clone(),
        limits: Some(rate_limit(&agent.limits)),
    };
    // Agent.attributes is field 3.
    let bytes = with_sorted_string_map(message.encode_to_vec(), 3, &agent.attributes);
    VersionedResource::from_encoded(type_url::AGENT, bytes)
}

/// Canonical bytes of a service's [`mw::ServiceMetadata`].
fn service_metadata_bytes(service: &Service) -> Vec<u8> {
    let message = mw::ServiceMetadata {
        spiffe_id: service.spiffe_id.clone(),
        metadata: Default::default(),
        breaker: Some(circuit_breaker(&service.breaker)),
        per_caller_limits: Some(rate_limit(&service.per_caller_limits)),
        paths: Some(service.paths.into()),
        forward_client_cert: service.forward_client_cert.to_wire(),
    };
    // ServiceMetadata.metadata is field 2.
    with_sorted_string_map(message.encode_to_vec(), 2, &service.metadata)
}

/// Appends `map` as protobuf map field `tag`, entries sorted by key. Fields
/// may appear in any order on the wire, so `encoded ++ map` decodes to the
/// message with the map filled in.
fn with_sorted_string_map(
    mut encoded: Vec<u8>,
    tag: u32,
    map: &BTreeMap<String, String>,
) -> Vec<u8> {
    prost::encoding::btree_map::encode(
        prost::encoding::string::encode,
        prost::encoding::string::encoded_len,
        prost::encoding::string::encode,
        prost::encoding::string::encoded_len,
        tag,
        map,
        &mut encoded,
    );
    encoded
}

fn rate_limit(limits: &RateLimitSettings) -> mw::RateLimit {
    mw::RateLimit {
        requests_per_second: limits.requests_per_second,
        burst: limits.burst,
        max_concurrent: limits.max_concurrent,
        per_destination: limits.per_destination,
        count_denied: Some(limits.count_denied),
    }
}

fn circuit_breaker(breaker: &BreakerSettings) -> mw::CircuitBreaker {
    mw::CircuitBreaker {
        consecutive_failures: breaker.consecutive_failures,
        open_for_ms: u64::try_from(breaker.open_for.as_millis()).unwrap_or(u64::MAX),
        half_open_probes: breaker.half_open_probes,
    }
}

fn lb_endpoint(host: &str, port: u16) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    protocol: socket_address::Protocol::Tcp as i32,
                    address: host.to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Splits `host:port` / `[v6]:port`; the host is returned without brackets.
fn split_host_port(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_host_port_handles_v4_v6_and_rejects_garbage() {
        assert_eq!(split_host_port("127.0.0.1:80"), Some(("127.0.0.1", 80)));
        assert_eq!(split_host_port("[::1]:8080"), Some(("::1", 8080)));
        assert_eq!(split_host_port("svc.local:1"), Some(("svc.local", 1)));
        assert_eq!(split_host_port("127.0.0.1"), None);
        assert_eq!(split_host_port(":80"), None);
        assert_eq!(split_host_port("h:70000"), None);
    }

    #[test]
    fn sorted_map_encoding_decodes_to_the_same_message() {
        let attributes: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let agent = Agent {
            name: "a".into(),
            spiffe_id: "spiffe://example.org/agent/a".into(),
            attributes: attributes.clone(),
            permissions: vec!["p".into()],
            limits: RateLimitSettings::default(),
        };
        let resource = super::agent(&agent);
        let decoded = match mw::Agent::decode(resource.resource.value.as_slice()) {
            Ok(decoded) => decoded,
            Err(e) => panic!("canonical agent encoding does not decode: {e}"),
        };
        assert_eq!(decoded.attributes.len(), 20);
        for (k, v) in &attributes {
            assert_eq!(decoded.attributes.get(k), Some(v));
        }
        assert_eq!(decoded.permissions, vec!["p".to_string()]);
    }
}
