//! A client that stops reading cannot hold the control plane open: with an
//! ADS stream whose HTTP/2 window is zero (a frozen Envoy), stopping xDS
//! still finishes within the shutdown grace, so `meshward up` and
//! `meshward controlplane` exit on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestMesh;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshward_controlplane::server::SHUTDOWN_GRACE;
use prost::Message;
use rustls::pki_types::ServerName;

/// One gRPC message frame: no compression flag, big-endian length, body.
fn grpc_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&body);
    Bytes::from(frame)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_xds_does_not_wait_for_a_client_that_stopped_reading() {
    let mut mesh = TestMesh::start().await;
    let xds = mesh.up().info.controlplane.xds.clone();
    let svid = mesh
        .up()
        .identity_server()
        .test_ca()
        .issue(
            "spiffe://example.org/service/hello-skill",
            Duration::from_secs(600),
        )
        .unwrap();

    let tcp = tokio::net::TcpStream::connect(&xds).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(svid.client_config(&[b"h2"]).unwrap())
        .connect(ServerName::try_from("meshward.invalid").unwrap(), tcp)
        .await
        .unwrap();
    // A window of zero: the server can send headers but no data.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (body_tx, body_rx) =
        futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, std::io::Error>>();
    let request = DiscoveryRequest {
        node: Some(Node {
            id: "frozen".into(),
            ..Default::default()
        }),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    };
    body_tx
        .unbounded_send(Ok(Frame::data(grpc_frame(&request))))
        .unwrap();
    let req = http::Request::post(format!(
        "https://{xds}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(StreamBody::new(body_rx))
    .unwrap();
    // Response headers arrive (they are not flow-controlled): the stream is
    // open on the server, with its answer stuck behind the zero window.
    let response = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("response headers")
        .expect("stream accepted");
    assert_eq!(response.status(), 200);

    let started = Instant::now();
    let stopped = tokio::time::timeout(
        SHUTDOWN_GRACE + Duration::from_secs(10),
        mesh.up_mut().controlplane().stop_xds(),
    )
    .await;
    assert!(
        stopped.is_ok(),
        "stop_xds still waiting {:?} after it began",
        started.elapsed()
    );
    // Keep the client alive (and not reading) until here.
    drop((body_tx, response));
    mesh.shutdown().await;
}
