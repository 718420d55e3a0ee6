//! The inbound listener admits only peers with a valid SVID of the mesh's
//! trust domain. Each bad certificate is refused in the TLS handshake, so no
//! HTTP request ever reaches the pipeline; a good one gets through (the
//! positive control that keeps these tests honest).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{SUPPORT_TRIAGE, TestMesh, raw};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshward_spire::test_util::{TestCa, TestSvid};
use rustls::pki_types::ServerName;

/// Sends one h2 request over mTLS presenting `config`'s client certificate.
/// `Err` carries why no HTTP answer came back.
async fn try_request(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<u16, String> {
    raw::mtls_h2(addr, config, "/hello")
        .await
        .map(|(status, _)| status)
}

fn config(svid: &TestSvid) -> Arc<rustls::ClientConfig> {
    svid.client_config(&[b"h2"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_peers_without_a_valid_svid() {
    let mesh = TestMesh::start().await;
    let addr = mesh.inbound("hello-skill");
    let ca = mesh.up().identity_server().test_ca();

    // Positive control: a valid SVID of the trust domain gets an answer.
    let good = ca.issue(SUPPORT_TRIAGE, Duration::from_secs(600)).unwrap();
    assert_eq!(try_request(&addr, config(&good)).await, Ok(200));

    let cases: Vec<(&str, TestSvid)> = vec![
        (
            "other trust domain",
            TestCa::new("evil.org")
                .unwrap()
                .issue(
                    "spiffe://evil.org/agent/support-triage",
                    Duration::from_secs(600),
                )
                .unwrap(),
        ),
        ("expired", ca.issue_expired(SUPPORT_TRIAGE).unwrap()),
        (
            "two URI SANs",
            ca.issue_with_uris(&[SUPPORT_TRIAGE, "spiffe://example.org/agent/billing-bot"])
                .unwrap(),
        ),
        ("no URI SAN", ca.issue_without_uri().unwrap()),
        ("CA as leaf", ca.issue_ca_as_leaf(SUPPORT_TRIAGE).unwrap()),
    ];
    for (what, svid) in cases {
        let got = try_request(&addr, config(&svid)).await;
        assert!(
            got.is_err(),
            "{what}: expected a refused handshake, got {got:?}"
        );
    }

    // No client certificate at all.
    let no_cert = meshward_spire::test_util::anonymous_client_config(&[b"h2"]).unwrap();
    let got = try_request(&addr, no_cert).await;
    assert!(
        got.is_err(),
        "no cert: expected a refused handshake, got {got:?}"
    );
    mesh.shutdown().await;
}

/// An h2 connection does not outlive the client certificate that opened it:
/// once the peer's SVID expires, the inbound dataplane closes the connection
/// (GOAWAY) and further requests on it fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_closes_connections_when_the_peer_certificate_expires() {
    let mesh = TestMesh::start().await;
    let addr = mesh.inbound("hello-skill");
    let ca = mesh.up().identity_server().test_ca();
    let short = ca.issue(SUPPORT_TRIAGE, Duration::from_secs(3)).unwrap();
    let not_after = meshward_spire::identity::leaf_not_after(&short.chain[0]).unwrap();

    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config(&short))
        .connect(ServerName::try_from("meshward.invalid").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = || {
        http::Request::get(format!("https://{addr}/hello"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let resp = send
        .send_request(request())
        .await
        .expect("valid certificate is served");
    assert_eq!(resp.status(), 200);

    // The connection ends by itself shortly after the certificate expires.
    let deadline = not_after + Duration::from_secs(5);
    let left = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let ended = tokio::time::timeout(left, conn).await;
    assert!(
        ended.is_ok(),
        "connection still open 5s after the peer certificate expired"
    );
    assert!(
        std::time::SystemTime::now() >= not_after,
        "closed before expiry"
    );
    assert!(send.send_request(request()).await.is_err());
    mesh.shutdown().await;
}
