//! Connections out of the dataplane.
//!
//! - [`MeshClient`]: to another service's inbound dataplane, always h2 over
//!   mTLS with this workload's SVID, verifying that the server proves the
//!   service's SPIFFE ID. One pooled client per expected ID, because the
//!   expected peer is part of the TLS config.
//!
//! A pooled h2 connection keeps the certificates of its handshake for its
//! whole life, so a pool is *retired* (new requests get a fresh pool and
//! fresh handshakes; requests in flight finish on the old connections) when
//! this workload's SVID rotates, and at the latest shortly before the earliest
//! `notAfter` of the certificates its connections were established with (ours
//! or the peer's). So the new SVID is in use right after a rotation, and no
//! connection is used past the SVIDs it was authenticated with.
//! - [`LocalClient`]: from an inbound dataplane to the app beside it on
//!   loopback, plain text: h2 with prior knowledge for gRPC (gRPC needs h2
//!   and trailers), HTTP/1.1 for everything else (what most apps speak).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshward_spire::{IdentityError, WorkloadIdentity};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::body::ProxyBody;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pauses before retrying a refused mTLS handshake (see [`MtlsConnector`]).
const HANDSHAKE_RETRIES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(200),
];

/// A pool is retired this long before the earliest certificate of its
/// connections expires, so no request starts on a connection about to lose
/// its authentication.
const RETIRE_BEFORE_EXPIRY: Duration = Duration::from_millis(500);

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A TLS stream that tells hyper it negotiated h2 (ALPN is enforced to h2).
pub struct MtlsStream(TokioIo<TlsStream<TcpStream>>);

impl Connection for MtlsStream {
    fn connected(&self) -> Connected {
        Connected::new().negotiated_h2()
    }
}

impl hyper::rt::Read for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects to `host:port` of the URI and runs the mTLS handshake.
#[derive(Clone)]
pub struct MtlsConnector {
    tls: TlsConnector,
    /// Earliest peer-certificate `notAfter` (Unix seconds) of this pool's
    /// connections; the pool is retired before it.
    peer_expiry: Arc<AtomicU64>,
}

impl tower::Service<Uri> for MtlsConnector {
    type Response = MtlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MtlsStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let peer_expiry = self.peer_expiry.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "uri has no authority"))?
                .as_str()
                .to_string();
            // Peers are verified by SPIFFE ID, not DNS name; SNI is informational.
            let name = ServerName::try_from("meshward.invalid")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // A handshake can be refused for a moment while either side
            // applies a rotated SVID or bundle (spiffe-rustls refuses rather
            // than use material older than its source). No request has been
            // sent yet, so the connection is simply tried again.
            let mut attempt = 0;
            let stream = loop {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&authority))
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connect to {authority} timed out"),
                        )
                    })??;
                tcp.set_nodelay(true)?;
                match tls.connect(name.clone(), tcp).await {
                    Ok(stream) => break stream,
                    Err(e) if attempt < HANDSHAKE_RETRIES.len() => {
                        tracing::debug!(peer = %authority, attempt, "mTLS handshake failed, retrying: {e}");
                        tokio::time::sleep(HANDSHAKE_RETRIES[attempt]).await;
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{authority} did not negotiate h2"),
                ));
            }
            let peer_not_after = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| meshward_spire::identity::leaf_not_after(leaf.as_ref()));
            if let Some(t) = peer_not_after {
                peer_expiry.fetch_min(unix_secs(t), Ordering::AcqRel);
            }
            Ok(MtlsStream(TokioIo::new(stream)))
        })
    }
}

type MtlsClient = Client<MtlsConnector, ProxyBody>;

/// One connection pool to one peer, valid for one SVID of ours.
struct PeerPool {
    /// Serial of our SVID when the pool was made.
    own_serial: String,
    /// Our SVID's `notAfter` (Unix seconds) when the pool was made.
    own_expiry: u64,
    peer_expiry: Arc<AtomicU64>,
    client: MtlsClient,
}

