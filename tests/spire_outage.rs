//! SPIRE agent outages, against a real SPIRE: the agent is not there when a
//! dataplane starts, or dies (SIGKILL) under a running mesh.
//!
//! - Not there at start: the dataplane starts anyway, its `/ready` is 503
//!   naming the Workload API socket and the connection error, its outbound
//!   listener refuses with the same reason; when the agent starts, the same
//!   process becomes ready and serves.
//! - Gone later: the current SVIDs (short lifetime) keep serving and
//!   `/ready` stays 200 until they expire; then the dataplanes fail closed
//!   (outbound 503 naming the expired SVID, `/ready` 503, a log line); when
//!   the agent is back, the same processes recover.
//!
//! The agent is restarted as a restarted node would be: its keys were in
//! memory, so it attests again (new join token, same node alias). Waits
//! poll signals (`/ready`, `/config_dump`) with deadlines; the one wait on
//! the clock is for the SVIDs' own `notAfter`.
//!
//! Needs `scripts/install-spire.sh` and root; SKIPPED otherwise, or a
//! failure under `MESHWARD_REQUIRE_SPIRE=1`.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TestMesh;
use common::spire::{Load, SpireOptions, admin, free_port, get, poll};

const BILLING_BOT: &str = "spiffe://example.org/agent/billing-bot";
const HELLO_ID: &str = "spiffe://example.org/service/hello-skill";
/// Bound for each wait.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_started_without_a_spire_agent_becomes_ready_when_the_agent_starts() {
    let started = Instant::now();
    let Some(mut mesh) = TestMesh::start_spire().await else {
        return;
    };
    let sm = mesh.spire();
    tokio::task::block_in_place(|| sm.spire.stop_agent());
    let endpoint = sm.spire.endpoint();

    // A second sidecar for billing-bot starts while there is no agent.
    let outbound = format!("127.0.0.1:{}", free_port());
    let late_admin = sm.spawn_dataplane(
        "billing-bot",
        "billing-bot-late",
        &["--outbound".to_string(), outbound.clone()],
    );
    let pid = sm.pid("billing-bot-late");
    let want = format!("waiting for SVID from workload API at {endpoint}: ");
    let body = poll(WAIT, "/ready names the missing workload API", || async {
        match get(&format!("http://{late_admin}/ready")).await {
            Ok((503, body)) if body.contains(&want) && !body.contains("connecting") => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        body.contains("Connection refused") || body.contains("No such file"),
        "/ready names the socket error: {body}"
    );
    let (status, body) = get(&format!("http://{outbound}/mcp://hello-skill/x"))
        .await
        .expect("the outbound listener answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not_ready") && body.contains(&want),
        "outbound refusal names the reason: {body}"
    );

    // The agent starts: the same process becomes ready and serves.
    let sm = mesh.spire();
    tokio::task::block_in_place(|| sm.spire.restart_agent());
    poll(WAIT, "ready once the agent is there", || async {
        match get(&format!("http://{late_admin}/ready")).await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (status, body) = get(&format!("http://{outbound}/mcp://hello-skill/x"))
        .await
        .expect("the outbound listener answers");
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(echo["headers"]["x-agent-id"], BILLING_BOT);
    let sm = mesh.spire();
    sm.assert_running();
    assert_eq!(sm.pid("billing-bot-late"), pid, "not restarted");
    mesh.shutdown().await;
    eprintln!("total {:.1?}", started.elapsed());
}

/// The X509-SVID lifetime for the outage test: expiry comes within 20 s of
/// the agent's death, and the agent renews at about half (+10 s backdating).
const OUTAGE_TTL: u32 = 20;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

async fn not_after(admin_addr: &str) -> u64 {
    let (_, body) = admin(admin_addr, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&body).expect("config_dump JSON");
    dump["identity"]["not_after_unix"]
        .as_u64()
        .unwrap_or_else(|| panic!("no SVID expiry in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_agent_outage_serves_until_expiry_then_fails_closed_then_recovers() {
    let started = Instant::now();
    let Some(mut mesh) = TestMesh::start_spire_opts(
        |_| {},
        SpireOptions {
            x509_svid_ttl: Some(OUTAGE_TTL),
            ..SpireOptions::default()
        },
    )
    .await
    else {
        return;
    };
    let addrs = mesh.spire().addresses.clone();
    let agent_admin = addrs.admin["billing-bot"].clone();
    let hello_admin = addrs.admin["hello-skill"].clone();
    let url = format!(
        "http://{}/mcp://hello-skill/outage",
        addrs.outbound["billing-bot"]
    );
    let (status, body) = get(&url).await.expect("answer");
    assert_eq!(status, 200, "warm-up: {body}");
    let pids = (
        mesh.spire().pid("billing-bot"),
        mesh.spire().pid("hello-skill-inbound"),
    );

    // The agent dies. billing-bot's limit is 50/s: 2 × 20/s stays under it.
    let sm = mesh.spire();
    tokio::task::block_in_place(|| sm.spire.stop_agent());
    let killed = unix_now();
    let expiry = not_after(&agent_admin)
        .await
        .min(not_after(&hello_admin).await);
    assert!(
        expiry > killed + 2,
        "SVIDs expire at {expiry}, the agent died at {killed}: nothing left to serve with"
    );
    let load = Load::start(&url, 2, 20, Duration::from_secs(60));
    // Until shortly before the first SVID expires, everything keeps working.
    let serve_until = expiry - 1;
    while unix_now() < serve_until {
        for a in [&agent_admin, &hello_admin] {
            let (status, body) = admin(a, "/ready").await;
            assert_eq!(status, 200, "with a valid SVID, {a}: {body}");
        }
        let (ok, failed) = load.counts();
        assert_eq!(failed, 0, "requests failed with valid SVIDs ({ok} ok)");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = load.finish().await;
    eprintln!(
        "agent killed at {killed}, first SVID expiry {expiry}: {} ok, {} failed while serving on the current SVIDs ({:.1?})",
        report.ok, report.failed, report.elapsed
    );
    assert_eq!(report.failed, 0, "{:#?}", report.errors);
    assert!(report.ok > 0);

    // Expired: fail closed, saying why.
    let expired = format!("SVID for {BILLING_BOT} expired at ");
    let body = poll(WAIT, "agent dataplane not ready after expiry", || async {
        match get(&format!("http://{agent_admin}/ready")).await {
            Ok((503, body)) if body.contains(&expired) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(body.contains("workload API unavailable"), "{body}");
    let hello_expired = format!("SVID for {HELLO_ID} expired at ");
    poll(WAIT, "service dataplane not ready after expiry", || async {
        match get(&format!("http://{hello_admin}/ready")).await {
            Ok((503, body)) if body.contains(&hello_expired) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (status, body) = get(&url).await.expect("answer");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&expired) && body.contains("workload API unavailable"),
        "outbound names the expired SVID: {body}"
    );
    let sm = mesh.spire();
    poll(WAIT, "a clear log line", || async {
        let log = sm.log("billing-bot");
        match log
            .lines()
            .find(|l| l.contains("refusing traffic (fail closed)"))
        {
            Some(line) if line.contains(&expired) => Ok(()),
            _ => Err(sm.log_tail("billing-bot")),
        }
    })
    .await;

    // The agent is back: the same processes recover.
    let sm = mesh.spire();
    tokio::task::block_in_place(|| sm.spire.restart_agent());
    for a in [&agent_admin, &hello_admin] {
        poll(WAIT, "ready again", || async {
            match get(&format!("http://{a}/ready")).await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let (status, body) = get(&url).await.expect("answer");
    assert_eq!(status, 200, "after recovery: {body}");
    let sm = mesh.spire();
    sm.assert_running();
    assert_eq!(
        (sm.pid("billing-bot"), sm.pid("hello-skill-inbound")),
        pids,
        "not restarted"
    );
    mesh.shutdown().await;
    eprintln!("total {:.1?}", started.elapsed());
}
