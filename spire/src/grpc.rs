//! mTLS plumbing for tonic: an accept stream that hands tonic only verified
//! connections labelled with the peer's SPIFFE ID, and a channel that dials
//! with our SVID.
//!
//! tonic's built-in TLS verifies by DNS name, which SPIFFE SVIDs do not carry;
//! these helpers use the SPIFFE-aware rustls configs from [`crate::tls`]
//! instead, and put the verified identity where handlers can read it:
//!
//! ```text
//! let peer = meshward_spire::grpc::peer_identity(&request)
//!     .ok_or_else(|| tonic::Status::unauthenticated("no peer identity"))?;
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::{IdentityError, error_chain};
use crate::tls::{peer_spiffe_id, server_name_for};

/// How long an accepted TCP connection may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes completed but not yet taken by the server; accepts pause beyond this.
const ACCEPT_BACKLOG: usize = 128;

/// The ALPN protocol id of HTTP/2, which gRPC requires.
pub const ALPN_H2: &[u8] = b"h2";

/// Who is on the other end of an mTLS connection, as proven by its certificate.
/// Inserted into every request's extensions by tonic (see [`peer_identity`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The peer's verified SPIFFE ID.
    pub spiffe_id: String,
    /// The peer's TCP address.
    pub remote_addr: SocketAddr,
}

/// The verified peer of a request served over [`incoming`], or `None` when the
/// server was not fed by it.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<&PeerIdentity> {
    req.extensions().get::<PeerIdentity>()
}

/// A server-side TLS connection whose peer certificate has been verified.
#[derive(Debug)]
pub struct TlsStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl TlsStream {
    /// The verified peer.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The ALPN protocol the handshake agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.inner.get_ref().1.alpn_protocol()
    }

    /// The underlying rustls stream.
    pub fn into_inner(self) -> tokio_rustls::server::TlsStream<TcpStream> {
        self.inner
    }
}

impl Connected for TlsStream {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Runs the server side of one TLS handshake and labels the result with the peer identity.
async fn accept_one(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
) -> io::Result<TlsStream> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let spiffe_id = {
        let (_, conn) = tls.get_ref();
        let certs = conn.peer_certificates().unwrap_or_default();
        peer_spiffe_id(certs).map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?
    };
    Ok(TlsStream {
        inner: tls,
        peer: PeerIdentity {
            spiffe_id,
            remote_addr,
        },
    })
}

/// Accepts TCP connections on `listener` and yields those that complete an mTLS
/// handshake with `config` (normally [`crate::tls::server_config`]).
///
/// Feed it to `tonic::transport::Server::serve_with_incoming`; handlers then read
/// the caller with [`peer_identity`]. Handshakes run concurrently on their own
/// tasks, so a slow or silent client cannot hold up others. A failed handshake
/// (no certificate, wrong trust domain, expired, timeout ...) is logged at
/// `debug` with the peer address and reason and skipped; it never ends the
/// stream. The stream never yields `Err`: accept errors (e.g. out of file
/// descriptors) are logged and retried after a short pause. Dropping the stream
/// stops accepting. Must be called inside a Tokio runtime (it spawns the accept loop).
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = Result<TlsStream, io::Error>> + Send + 'static {
    incoming_with_accept_task(listener, config).0
}

/// [`incoming`], plus the task that owns the listener. It ends, closing the
/// listening socket, soon after the stream is dropped; a server that must
/// bind the same address again (a control plane's xDS restart) awaits it
/// first, or the new bind can race the old socket's close.
pub fn incoming_with_accept_task(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> (
    impl Stream<Item = Result<TlsStream, io::Error>> + Send + 'static,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel::<TlsStream>(ACCEPT_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    let accept = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "mTLS accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match accept_one(acceptor, tcp, remote_addr).await {
                    Ok(stream) => {
                        tracing::trace!(peer = %stream.peer.spiffe_id, %remote_addr, "mTLS connection accepted");
                        // A send error only means the server stopped listening.
                        let _ = tx.send(stream).await;
                    }
                    Err(e) => {
                        tracing::debug!(%remote_addr, reason = %e, "mTLS handshake refused");
                    }
                }
            });
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let stream = rx.recv().await?;
        Some((Ok(stream), rx))
    });
    (stream, accept)
}

