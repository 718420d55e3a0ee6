//! Validation of each resource type, the "validate, then ACK or NACK with the
//! reason" step.
//!
//! One [`Handler`] per type URL turns a resource into the value the dataplane
//! will use, or explains (naming the resource and field) why it cannot. The
//! checks themselves are the contract's ([`meshward_contract::spec`]), the
//! same ones `meshward validate` applies to `mesh.yaml`, so what the control
//! plane sends from a valid config is ACKed; only compiling the policy
//! bundle is the dataplane's own check. The cache applies a response only if
//! every resource in it validates, so a bad resource is NACKed and the
//! previous good state keeps serving.

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use meshward_contract::pb::v1 as mw;
use meshward_contract::spec::{self, Agent, Endpoint, ListenerLimits, Service};
use meshward_contract::type_url;
use prost::Message;

use crate::policy::CompiledPolicy;

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

/// CDS: a cluster must carry valid `typed_filter_metadata["meshward"]`.
#[derive(Debug)]
pub struct ClusterHandler;

impl Handler for ClusterHandler {
    type Item = Service;
    const TYPE_URL: &'static str = type_url::CLUSTER;

    fn validate(name: &str, resource: &Any) -> Result<Service, String> {
        let cluster: Cluster = decode(Self::TYPE_URL, resource)?;
        Service::from_cluster(name, &cluster)
    }
}

/// EDS: every endpoint an IP address or DNS name with a non-zero port.
#[derive(Debug)]
pub struct EndpointHandler;

impl Handler for EndpointHandler {
    type Item = Arc<Vec<Endpoint>>;
    const TYPE_URL: &'static str = type_url::CLUSTER_LOAD_ASSIGNMENT;

    fn validate(name: &str, resource: &Any) -> Result<Self::Item, String> {
        let cla: ClusterLoadAssignment = decode(Self::TYPE_URL, resource)?;
        spec::endpoints_of(name, &cla).map(Arc::new)
    }
}

/// Meshward `PolicyBundle`: well formed, and it must compile.
#[derive(Debug)]
pub struct PolicyHandler;

impl Handler for PolicyHandler {
    type Item = Arc<CompiledPolicy>;
    const TYPE_URL: &'static str = type_url::POLICY_BUNDLE;

    fn validate(name: &str, resource: &Any) -> Result<Self::Item, String> {
        let bundle: mw::PolicyBundle = decode(Self::TYPE_URL, resource)?;
        spec::check_policy_bundle(name, &bundle)?;
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
    const TYPE_URL: &'static str = type_url::DATAPLANE_SETTINGS;

    fn validate(name: &str, resource: &Any) -> Result<ListenerLimits, String> {
        let settings: mw::DataplaneSettings = decode(Self::TYPE_URL, resource)?;
        ListenerLimits::from_settings(name, &settings)
    }
}

/// Meshward `Agent`: named by its SPIFFE ID.
#[derive(Debug)]
pub struct AgentHandler;

impl Handler for AgentHandler {
    type Item = Arc<Agent>;
    const TYPE_URL: &'static str = type_url::AGENT;

    fn validate(name: &str, resource: &Any) -> Result<Self::Item, String> {
        let agent: mw::Agent = decode(Self::TYPE_URL, resource)?;
        Agent::from_resource(name, &agent).map(Arc::new)
    }
}

/// The checks of each type are the contract's, tested there field by field;
/// these show each handler applies them, and the envelope checks that are
/// the handlers' own (type URL, decoding).
#[cfg(test)]
mod tests {
    use meshward_contract::spec::{ForwardClientCert, PathAction, PathRules};

    use super::*;

    fn any<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn garbage_and_wrong_type_are_rejected() {
        let garbage = Any {
            type_url: type_url::AGENT.to_string(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(
            AgentHandler::validate("x", &garbage).is_err_and(|e| e.starts_with("does not decode"))
        );
        let wrong = Any {
            type_url: type_url::CLUSTER.to_string(),
            value: vec![],
        };
        assert!(AgentHandler::validate("x", &wrong).is_err_and(|e| e.contains("type_url")));
    }

    #[test]
    fn each_handler_applies_the_contract_checks() {
        let service = Service {
            name: "s".into(),
            spiffe_id: "spiffe://example.org/service/s".into(),
            metadata: Default::default(),
            breaker: Default::default(),
            per_caller_limits: Default::default(),
            paths: PathRules {
                escaped_slashes: PathAction::Keep,
                path_parameters: PathAction::Reject,
            },
            forward_client_cert: ForwardClientCert::SanitizeSet,
            mcp: None,
            timeouts: Default::default(),
        };
        let cluster = any(type_url::CLUSTER, &service.to_cluster());
        assert_eq!(ClusterHandler::validate("s", &cluster), Ok(service.clone()));
        assert!(ClusterHandler::validate("t", &cluster).is_err());
        // Timeouts out of range or a route prefix that is not canonical:
        // a NACK naming the field, never a panic.
        let mut bad = service.clone();
        bad.timeouts.default.response = std::time::Duration::from_secs(2 * 3600);
        bad.timeouts.routes.push(spec::RouteTimeouts {
            prefix: "/a//b".into(),
            timeouts: Default::default(),
        });
        let err =
            ClusterHandler::validate("s", &any(type_url::CLUSTER, &bad.to_cluster())).unwrap_err();
        assert!(err.contains("timeouts.response must be between"), "{err}");
        assert!(err.contains("routes[0].prefix"), "{err}");

        let endpoints = vec![Endpoint::Dns {
            host: "hello-skill.meshward.svc".into(),
            port: 15006,
        }];
        let cla = any(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            &spec::load_assignment("s", &endpoints),
        );
        assert_eq!(
            EndpointHandler::validate("s", &cla).map(|e| e.to_vec()),
            Ok(endpoints)
        );
        let bad_host = vec![Endpoint::Dns {
            host: "my_svc.ns".into(),
            port: 8080,
        }];
        let cla = any(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            &spec::load_assignment("s", &bad_host),
        );
        assert!(EndpointHandler::validate("s", &cla).is_err());

        let limits = ListenerLimits {
            max_connections: 3,
            ..Default::default()
        };
        let settings = any(type_url::DATAPLANE_SETTINGS, &limits.to_settings());
        assert_eq!(SettingsHandler::validate("default", &settings), Ok(limits));
        assert!(SettingsHandler::validate("other", &settings).is_err());

        let id = "spiffe://example.org/agent/a";
        let agent = mw::Agent {
            name: "a".into(),
            spiffe_id: id.into(),
            ..Default::default()
        };
        let resource = any(type_url::AGENT, &agent);
        assert!(AgentHandler::validate(id, &resource).is_ok());
        assert!(AgentHandler::validate("a", &resource).is_err());

        let bundle = spec::policy_bundle(
            "r",
            &[(
                "authz.rego".into(),
                "package meshward.authz\n\ndefault decision := false\n".into(),
            )],
            "{}".into(),
            "data.meshward.authz.decision",
        );
        let resource = any(type_url::POLICY_BUNDLE, &bundle);
        assert!(PolicyHandler::validate("default", &resource).is_ok());
        assert!(PolicyHandler::validate("other", &resource).is_err());
        let broken = mw::PolicyBundle {
            modules: vec![mw::RegoModule {
                path: "authz.rego".into(),
                source: "package {{{".into(),
            }],
            ..bundle
        };
        let err = PolicyHandler::validate("default", &any(type_url::POLICY_BUNDLE, &broken));
        assert!(err.is_err_and(|e| e.starts_with("does not compile")));
    }
}
