//! The foundation scenarios over HTTP/1.1 and h2c, through `meshward up`:
//! allowed, denied by policy, rate limited, breaker open, unknown service,
//! and header hygiene. The scenario bodies live in `common::scenarios` and
//! also run against SPIRE (`tests/spire_mesh.rs`). Also: the demo services'
//! APIs through the mesh, as `examples/` calls them.

mod common;

use common::{BILLING_BOT, SUPPORT_TRIAGE, TestMesh};

scenario_tests!(Some(TestMesh::start().await);
    http::allowed_request_reaches_the_skill_with_verified_identity,
    http::h2c_and_host_routing_work,
    http::policy_denial_is_403_naming_the_reason,
    http::burst_over_the_identity_limit_gets_429_with_retry_after,
    http::breaker_opens_per_identity_and_upstream,
    http::unknown_service_is_404,
);

/// The demo's services answer their own APIs through the mesh, see the
/// caller's verified identity, and the reference policy decides each call
/// (the steps of `examples/`). A service's own error carries no refusal
/// header: it is not the mesh's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_services_answer_their_apis_through_the_mesh() {
    let mesh = TestMesh::start().await;
    let st = "support-triage";
    let bb = "billing-bot";

    let a = mesh
        .call(st, "GET", "/mcp://customer-lookup/customers/c-1001", "")
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["name"], "Ada Lovelace");

    let a = mesh
        .call(
            st,
            "POST",
            "/mcp://sentiment-analysis/analyze",
            r#"{"text": "broken again, unacceptable"}"#,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["label"], "negative");

    let a = mesh
        .call(
            st,
            "POST",
            "/mcp://support-system/tickets",
            r#"{"customer_id": "c-1001", "subject": "App broken", "priority": "high"}"#,
        )
        .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let ticket = a.json();
    // The ticket records the identity the mesh verified, not a header the
    // agent could forge.
    assert_eq!(ticket["opened_by"], SUPPORT_TRIAGE);
    let id = ticket["id"].as_str().unwrap().to_string();
    let a = mesh
        .call(
            st,
            "GET",
            &format!("/mcp://support-system/tickets/{id}"),
            "",
        )
        .await;
    assert_eq!(a.json()["subject"], "App broken");
    // PATCH is a write: support-triage lacks data:write.
    let a = mesh
        .call(
            st,
            "PATCH",
            &format!("/mcp://support-system/tickets/{id}"),
            r#"{"status": "closed"}"#,
        )
        .await;
    assert_eq!(a.status, 403);
    assert!(a.json()["reason"].as_str().unwrap().contains("data:write"));

    let a = mesh
        .call(
            bb,
            "POST",
            "/mcp://billing-system/invoices/inv-2003/refund",
            r#"{"amount": 50}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["refund"]["requested_by"], BILLING_BOT);
    assert_eq!(a.json()["invoice"]["refundable"], 250.0);
    let a = mesh
        .call(
            bb,
            "POST",
            "/mcp://billing-system/invoices/inv-2003/refund",
            r#"{"amount": 251}"#,
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(a.headers.get("x-meshward-refusal").is_none());
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the 250.00 EUR still refundable")
    );
    // billing-bot lacks data:read, which customer-lookup requires.
    let a = mesh
        .call(bb, "GET", "/mcp://customer-lookup/customers/c-1001", "")
        .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.headers["x-meshward-refusal"], "forbidden");
    assert_eq!(
        a.json()["reason"],
        "customer-lookup requires permission data:read, which billing-bot lacks"
    );
    mesh.shutdown().await;
}

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
