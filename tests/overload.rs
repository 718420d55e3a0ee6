//! Ten times an agent's limits, from many connections, for a bounded time:
//! the overloaded agent gets only protocol-shaped answers (200, 429, 503) and
//! no more than its budget, memory stays bounded, another agent's latency
//! stays within a stated factor of its idle latency, and everything recovers
//! when the load stops.
//!
//! Stated bounds (also in docs/security.md): the test process's RSS grows by
//! less than 64 MiB; billing-bot's p99 under load is at most
//! max(10 x its idle p99, 100 ms) (debug build, 2 cores, other tests running).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestMesh, raw};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// support-triage's limits in this test.
const RATE: f64 = 20.0;
const BURST: usize = 20;
const MAX_CONCURRENT: usize = 10;
/// 10x: offered requests per second and connections.
const OFFERED_RATE: f64 = 10.0 * RATE;
const CONNECTIONS: usize = 10 * MAX_CONCURRENT;
const LOAD_FOR: Duration = Duration::from_secs(5);

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// `n` sequential requests from billing-bot; their latencies.
async fn billing_bot_latencies(mesh: &TestMesh, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let a = mesh
            .call("billing-bot", "GET", "/mcp://hello-skill/say-hello", "")
            .await;
        assert_eq!(a.status, 200, "billing-bot refused under load");
        out.push(started.elapsed());
    }
    out
}

/// One keep-alive connection sending paced requests until `until`; counts
/// answers by status and fails on anything but 200/429/503.
async fn load_connection(
    addr: String,
    every: Duration,
    until: Instant,
    ok: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
) {
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut tick = tokio::time::interval(every);
    while Instant::now() < until {
        tick.tick().await;
        let req = http::Request::get("/mcp://hello-skill/say-hello")
            .header("host", "x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send
            .send_request(req)
            .await
            .expect("an answer, not a reset");
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        match status {
            200 => ok.fetch_add(1, Ordering::Relaxed),
            429 | 503 => refused.fetch_add(1, Ordering::Relaxed),
            other => panic!("status {other} under overload"),
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_limits_is_contained_and_recovers() {
    let mesh = TestMesh::start_with(|yaml| {
        *yaml = yaml.replacen(
            "      requests_per_second: 5\n      burst: 10\n      max_concurrent: 20\n",
            &format!(
                "      requests_per_second: {RATE}\n      burst: {BURST}\n      max_concurrent: {MAX_CONCURRENT}\n"
            ),
            1,
        );
        // The other agent and the services' per-caller limits are out of
        // the way: only latency is measured for them.
        *yaml = yaml
            .replacen(
                "      requests_per_second: 50\n      burst: 100\n",
                "      requests_per_second: 100000\n      burst: 100000\n",
                1,
            )
            .replace(
                "      requests_per_second: 200\n      burst: 400\n",
                "      requests_per_second: 100000\n      burst: 100000\n",
            );
    })
    .await;
    // Warm up both paths (pooled mesh connections), then measure idle.
    billing_bot_latencies(&mesh, 20).await;
    let idle = p99(billing_bot_latencies(&mesh, 200).await);
    let rss_before = rss_bytes();

    let ok = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let until = started + LOAD_FOR;
    let every = Duration::from_secs_f64(CONNECTIONS as f64 / OFFERED_RATE);
    let st = mesh.outbound("support-triage");
    let load: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(load_connection(
                st.clone(),
                every,
                until,
                ok.clone(),
                refused.clone(),
            ))
        })
        .collect();
    let mut peak_rss = rss_before;
    // Measure the other agent while the load runs (about 2/3 of it).
    let during = billing_bot_latencies(&mesh, 150).await;
    peak_rss = peak_rss.max(rss_bytes());
    for task in load {
        task.await.expect("load connection failed");
        peak_rss = peak_rss.max(rss_bytes());
    }
    let elapsed = started.elapsed();
    let (ok, refused) = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));

    // The overloaded agent got its budget and no more.
    let budget = BURST + (RATE * elapsed.as_secs_f64()).ceil() as usize;
    assert!(ok <= budget, "{ok} admitted, budget {budget}");
    assert!(
        ok >= budget / 2,
        "only {ok} of a budget of {budget} admitted"
    );
    assert!(
        refused >= (OFFERED_RATE * LOAD_FOR.as_secs_f64()) as usize / 2,
        "{refused} refused"
    );
    // Memory stayed bounded.
    let grew = peak_rss.saturating_sub(rss_before);
    assert!(grew < 64 << 20, "RSS grew by {} MiB", grew >> 20);
    // The other agent was not starved.
    let loaded = p99(during);
    let bound = (idle * 10).max(Duration::from_millis(100));
    assert!(
        loaded <= bound,
        "billing-bot p99 {loaded:?} under load (idle {idle:?}, bound {bound:?})"
    );
    eprintln!(
        "overload: {ok} admitted / {refused} refused in {elapsed:?}; billing-bot p99 idle {idle:?}, \
         loaded {loaded:?}; RSS +{} KiB",
        grew >> 10
    );

    // Recovery: the agent is served again once its bucket refills, and its
    // listener has no connection left open.
    let back = common::eventually(Duration::from_secs(5), || async {
        raw::get(&st, "/mcp://hello-skill/say-hello", "")
            .await
            .status
            == Some(200)
    })
    .await;
    assert!(back.is_some(), "support-triage not served after the load");
    let admin = mesh.admin("support-triage");
    let drained = common::eventually(Duration::from_secs(5), || async {
        let metrics = raw::get(&admin, "/metrics", "").await.text;
        metrics.lines().any(|l| {
            l.starts_with(
                "meshward_connections_open{dataplane=\"support-triage\",listener=\"outbound\"}",
            ) && l.ends_with(" 0")
        })
    })
    .await;
    assert!(drained.is_some(), "outbound connections still counted open");
    mesh.shutdown().await;
}
