//! The foundation scenarios over HTTP/1.1 and h2c, through `meshward up`:
//! allowed, denied by policy, rate limited, breaker open, unknown service,
//! and header hygiene.

mod common;

use common::{BILLING_BOT, SUPPORT_TRIAGE, TestMesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_request_reaches_the_skill_with_verified_identity() {
    let mesh = TestMesh::start().await;
    let a = mesh
        .call_with(
            "support-triage",
            "POST",
            "/mcp://hello-skill/say-hello",
            r#"{"name":"Ada"}"#,
            &[
                // Client-sent copies of mesh-asserted headers must not survive.
                ("x-agent-id", "spiffe://example.org/agent/billing-bot"),
                ("x-agent-team", "finance"),
                ("x-request-id", "forged-request-id"),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let echo = a.json();
    assert_eq!(echo["service"], "hello-skill");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/say-hello");
    assert_eq!(echo["body"], r#"{"name":"Ada"}"#);
    let h = &echo["headers"];
    assert_eq!(h["x-agent-id"], SUPPORT_TRIAGE);
    assert_eq!(h["x-agent-team"], "customer-success");
    assert_eq!(h["x-agent-type"], "support");
    assert_eq!(h["x-agent-environment"], "production");
    let rid = h["x-request-id"].as_str().expect("x-request-id set");
    assert_ne!(rid, "forged-request-id");
    assert!(uuid::Uuid::parse_str(rid).is_ok(), "{rid}");
    assert!(
        h["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-"))
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_host_routing_work() {
    let mesh = TestMesh::start().await;
    let a = mesh
        .call_h2("billing-bot", "GET", "/mcp://hello-skill/hi", "")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["headers"]["x-agent-id"], BILLING_BOT);

    let a = mesh
        .call_with(
            "billing-bot",
            "GET",
            "/v1/hello",
            "",
            &[("host", "hello-skill")],
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["path"], "/v1/hello");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denial_is_403_naming_the_reason() {
    let mesh = TestMesh::start().await;
    let a = mesh
        .call(
            "support-triage",
            "GET",
            "/mcp://billing-system/invoices",
            "",
        )
        .await;
    assert_eq!(a.status, 403);
    let body = a.json();
    assert_eq!(body["error"], "forbidden");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("billing-system"), "{reason}");
    // The same service is fine for the finance agent.
    let a = mesh
        .call("billing-bot", "GET", "/mcp://billing-system/invoices", "")
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_over_the_identity_limit_gets_429_with_retry_after() {
    let mesh = TestMesh::start().await;
    let mut ok = 0;
    let mut limited = 0;
    let mut retry_after = None;
    for _ in 0..200 {
        let a = mesh
            .call("support-triage", "GET", "/mcp://hello-skill/say-hello", "")
            .await;
        match a.status.as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                retry_after = a.headers.get("retry-after").cloned();
                assert_eq!(a.json()["error"], "rate_limited");
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&a.body)),
        }
    }
    assert!(ok >= 10, "the burst of 10 passes: ok={ok}");
    assert!(
        limited > 100,
        "most of 200 are limited at 5/s: limited={limited}"
    );
    let retry: u64 = retry_after
        .expect("retry-after")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // Another identity is not affected by support-triage's budget.
    let a = mesh
        .call("billing-bot", "GET", "/mcp://hello-skill/say-hello", "")
        .await;
    assert_eq!(a.status, 200);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_per_identity_and_upstream() {
    let mesh = TestMesh::start().await;
    // hello-skill's breaker opens after 5 consecutive failures.
    for i in 0..5 {
        let a = mesh
            .call("billing-bot", "GET", "/mcp://hello-skill/status/503", "")
            .await;
        assert_eq!(a.status, 503, "failure {i} comes from the skill");
        assert!(a.headers.get("x-meshward-refusal").is_none());
    }
    // Now the breaker answers at once; a request that would succeed upstream
    // is refused, so it never reached the skill.
    let a = mesh
        .call("billing-bot", "GET", "/mcp://hello-skill/status/200", "")
        .await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["x-meshward-refusal"], "circuit_open");
    assert_eq!(a.json()["error"], "circuit_open");
    assert!(a.headers.get("retry-after").is_some());
    // Other identities keep flowing to the same upstream.
    let a = mesh
        .call("support-triage", "GET", "/mcp://hello-skill/status/200", "")
        .await;
    assert_eq!(a.status, 200);
    // And billing-bot still reaches other upstreams.
    let a = mesh
        .call("billing-bot", "GET", "/mcp://sentiment-analysis/score", "")
        .await;
    assert_eq!(a.status, 200);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_404() {
    let mesh = TestMesh::start().await;
    let a = mesh
        .call("support-triage", "GET", "/mcp://no-such-skill/x", "")
        .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"], "not_found");
    assert!(
        a.json()["reason"]
            .as_str()
            .unwrap()
            .contains("no-such-skill")
    );
    let a = mesh.call("support-triage", "GET", "/plain-path", "").await;
    assert_eq!(a.status, 404, "a host that names no service");
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