/// Dials `addr` (`host:port`) over TCP, runs the client side of an mTLS
/// handshake with `config`, and insists on HTTP/2 via ALPN.
pub async fn connect_tls(
    addr: &str,
    config: Arc<ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, IdentityError> {
    let err = |reason: String| IdentityError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| err(format!("TCP: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(config)
        .connect(server_name_for(""), tcp)
        .await
        .map_err(|e| err(format!("TLS handshake: {}", error_chain(&e))))?;
    let alpn = tls.get_ref().1.alpn_protocol();
    if alpn != Some(ALPN_H2) {
        return Err(err(format!(
            "server did not agree to h2 via ALPN (got {:?})",
            alpn.map(String::from_utf8_lossy)
        )));
    }
    Ok(tls)
}

/// Ensures the config offers exactly h2, cloning it only when needed
/// (a clone shares the SVID resolver and verifier, so rotation still applies).
fn with_h2(config: Arc<ClientConfig>) -> Arc<ClientConfig> {
    if config.alpn_protocols == [ALPN_H2.to_vec()] {
        config
    } else {
        let mut cfg = (*config).clone();
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(cfg)
    }
}

fn endpoint_for(addr: &str) -> Result<Endpoint, IdentityError> {
    // The scheme is plain http because TLS is done by our connector, not tonic.
    Endpoint::from_shared(format!("http://{addr}")).map_err(|e| IdentityError::Connect {
        addr: addr.to_owned(),
        reason: format!("not a host:port: {}", error_chain(&e)),
    })
}

fn connector(
    addr: &str,
    config: Arc<ClientConfig>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = IdentityError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let config = with_h2(config);
    let addr = addr.to_owned();
    tower::service_fn(move |_uri: Uri| {
        let config = Arc::clone(&config);
        let addr = addr.clone();
        async move { connect_tls(&addr, config).await.map(TokioIo::new) }
    })
}

/// A gRPC channel to `addr` (`host:port`) over mTLS with `config` (normally
/// [`crate::tls::client_config`], which decides which server IDs are accepted).
///
/// Connects eagerly, so an unreachable server, or one whose SVID `config`
/// refuses, is an error here. A server that refuses *our* certificate does so
/// after the client's half of the TLS 1.3 handshake, so that shows up as an
/// `Unavailable` status on the first RPC. Reconnects made later by the channel
/// run a fresh handshake with the then current SVID.
pub async fn channel(addr: &str, config: Arc<ClientConfig>) -> Result<Channel, IdentityError> {
    endpoint_for(addr)?
        .connect_with_connector(connector(addr, config))
        .await
        .map_err(|e| IdentityError::Connect {
            addr: addr.to_owned(),
            reason: error_chain(&e),
        })
}

/// Like [`channel`] but connects on first use; never fails for reachability.
pub fn channel_lazy(addr: &str, config: Arc<ClientConfig>) -> Result<Channel, IdentityError> {
    Ok(endpoint_for(addr)?.connect_with_connector_lazy(connector(addr, config)))
}

#[cfg(test)]
mod tests {
    use meshward_contract::pb::demo::echo_client::EchoClient;
    use meshward_contract::pb::demo::echo_server::{Echo, EchoServer};
    use meshward_contract::pb::demo::{EchoReply, EchoRequest};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::test_support::{CLIENT_ID, SERVER_ID, TestResult, dev_server, source_for};
    use crate::tls::{client_config, server_config};

    /// Answers with the caller's verified identity.
    struct WhoAmI;

    #[tonic::async_trait]
    impl Echo for WhoAmI {
        async fn echo(
            &self,
            request: tonic::Request<EchoRequest>,
        ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
            let peer = peer_identity(&request)
                .ok_or_else(|| tonic::Status::unauthenticated("no peer identity"))?;
            Ok(tonic::Response::new(EchoReply {
                message: peer.spiffe_id.clone(),
                service: peer.remote_addr.to_string(),
                ..Default::default()
            }))
        }
    }

    async fn serve(
        config: Arc<ServerConfig>,
    ) -> Result<(SocketAddr, JoinHandle<()>), Box<dyn std::error::Error + Send + Sync>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EchoServer::new(WhoAmI))
                .serve_with_incoming(incoming(listener, config))
                .await;
        });
        Ok((addr, task))
    }

    #[tokio::test]
    async fn handlers_see_the_verified_peer() -> TestResult {
        let (dev, _dir) = dev_server(Duration::from_secs(3600)).await?;
        let server_src = source_for(&dev, SERVER_ID).await?;
        let client_src = source_for(&dev, CLIENT_ID).await?;
        let (addr, server) = serve(crate::tls::server_config(&server_src, &[ALPN_H2])?).await?;

        // The config offers no ALPN at all: `channel` must still negotiate h2.
        let channel = channel(
            &addr.to_string(),
            client_config(&client_src, Some(SERVER_ID), &[])?,
        )
        .await?;
        let reply = EchoClient::new(channel)
            .echo(EchoRequest::default())
            .await?
            .into_inner();
        assert_eq!(reply.message, CLIENT_ID);
        let remote: SocketAddr = reply.service.parse()?;
        assert!(remote.ip().is_loopback());
        server.abort();
        dev.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn failed_handshakes_do_not_end_the_stream() -> TestResult {
        let (dev, _dir) = dev_server(Duration::from_secs(3600)).await?;
        let server_src = source_for(&dev, SERVER_ID).await?;
        let client_src = source_for(&dev, CLIENT_ID).await?;
        let (addr, server) = serve(server_config(&server_src, &[ALPN_H2])?).await?;
        let addr = addr.to_string();

        // An anonymous TLS client, then a client that sends garbage, then a good one.
        // With TLS 1.3 the server's refusal of the client reaches the client only
        // after its side of the handshake, so it shows at the first RPC.
        let anon = crate::test_util::anonymous_client_config(&[ALPN_H2])?;
        if let Ok(ch) = channel(&addr, anon).await {
            let refused = EchoClient::new(ch).echo(EchoRequest::default()).await;
            assert!(refused.is_err(), "anonymous client was served");
        }
        {
            use tokio::io::AsyncWriteExt;
            let mut tcp = TcpStream::connect(&addr).await?;
            tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
        }
        let channel = channel(
            &addr,
            client_config(&client_src, Some(SERVER_ID), &[ALPN_H2])?,
        )
        .await?;
        let reply = EchoClient::new(channel)
            .echo(EchoRequest::default())
            .await?
            .into_inner();
        assert_eq!(reply.message, CLIENT_ID);
        server.abort();
        dev.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn channel_refuses_an_unexpected_server() -> TestResult {
        let (dev, _dir) = dev_server(Duration::from_secs(3600)).await?;
        let server_src = source_for(&dev, SERVER_ID).await?;
        let client_src = source_for(&dev, CLIENT_ID).await?;
        let (addr, server) = serve(server_config(&server_src, &[ALPN_H2])?).await?;
        let cfg = client_config(
            &client_src,
            Some("spiffe://example.org/svc/other"),
            &[ALPN_H2],
        )?;
        let err = channel(&addr.to_string(), cfg)
            .await
            .err()
            .ok_or("connected to the wrong server")?;
        assert!(matches!(err, IdentityError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        server.abort();
        dev.shutdown().await;
        Ok(())
    }
}
