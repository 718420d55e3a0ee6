//! The same outcomes for gRPC clients: a real tonic client talks h2c to the
//! agent's sidecar, routed by `:authority`, and gets gRPC statuses back.

mod common;

use common::{SUPPORT_TRIAGE, TestMesh};
use meshward_proto::meshward::demo::v1::EchoRequest;
use meshward_proto::meshward::demo::v1::echo_client::EchoClient;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_passes_through_with_identity() {
    let mesh = TestMesh::start().await;
    let mut c = client(&mesh, "support-triage", "hello-skill").await;
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
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_policy_denial_is_permission_denied() {
    let mesh = TestMesh::start().await;
    let mut c = client(&mesh, "support-triage", "billing-system").await;
    let err = c.echo(echo("hi", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("billing-system"),
        "{}",
        err.message()
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_rate_limit_is_resource_exhausted() {
    let mesh = TestMesh::start().await;
    let mut c = client(&mesh, "support-triage", "hello-skill").await;
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
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_breaker_open_is_unavailable() {
    let mesh = TestMesh::start().await;
    let mut c = client(&mesh, "billing-bot", "hello-skill").await;
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
    let mut other = client(&mesh, "support-triage", "hello-skill").await;
    assert!(other.echo(echo("hi", 0)).await.is_ok());
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unknown_service_is_not_found() {
    let mesh = TestMesh::start().await;
    let mut c = client(&mesh, "support-triage", "no-such-skill").await;
    let err = c.echo(echo("hi", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    mesh.shutdown().await;
}
