//! Upstream timeouts through a real mesh (`meshward up`): hello-skill's
//! backend is a test server whose paths misbehave on purpose, and
//! `mesh.yaml` gives it `response: 500ms`, `idle: 1s`, and a `/long` route
//! with `response: 3s`.
//!
//! - `/headers-after-1s` answers its headers after 1s: a 504 refusal
//!   `upstream_timeout` outside `/long`, a 200 under it;
//! - `/stream` sends a chunk every 200ms for longer than `response`, then
//!   waits for the test to have seen the first chunk before it sends the
//!   last: it completes, delivered incrementally;
//! - `/silent` sends one chunk and goes quiet: the stream is aborted after
//!   `idle` and `meshward_upstream_timeouts_total{kind="idle"}` counts it;
//!   the gRPC `/demo.Stream/Silent` ends with `grpc-status: 4` instead.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{TestMesh, net};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// The bound on anything a test waits for.
const BOUND: Duration = Duration::from_secs(10);

/// What the test and the backend tell each other.
#[derive(Default)]
struct Signals {
    /// The test has read the first chunk of `/stream`.
    first_chunk_seen: Notify,
}

type Body = BoxBody<Bytes, Infallible>;

fn streamed(rx: mpsc::Receiver<Bytes>) -> Body {
    use futures::StreamExt;
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
    BodyExt::boxed(StreamBody::new(frames))
}

async fn backend(
    req: Request<Incoming>,
    signals: Arc<Signals>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    if path.ends_with("/headers-after-1s") {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return Ok(Response::new(
            http_body_util::Full::new(Bytes::from_static(b"late headers")).boxed(),
        ));
    }
    match path.as_str() {
        "/demo.Stream/Silent" => {
            // One gRPC message (empty), then quiet past `idle`.
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(&[0, 0, 0, 0, 0])).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = tx.send(Bytes::from_static(&[0, 0, 0, 0, 0])).await;
            });
            let mut resp = Response::new(streamed(rx));
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
            return Ok(resp);
        }
        "/stream" => {
            tokio::spawn(async move {
                // 6 x 200ms: well past `response`, never `idle` apart.
                for i in 0..6 {
                    if tx.send(Bytes::from(format!("{i},"))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // The last chunk only once the client has the first: a
                // proxy that buffered would make this wait run out.
                let last =
                    match tokio::time::timeout(BOUND, signals.first_chunk_seen.notified()).await {
                        Ok(()) => "last",
                        Err(_) => "buffered",
                    };
                let _ = tx.send(Bytes::from_static(last.as_bytes())).await;
            });
        }
        "/silent" => {
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first")).await;
                // Quiet well past `idle`; the mesh must not wait for this.
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = tx.send(Bytes::from_static(b"too late")).await;
            });
        }
        _ => {
            return Ok(Response::new(
                http_body_util::Full::new(Bytes::from_static(b"ok")).boxed(),
            ));
        }
    }
    Ok(Response::new(streamed(rx)))
}

/// Serves [`backend`] on a loopback port (bound before the mesh starts).
async fn start_backend(signals: Arc<Signals>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let signals = signals.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| backend(req, signals.clone()));
                // HTTP/1.1, and h2c for gRPC (what the inbound side speaks).
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

async fn mesh_with_backend(signals: Arc<Signals>) -> TestMesh {
    let backend = start_backend(signals).await;
    TestMesh::start_with(|yaml| {
        let id = "    spiffe_id: spiffe://example.org/service/hello-skill\n";
        assert!(yaml.contains(id));
        *yaml = yaml.replace(
            id,
            &format!(
                "{id}    backend: {backend}
    timeouts: {{ response: 500ms, idle: 1s }}
    routes:
      - prefix: /long/
        timeouts: {{ response: 3s }}
"
            ),
        );
    })
    .await
}

fn get(mesh: &TestMesh, path: &str) -> Request<http_body_util::Full<Bytes>> {
    Request::get(format!(
        "http://{}/mcp://hello-skill{path}",
        mesh.outbound("support-triage")
    ))
    .body(http_body_util::Full::new(Bytes::new()))
    .unwrap()
}

