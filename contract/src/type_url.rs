//! Type URLs, resource names and metadata keys of the ADS stream: what the
//! control plane sends under and what a dataplane subscribes to.

/// `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE_CONFIGURATION: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Meshward's policy bundle, [`crate::pb::v1::PolicyBundle`].
pub const POLICY_BUNDLE: &str = "type.googleapis.com/meshward.v1.PolicyBundle";
/// One registered agent, [`crate::pb::v1::Agent`].
pub const AGENT: &str = "type.googleapis.com/meshward.v1.Agent";
/// Settings every dataplane applies to itself, [`crate::pb::v1::DataplaneSettings`].
pub const DATAPLANE_SETTINGS: &str = "type.googleapis.com/meshward.v1.DataplaneSettings";
/// [`crate::pb::v1::ServiceMetadata`], inside a cluster's metadata.
pub const SERVICE_METADATA: &str = "type.googleapis.com/meshward.v1.ServiceMetadata";

/// Name of the mesh-wide policy bundle resource.
pub const POLICY_BUNDLE_NAME: &str = "default";
/// Name of the one `DataplaneSettings` resource.
pub const DATAPLANE_SETTINGS_NAME: &str = "default";
/// Key of Meshward's entry in `Cluster.metadata.typed_filter_metadata`.
pub const SERVICE_METADATA_KEY: &str = "meshward";

/// `Node.user_agent_name` of Meshward's own dataplanes: they receive
/// Meshward's resource types; every other client (Envoy, gRPC) only types
/// it knows.
pub const MESHWARD_USER_AGENT: &str = "meshward";

/// The last part of a type URL, for messages (`Cluster`, `Agent`, ...).
pub fn short(type_url: &str) -> &str {
    type_url.rsplit(['/', '.']).next().unwrap_or(type_url)
}
