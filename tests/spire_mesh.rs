//! The foundation scenarios with identities from a real SPIRE: the control
//! plane, every dataplane and every skill run as separate processes, each
//! under its own unix user, and get their SVIDs from a SPIRE agent's
//! Workload API (unix workload attestor, entries from
//! `meshward spire entries --apply`). Same scenario bodies, same outcomes as
//! the in-process mesh (`tests/mesh_http.rs`, `tests/mesh_grpc.rs`).
//!
//! Needs `scripts/install-spire.sh` and root. Without them the tests say
//! SKIPPED on stderr, or fail under `MESHWARD_REQUIRE_SPIRE=1`.

mod common;

use common::TestMesh;

scenario_tests!(TestMesh::start_spire().await;
    http::allowed_request_reaches_the_skill_with_verified_identity,
    http::h2c_and_host_routing_work,
    http::policy_denial_is_403_naming_the_reason,
    http::burst_over_the_identity_limit_gets_429_with_retry_after,
    http::breaker_opens_per_identity_and_upstream,
    http::unknown_service_is_404,
    grpc::grpc_passes_through_with_identity,
    grpc::grpc_policy_denial_is_permission_denied,
    grpc::grpc_rate_limit_is_resource_exhausted,
    grpc::grpc_breaker_open_is_unavailable,
    grpc::grpc_unknown_service_is_not_found,
);

/// The registry really is SPIRE's: the entries exist for every member, a
/// second `--apply` changes nothing, and each dataplane serves under the
/// SPIFFE ID SPIRE issued to its uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_come_from_the_mesh_file_and_apply_is_idempotent() {
    let Some(mut mesh) = TestMesh::start_spire().await else {
        return;
    };
    let first = mesh.spire().entries_report.clone();
    // The control plane, 2 agents, 5 services and the authorizer.
    assert_eq!(first.matches("created").count(), 9, "{first}");
    let config = mesh.dir.path().join("mesh.yaml");
    let spire = &mesh.spire().spire;
    let again = tokio::task::block_in_place(|| spire.apply_entries(&config, &[]));
    assert_eq!(again.matches("unchanged").count(), 9, "{again}");
    assert!(
        !again.contains("created") && !again.contains("updated"),
        "{again}"
    );
    // A changed TTL is an update of the same entries, not new ones.
    let ttl =
        tokio::task::block_in_place(|| spire.apply_entries(&config, &["--x509-svid-ttl", "600"]));
    assert_eq!(ttl.matches("updated").count(), 9, "{ttl}");
    // Every process runs as root-less `mw-<name>` and is ready, so each got
    // its SVID from SPIRE by uid; the skill sees the SPIRE-issued identity.
    let a = mesh
        .call("billing-bot", "GET", "/mcp://hello-skill/x", "")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json()["headers"]["x-agent-id"],
        common::BILLING_BOT,
        "the inbound dataplane saw billing-bot's SPIRE-issued SVID"
    );
    mesh.shutdown().await;
}
