//! Shared fixtures for this crate's unit tests: temp dirs, a running dev server,
//! identity sources for registered IDs, and a loopback TLS handshake driver.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::devserver::{DevIdentityServer, DevServerOptions};
use crate::identity::IdentitySource;
use crate::tls::server_name_for;

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub(crate) const TD: &str = "example.org";
pub(crate) const SERVER_ID: &str = "spiffe://example.org/svc/server";
pub(crate) const CLIENT_ID: &str = "spiffe://example.org/agent/client";

/// Bound for every wait in tests: generous for slow CI, still finite.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A directory under the system temp dir, removed on drop. Names stay short
/// because Unix socket paths are limited to ~100 bytes.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "mwsp-{}-{}-{nanos:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Self(std::env::temp_dir().join(name))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) async fn dev_server(
    ttl: Duration,
) -> Result<(DevIdentityServer, TempDir), Box<dyn std::error::Error + Send + Sync>> {
    let dir = TempDir::new();
    let dev = DevIdentityServer::start(DevServerOptions {
        dir: dir.path().join("sockets"),
        trust_domain: TD.into(),
        svid_ttl: ttl,
    })
    .await?;
    Ok((dev, dir))
}

pub(crate) async fn source_for(
    dev: &DevIdentityServer,
    spiffe_id: &str,
) -> Result<IdentitySource, Box<dyn std::error::Error + Send + Sync>> {
    let path = dev.register(spiffe_id).await?;
    Ok(IdentitySource::connect(&format!("unix:{}", path.display()), WAIT).await?)
}

/// What each side saw of one handshake.
pub(crate) struct Handshake {
    /// Server side: the client's chain, or the handshake error.
    pub(crate) server: Result<Vec<CertificateDer<'static>>, String>,
    /// Client side: the server's chain and ALPN, or the handshake error (a
    /// refusal by the server surfaces when the client first reads).
    pub(crate) client: Result<(Vec<CertificateDer<'static>>, Option<Vec<u8>>), String>,
}

/// Runs one TLS handshake over loopback and exchanges one byte each way so a
/// server-side refusal (which TLS 1.3 reports after the client's `connect`)
/// reaches the client too.
pub(crate) async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Handshake {
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            return Handshake {
                server: Err(e.to_string()),
                client: Err(e.to_string()),
            };
        }
    };
    let addr = listener.local_addr().map_err(|e| e.to_string());
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        tls.write_all(&b).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(certs)
    });
    let client_side = async {
        let addr = addr?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client)
            .connect(server_name_for(SERVER_ID), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (certs, alpn) = {
            let conn = tls.get_ref().1;
            (
                conn.peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default(),
                conn.alpn_protocol().map(<[u8]>::to_vec),
            )
        };
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((certs, alpn))
    };
    let client = tokio::time::timeout(WAIT, client_side)
        .await
        .unwrap_or_else(|_| Err("client timed out".into()));
    let server = match tokio::time::timeout(WAIT, server_side).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(join.to_string()),
        Err(_) => Err("server timed out".into()),
    };
    Handshake { server, client }
}
