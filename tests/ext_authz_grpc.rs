//! Hostile and edge-case calls straight to the authorizer's gRPC services
//! (no Envoy in between, so nothing cleans them up first): rate-limit
//! descriptors without a caller, with a foreign one, for an unknown
//! service, or asking for more than the burst; checks without attributes or
//! with a path that has no canonical form; the health service; and the
//! listener kinds (mTLS refusing a client without an SVID, Unix sockets)
//! and dry run.

mod common;

use std::time::Duration;

use common::{SUPPORT_TRIAGE, TestMesh, eventually};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, rate_limit::Unit};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use meshward::UpOptions;
use meshward_dataplane::extauthz::ExtAuthzSettings;
use meshward_dataplane::grpc_server::{GrpcEndpoint, GrpcListener, GrpcTls};
use meshward_dataplane::observe::Observability;
use meshward_dataplane::xds::XdsClientConfig;
use meshward_dataplane::{Dataplane, DataplaneOptions, ExtAuthzListener};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

async fn mesh() -> (TestMesh, Channel, Channel) {
    let mesh = TestMesh::start_with_options(
        |_| {},
        |opts: &mut UpOptions| {
            opts.ext_authz = Some("127.0.0.1:0".parse().unwrap());
            opts.rate_limit = Some("127.0.0.1:0".parse().unwrap());
        },
    )
    .await;
    let info = mesh.up().info.authorizer.clone().unwrap();
    let channel = |addr: Option<String>| async move {
        Channel::from_shared(format!("http://{}", addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let check = channel(info.ext_authz).await;
    let rls = channel(info.rate_limit).await;
    (mesh, check, rls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_descriptors_without_a_mesh_identity_are_over_limit() {
    let (mesh, check, rls) = mesh().await;
    let mut client = RateLimitServiceClient::new(rls);
    let response = client
        .should_rate_limit(RateLimitRequest {
            domain: "meshward".into(),
            descriptors: vec![
                descriptor(&[("generic_key", "everyone")]),
                descriptor(&[("caller", "spiffe://evil.org/agent/support-triage")]),
                descriptor(&[("caller", "not a spiffe id")]),
                descriptor(&[("caller", SUPPORT_TRIAGE), ("service", "no-such-service")]),
                descriptor(&[("caller", SUPPORT_TRIAGE)]),
            ],
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    let codes: Vec<i32> = response.statuses.iter().map(|s| s.code).collect();
    let over = Code::OverLimit as i32;
    assert_eq!(codes, [over, over, over, over, Code::Ok as i32]);
    // The metered one says what is left of support-triage's own limit
    // (5/s, burst 10); the refused ones name no limit.
    let ok = &response.statuses[4];
    let limit = ok.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (5, Unit::Second as i32)
    );
    assert_eq!(ok.limit_remaining, 9);
    assert!(response.statuses[0].current_limit.is_none());

    // Asking for more than the burst at once is over, and never UNKNOWN.
    let response = client
        .should_rate_limit(RateLimitRequest {
            domain: "meshward".into(),
            descriptors: vec![descriptor(&[("caller", SUPPORT_TRIAGE)])],
            hits_addend: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    assert!(
        response
            .response_headers_to_add
            .iter()
            .any(|h| h.key == "retry-after"),
        "{:?}",
        response.response_headers_to_add
    );

    // Health follows readiness (checked twice a second), for both services.
    for (channel, service) in [
        (check.clone(), "envoy.service.auth.v3.Authorization"),
        (
            client_channel(&mesh).await,
            "envoy.service.ratelimit.v3.RateLimitService",
        ),
    ] {
        let serving = eventually(Duration::from_secs(10), || {
            let mut health = HealthClient::new(channel.clone());
            async move {
                health
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
            }
        })
        .await;
        assert!(serving.is_some(), "{service} never SERVING");
    }
    mesh.shutdown().await;
}

async fn client_channel(mesh: &TestMesh) -> Channel {
    let addr = mesh
        .up()
        .info
        .authorizer
        .clone()
        .unwrap()
        .rate_limit
        .unwrap();
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_without_identity_or_a_canonical_path_are_denied() {
    let (mesh, check, _) = mesh().await;
    let mut client = AuthorizationClient::new(check);
    let denied =
        |r: &envoy_types::pb::envoy::service::auth::v3::CheckResponse| match &r.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(403, |s| s.code),
            other => panic!("not denied: {other:?}"),
        };

    // Nothing at all: no principal, so denied before any policy.
    let r = client
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.as_ref().unwrap().code, 7);
    assert_eq!(denied(&r), 403);

    // A registered caller, but an encoded slash: no canonical form.
    let request = |path: &str| CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                principal: SUPPORT_TRIAGE.into(),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "POST".into(),
                    host: "hello-skill".into(),
                    path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let r = client
        .check(request("/say%2Fhello"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&r), 400);
    // The control: the canonical spelling is allowed.
    let r = client
        .check(request("/say-hello"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
    mesh.shutdown().await;
}

const MTLS_AUTHORIZER: &str = "spiffe://example.org/meshward/ext-authz-mtls";
const DRY_AUTHORIZER: &str = "spiffe://example.org/meshward/ext-authz-dry";

/// An authorizer dataplane of its own beside the mesh's control plane.
async fn authorizer(
    mesh: &TestMesh,
    name: &str,
    spiffe_id: &str,
    ext_authz: ExtAuthzListener,
    rate_limit: Option<GrpcEndpoint>,
    observe: Observability,
) -> Dataplane {
    let up = mesh.up();
    let socket = up.identity_server().register(spiffe_id).await.unwrap();
    let identity = meshward_spire::IdentitySource::connect(
        &socket.display().to_string(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let dp = Dataplane::start(DataplaneOptions {
        name: name.into(),
        observe,
        identity: identity.into(),
        xds: XdsClientConfig {
            address: up.info.controlplane.xds.clone(),
            server_spiffe_id: Some(up.info.controlplane.spiffe_id.clone()),
            node_id: name.into(),
            cluster: "test".into(),
        },
        outbound: None,
        inbound: None,
        admin: None,
        local_upstream: None,
        metrics: None,
        ext_authz: Some(ext_authz),
        rate_limit,
    })
    .await
    .unwrap();
    dp.wait_ready(Duration::from_secs(20)).await.unwrap();
    dp
}

/// A gRPC channel over a Unix socket.
async fn unix_channel(path: std::path::PathBuf) -> Channel {
    tonic::transport::Endpoint::try_from("http://authorizer.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap()
}

fn triage_check(path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                principal: SUPPORT_TRIAGE.into(),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    host: "billing-system".into(),
                    path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// ext_authz over mTLS (the caller's SVID required), the rate-limit
/// service and a dry-run ext_authz on Unix sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizers_listen_on_mtls_and_unix_sockets_and_dry_run_allows() {
    let mesh = TestMesh::start_with(|yaml| {
        *yaml = yaml.replacen(
            "authorizers:\n",
            &format!("authorizers:\n  - {MTLS_AUTHORIZER}\n  - {DRY_AUTHORIZER}\n"),
            1,
        );
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mtls_addr = tcp.local_addr().unwrap().to_string();
    let rls_path = dir.path().join("rls.sock");
    let mtls = authorizer(
        &mesh,
        "authorizer-mtls",
        MTLS_AUTHORIZER,
        ExtAuthzListener {
            endpoint: GrpcEndpoint {
                listener: GrpcListener::Tcp(tcp),
                tls: GrpcTls::Mutual,
            },
            settings: ExtAuthzSettings::default(),
        },
        Some(GrpcEndpoint {
            listener: GrpcListener::Unix {
                listener: tokio::net::UnixListener::bind(&rls_path).unwrap(),
                path: rls_path.clone(),
            },
            tls: GrpcTls::Plain,
        }),
        Observability::default(),
    )
    .await;
    let dry_path = dir.path().join("dry.sock");
    let dry = authorizer(
        &mesh,
        "authorizer-dry",
        DRY_AUTHORIZER,
        ExtAuthzListener {
            endpoint: GrpcEndpoint {
                listener: GrpcListener::Unix {
                    listener: tokio::net::UnixListener::bind(&dry_path).unwrap(),
                    path: dry_path.clone(),
                },
                tls: GrpcTls::Plain,
            },
            settings: ExtAuthzSettings {
                dry_run: true,
                ..Default::default()
            },
        },
        None,
        Observability::default(),
    )
    .await;

    // mTLS: a client with an SVID of the trust domain gets decisions ...
    let ca = mesh.up().identity_server().test_ca();
    let svid = ca.issue(SUPPORT_TRIAGE, Duration::from_secs(600)).unwrap();
    let channel = meshward_spire::grpc::channel(&mtls_addr, svid.client_config(&[b"h2"]).unwrap())
        .await
        .unwrap();
    let r = AuthorizationClient::new(channel)
        .check(triage_check("/invoices"))
        .await
        .unwrap()
        .into_inner();
    // support-triage may not read billing-system's invoices.
    assert_eq!(r.status.unwrap().code, 7);
    // ... and one without a certificate gets no answer at all.
    let anonymous = meshward_spire::test_util::anonymous_client_config(&[b"h2"]).unwrap();
    let refused = match meshward_spire::grpc::channel(&mtls_addr, anonymous).await {
        Err(_) => true,
        Ok(channel) => AuthorizationClient::new(channel)
            .check(triage_check("/invoices"))
            .await
            .is_err(),
    };
    assert!(refused, "a client without an SVID was answered");

    // The rate-limit service on its Unix socket.
    let r = RateLimitServiceClient::new(unix_channel(rls_path).await)
        .should_rate_limit(RateLimitRequest {
            domain: "meshward".into(),
            descriptors: vec![descriptor(&[("caller", SUPPORT_TRIAGE)])],
            hits_addend: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32);

    // Dry run: the same denied request is allowed (the real decision is
    // logged), and a request the mesh refuses before policy too.
    let mut dry_client = AuthorizationClient::new(unix_channel(dry_path).await);
    let r = dry_client
        .check(triage_check("/invoices"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, 0);
    assert!(matches!(r.http_response, Some(HttpResponse::OkResponse(_))));
    let r = dry_client
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, 0);
    // ... but never with a forged identity header.
    let mut forged = triage_check("/invoices");
    let attributes = forged.attributes.as_mut().unwrap();
    attributes.source = None;
    let http = attributes.request.as_mut().unwrap().http.as_mut().unwrap();
    http.headers
        .insert("x-agent-id".into(), SUPPORT_TRIAGE.into());
    let r = dry_client.check(forged).await.unwrap().into_inner();
    match r.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(ok.headers_to_remove, ["x-agent-id"]);
            assert!(ok.headers.is_empty(), "{:?}", ok.headers);
        }
        other => panic!("{other:?}"),
    }

    mtls.shutdown().await;
    dry.shutdown().await;
    mesh.shutdown().await;
}

const TRACED_AUTHORIZER: &str = "spiffe://example.org/meshward/ext-authz-traced";

/// A check is a span in the checked request's trace, and its decision is a
/// decision-log event whose id the denied response carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_joins_the_callers_trace_and_the_decision_log() {
    use meshward_dataplane::observe::{DecisionLog, LineSink, LogTarget};
    use meshward_telemetry::testing;

    let mesh = TestMesh::start_with(|yaml| {
        *yaml = yaml.replacen(
            "authorizers:\n",
            &format!("authorizers:\n  - {TRACED_AUTHORIZER}\n"),
            1,
        );
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("decisions.log");
    let (tracing, spans) = testing::in_memory("authorizer-traced");
    let sink = LineSink::open("decision", &LogTarget::File(log_path.clone())).unwrap();
    let observe = Observability {
        tracing: tracing.clone(),
        access_log: None,
        decision_log: Some(
            DecisionLog::new(sink, DecisionLog::default_mask(), "authorizer-traced").unwrap(),
        ),
    };
    let path = dir.path().join("authz.sock");
    let _dp = authorizer(
        &mesh,
        "authorizer-traced",
        TRACED_AUTHORIZER,
        ExtAuthzListener {
            endpoint: GrpcEndpoint {
                listener: GrpcListener::Unix {
                    listener: tokio::net::UnixListener::bind(&path).unwrap(),
                    path: path.clone(),
                },
                tls: GrpcTls::Plain,
            },
            settings: ExtAuthzSettings::default(),
        },
        None,
        observe,
    )
    .await;

    let mut check = triage_check("/invoices");
    let http = check
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    http.headers
        .insert("traceparent".into(), format!("00-{trace_id}-{parent}-01"));
    http.headers
        .insert("authorization".into(), "Bearer check-secret".into());
    let r = AuthorizationClient::new(unix_channel(path).await)
        .check(check)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.as_ref().unwrap().code, 7, "{r:?}");
    let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
        panic!("{r:?}")
    };
    let decision_id = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-meshward-decision-id")
        .map(|h| h.value.clone())
        .expect("the denial names its decision");

    // The span: a child of the checked request's context, saying why.
    assert!(tracing.flush(Duration::from_secs(5)).await);
    let finished = spans.get_finished_spans().unwrap();
    let span = finished
        .iter()
        .find(|s| s.name == "envoy.service.auth.v3.Authorization/Check")
        .unwrap_or_else(|| panic!("no Check span: {finished:?}"));
    assert_eq!(span.span_context.trace_id().to_string(), trace_id);
    assert_eq!(span.parent_span_id.to_string(), parent);
    let attr = |k: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
            .unwrap_or_else(|| panic!("no {k} on {span:?}"))
    };
    assert_eq!(attr("rpc.system"), "grpc");
    assert_eq!(attr("rpc.method"), "Check");
    assert_eq!(attr("meshward.caller"), SUPPORT_TRIAGE);
    assert_eq!(attr("meshward.service"), "billing-system");
    assert_eq!(attr("meshward.decision"), "deny");
    assert_eq!(attr("meshward.refusal"), "forbidden");
    assert_eq!(attr("meshward.decision_id"), decision_id);

    // The decision-log event with the same id, the credential erased.
    let event = common::wait::poll(Duration::from_secs(10), "the decision event", || {
        let log_path = log_path.clone();
        let decision_id = decision_id.clone();
        async move {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|e| e["decision_id"] == decision_id.as_str())
                .ok_or_else(|| "not yet".to_string())
        }
    })
    .await;
    assert_eq!(
        event["input"]["attributes"]["request"]["http"]["path"],
        "/invoices"
    );
    assert!(!event.to_string().contains("check-secret"), "{event}");
    mesh.shutdown().await;
}
