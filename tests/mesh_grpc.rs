//! The same outcomes for gRPC clients: a real tonic client talks h2c to the
//! agent's sidecar, routed by `:authority`, and gets gRPC statuses back.
//! The scenario bodies live in `common::scenarios` and also run against
//! SPIRE (`tests/spire_mesh.rs`).

mod common;

use common::TestMesh;

scenario_tests!(Some(TestMesh::start().await);
    grpc::grpc_passes_through_with_identity,
    grpc::grpc_policy_denial_is_permission_denied,
    grpc::grpc_rate_limit_is_resource_exhausted,
    grpc::grpc_breaker_open_is_unavailable,
    grpc::grpc_unknown_service_is_not_found,
);