/// `meshward_upstream_timeouts_total` for hello-skill of `kind`, summed
/// over the agent's and the skill's dataplanes.
async fn timeouts_counted(mesh: &TestMesh, kind: &str) -> f64 {
    let mut sum = 0.0;
    // `meshward up` names a service's dataplane `<service>-inbound`.
    for (admin, dataplane) in [
        ("support-triage", "support-triage"),
        ("hello-skill", "hello-skill-inbound"),
    ] {
        let (_, text) = net::admin(&mesh.admin(admin), "/metrics").await;
        sum += net::metric(
            &text,
            "meshward_upstream_timeouts_total",
            &[
                ("dataplane", dataplane),
                ("service", "hello-skill"),
                ("kind", kind),
            ],
        );
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_is_a_504_refusal_and_a_route_prefix_overrides_it() {
    let mesh = mesh_with_backend(Arc::default()).await;

    let r = tokio::time::timeout(
        BOUND,
        mesh.call(
            "support-triage",
            "GET",
            "/mcp://hello-skill/headers-after-1s",
            "",
        ),
    )
    .await
    .expect("answered");
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["x-meshward-refusal"], "upstream_timeout");
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        r.json()["reason"].as_str().unwrap().contains("500ms"),
        "{}",
        r.json()
    );
    assert!(timeouts_counted(&mesh, "response").await >= 1.0);

    // Under `/long/` the route's 3s applies; its other limits are inherited.
    let r = tokio::time::timeout(
        BOUND,
        mesh.call(
            "support-triage",
            "GET",
            "/mcp://hello-skill/long/headers-after-1s",
            "",
        ),
    )
    .await
    .expect("answered");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, "late headers");
    // `/longer` is not under `/long/`.
    let r = tokio::time::timeout(
        BOUND,
        mesh.call(
            "support-triage",
            "GET",
            "/mcp://hello-skill/longer/headers-after-1s",
            "",
        ),
    )
    .await
    .expect("answered");
    assert_eq!(r.status, 504);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_sending_outlives_response_and_arrives_incrementally() {
    let signals = Arc::new(Signals::default());
    let mesh = mesh_with_backend(signals.clone()).await;
    let resp = tokio::time::timeout(BOUND, mesh.http1.request(get(&mesh, "/stream")))
        .await
        .expect("headers in time")
        .expect("sidecar answers");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = String::new();
    while let Some(frame) = tokio::time::timeout(BOUND, body.frame())
        .await
        .expect("a frame in time")
    {
        let frame = frame.expect("the stream is not cut");
        if let Some(data) = frame.data_ref() {
            if received.is_empty() {
                signals.first_chunk_seen.notify_one();
            }
            received.push_str(std::str::from_utf8(data).unwrap());
        }
    }
    // Complete, and `last` proves the client had the first chunk before the
    // backend sent it. (No metric check: the recorder is shared with the
    // other tests of this binary, which time out on purpose.)
    assert_eq!(received, "0,1,2,3,4,5,last");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_silent_beyond_idle_is_aborted_and_counted() {
    let mesh = mesh_with_backend(Arc::default()).await;
    let resp = tokio::time::timeout(BOUND, mesh.http1.request(get(&mesh, "/silent")))
        .await
        .expect("headers in time")
        .expect("sidecar answers");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let outcome = loop {
        match tokio::time::timeout(BOUND, body.frame())
            .await
            .expect("ends in time")
        {
            Some(Ok(frame)) => received.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d)),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    assert!(
        outcome.is_err(),
        "the client sees an incomplete body, not a clean end"
    );
    assert_eq!(received, b"first");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "aborted by `idle`, long before the backend's next chunk: {:?}",
        started.elapsed()
    );
    let counted = common::wait::poll(BOUND, "the idle timeout is counted", || async {
        let n = timeouts_counted(&mesh, "idle").await;
        if n >= 1.0 {
            return Ok(n);
        }
        let (_, text) = net::admin(&mesh.admin("hello-skill"), "/metrics").await;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("upstream_timeouts") || l.contains("requests_total"))
            .collect();
        Err(format!("{n}; {lines:#?}"))
    })
    .await;
    assert!(counted >= 1.0);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_grpc_stream_ends_with_deadline_exceeded() {
    let mesh = mesh_with_backend(Arc::default()).await;
    let req = Request::post(format!(
        "http://{}/mcp://hello-skill/demo.Stream/Silent",
        mesh.outbound("support-triage")
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::Full::new(Bytes::from_static(&[
        0, 0, 0, 0, 0,
    ])))
    .unwrap();
    let resp = tokio::time::timeout(BOUND, mesh.h2c.request(req))
        .await
        .expect("headers in time")
        .expect("sidecar answers");
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    let mut body = resp.into_body();
    let trailers = loop {
        match tokio::time::timeout(BOUND, body.frame())
            .await
            .expect("ends in time")
        {
            Some(Ok(frame)) if frame.is_trailers() => break frame.into_trailers().unwrap(),
            Some(Ok(_)) => {}
            other => panic!("expected trailers, got {other:?}"),
        }
    };
    assert_eq!(trailers["grpc-status"], "4", "{trailers:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    mesh.shutdown().await;
}
