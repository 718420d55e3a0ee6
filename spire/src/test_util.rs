//! Deliberately bad certificates for negative tests (feature `test-util`).
//!
//! Production code never mints certificates outside the Workload API path; this
//! module exists so tests in every crate can prove that handshakes *refuse*
//! other trust domains, expired SVIDs, two URI SANs, no URI SAN, or a CA used as
//! a leaf. Use [`crate::devserver::DevIdentityServer::test_ca`] to sign with the
//! trusted dev CA (so only the defect under test causes the refusal), or
//! [`TestCa::new`] for a foreign trust domain.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use time::OffsetDateTime;

use crate::devserver::DevServerError;
use crate::devserver::ca::{Ca, LeafSpec};

/// A CA that can mint well-formed and malformed SVIDs.
#[derive(Clone, Debug)]
pub struct TestCa {
    ca: Arc<Ca>,
}

/// A minted certificate and its key, ready for a rustls config.
#[derive(Debug)]
pub struct TestSvid {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 private key of the leaf.
    pub key: PrivateKeyDer<'static>,
}

impl TestCa {
    /// A fresh CA for `trust_domain` (unrelated to any dev server's CA).
    pub fn new(trust_domain: &str) -> Result<Self, DevServerError> {
        let ca = Ca::new(trust_domain).map_err(|source| DevServerError::Ca {
            trust_domain: trust_domain.to_owned(),
            source,
        })?;
        Ok(Self { ca: Arc::new(ca) })
    }

    pub(crate) fn from_ca(ca: Arc<Ca>) -> Self {
        Self { ca }
    }

    /// The trust domain of this CA.
    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    /// The CA certificate (the trust bundle) as DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.cert_der().clone()
    }

    /// The CA certificate as PEM.
    pub fn bundle_pem(&self) -> String {
        self.ca.cert_pem().to_owned()
    }

    fn mint(&self, spec: &LeafSpec) -> Result<TestSvid, DevServerError> {
        let minted = self.ca.mint(spec).map_err(|source| DevServerError::Ca {
            trust_domain: self.ca.trust_domain().to_owned(),
            source,
        })?;
        Ok(TestSvid {
            chain: vec![minted.leaf_der],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(minted.key_pkcs8_der)),
        })
    }

    /// A well-formed SVID for `spiffe_id`, valid for `ttl`.
    pub fn issue(&self, spiffe_id: &str, ttl: Duration) -> Result<TestSvid, DevServerError> {
        self.mint(&LeafSpec::svid(spiffe_id, ttl))
    }

    /// An SVID for `spiffe_id` that expired an hour ago.
    pub fn issue_expired(&self, spiffe_id: &str) -> Result<TestSvid, DevServerError> {
        let now = OffsetDateTime::now_utc();
        let mut spec = LeafSpec::svid(spiffe_id, Duration::from_secs(60));
        spec.not_before = now - Duration::from_secs(2 * 3600);
        spec.not_after = now - Duration::from_secs(3600);
        self.mint(&spec)
    }

    /// A leaf carrying exactly the given URI SANs (none, two, non-SPIFFE ...),
    /// otherwise well-formed.
    pub fn issue_with_uris(&self, uris: &[&str]) -> Result<TestSvid, DevServerError> {
        let mut spec = LeafSpec::svid("spiffe://unused/x", Duration::from_secs(3600));
        spec.uris = uris.iter().map(|u| (*u).to_owned()).collect();
        self.mint(&spec)
    }

    /// A leaf with no URI SAN at all.
    pub fn issue_without_uri(&self) -> Result<TestSvid, DevServerError> {
        self.issue_with_uris(&[])
    }

    /// A certificate for `spiffe_id` with `CA:TRUE`, presented as if it were a leaf.
    pub fn issue_ca_as_leaf(&self, spiffe_id: &str) -> Result<TestSvid, DevServerError> {
        let mut spec = LeafSpec::svid(spiffe_id, Duration::from_secs(3600));
        spec.is_ca = true;
        self.mint(&spec)
    }
}

impl TestSvid {
    /// The chain as PEM (leaf first), for peers that read certificate files.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
            .collect()
    }

    /// The PKCS#8 key as PEM.
    pub fn key_pem(&self) -> String {
        pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            self.key.secret_der().to_vec(),
        ))
    }

    /// A client config presenting this certificate that does **not** verify the
    /// server at all: for tests whose subject is the server's verification.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// A server config presenting this certificate that asks for no client
    /// certificate: for tests whose subject is the client's verification.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

/// Test-only: trusts any server certificate (signatures are still checked).
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that presents **no** certificate and does not verify the
/// server: for tests proving that servers refuse anonymous clients.
pub fn anonymous_client_config(alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
