//! The request path refuses what Envoy refuses, as an attacker on loopback
//! would try it: non-canonical spellings of a denied path, conflicting or
//! repeated `Host`, forged mesh headers in any spelling, broken chunking,
//! probing denied paths at full speed. Each scenario runs against
//! `meshward up` in this process; the inbound ones bypass the outbound
//! dataplane with a valid SVID of their own.

mod common;

use std::time::Duration;

use common::{BILLING_BOT, SUPPORT_TRIAGE, TestMesh, raw};

/// The breach report's requests and the rest of the family: support-triage
/// may not call `/admin` on hello-skill (`denied_path_prefixes`), and no
/// spelling of `/admin/users` may reach it.
const ADMIN_SPELLINGS: &[&str] = &[
    "/x/../admin/users",
    "/./admin/users",
    "/%61dmin/users",
    "/%2e/admin/users",
    "/%2E/admin/users",
    "//admin/users",
    "/%2Fadmin/users",
    "/%2fadmin/users",
    "/;/admin/users",
    "/admin;x=1/users",
    "/%5Cadmin/users",
    "/%5cadmin/users",
    "/adm%69n/users",
    "/admi%6E/users",
    "/x/%2e%2e/admin/users",
    "/x/.%2E/admin/users",
    "/%2e%2e/admin/users",
    "/../admin/users",
    "/admin%00/users",
];

