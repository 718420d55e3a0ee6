//! Connections out of the dataplane.
//!
//! - [`MeshClient`]: to another service's inbound dataplane, always h2 over
//!   mTLS with this workload's SVID, verifying that the server proves the
//!   service's SPIFFE ID. One pooled client per expected ID, because the
//!   expected peer is part of the TLS config.
//! - [`LocalClient`]: from an inbound dataplane to the app beside it on
//!   loopback, plain text: h2 with prior knowledge for gRPC (gRPC needs h2
//!   and trailers), HTTP/1.1 for everything else (what most apps speak).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshward_spire::IdentitySource;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::body::ProxyBody;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "uri has no authority"))?
                .as_str()
                .to_string();
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&authority))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect to {authority} timed out"),
                    )
                })??;
            tcp.set_nodelay(true)?;
            // Peers are verified by SPIFFE ID, not DNS name; SNI is informational.
            let name = ServerName::try_from("meshward.invalid")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = tls.connect(name, tcp).await?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{authority} did not negotiate h2"),
                ));
            }
            Ok(MtlsStream(TokioIo::new(stream)))
        })
    }
}

type MtlsClient = Client<MtlsConnector, ProxyBody>;

/// Pooled h2-over-mTLS clients to inbound dataplanes, one per expected SPIFFE ID.
#[derive(Clone)]
pub struct MeshClient {
    identity: IdentitySource,
    clients: Arc<DashMap<String, MtlsClient>>,
}

impl MeshClient {
    pub fn new(identity: IdentitySource) -> Self {
        Self {
            identity,
            clients: Arc::new(DashMap::new()),
        }
    }

    /// The client for upstreams that must prove `expected_spiffe_id`.
    pub fn for_peer(
        &self,
        expected_spiffe_id: &str,
    ) -> Result<MtlsClient, meshward_spire::IdentityError> {
        if let Some(c) = self.clients.get(expected_spiffe_id) {
            return Ok(c.clone());
        }
        let config =
            meshward_spire::tls::client_config(&self.identity, Some(expected_spiffe_id), &[b"h2"])?;
        let connector = MtlsConnector {
            tls: TlsConnector::from(config),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        self.clients
            .insert(expected_spiffe_id.to_string(), client.clone());
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
