//! Real Envoy 1.40 on Meshward's xDS, started from `meshward bootstrap
//! envoy`, with certificates over SDS from the dev identity server: as an
//! agent's outbound sidecar and as a service's inbound sidecar, over state
//! of the world and over delta ADS. Envoy's `/config_dump` is complete and
//! parseable, `/ready` is LIVE, traffic flows Envoy -> Meshward dataplane
//! and Meshward dataplane -> Envoy with SPIFFE IDs verified both ways, and
//! live config edits converge with no failed request on an unchanged route.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::envoy::{self, Envoy};
use common::net::free_port;
use common::{BILLING_BOT, TestMesh, eventually, raw, rewrite};
use meshward::UpOptions;

const ENVOY_AGENT: &str = "spiffe://example.org/agent/envoy-agent";
const ENVOY_SKILL: &str = "spiffe://example.org/service/envoy-skill";
const LIVE: Duration = Duration::from_secs(30);

/// The demo mesh plus an agent and a service whose sidecars are Envoys; the
/// service's endpoint is its Envoy's inbound listener.
fn add_envoy_members(yaml: &mut String, skill_inbound: &str) {
    // The steady loop below runs faster than hello-skill's per-caller limit
    // (200/s): lift it, so only a failure to converge can fail a request.
    *yaml = yaml.replacen(
        "      requests_per_second: 200\n      burst: 400\n",
        "      requests_per_second: 100000\n      burst: 100000\n",
        1,
    );
    *yaml = yaml.replacen(
        "agents:\n",
        &format!(
            "agents:
  - name: envoy-agent
    spiffe_id: {ENVOY_AGENT}
    attributes: {{ team: finance, type: analysis, environment: production }}
    permissions: [skills:invoke, billing:read, finance:access]
"
        ),
        1,
    );
    yaml.push_str(&format!(
        "
  - name: envoy-skill
    spiffe_id: {ENVOY_SKILL}
    endpoints: [\"{skill_inbound}\"]
    metadata: {{ team: platform, environment: production, data_classification: public }}
    timeouts: {{ idle: 42s, total: 1h }}
    routes:
      - prefix: /stream/
        timeouts: {{ idle: 43s }}
"
    ));
}

/// Starts an Envoy from `meshward bootstrap envoy` with `flags`.
fn bootstrap_envoy(
    binary: &std::path::Path,
    mesh: &TestMesh,
    name: &str,
    spiffe_id: &str,
    delta: bool,
    flags: &[&str],
) -> Envoy {
    let up = mesh.up();
    let sds = up.info.identity.sockets[spiffe_id].display().to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "bootstrap".to_string(),
        "envoy".into(),
        "--node".into(),
        spiffe_id.into(),
        "--node-id".into(),
        name.into(),
        "--xds".into(),
        up.info.controlplane.xds.clone(),
        "--sds".into(),
        sds,
        "--admin".into(),
        admin.clone(),
    ];
    if delta {
        args.push("--delta".into());
    }
    args.extend(flags.iter().map(|f| f.to_string()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshward"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8(out.stdout).unwrap();
    Envoy::start(binary, mesh.dir.path(), name, &config, admin)
}

async fn scenario(delta: bool) {
    let Some(binary) = envoy::find() else { return };
    let skill_inbound = format!("127.0.0.1:{}", free_port());
    let skill_inbound2 = skill_inbound.clone();
    let mesh = TestMesh::start_with_options(
        move |yaml| add_envoy_members(yaml, &skill_inbound2),
        |opts: &mut UpOptions| {
            opts.external_services.insert("envoy-skill".into());
        },
    )
    .await;
    let skill_backend = mesh
        .up()
        .info
        .services
        .iter()
        .find(|s| s.name == "envoy-skill")
        .unwrap()
        .backend
        .clone();

    let outbound = format!("127.0.0.1:{}", free_port());
    let mut agent = bootstrap_envoy(
        &binary,
        &mesh,
        "envoy-agent",
        ENVOY_AGENT,
        delta,
        &["--outbound", &outbound],
    );
    let mut skill = bootstrap_envoy(
        &binary,
        &mesh,
        "envoy-skill",
        ENVOY_SKILL,
        delta,
        &["--inbound", &skill_inbound, "--backend", &skill_backend],
    );
    agent.wait_live(LIVE).await;
    skill.wait_live(LIVE).await;

    // /config_dump is complete and parseable: no type Envoy does not know.
    for (envoy, listener) in [(&agent, "meshward_outbound"), (&skill, "meshward_inbound")] {
        let dump = envoy.admin_get("/config_dump").await;
        assert_eq!(dump.status, Some(200), "{}", dump.text);
        let json = dump.json();
        let text = json.to_string();
        assert!(
            text.contains(listener),
            "{listener} missing from config_dump"
        );
        assert!(
            !text.contains("meshward.v1."),
            "a Meshward type reached Envoy"
        );
        // Envoy took the services' timeouts: route `timeout` is `total`
        // (0s: none, streams live), `idle_timeout` is `idle`, and the
        // `/stream/` route comes first with its own. (serde_json sorts keys.)
        for (route, what) in [
            (
                r#""routes":[{"match":{"prefix":"/stream/"}"#,
                "the /stream/ route first",
            ),
            (
                r#""idle_timeout":"43s","timeout":"3600s""#,
                "the /stream/ route's timeouts",
            ),
            (
                r#""idle_timeout":"42s","timeout":"3600s""#,
                "envoy-skill's timeouts",
            ),
        ] {
            assert!(text.contains(route), "{listener}: {what} missing");
        }
    }
    let dump = agent.admin_get("/config_dump").await.json().to_string();
    assert!(
        dump.contains(r#""idle_timeout":"300s","timeout":"0s""#),
        "hello-skill's default timeouts missing"
    );

    // Envoy -> Meshward dataplane: routed by the /mcp:// prefix (stripped)
    // and by Host; the dataplane verified Envoy's SVID and says who called.
    let a = raw::get(&outbound, "/mcp://hello-skill/say-hello", "").await;
    assert_eq!(a.status, Some(200), "{}\n{}", a.text, agent.log_tail());
    assert_eq!(a.json()["path"], "/say-hello");
    assert_eq!(a.json()["headers"]["x-agent-id"], ENVOY_AGENT);
    let by_host = raw::http1(
        &outbound,
        "GET /x HTTP/1.1\r\nHost: hello-skill\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(by_host.status, Some(200), "{}", by_host.text);
    // Policy still decides at the dataplane (customer-success rules do not
    // apply to this finance agent, but an unknown service is no route).
    let unknown = raw::get(&outbound, "/mcp://nope/x", "").await;
    assert_eq!(unknown.status, Some(404), "{}", unknown.text);

    // Envoy -> Envoy and Meshward dataplane -> Envoy: the inbound Envoy
    // verified the caller's SVID and tells the app who it is, replacing a
    // forged header.
    let e2e = raw::get(&outbound, "/mcp://envoy-skill/hi", "").await;
    assert_eq!(e2e.status, Some(200), "{}\n{}", e2e.text, skill.log_tail());
    assert_eq!(e2e.json()["headers"]["x-agent-id"], ENVOY_AGENT);
    let from_mesh = mesh
        .call_with(
            "billing-bot",
            "GET",
            "/mcp://envoy-skill/hi",
            "",
            &[("x-agent-id", "spiffe://example.org/agent/forged")],
        )
        .await;
    assert_eq!(
        from_mesh.status,
        200,
        "{}",
        String::from_utf8_lossy(&from_mesh.body)
    );
    assert_eq!(from_mesh.json()["headers"]["x-agent-id"], BILLING_BOT);

    // Live edits under a steady loop on an unchanged route: add a service,
    // move its endpoint, remove another; every request on hello-skill
    // succeeds while Envoy converges.
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loop_task = {
        let (failures, sent, stop, outbound) = (
            failures.clone(),
            sent.clone(),
            stop.clone(),
            outbound.clone(),
        );
        tokio::spawn(async move {
            // Bounded: it stops when told, or after 2,000 requests.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = raw::get(&outbound, "/mcp://hello-skill/steady", "").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != Some(200) && failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("first failure: {}", r.text);
                }
            }
        })
    };
    let config = mesh.config_path();
    let route_status = |path: &'static str| {
        let outbound = outbound.clone();
        async move { raw::get(&outbound, path, "").await.status }
    };
    // Add: a new route appears (its endpoint is down: 503, not 404).
    rewrite(&config, |y| {
        y + "
  - name: late-service
    spiffe_id: spiffe://example.org/service/late-service
    endpoints: [\"127.0.0.1:9\"]
"
    });
    let added = eventually(LIVE, || async {
        route_status("/mcp://late-service/x").await == Some(503)
    })
    .await;
    assert!(added.is_some(), "new service never routed by Envoy");
    // Move its endpoint onto the Envoy-fronted skill's inbound listener
    // (the SAN check fails there: still 503, but through the new endpoint).
    rewrite(&config, |y| {
        y.replace("127.0.0.1:9\"", &format!("{skill_inbound}\""))
    });
    // Remove a service: its route goes away.
    rewrite(&config, |y| {
        let start = y.find("  - name: sentiment-analysis").unwrap();
        let end = y[start + 1..]
            .find("  - name: ")
            .map_or(y.len(), |i| start + 1 + i);
        format!("{}{}", &y[..start], &y[end..])
    });
    let removed = eventually(LIVE, || async {
        route_status("/mcp://sentiment-analysis/x").await == Some(404)
    })
    .await;
    assert!(removed.is_some(), "removed service still routed");
    stop.store(true, Ordering::Relaxed);
    loop_task.await.unwrap();
    let (sent, failures) = (
        sent.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    assert!(sent > 20, "only {sent} requests in the steady loop");
    assert_eq!(
        failures, 0,
        "{failures} of {sent} requests on an unchanged route failed"
    );
    drop((agent, skill));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecars_on_sotw_ads() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecars_on_delta_ads() {
    scenario(true).await;
}

/// A service's Envoy sidecar on Meshward's xDS with a Meshward authorizer
/// beside it (`meshward bootstrap envoy --ext-authz`): the inbound listener
/// asks it for every request, naming its own service, so the mesh's policy
/// decides at an Envoy-only service too, and failures feed its breakers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_sidecar_asks_its_meshward_authorizer() {
    let Some(binary) = envoy::find() else { return };
    let skill_inbound = format!("127.0.0.1:{}", free_port());
    let skill_inbound2 = skill_inbound.clone();
    let mesh = TestMesh::start_with_options(
        move |yaml| add_envoy_members(yaml, &skill_inbound2),
        |opts: &mut UpOptions| {
            opts.external_services.insert("envoy-skill".into());
            opts.ext_authz = Some("127.0.0.1:0".parse().unwrap());
        },
    )
    .await;
    let up = mesh.up();
    let authorizer = up
        .info
        .authorizer
        .as_ref()
        .and_then(|a| a.ext_authz.clone())
        .expect("the authorizer runs");
    let skill_backend = up
        .info
        .services
        .iter()
        .find(|s| s.name == "envoy-skill")
        .unwrap()
        .backend
        .clone();
    let mut skill = bootstrap_envoy(
        &binary,
        &mesh,
        "envoy-skill",
        ENVOY_SKILL,
        true,
        &[
            "--inbound",
            &skill_inbound,
            "--backend",
            &skill_backend,
            "--ext-authz",
            &authorizer,
        ],
    );
    skill.wait_live(LIVE).await;

    // A registered agent through its Meshward sidecar: allowed, and the app
    // hears the verified caller (from the authorizer and from Envoy).
    let ok = mesh
        .call("billing-bot", "GET", "/mcp://envoy-skill/hi", "")
        .await;
    assert_eq!(
        ok.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&ok.body),
        skill.log_tail()
    );
    assert_eq!(ok.json()["headers"]["x-agent-id"], BILLING_BOT);
    assert_eq!(ok.json()["headers"]["x-agent-team"], "finance");

    // A peer of the trust domain that the registry does not know: the
    // mTLS handshake alone would admit it; the authorizer denies it.
    let ca = up.identity_server().test_ca();
    let stranger = ca
        .issue(
            "spiffe://example.org/agent/stranger",
            Duration::from_secs(600),
        )
        .unwrap()
        .client_config(&[b"h2"])
        .unwrap();
    let (status, body) = raw::mtls_h2(&skill_inbound, stranger, "/hi").await.unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));

    // The check names envoy-skill whatever Host the caller sent.
    let known = ca
        .issue(BILLING_BOT, Duration::from_secs(600))
        .unwrap()
        .client_config(&[b"h2"])
        .unwrap();
    let (status, body) = raw::mtls_h2(&skill_inbound, known, "/hi").await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // The config_dump shows the filter and its cluster.
    let dump = skill.admin_get("/config_dump").await.json().to_string();
    assert!(dump.contains("envoy.filters.http.ext_authz"));
    assert!(dump.contains("meshward_ext_authz"));
}