/// The demo mesh with support-triage's small limit raised, so that dozens
/// of denied probes in a row are judged by policy, not throttled.
async fn generous_mesh() -> TestMesh {
    TestMesh::start_with(|yaml| {
        *yaml = yaml.replacen(
            "      requests_per_second: 5\n      burst: 10\n",
            "      requests_per_second: 1000\n      burst: 1000\n",
            1,
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_denied_path_is_refused_at_the_outbound() {
    let mesh = generous_mesh().await;
    let st = mesh.outbound("support-triage");

    // Controls: the plain path is denied by policy, an allowed one works.
    let plain = raw::get(&st, "/mcp://hello-skill/admin/users", "").await;
    assert_eq!(plain.status, Some(403), "{}", plain.text);
    let allowed = raw::get(&st, "/mcp://hello-skill/say-hello", "").await;
    assert_eq!(allowed.status, Some(200), "{}", allowed.text);

    for spelling in ADMIN_SPELLINGS {
        let target = format!("/mcp://hello-skill{spelling}");
        let answer = raw::get(&st, &target, "").await;
        assert!(
            matches!(answer.status, Some(400 | 403)),
            "{target}: {:?}\n{}",
            answer.status,
            answer.text
        );
    }
    // A backslash is refused too (lenient backends read it as `/`).
    let answer = raw::get(&st, "/mcp://hello-skill/\\admin/users", "").await;
    assert!(
        matches!(answer.status, Some(400 | 403)),
        "{:?}",
        answer.status
    );

    // Non-canonical spellings of an allowed path still work, and the
    // service receives the canonical form.
    for (target, seen) in [
        ("/mcp://hello-skill/./say-hello", "/say-hello"),
        ("/mcp://hello-skill/x/../say-hello?q=1", "/say-hello?q=1"),
        ("/mcp://hello-skill//say%2Dhello", "/say-hello"),
    ] {
        let answer = raw::get(&st, target, "").await;
        assert_eq!(answer.status, Some(200), "{target}: {}", answer.text);
        assert_eq!(answer.json()["path"], seen, "{target}");
    }
    // Refusals for non-canonical paths are 400 with the mesh's reason.
    let answer = raw::get(&st, "/mcp://hello-skill/%2Fadmin/users", "").await;
    assert_eq!(answer.status, Some(400));
    assert!(
        answer.text.contains("x-meshward-refusal: bad_request"),
        "{}",
        answer.text
    );
    assert!(answer.text.contains("encoded '/'"), "{}", answer.text);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_denied_path_is_refused_at_the_inbound() {
    let mesh = generous_mesh().await;
    let inbound = mesh.inbound("hello-skill");
    let svid = mesh
        .up()
        .identity_server()
        .test_ca()
        .issue(SUPPORT_TRIAGE, Duration::from_secs(600))
        .unwrap();
    let config = svid.client_config(&[b"h2"]).unwrap();

    let (status, _) = raw::mtls_h2(&inbound, config.clone(), "/admin/users")
        .await
        .unwrap();
    assert_eq!(status, 403, "control: the plain path is denied");
    for spelling in ADMIN_SPELLINGS {
        match raw::mtls_h2(&inbound, config.clone(), spelling).await {
            Ok((status, body)) => assert!(
                status == 400 || status == 403,
                "{spelling}: {status} {}",
                String::from_utf8_lossy(&body)
            ),
            // Only a client-side refusal to build the URI is acceptable.
            Err(e) => assert!(e.starts_with("request:"), "{spelling}: {e}"),
        }
    }
    let (status, body) = raw::mtls_h2(&inbound, config, "/x/.././say-hello")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/say-hello");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_must_be_single_and_agree_with_the_request_authority() {
    let mesh = TestMesh::start().await;
    let bb = mesh.outbound("billing-bot");
    let close = "Connection: close\r\n\r\n";

    let duplicate = raw::http1(
        &bb,
        &format!("GET /x HTTP/1.1\r\nHost: hello-skill\r\nHost: billing-system\r\n{close}"),
    )
    .await;
    assert_eq!(duplicate.status, Some(400), "{}", duplicate.text);

    let conflicting = raw::http1(
        &bb,
        &format!("GET http://billing-system/x HTTP/1.1\r\nHost: hello-skill\r\n{close}"),
    )
    .await;
    assert_eq!(conflicting.status, Some(400), "{}", conflicting.text);

    // Controls: absolute form with the same authority, and Host routing.
    let same = raw::http1(
        &bb,
        &format!("GET http://billing-system/x HTTP/1.1\r\nHost: billing-system:80\r\n{close}"),
    )
    .await;
    assert_eq!(same.status, Some(200), "{}", same.text);
    assert_eq!(same.json()["service"], "billing-system");
    let by_host = raw::http1(
        &bb,
        &format!("GET /x HTTP/1.1\r\nHost: hello-skill\r\n{close}"),
    )
    .await;
    assert_eq!(by_host.status, Some(200), "{}", by_host.text);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_headers_are_replaced_in_every_spelling() {
    let mesh = TestMesh::start().await;
    let st = mesh.outbound("support-triage");
    let forged = format!(
        "x_agent_id: {BILLING_BOT}\r\nx-agent_team: finance\r\nX_Agent-Type: admin\r\n\
         x-forwarded-client-cert: By=spiffe://evil.org/x;URI={BILLING_BOT}\r\n\
         x_forwarded_client_cert: URI={BILLING_BOT}\r\nx_meshward_refusal: none\r\n\
         x_request_id: forged\r\nx-kept_header: yes\r\n"
    );
    let answer = raw::get(&st, "/mcp://hello-skill/say-hello", &forged).await;
    assert_eq!(answer.status, Some(200), "{}", answer.text);
    let headers = answer.json()["headers"].clone();
    let headers = headers.as_object().unwrap();
    for (name, value) in headers {
        let normalized = name.replace('_', "-");
        if normalized.starts_with("x-agent-") {
            assert_eq!(name, &normalized, "{name} reached the service");
        }
        assert!(
            !normalized.starts_with("x-meshward-"),
            "{name} reached the service"
        );
        assert_ne!(normalized, "x-forwarded-client-cert", "{name}: {value}");
        if normalized == "x-request-id" {
            assert_eq!(name, "x-request-id");
        }
    }
    assert_eq!(headers["x-agent-id"], SUPPORT_TRIAGE);
    assert_eq!(headers["x-agent-team"], "customer-success");
    assert_eq!(headers["x-agent-type"], "support");
    assert_eq!(headers["x-kept_header"], "yes", "unrelated headers pass");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanitize_set_tells_the_service_the_verified_peer() {
    let mesh = TestMesh::start_with(|yaml| {
        *yaml = yaml.replace(
            "  - name: hello-skill\n    spiffe_id: spiffe://example.org/service/hello-skill\n",
            "  - name: hello-skill\n    spiffe_id: spiffe://example.org/service/hello-skill\n    forward_client_cert: sanitize_set\n",
        );
    })
    .await;
    let st = mesh.outbound("support-triage");
    let answer = raw::get(
        &st,
        "/mcp://hello-skill/say-hello",
        &format!("x-forwarded-client-cert: By=spiffe://evil.org/x;URI={BILLING_BOT}\r\n"),
    )
    .await;
    assert_eq!(answer.status, Some(200), "{}", answer.text);
    let xfcc = answer.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .expect("x-forwarded-client-cert set")
        .to_string();
    let (by, rest) = xfcc.split_once(";Hash=").unwrap();
    let (hash, uri) = rest.split_once(";URI=").unwrap();
    assert_eq!(by, "By=spiffe://example.org/service/hello-skill");
    assert_eq!(uri, SUPPORT_TRIAGE, "the verified peer, not the forged one");
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");

    // Other services keep the default: nothing forwarded.
    let answer = raw::get(
        &st,
        "/mcp://support-system/x",
        "x-forwarded-client-cert: By=forged\r\n",
    )
    .await;
    assert_eq!(answer.status, Some(200), "{}", answer.text);
    assert!(
        answer.json()["headers"]
            .get("x-forwarded-client-cert")
            .is_none()
    );
    mesh.shutdown().await;
}

/// A malformed chunked body is the client's error: 400, and never a breaker
/// event against the caller's own breaker (hello-skill opens after 5
/// consecutive failures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_body_is_400_and_never_trips_the_breaker() {
    let mesh = TestMesh::start().await;
    let bb = mesh.outbound("billing-bot");
    for i in 0..8 {
        let answer = raw::http1(
            &bb,
            "POST /mcp://hello-skill/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n",
        )
        .await;
        assert_ne!(answer.status, Some(503), "attempt {i}: {}", answer.text);
        if let Some(status) = answer.status {
            assert_eq!(status, 400, "attempt {i}: {}", answer.text);
        }
    }
    let after = mesh
        .call("billing-bot", "GET", "/mcp://hello-skill/status/200", "")
        .await;
    assert_eq!(
        after.status,
        200,
        "breaker opened on the client's own errors: {}",
        String::from_utf8_lossy(&after.body)
    );
    mesh.shutdown().await;
}

/// support-triage has 5 req/s with a burst of 10: probing a denied path
/// drains the same budget, so the probe turns into 429s and an allowed
/// request right after is throttled too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_cost_a_token_of_the_callers_limit() {
    let mesh = TestMesh::start().await;
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let a = mesh
            .call(
                "support-triage",
                "GET",
                "/mcp://hello-skill/admin/users",
                "",
            )
            .await;
        statuses.push(a.status.as_u16());
    }
    let denied = statuses.iter().filter(|s| **s == 403).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(denied + limited, 20, "{statuses:?}");
    // Burst 10 plus what refilled at 5/s while probing.
    let refill = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        denied <= 10 + refill,
        "{denied} denials got through: {statuses:?}"
    );
    assert!(limited >= 1, "probing was never throttled: {statuses:?}");
    let allowed = mesh
        .call("support-triage", "GET", "/mcp://hello-skill/say-hello", "")
        .await;
    assert_eq!(allowed.status, 429, "the budget was spent on denials");
    mesh.shutdown().await;
}
