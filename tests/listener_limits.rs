//! Nothing local can starve a dataplane: half-open and trickling
//! connections are closed after the header-read timeout, idle ones after
//! the idle timeout, and each listener caps its connections (the outbound
//! one per client IP too) so one client cannot take every descriptor while
//! other agents wait. Limits come from `mesh.yaml`'s `listeners:` over xDS.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{TestMesh, raw};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// The demo mesh with `listeners:` set as given.
async fn mesh_with_listeners(listeners: &str) -> TestMesh {
    let listeners = listeners.to_string();
    TestMesh::start_with(move |yaml| {
        *yaml = yaml.replacen("agents:\n", &format!("listeners:\n{listeners}agents:\n"), 1);
    })
    .await
}

/// Waits until the dataplane behind `admin` applies the listener limits
/// (they arrive over xDS with the rest of the config).
async fn wait_for_limits(mesh: &TestMesh, name: &str, max_connections: u64) {
    // Raw and `Connection: close`, so no pooled connection stays behind to
    // count against the admin listener's cap.
    let admin = mesh.admin(name);
    let applied = common::eventually(Duration::from_secs(10), || async {
        let dump = raw::get(&admin, "/config_dump", "").await;
        dump.status == Some(200) && dump.json()["listeners"]["max_connections"] == max_connections
    })
    .await;
    assert!(
        applied.is_some(),
        "{name} never showed the configured limits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_and_trickling_connections_are_closed_after_the_header_read_timeout() {
    let mesh = mesh_with_listeners(
        "  header_read_timeout: 500ms\n  idle_timeout: 60s\n  max_connections: 500\n",
    )
    .await;
    wait_for_limits(&mesh, "support-triage", 500).await;
    wait_for_limits(&mesh, "hello-skill", 500).await;
    let listeners = [
        ("outbound", mesh.outbound("support-triage")),
        ("inbound (before any TLS byte)", mesh.inbound("hello-skill")),
        ("admin", mesh.admin("support-triage")),
    ];
    for (what, addr) in &listeners {
        let opened = std::time::Instant::now();
        // Connected, nothing sent.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        // A request head that never ends.
        let mut trickle = TcpStream::connect(addr).await.unwrap();
        trickle
            .write_all(b"GET /mcp://hello-skill/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        for (how, conn) in [("half-open", &mut idle), ("trickling", &mut trickle)] {
            let closed = raw::closed_within(conn, Duration::from_secs(5)).await;
            assert!(
                closed.is_some(),
                "{what}: {how} connection still open after 5s"
            );
            let took = opened.elapsed();
            assert!(
                took >= Duration::from_millis(400),
                "{what}: {how} closed after {took:?}, before the timeout"
            );
        }
    }
    // A prompt client is served on the same listeners.
    let ok = raw::get(&listeners[0].1, "/mcp://hello-skill/say-hello", "").await;
    assert_eq!(ok.status, Some(200), "{}", ok.text);
    // Request headers beyond max_request_headers_kb (60 KiB by default).
    let big = format!("x-big: {}\r\n", "a".repeat(70 * 1024));
    let refused = raw::get(&listeners[0].1, "/mcp://hello-skill/say-hello", &big).await;
    assert_eq!(refused.status, Some(431), "{}", refused.text);
    let metrics = raw::get(&listeners[2].1, "/metrics", "").await;
    assert!(
        metrics
            .text
            .contains("meshward_connections_timed_out_total{dataplane=\"support-triage\",listener=\"outbound\",reason=\"header_read\"}"),
        "{}",
        metrics.text
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_are_closed_after_the_idle_timeout() {
    let mesh = mesh_with_listeners(
        "  header_read_timeout: 5s\n  idle_timeout: 1s\n  max_connections: 501\n",
    )
    .await;
    wait_for_limits(&mesh, "support-triage", 501).await;
    let addr = mesh.outbound("support-triage");
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let started = std::time::Instant::now();
    let req = http::Request::get(format!("http://{addr}/mcp://hello-skill/say-hello"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    // Nothing in flight from here on: the server ends the connection.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "idle h2 connection still open after 10s");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
    mesh.shutdown().await;
}

/// A keep-alive HTTP/1.1 connection from `source` that has been served once
/// (so it is certainly accepted and counted), kept open by the caller.
async fn held_connection(
    source: &str,
    addr: &str,
) -> Option<(
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
)> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse::<SocketAddr>().unwrap())
        .unwrap();
    let tcp = socket.connect(addr.parse().unwrap()).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get("/mcp://hello-skill/say-hello")
        .header("host", "x")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .ok()?;
    let resp = resp.ok()?;
    assert_eq!(
        resp.status(),
        200,
        "a held connection from {source} was refused"
    );
    // Read the body to its end: hyper closes a client connection whose
    // response body was dropped unread, which would free its slot.
    resp.into_body().collect().await.ok()?;
    Some((send, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_hold_and_other_agents_keep_working() {
    let mesh = mesh_with_listeners(
        "  header_read_timeout: 30s\n  idle_timeout: 60s\n  max_connections: 12\n  \
         max_connections_per_client_ip: 6\n  admin_max_connections: 3\n",
    )
    .await;
    wait_for_limits(&mesh, "support-triage", 12).await;
    wait_for_limits(&mesh, "billing-bot", 12).await;
    // billing-bot's rate limit (burst 100) leaves room for every request here.
    let bb = mesh.outbound("billing-bot");

    // Per client IP: six from 127.0.0.1 are served, the seventh is closed.
    let mut held = Vec::new();
    for i in 0..6 {
        held.push(
            held_connection("127.0.0.1", &bb)
                .await
                .unwrap_or_else(|| panic!("connection {i}")),
        );
    }
    assert!(
        held_connection("127.0.0.1", &bb).await.is_none(),
        "a 7th connection from one IP was served"
    );
    // Per listener: six more from another address fill it; a third address
    // is then refused too.
    for i in 0..6 {
        held.push(
            held_connection("127.0.0.2", &bb)
                .await
                .unwrap_or_else(|| panic!("connection {i} from .2")),
        );
    }
    assert!(
        held_connection("127.0.0.3", &bb).await.is_none(),
        "a 13th connection to the listener was served"
    );
    // Another agent's sidecar is untouched.
    let other = mesh
        .call("support-triage", "GET", "/mcp://hello-skill/say-hello", "")
        .await;
    assert_eq!(other.status, 200);

    // Releasing connections makes room again.
    held.truncate(10);
    let room = common::eventually(Duration::from_secs(5), || async {
        held_connection("127.0.0.3", &bb).await.is_some()
    })
    .await;
    assert!(room.is_some(), "no room after two connections closed");

    // The admin listener has its own, smaller cap.
    let admin = mesh.admin("billing-bot");
    let mut admin_held = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(&admin).await.unwrap();
        tcp.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        admin_held.push(tcp);
    }
    let refused = common::eventually(Duration::from_secs(5), || async {
        let mut tcp = TcpStream::connect(&admin).await.unwrap();
        raw::closed_within(&mut tcp, Duration::from_millis(500))
            .await
            .is_some()
    })
    .await;
    assert!(refused.is_some(), "a 4th admin connection was kept open");
    drop(admin_held);
    let ready = common::eventually(Duration::from_secs(5), || async {
        raw::get(&admin, "/ready", "").await.status == Some(200)
    })
    .await;
    assert!(ready.is_some(), "admin did not recover");

    let metrics = raw::get(&admin, "/metrics", "").await.text;
    for reason in ["max_connections", "max_connections_per_client_ip"] {
        assert!(
            metrics.contains(&format!(
                "meshward_connections_refused_total{{dataplane=\"billing-bot\",listener=\"outbound\",reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{metrics}"
        );
    }
    drop(held);
    mesh.shutdown().await;
}
