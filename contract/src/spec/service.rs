//! A service as the mesh knows it, and the CDS resource that carries it: an
//! Envoy `Cluster` (EDS over ADS) with Meshward's view of the service in
//! `typed_filter_metadata["meshward"]`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, config_source,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;

use super::encoding::{string_map, with_sorted_string_map};
use super::{
    BreakerSettings, ForwardClientCert, McpSettings, PathRules, RateLimitSettings, ServiceTimeouts,
};
use crate::pb::v1 as pb;
use crate::{rules, type_url};

/// How long a client waits for a TCP connection to a service's dataplane.
const CONNECT_TIMEOUT_SECS: i64 = 5;

/// A service (skill, tool, data source) reachable through the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// The SPIFFE ID its inbound dataplane presents.
    pub spiffe_id: String,
    /// Registry metadata: team, environment, data-classification, ...
    pub metadata: BTreeMap<String, String>,
    pub breaker: BreakerSettings,
    /// Limit the inbound dataplane applies to each caller identity.
    pub per_caller_limits: RateLimitSettings,
    /// Encoded slashes and path parameters: refused (default) or kept.
    pub paths: PathRules,
    /// What the inbound dataplane tells the service in
    /// `x-forwarded-client-cert`.
    pub forward_client_cert: ForwardClientCert,
    /// `protocol: mcp`: how its MCP endpoint is inspected; `None` for
    /// plain HTTP/gRPC services.
    pub mcp: Option<McpSettings>,
    /// How long callers wait for it, per path prefix.
    pub timeouts: ServiceTimeouts,
}

