//! Real Envoy 1.40 with its `ext_authz` filter pointed at a Meshward
//! dataplane, as an existing mesh would use Meshward: mTLS downstream
//! clients hold different SPIFFE IDs (SVIDs from the dev identity server's
//! CA; Envoy's own certificate and trust bundle over the dev server's SDS).
//! The policy is the reference bundle, wrapped by a test layer that adds
//! header mutations, a status and body of its own on denial, and a rule on
//! the JSON body Envoy forwards (`with_request_body`).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::envoy::{self, Envoy};
use common::net::free_port;
use common::{BILLING_BOT, SUPPORT_TRIAGE, TestMesh};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshward::UpOptions;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

const FRONT: &str = "spiffe://example.org/gateway/front";
const LIVE: Duration = Duration::from_secs(30);

/// The test layer over the reference bundle (`data.meshward.authz`).
const LAYER: &str = r#"package exttest

base := data.meshward.authz.decision

deletes if input.parsed_body.action == "delete"

decision := {
	"allowed": false,
	"http_status": 409,
	"body": "no deletes through the gateway",
	"headers": {"x-denied-by": "exttest"},
} if {
	base.allowed
	deletes
} else := object.union(base, {
	"headers": {"x-caller-team": input.meshward.caller.attributes.team},
	"request_headers_to_remove": ["x-secret"],
	"response_headers_to_add": {"x-decided-by": "meshward"},
}) if {
	base.allowed
} else := object.union(base, {
	"http_status": 451,
	"body": sprintf("denied: %s", [base.reason]),
	"headers": {"x-denied-by": "reference"},
})
"#;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Envoy's `ext_authz` filter, asking Meshward.
fn ext_authz_filter() -> Value {
    json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "grpc_service": {
                "envoy_grpc": { "cluster_name": "meshward" },
                "timeout": "2s"
            },
            "transport_api_version": "V3",
            "failure_mode_allow": false,
            "with_request_body": {
                "max_request_bytes": 8192,
                "allow_partial_message": true
            }
        }
    })
}

/// Envoy's `ratelimit` filter, asking Meshward.
fn rate_limit_filter() -> Value {
    json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": "meshward",
            "failure_mode_deny": true,
            "timeout": "2s",
            "rate_limit_service": {
                "grpc_service": { "envoy_grpc": { "cluster_name": "meshward" } },
                "transport_api_version": "V3"
            }
        }
    })
}

/// What an Envoy's HTTP connection manager runs.
struct Chain {
    /// HTTP filters, router last.
    filters: Vec<Value>,
    /// The route's action (cluster, rate limits).
    route: Value,
    /// Report every request to Meshward's access log service.
    access_log: bool,
}

/// Envoy: one mTLS listener (client SVIDs required) with `filters` before
/// the router, routing everything to hello-skill's backend with `route`'s
/// extra settings; `meshward` is the gRPC cluster of Meshward's service.
fn bootstrap(
    sds: &Path,
    listen: u16,
    admin: &str,
    meshward: &str,
    backend: &str,
    chain: Chain,
) -> Value {
    let Chain {
        filters,
        route,
        access_log,
    } = chain;
    let sds_config = json!({
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{ "envoy_grpc": { "cluster_name": "sds" } }]
        }
    });
    let h2 = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    });
    let cluster = |name: &str, address: Value, h2: Option<&Value>| {
        let mut c = json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": address } }] }]
            }
        });
        if let Some(h2) = h2 {
            c["typed_extension_protocol_options"] = h2.clone();
        }
        c
    };
    let socket = |hostport: &str| {
        let (host, port) = hostport.rsplit_once(':').unwrap();
        json!({ "socket_address": { "address": host, "port_value": port.parse::<u16>().unwrap() } })
    };
    let (admin_host, admin_port) = admin.rsplit_once(':').unwrap();
    json!({
        "node": { "id": "front", "cluster": "gateway" },
        "admin": { "address": { "socket_address": {
            "address": admin_host, "port_value": admin_port.parse::<u16>().unwrap() } } },
        "static_resources": {
            "listeners": [{
                "name": "front",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": listen } },
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "front",
                            "codec_type": "AUTO",
                            "route_config": {
                                "virtual_hosts": [{
                                    "name": "all",
                                    "domains": ["*"],
                                    "routes": [{ "match": { "prefix": "/" }, "route": route }]
                                }]
                            },
                            "http_filters": filters,
                            "access_log": if access_log { json!([access_logger()]) } else { json!([]) }
                        }
                    }],
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "alpn_protocols": ["h2", "http/1.1"],
                                "tls_certificate_sds_secret_configs": [
                                    { "name": "default", "sds_config": sds_config }
                                ],
                                "validation_context_sds_secret_config": {
                                    "name": "spiffe://example.org",
                                    "sds_config": sds_config
                                }
                            }
                        }
                    }
                }]
            }],
            "clusters": [
                cluster("sds", json!({ "pipe": { "path": sds } }), Some(&h2)),
                cluster("meshward", socket(meshward), Some(&h2)),
                cluster("backend", socket(backend), None),
            ]
        }
    })
}

