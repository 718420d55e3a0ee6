//! The foundation scenarios as functions of a running [`TestMesh`], so the
//! same assertions run against the in-process mesh (`tests/mesh_http.rs`,
//! `tests/mesh_grpc.rs`) and the SPIRE-backed one (`tests/spire_mesh.rs`).
//! [`scenario_tests!`](crate::scenario_tests) turns a list of them into tests.

/// `scenario_tests!(<expr yielding Option<TestMesh>>; http::name, grpc::name, ...)`
/// defines one `#[tokio::test]` per scenario: start a mesh, run the
/// scenario, shut down. A `None` mesh means the backend is unavailable and
/// was reported as skipped (or the test already failed, under
/// `MESHWARD_REQUIRE_SPIRE=1`).
#[macro_export]
macro_rules! scenario_tests {
    ($start:expr; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(mesh) = $start else { return };
                common::scenarios::$module::$name(&mesh).await;
                mesh.shutdown().await;
            }
        )*
    };
}

/// Over HTTP/1.1 and h2c: allowed, denied by policy, rate limited, breaker
/// open, unknown service, and header hygiene.
pub mod http {
    use super::super::{BILLING_BOT, SUPPORT_TRIAGE, TestMesh};

    pub async fn allowed_request_reaches_the_skill_with_verified_identity(mesh: &TestMesh) {
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
    }

    pub async fn h2c_and_host_routing_work(mesh: &TestMesh) {
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
    }

    pub async fn policy_denial_is_403_naming_the_reason(mesh: &TestMesh) {
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
    }

    pub async fn burst_over_the_identity_limit_gets_429_with_retry_after(mesh: &TestMesh) {
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
    }

    pub async fn breaker_opens_per_identity_and_upstream(mesh: &TestMesh) {
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
    }

    pub async fn unknown_service_is_404(mesh: &TestMesh) {
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
    }
}

/// The same outcomes for gRPC clients: a real tonic client talks h2c to the
/// agent's sidecar, routed by `:authority`, and gets gRPC statuses back.
pub mod grpc {
    use super::super::{SUPPORT_TRIAGE, TestMesh};
    use meshward_contract::pb::demo::EchoRequest;
    use meshward_contract::pb::demo::echo_client::EchoClient;
    use tonic::Code;
    use tonic::transport::{Channel, Endpoint};

    async fn client(mesh: &TestMesh, agent: &str, service: &str) -> EchoClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", mesh.outbound(agent)))
            .unwrap()
            .origin(format!("http://{service}").parse().unwrap())
            .connect()
            .await
            .expect("connect to sidecar");
        EchoClient::new(channel)
    }

    fn echo(message: &str, fail_with_code: i32) -> tonic::Request<EchoRequest> {
        let mut req = tonic::Request::new(EchoRequest {
            message: message.into(),
            fail_with_code,
        });
        // A forged identity header must be replaced by the verified one.
        req.metadata_mut().insert(
            "x-agent-id",
            "spiffe://example.org/agent/evil".parse().unwrap(),
        );
        req
    }

    pub async fn grpc_passes_through_with_identity(mesh: &TestMesh) {
        let mut c = client(mesh, "support-triage", "hello-skill").await;
        let reply = c.echo(echo("hi", 0)).await.expect("echo ok").into_inner();
        assert_eq!(reply.message, "hi");
        assert_eq!(reply.service, "hello-skill");
        assert_eq!(reply.headers["x-agent-id"], SUPPORT_TRIAGE);
        assert_eq!(reply.headers["x-agent-team"], "customer-success");
        assert!(reply.headers.contains_key("x-request-id"));
        // Upstream gRPC errors (trailers) pass through unchanged.
        let err = c.echo(echo("x", Code::NotFound as i32)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(
            err.message().contains("hello-skill failed"),
            "{}",
            err.message()
        );
    }

    pub async fn grpc_policy_denial_is_permission_denied(mesh: &TestMesh) {
        let mut c = client(mesh, "support-triage", "billing-system").await;
        let err = c.echo(echo("hi", 0)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains("billing-system"),
            "{}",
            err.message()
        );
    }

    pub async fn grpc_rate_limit_is_resource_exhausted(mesh: &TestMesh) {
        let mut c = client(mesh, "support-triage", "hello-skill").await;
        let mut exhausted = 0;
        let mut ok = 0;
        for _ in 0..60 {
            match c.echo(echo("hi", 0)).await {
                Ok(_) => ok += 1,
                Err(e) if e.code() == Code::ResourceExhausted => exhausted += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert!(ok >= 10, "ok={ok}");
        assert!(exhausted > 0, "exhausted={exhausted}");
    }

    pub async fn grpc_breaker_open_is_unavailable(mesh: &TestMesh) {
        let mut c = client(mesh, "billing-bot", "hello-skill").await;
        for _ in 0..5 {
            let err = c
                .echo(echo("x", Code::Unavailable as i32))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unavailable);
            assert!(
                err.message().contains("hello-skill failed"),
                "from the skill: {}",
                err.message()
            );
        }
        let err = c.echo(echo("would succeed", 0)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message().contains("circuit breaker open"),
            "{}",
            err.message()
        );
        // support-triage is unaffected.
        let mut other = client(mesh, "support-triage", "hello-skill").await;
        assert!(other.echo(echo("hi", 0)).await.is_ok());
    }

    pub async fn grpc_unknown_service_is_not_found(mesh: &TestMesh) {
        let mut c = client(mesh, "support-triage", "no-such-skill").await;
        let err = c.echo(echo("hi", 0)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}
