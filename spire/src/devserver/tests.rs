use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use meshward_contract::pb::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshward_contract::pb::workload::{JwtsvidRequest, X509BundlesRequest, X509svidRequest};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::*;
use crate::identity::IdentitySource;
use crate::test_support::{CLIENT_ID, TD, TestResult, WAIT, dev_server, source_for};

const LONG_TTL: Duration = Duration::from_secs(3600);

/// A raw Workload API client over the socket, so tests control the metadata.
async fn raw_client(
    path: &Path,
) -> Result<SpiffeWorkloadApiClient<Channel>, tonic::transport::Error> {
    let path = path.to_owned();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

#[tokio::test]
async fn identity_source_gets_the_registered_svid() -> TestResult {
    let (dev, _dir) = dev_server(LONG_TTL).await?;
    let src = source_for(&dev, CLIENT_ID).await?;
    assert_eq!(src.spiffe_id()?, CLIENT_ID);
    assert_eq!(src.trust_domain()?, TD);
    let not_after = src.not_after().ok_or("no expiry")?;
    assert!(not_after > SystemTime::now());
    assert!(not_after <= SystemTime::now() + LONG_TTL + Duration::from_secs(2));

    // A bare path works as the endpoint too.
    let path = dev.register(CLIENT_ID).await?;
    let bare = IdentitySource::connect(&path.display().to_string(), WAIT).await?;
    assert_eq!(bare.spiffe_id()?, CLIENT_ID);
    dev.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn requests_without_security_header_are_refused() -> TestResult {
    let (dev, _dir) = dev_server(LONG_TTL).await?;
    let path = dev.register(CLIENT_ID).await?;
    let mut client = raw_client(&path).await?;

    let err = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .err()
        .ok_or("FetchX509SVID without header was served")?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = client
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .err()
        .ok_or("FetchX509Bundles without header was served")?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // With the header: the registered ID, the bundle, and JWT unimplemented.
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let first = stream.message().await?.ok_or("stream ended")?;
    let [svid] = first.svids.as_slice() else {
        return Err(format!("expected one SVID, got {}", first.svids.len()).into());
    };
    assert_eq!(svid.spiffe_id, CLIENT_ID);
    assert_eq!(svid.bundle, dev.bundle_der());
    let parsed = spiffe::X509Svid::parse_from_der(&svid.x509_svid, &svid.x509_svid_key)?;
    assert_eq!(parsed.spiffe_id().to_string(), CLIENT_ID);

    let mut bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await?
        .into_inner();
    let b = bundles.message().await?.ok_or("bundle stream ended")?;
    assert_eq!(b.bundles.get(TD), Some(&dev.bundle_der()));

    let err = client
        .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
        .await
        .err()
        .ok_or("JWT served")?;
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    drop(stream);
    drop(bundles);
    dev.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn register_is_idempotent_and_validates_ids() -> TestResult {
    let (dev, _dir) = dev_server(LONG_TTL).await?;
    let a = dev.register(CLIENT_ID).await?;
    let b = dev.register(CLIENT_ID).await?;
    assert_eq!(a, b);
    assert!(a.starts_with(dev.dir()));
    let other = dev.register("spiffe://example.org/agent/other").await?;
    assert_ne!(a, other);

    for bad in [
        "spiffe://other.org/agent/a",
        "spiffe://example.org",
        "https://example.org/a",
        "not an id",
    ] {
        assert!(
            matches!(
                dev.register(bad).await,
                Err(DevServerError::InvalidSpiffeId { .. })
            ),
            "{bad} was accepted"
        );
    }

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&a)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    dev.shutdown().await;
    assert!(!a.exists(), "socket not removed on shutdown");
    Ok(())
}

#[tokio::test]
async fn stale_sockets_are_replaced_but_other_files_are_not() -> TestResult {
    let (dev, dir) = dev_server(LONG_TTL).await?;
    let first = dev.register(CLIENT_ID).await?;
    dev.shutdown().await;

    // Leave a stale socket file where the next server will bind.
    let stale = std::os::unix::net::UnixListener::bind(&first)?;
    drop(stale);
    assert!(first.exists());
    let dev = DevIdentityServer::start(DevServerOptions {
        dir: dir.path().join("sockets"),
        trust_domain: TD.into(),
        svid_ttl: LONG_TTL,
    })
    .await?;
    assert_eq!(dev.register(CLIENT_ID).await?, first);
    let src = IdentitySource::connect(&format!("unix:{}", first.display()), WAIT).await?;
    assert_eq!(src.spiffe_id()?, CLIENT_ID);

    // A regular file in the way is an error, not silently deleted.
    let blocker = dev.dir().join("agent_blocked.sock");
    std::fs::write(&blocker, b"keep me")?;
    assert!(matches!(
        dev.register("spiffe://example.org/agent/blocked").await,
        Err(DevServerError::Io { .. })
    ));
    assert_eq!(std::fs::read(&blocker)?, b"keep me");
    dev.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn options_are_validated() -> TestResult {
    let dir = crate::test_support::TempDir::new();
    let opts = |td: &str, ttl| DevServerOptions {
        dir: dir.path().to_owned(),
        trust_domain: td.into(),
        svid_ttl: ttl,
    };
    assert!(matches!(
        DevIdentityServer::start(opts("spiffe://example.org", LONG_TTL)).await,
        Err(DevServerError::InvalidTrustDomain { .. })
    ));
    assert!(matches!(
        DevIdentityServer::start(opts("Bad Domain", LONG_TTL)).await,
        Err(DevServerError::InvalidTrustDomain { .. })
    ));
    assert!(matches!(
        DevIdentityServer::start(opts(TD, Duration::from_millis(500))).await,
        Err(DevServerError::TtlTooShort { .. })
    ));
    let dev = DevIdentityServer::start(opts(TD, LONG_TTL)).await?;
    assert!(dev.bundle_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    dev.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn svids_rotate_at_half_ttl() -> TestResult {
    let (dev, _dir) = dev_server(Duration::from_secs(2)).await?;
    let path = dev.register(CLIENT_ID).await?;
    let started = std::time::Instant::now();
    let src = IdentitySource::connect(&format!("unix:{}", path.display()), WAIT).await?;
    let before = src.leaf_der()?;
    let before_expiry = src.not_after().ok_or("no expiry")?;
    let mut updates = src.updated();
    tokio::time::timeout(WAIT, updates.changed()).await??;
    // Reconnects get the cached SVID, so the first change is the half-TTL rotation.
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "changed after only {:?}",
        started.elapsed()
    );
    assert_ne!(src.leaf_der()?, before, "update did not change the SVID");
    assert!(src.not_after().ok_or("no expiry")? > before_expiry);
    assert_eq!(src.spiffe_id()?, CLIENT_ID);
    dev.shutdown().await;
    Ok(())
}

/// A truncated HPACK block on a workload socket (a HEADERS frame whose block
/// ends inside a dynamic table size update) closes that connection and
/// nothing else: the same socket keeps serving the next client. With the
/// unmaintained `hpack` 0.3 crate this panicked the relay task.
#[tokio::test]
async fn truncated_hpack_block_closes_only_that_connection() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (dev, _dir) = dev_server(LONG_TTL).await?;
    let path = dev.register(CLIENT_ID).await?;
    let mut raw = UnixStream::connect(&path).await?;
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    // An empty SETTINGS frame, then HEADERS (END_HEADERS) on stream 1 whose
    // block is one byte: a size update whose integer never ends.
    raw.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await?;
    raw.write_all(&[0, 0, 1, 0x1, 0x4 | 0x1, 0, 0, 0, 1, 0x3f])
        .await?;
    // The relay drops the connection: the read side ends (after whatever
    // the server had already written, such as its SETTINGS).
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut sink))
        .await
        .map_err(|_| "the connection with the truncated block stayed open")??;

    // The socket still serves a well-behaved client.
    let mut client = raw_client(&path).await?;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await?
        .map_err(|e| format!("after the bad client: {e}"))?
        .ok_or("no SVID")?;
    assert_eq!(first.svids.len(), 1);
    dev.shutdown().await;
    Ok(())
}