impl PeerPool {
    /// Whether new requests may still use this pool's connections.
    fn usable(&self, own_serial: &str) -> bool {
        still_usable(
            &self.own_serial,
            own_serial,
            self.own_expiry
                .min(self.peer_expiry.load(Ordering::Acquire)),
            SystemTime::now(),
        )
    }
}

/// A pool made with our SVID `pool_serial`, whose connections' earliest
/// certificate expires at `expires` (Unix seconds), may take new requests at
/// `now` while our SVID is still `own_serial` and `now` is more than
/// [`RETIRE_BEFORE_EXPIRY`] before that expiry.
fn still_usable(pool_serial: &str, own_serial: &str, expires: u64, now: SystemTime) -> bool {
    pool_serial == own_serial && unix_secs(now + RETIRE_BEFORE_EXPIRY) < expires
}

/// Pooled h2-over-mTLS clients to inbound dataplanes, one pool per expected
/// SPIFFE ID, renewed with our SVID (see the module docs).
#[derive(Clone)]
pub struct MeshClient {
    identity: WorkloadIdentity,
    pools: Arc<DashMap<String, PeerPool>>,
}

impl MeshClient {
    pub fn new(identity: WorkloadIdentity) -> Self {
        Self {
            identity,
            pools: Arc::new(DashMap::new()),
        }
    }

    /// The client for upstreams that must prove `expected_spiffe_id`.
    /// Fails (closed) while this workload has no usable SVID.
    pub fn for_peer(&self, expected_spiffe_id: &str) -> Result<MtlsClient, IdentityError> {
        let own = self.identity.check()?;
        if let Some(pool) = self.pools.get(expected_spiffe_id)
            && pool.usable(&own.serial)
        {
            return Ok(pool.client.clone());
        }
        let source = self
            .identity
            .source()
            .ok_or_else(|| IdentityError::Waiting {
                endpoint: self.identity.endpoint().to_owned(),
                reason: "no identity source yet".into(),
            })?;
        let config =
            meshward_spire::tls::client_config(&source, Some(expected_spiffe_id), &[b"h2"])?;
        let peer_expiry = Arc::new(AtomicU64::new(u64::MAX));
        let connector = MtlsConnector {
            tls: TlsConnector::from(config),
            peer_expiry: peer_expiry.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        tracing::debug!(peer = expected_spiffe_id, own_serial = %own.serial, "new upstream connection pool");
        self.pools.insert(
            expected_spiffe_id.to_string(),
            PeerPool {
                own_expiry: own.not_after_unix(),
                own_serial: own.serial,
                peer_expiry,
                client: client.clone(),
            },
        );
        Ok(client)
    }
}

/// Plain-text clients to the app on loopback.
#[derive(Clone)]
pub struct LocalClient {
    http1: Client<HttpConnector, ProxyBody>,
    h2c: Client<HttpConnector, ProxyBody>,
}

impl Default for LocalClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Self {
            http1: Client::builder(TokioExecutor::new()).build(connector.clone()),
            h2c: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }
}

impl LocalClient {
    pub fn get(&self, grpc: bool) -> &Client<HttpConnector, ProxyBody> {
        if grpc { &self.h2c } else { &self.http1 }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_pool_retires_when_our_svid_rotates() {
        assert!(still_usable("s1", "s1", 1_000, at(100)));
        assert!(!still_usable("s1", "s2", 1_000, at(100)));
    }

    #[test]
    fn a_pool_retires_just_before_the_earliest_certificate_expires() {
        // Expiry at 1000 s; RETIRE_BEFORE_EXPIRY (500 ms) earlier it stops.
        assert!(still_usable("s", "s", 1_000, at(998)));
        assert!(!still_usable(
            "s",
            "s",
            1_000,
            at(999) + Duration::from_millis(600)
        ));
        assert!(!still_usable("s", "s", 1_000, at(1_000)));
        assert!(!still_usable("s", "s", 1_000, at(2_000)));
    }

    #[test]
    fn unix_seconds_before_the_epoch_are_zero() {
        assert_eq!(unix_secs(at(42)), 42);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
