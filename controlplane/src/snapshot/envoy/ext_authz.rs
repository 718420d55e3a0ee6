//! An Envoy sidecar's inbound side asking a Meshward authorizer beside it.
//!
//! When an Envoy node names an authorizer (node metadata
//! `meshward.ext_authz`, `meshward bootstrap envoy --ext-authz`), its
//! inbound listener runs Envoy's `ext_authz` filter against it (gRPC, h2,
//! plain text on the pod's loopback; failing closed), with the request body
//! up to 64 KiB for `input.parsed_body`, the service named in the route's
//! check settings, and Envoy's gRPC access log reporting each request's
//! outcome to the same authorizer so its breakers hear the upstream's
//! answers (docs/ext_authz.md).

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, GrpcService, grpc_service};
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    BufferSettings, CheckSettings, ExtAuthz, ExtAuthzPerRoute, ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use meshward_contract::spec::Endpoint;

use super::{any, duration, seconds};

/// The authorizer's cluster.
pub const CLUSTER: &str = "meshward_ext_authz";
/// Envoy's name for the filter (and its dynamic-metadata namespace).
pub const FILTER: &str = "envoy.filters.http.ext_authz";
/// What Meshward's ext_authz reads the destination service from.
pub const SERVICE_CONTEXT_KEY: &str = "meshward_service";
/// Request body Envoy buffers for the check.
const MAX_BODY: u32 = 64 * 1024;

fn grpc() -> GrpcService {
    GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: CLUSTER.to_string(),
                ..Default::default()
            },
        )),
        timeout: Some(seconds(2)),
        ..Default::default()
    }
}

/// The `ext_authz` filter, failing closed.
pub fn filter() -> HttpFilter {
    let config = ExtAuthz {
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: false,
        with_request_body: Some(BufferSettings {
            max_request_bytes: MAX_BODY,
            allow_partial_message: true,
            ..Default::default()
        }),
        services: Some(ext_authz::Services::GrpcService(grpc())),
        ..Default::default()
    };
    HttpFilter {
        name: FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

/// The route's check settings: which service the check is for.
pub fn per_route(service: &str) -> Any {
    any(&ExtAuthzPerRoute {
        r#override: Some(ext_authz_per_route::Override::CheckSettings(
            CheckSettings {
                context_extensions: [(SERVICE_CONTEXT_KEY.to_string(), service.to_string())].into(),
                ..Default::default()
            },
        )),
    })
}

/// Envoy's gRPC access log to the authorizer: the outcomes its breakers
/// hear, flushed at once so a breaker opens on time.
pub fn outcome_log() -> AccessLog {
    let config = HttpGrpcAccessLogConfig {
        common_config: Some(CommonGrpcAccessLogConfig {
            log_name: "meshward".to_string(),
            grpc_service: Some(grpc()),
            transport_api_version: ApiVersion::V3 as i32,
            buffer_flush_interval: Some(duration(std::time::Duration::from_millis(50))),
            buffer_size_bytes: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    AccessLog {
        name: "envoy.access_loggers.http_grpc".to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

/// The authorizer beside the Envoy: h2 in plain text.
pub fn cluster(at: &Endpoint) -> Cluster {
    super::plain_cluster(
        CLUSTER,
        at,
        http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Default::default(),
                    ),
                ),
            },
        ),
    )
}