impl Service {
    /// The CDS resource.
    pub fn to_cluster(&self) -> Cluster {
        let (timeouts, routes) = self.timeouts.to_wire();
        let message = pb::ServiceMetadata {
            spiffe_id: self.spiffe_id.clone(),
            metadata: Default::default(),
            breaker: Some((&self.breaker).into()),
            per_caller_limits: Some((&self.per_caller_limits).into()),
            paths: Some(self.paths.into()),
            forward_client_cert: self.forward_client_cert.to_wire(),
            mcp: self.mcp.as_ref().map(McpSettings::to_wire),
            timeouts,
            routes,
        };
        // ServiceMetadata.metadata is field 2.
        let value = with_sorted_string_map(message.encode_to_vec(), 2, &self.metadata);
        let metadata = Any {
            type_url: type_url::SERVICE_METADATA.to_string(),
            value,
        };
        Cluster {
            name: self.name.clone(),
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
            connect_timeout: Some(PbDuration {
                seconds: CONNECT_TIMEOUT_SECS,
                nanos: 0,
            }),
            // One map entry only, so its encoding is deterministic.
            metadata: Some(Metadata {
                typed_filter_metadata: [(type_url::SERVICE_METADATA_KEY.to_string(), metadata)]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The service a CDS resource named `name` describes, checked field by
    /// field; the error is the NACK reason and names the field.
    pub fn from_cluster(name: &str, cluster: &Cluster) -> Result<Service, String> {
        if cluster.name != name {
            return Err(format!(
                "resource name {name:?} but cluster.name {:?}",
                cluster.name
            ));
        }
        let key = type_url::SERVICE_METADATA_KEY;
        let any = cluster
            .metadata
            .as_ref()
            .and_then(|m| m.typed_filter_metadata.get(key))
            .ok_or_else(|| format!("metadata.typed_filter_metadata[{key:?}] is missing"))?;
        if any.type_url != type_url::SERVICE_METADATA {
            return Err(format!(
                "metadata.typed_filter_metadata[{key:?}] type_url is {:?}, expected {:?}",
                any.type_url,
                type_url::SERVICE_METADATA
            ));
        }
        let meta = pb::ServiceMetadata::decode(any.value.as_slice())
            .map_err(|e| format!("metadata.typed_filter_metadata[{key:?}] does not decode: {e}"))?;
        rules::spiffe_id(&meta.spiffe_id, None)
            .map_err(|e| format!("metadata spiffe_id {:?} {e}", meta.spiffe_id))?;
        Ok(Service {
            name: cluster.name.clone(),
            spiffe_id: meta.spiffe_id.clone(),
            metadata: string_map(&meta.metadata).map_err(|e| format!("metadata: {e}"))?,
            breaker: meta.breaker.as_ref().into(),
            per_caller_limits: RateLimitSettings::try_from(meta.per_caller_limits.as_ref())
                .map_err(|e| format!("metadata per_caller_limits: {e}"))?,
            paths: PathRules::try_from(meta.paths.as_ref()).map_err(|e| format!("metadata {e}"))?,
            forward_client_cert: ForwardClientCert::from_wire(meta.forward_client_cert)
                .map_err(|e| format!("metadata {e}"))?,
            mcp: meta
                .mcp
                .as_ref()
                .map(McpSettings::from_wire)
                .transpose()
                .map_err(|e| format!("metadata {e}"))?,
            timeouts: ServiceTimeouts::from_wire(meta.timeouts.as_ref(), &meta.routes)
                .map_err(|e| format!("metadata {e}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::spec::{PathAction, RouteTimeouts, Timeouts};

    fn service() -> Service {
        Service {
            name: "s".into(),
            spiffe_id: "spiffe://example.org/service/s".into(),
            metadata: (0..20)
                .map(|i| (format!("k{i}"), format!("v{i}")))
                .collect(),
            breaker: BreakerSettings::default(),
            per_caller_limits: RateLimitSettings {
                requests_per_second: 1.0,
                burst: 2,
                ..Default::default()
            },
            paths: PathRules {
                escaped_slashes: PathAction::Keep,
                path_parameters: PathAction::Reject,
            },
            forward_client_cert: ForwardClientCert::SanitizeSet,
            mcp: Some(McpSettings::default()),
            timeouts: ServiceTimeouts {
                default: Timeouts {
                    response: Duration::from_secs(2),
                    idle: Duration::from_secs(60),
                    total: Some(Duration::from_secs(600)),
                },
                routes: vec![RouteTimeouts {
                    prefix: "/stream".into(),
                    timeouts: Timeouts {
                        idle: Duration::from_secs(3600),
                        ..Timeouts::default()
                    },
                }],
            },
        }
    }

    #[test]
    fn clusters_round_trip_with_a_canonical_encoding() {
        let s = service();
        let cluster = s.to_cluster();
        assert_eq!(Service::from_cluster("s", &cluster), Ok(s.clone()));
        // Same content, same bytes: the version stays when nothing changed.
        assert_eq!(
            cluster.encode_to_vec(),
            service().to_cluster().encode_to_vec()
        );
        assert!(Service::from_cluster("other", &cluster).is_err());
    }

    #[test]
    fn cluster_checks_name_the_field() {
        let bare = Cluster {
            name: "s".into(),
            ..Default::default()
        };
        let err = Service::from_cluster("s", &bare).unwrap_err();
        assert!(err.contains("typed_filter_metadata"), "{err}");
        let bad_id = Service {
            spiffe_id: "spiffe://example.org/a/../b".into(),
            ..service()
        };
        let err = Service::from_cluster("s", &bad_id.to_cluster()).unwrap_err();
        assert!(err.contains("spiffe_id"), "{err}");
        let bad_rate = Service {
            per_caller_limits: RateLimitSettings {
                requests_per_second: f64::NAN,
                ..Default::default()
            },
            ..service()
        };
        let err = Service::from_cluster("s", &bad_rate.to_cluster()).unwrap_err();
        assert!(err.contains("per_caller_limits"), "{err}");
        // A bad timeout over xDS is a NACK naming the field, never a panic.
        let mut bad_timeouts = service();
        bad_timeouts.timeouts.routes[0].timeouts.idle = Duration::from_millis(500);
        let err = Service::from_cluster("s", &bad_timeouts.to_cluster()).unwrap_err();
        assert!(err.contains("routes[0].timeouts.idle"), "{err}");
        let mut bad_total = service();
        bad_total.timeouts.default.total = Some(Duration::from_secs(1));
        let err = Service::from_cluster("s", &bad_total.to_cluster()).unwrap_err();
        assert!(
            err.contains("timeouts.total must be at least response"),
            "{err}"
        );
    }
}
