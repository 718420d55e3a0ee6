//! A TLS probe: which certificate a server presents to new connections.

use super::*;
use std::time::Duration;

/// A certificate a server presented in a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub serial: String,
    /// Which CA signed it (SPIRE's authority ID).
    pub authority_key_id: Option<String>,
    pub not_after: std::time::SystemTime,
}

/// The test process as a workload of its own: uid 0 is registered as
/// `spiffe://<td>/meshward/test-probe`, so it gets an SVID from the SPIRE
/// agent like any workload and can complete mTLS handshakes with the mesh's
/// listeners to see which certificate a *new* connection is served.
pub struct Probe {
    pub spiffe_id: String,
    pub identity: meshward_spire::IdentitySource,
}

impl Probe {
    /// Creates the entry (with `ttl` seconds, if given) and waits for the SVID.
    pub async fn register(spire: &Spire, ttl: Option<u32>) -> Probe {
        let spiffe_id = format!("spiffe://{}/meshward/test-probe", spire.trust_domain);
        let ttl = ttl.map(|t| t.to_string());
        let mut args = vec![
            "entry",
            "create",
            "-parentID",
            &spire.node_id,
            "-spiffeID",
            &spiffe_id,
            "-selector",
            "unix:uid:0",
        ];
        if let Some(t) = &ttl {
            args.extend(["-x509SVIDTTL", t]);
        }
        let out = tokio::task::block_in_place(|| spire.server_cmd(&args));
        assert!(out.status.success(), "probe entry: {out:?}");
        let identity = meshward_spire::IdentitySource::connect(&spire.endpoint(), READY)
            .await
            .unwrap_or_else(|e| panic!("probe SVID: {e}"));
        Probe {
            spiffe_id,
            identity,
        }
    }

    /// A fresh mTLS handshake with `addr`, requiring the server to prove
    /// `expected`; the leaf it presented.
    pub async fn peer_leaf(&self, addr: &str, expected: &str) -> Result<Leaf, String> {
        let config = meshward_spire::tls::client_config(&self.identity, Some(expected), &[b"h2"])
            .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(config)
                .connect(meshward_spire::server_name_for(expected), tcp),
        )
        .await
        .map_err(|_| format!("handshake with {addr} timed out"))?
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| format!("{addr} presented no certificate"))?;
        let der = leaf.as_ref();
        Ok(Leaf {
            serial: meshward_spire::identity::leaf_serial(der).unwrap_or_default(),
            authority_key_id: meshward_spire::identity::leaf_authority_key_id(der),
            not_after: meshward_spire::identity::leaf_not_after(der)
                .unwrap_or(std::time::UNIX_EPOCH),
        })
    }
}
