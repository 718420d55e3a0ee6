//! The foundation scenarios over HTTP/1.1 and h2c, through `meshward up`:
//! allowed, denied by policy, rate limited, breaker open, unknown service,
//! and header hygiene. The scenario bodies live in `common::scenarios` and
//! also run against SPIRE (`tests/spire_mesh.rs`).

mod common;

use common::{SUPPORT_TRIAGE, TestMesh};

scenario_tests!(Some(TestMesh::start().await);
    http::allowed_request_reaches_the_skill_with_verified_identity,
    http::h2c_and_host_routing_work,
    http::policy_denial_is_403_naming_the_reason,
    http::burst_over_the_identity_limit_gets_429_with_retry_after,
    http::breaker_opens_per_identity_and_upstream,
    http::unknown_service_is_404,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_json_describes_what_runs_where() {
    let mesh = TestMesh::start().await;
    let path = mesh.dir.path().join("state/up.json");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let agents = info["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    assert!(agents.iter().any(|a| a["spiffe_id"] == SUPPORT_TRIAGE));
    let services = info["services"].as_array().unwrap();
    assert_eq!(services.len(), 5);
    for s in services {
        let inbound: std::net::SocketAddr = s["inbound"].as_str().unwrap().parse().unwrap();
        assert!(inbound.ip().is_loopback());
        assert!(
            s["spiffe_id"]
                .as_str()
                .unwrap()
                .starts_with("spiffe://example.org/")
        );
    }
    for key in ["xds", "admin"] {
        let addr: std::net::SocketAddr =
            info["controlplane"][key].as_str().unwrap().parse().unwrap();
        assert_ne!(addr.port(), 0);
    }
    // Admin endpoints answer.
    let admin = &agents[0]["admin"];
    let ready = mesh
        .http1
        .get(
            format!("http://{}/ready", admin.as_str().unwrap())
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    mesh.shutdown().await;
}

/// Endpoints may be DNS names (Kubernetes Service names): dataplanes resolve
/// them when they connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_name_endpoints_are_resolved_when_connecting() {
    let mesh = common::TestMesh::start_with_options(
        |_| {},
        |opts| opts.advertise_host = Some("localhost".into()),
    )
    .await;
    let admin = mesh.admin("billing-bot");
    let resp = mesh
        .http1
        .get(format!("http://{admin}/config_dump").parse().unwrap())
        .await
        .unwrap();
    let dump = common::answer(resp).await.json();
    let hello = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "hello-skill")
        .unwrap()
        .clone();
    assert!(
        hello["endpoints"][0]
            .as_str()
            .unwrap()
            .starts_with("localhost:"),
        "{hello}"
    );
    let a = mesh
        .call("billing-bot", "GET", "/mcp://hello-skill/by-name", "")
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["path"], "/by-name");
    mesh.shutdown().await;
}