/// Envoy's gRPC access logger, reporting every request to Meshward (the
/// outcomes its breakers hear) at once.
fn access_logger() -> Value {
    json!({
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": "meshward",
                "grpc_service": { "envoy_grpc": { "cluster_name": "meshward" } },
                "transport_api_version": "V3",
                "buffer_flush_interval": "0.01s",
                "buffer_size_bytes": 1
            }
        }
    })
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        }
    })
}

/// An answer through Envoy.
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    /// The demo skill's echo of what it received.
    fn echo(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not the skill's echo ({e}): {} {}", self.status, self.body))
    }
}

/// One h2 request over mTLS as `client`.
async fn send(
    addr: &str,
    client: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("front.invalid").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://hello-skill{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A mesh with its authorizer, and an Envoy in front of hello-skill.
struct Front {
    mesh: TestMesh,
    envoy: Envoy,
    addr: String,
}

impl Front {
    /// `service`: which of the authorizer's addresses the `meshward`
    /// cluster points at.
    async fn start(
        binary: &Path,
        edit: impl FnOnce(&mut String) + Send + 'static,
        service: fn(&meshward::AuthorizerInfo) -> Option<String>,
        filters: Vec<Value>,
        route: Value,
        access_log: bool,
    ) -> Front {
        let mesh = TestMesh::start_with_options(edit, |opts: &mut UpOptions| {
            opts.ext_authz = Some("127.0.0.1:0".parse().unwrap());
            opts.rate_limit = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let up = mesh.up();
        let meshward = up
            .info
            .authorizer
            .as_ref()
            .and_then(service)
            .expect("the authorizer runs");
        let backend = up
            .info
            .services
            .iter()
            .find(|s| s.name == "hello-skill")
            .unwrap()
            .backend
            .clone();
        let sds = up.identity_server().register(FRONT).await.unwrap();
        let listen = free_port();
        let admin = format!("127.0.0.1:{}", free_port());
        let config = bootstrap(
            &sds,
            listen,
            &admin,
            &meshward,
            &backend,
            Chain {
                filters,
                route,
                access_log,
            },
        )
        .to_string();
        let mut envoy = Envoy::start(binary, mesh.dir.path(), "front", &config, admin);
        envoy.wait_live(LIVE).await;
        Front {
            mesh,
            envoy,
            addr: format!("127.0.0.1:{listen}"),
        }
    }

    /// A client presenting an SVID for `id` from the mesh's CA.
    fn client(&self, id: &str) -> Arc<rustls::ClientConfig> {
        self.mesh
            .up()
            .identity_server()
            .test_ca()
            .issue(id, Duration::from_secs(600))
            .unwrap()
            .client_config(&[b"h2"])
            .unwrap()
    }

    async fn get(&self, client: &Arc<rustls::ClientConfig>, path: &str) -> Reply {
        send(&self.addr, client, "GET", path, &[], "")
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.envoy.log_tail()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_asks_meshward() {
    let Some(binary) = envoy::find() else { return };
    let policies = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        policies.path(),
    );
    std::fs::write(policies.path().join("exttest.rego"), LAYER).unwrap();
    // The extra layer reads the request body, which no decision cache can
    // key on: this copy of the bundle declares none (with the declaration,
    // the bundle is refused, naming exttest.rego and the field).
    std::fs::remove_file(policies.path().join("meshward/decision_cache/data.json")).unwrap();
    let policy_dir = policies.path().display().to_string();
    let front = Front::start(
        &binary,
        move |yaml| {
            *yaml = yaml
                .replace("dir: policies", &format!("dir: {policy_dir}"))
                .replace(
                    "decision: data.meshward.authz.decision",
                    "decision: data.exttest.decision",
                )
                // Each caller may make 6 calls to hello-skill at once, then
                // one every 10 s: enough to see one caller limited while
                // another still flows.
                .replacen(
                    "      requests_per_second: 200\n      burst: 400\n",
                    "      requests_per_second: 0.1\n      burst: 6\n",
                    1,
                );
        },
        |a| a.ext_authz.clone(),
        vec![ext_authz_filter(), router()],
        json!({ "cluster": "backend" }),
        false,
    )
    .await;
    let addr = front.addr.clone();
    let triage = front.client(SUPPORT_TRIAGE);
    let billing = front.client(BILLING_BOT);
    let unknown = front.client("spiffe://example.org/agent/stranger");

    // Allowed: the policy's header mutations reach the upstream (the skill
    // echoes what it received) and the client.
    let r = send(
        &addr,
        &triage,
        "POST",
        "/say-hello",
        &[
            ("x-secret", "s3cret"),
            ("content-type", "application/json"),
            // Forged mesh headers: replaced by what the mesh verified.
            ("x-agent-id", BILLING_BOT),
            ("x-agent-team", "finance"),
            ("x-agent_type", "forged"),
        ],
        r#"{"action":"greet"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{} {}", r.body, front.envoy.log_tail());
    let echo = r.echo();
    assert_eq!(echo["headers"]["x-caller-team"], "customer-success");
    assert!(echo["headers"].get("x-secret").is_none(), "{echo}");
    assert_eq!(echo["headers"]["x-agent-id"], SUPPORT_TRIAGE);
    assert_eq!(echo["headers"]["x-agent-team"], "customer-success");
    assert_eq!(echo["headers"]["x-agent-type"], "support");
    assert!(echo["headers"].get("x-agent_type").is_none(), "{echo}");
    assert_eq!(r.headers["x-decided-by"], "meshward");

    // Denied by the reference policy: the status and body the policy chose.
    let r = send(&addr, &unknown, "GET", "/say-hello", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 451, "{}", r.body);
    assert!(
        r.body.starts_with("denied: ") && r.body.contains("not a registered agent"),
        "{}",
        r.body
    );
    assert_eq!(r.headers["x-denied-by"], "reference");
    assert_eq!(r.headers["x-meshward-refusal"], "forbidden");

    // The JSON body Envoy forwards reaches input.parsed_body.
    let r = send(
        &addr,
        &triage,
        "POST",
        "/say-hello",
        &[("content-type", "application/json")],
        r#"{"action":"delete"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body, "no deletes through the gateway");

    // A non-canonical path is judged in its canonical form.
    let r = send(&addr, &billing, "GET", "/x/../say-hello", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // An encoded slash has no canonical form: 400 before any policy.
    let r = send(&addr, &billing, "GET", "/say%2Fhello", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);

    // Per identity: support-triage drains its budget at hello-skill (two
    // calls above, one denial that also cost a token, three more here)
    // and is then refused with 429 and retry-after, while billing-bot,
    // with budget left, still flows.
    let mut limited = None;
    for _ in 0..10 {
        let r = send(&addr, &triage, "GET", "/say-hello", &[], "")
            .await
            .unwrap();
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let limited = limited.expect("support-triage was never limited");
    assert!(
        limited.headers.contains_key("retry-after"),
        "{:?}",
        limited.headers
    );
    assert_eq!(limited.headers["x-meshward-refusal"], "rate_limited");
    let r = send(&addr, &billing, "GET", "/say-hello", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "billing-bot: {}", r.body);

    // Meshward gone, failure_mode_allow false: Envoy denies.
    let Front { mesh, envoy, addr } = front;
    mesh.shutdown().await;
    let r = send(&addr, &billing, "GET", "/say-hello", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 403, "with Meshward stopped: {}", r.body);
    drop(envoy);
}

/// Envoy's `ratelimit` filter alone, descriptors built from the verified
/// peer certificate (a CEL descriptor on
/// `connection.uri_san_peer_certificate`): `caller` alone meters the
/// agent's own limit from `mesh.yaml`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_rate_limit_asks_meshward_per_identity() {
    let Some(binary) = envoy::find() else { return };
    let route = json!({
        "cluster": "backend",
        "rate_limits": [{
            "actions": [{
                "extension": {
                    "name": "envoy.rate_limit_descriptors.expr",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.rate_limit_descriptors.expr.v3.Descriptor",
                        "descriptor_key": "caller",
                        "text": "connection.uri_san_peer_certificate"
                    }
                }
            }]
        }]
    });
    let front = Front::start(
        &binary,
        |yaml| {
            // support-triage: 3 at once, then one every 10 s.
            *yaml = yaml.replacen(
                "      requests_per_second: 5\n      burst: 10\n",
                "      requests_per_second: 0.1\n      burst: 3\n",
                1,
            );
        },
        |a| a.rate_limit.clone(),
        vec![rate_limit_filter(), router()],
        route,
        false,
    )
    .await;
    let triage = front.client(SUPPORT_TRIAGE);
    let billing = front.client(BILLING_BOT);

    // Three within support-triage's burst, with what is left counted down.
    for left in ["2", "1", "0"] {
        let r = front.get(&triage, "/say-hello").await;
        assert_eq!(r.status, 200, "{} {}", r.body, front.envoy.log_tail());
        assert_eq!(r.headers["ratelimit-remaining"], left);
        assert_eq!(r.headers["ratelimit-limit"], "3");
    }
    // The fourth is over its limit: Envoy answers 429.
    let r = front.get(&triage, "/say-hello").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    // Another identity still flows.
    let r = front.get(&billing, "/say-hello").await;
    assert_eq!(r.status, 200, "billing-bot: {}", r.body);
    assert_eq!(r.headers["ratelimit-limit"], "100");
}

/// Breakers per (caller, service) in ext_authz mode: Envoy's gRPC access
/// logger reports each request's outcome to Meshward, keyed by the
/// decision id the check put in the dynamic metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_access_log_feeds_meshwards_breakers() {
    let Some(binary) = envoy::find() else { return };
    let front = Front::start(
        &binary,
        |yaml| {
            // Limits out of the way: only the breaker may refuse.
            *yaml = yaml.replacen(
                "      requests_per_second: 200\n      burst: 400\n",
                "      requests_per_second: 100000\n      burst: 100000\n",
                1,
            );
        },
        |a| a.ext_authz.clone(),
        vec![ext_authz_filter(), router()],
        json!({ "cluster": "backend" }),
        true,
    )
    .await;
    let billing = front.client(BILLING_BOT);
    let triage = front.client(SUPPORT_TRIAGE);

    // hello-skill's breaker opens after 5 consecutive failures. Outcomes
    // arrive a moment after each answer, so keep failing (bounded) until
    // the check itself refuses.
    let mut upstream_failures = 0;
    let mut opened = None;
    for _ in 0..40 {
        let r = front.get(&billing, "/status/503").await;
        assert_eq!(r.status, 503, "{}", r.body);
        match r.headers.get("x-meshward-refusal") {
            Some(kind) => {
                assert_eq!(kind, "circuit_open", "{}", r.body);
                opened = Some(r);
                break;
            }
            None => upstream_failures += 1,
        }
    }
    let opened = opened.expect("the breaker never opened");
    assert!(
        upstream_failures >= 5,
        "opened after {upstream_failures} failures"
    );
    assert!(opened.headers.contains_key("retry-after"));
    // A request that would succeed is refused too: it never reaches the skill.
    let r = front.get(&billing, "/status/200").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-meshward-refusal"], "circuit_open");
    // Another caller keeps flowing to the same service.
    let r = front.get(&triage, "/status/200").await;
    assert_eq!(r.status, 200, "{}", r.body);
}
