//! rustls configurations whose identity is a SPIFFE ID, not a DNS name.
//!
//! Built on `spiffe-rustls`: the certificate resolvers and verifiers read the
//! [`IdentitySource`]'s current SVID and bundle set on every handshake, so a
//! rotated SVID or bundle is used by the next connection without rebuilding the
//! config. Build a config once per (source, peer policy) and reuse it: each
//! config keeps one small background task that converts new material.
//!
//! Peer rules enforced during the handshake, on both sides:
//! - the leaf carries exactly one URI SAN and it is a valid `spiffe://` ID with a path;
//! - the chain verifies to the bundle of *that ID's* trust domain (any trust domain
//!   we hold a bundle for; federation works by adding bundles);
//! - the leaf is within its validity period, is not a CA, has digitalSignature;
//! - (client side, optional) the server presents exactly the expected SPIFFE ID.
//!
//! TLS session resumption is disabled, because a resumed session would skip
//! the peer verification above.
//!
//! Right after a rotation there is a window of microseconds in which the new
//! material is being converted; handshakes in that window are refused rather
//! than served with stale trust (fail closed).

use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use spiffe_rustls::{authorizer, mtls_client, mtls_server};
use x509_parser::extensions::GeneralName;

use crate::identity::{IdentityError, IdentitySource, error_chain};

/// The SNI value Meshward sends. Servers are authenticated by SPIFFE ID, never by
/// DNS name, so any syntactically valid name works; `.invalid` (RFC 2606) makes it
/// obvious in packet captures that it is not meant to resolve.
pub const SPIFFE_SNI: &str = "spiffe.meshward.invalid";

/// The TLS server name to use when dialling the workload with `spiffe_id`.
///
/// Currently the fixed [`SPIFFE_SNI`] for every peer: verification is by SPIFFE
/// ID (see [`client_config`]), and the SNI is only a required TLS field.
pub fn server_name_for(_spiffe_id: &str) -> ServerName<'static> {
    // SPIFFE_SNI is a valid DNS name, so the fallback is never taken; it keeps
    // this function total without a panic path.
    ServerName::try_from(SPIFFE_SNI)
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

fn tls_error(src: &IdentitySource, e: &spiffe_rustls::Error) -> IdentityError {
    IdentityError::Tls {
        endpoint: src.endpoint().to_owned(),
        reason: error_chain(e),
    }
}

/// A server config that presents the source's current SVID and **requires** a
/// client certificate, accepting any peer SPIFFE ID from a trust domain we hold
/// a bundle for. Authorization of the specific caller is left to policy, which
/// reads the ID via [`peer_spiffe_id`].
///
/// Must be called inside a Tokio runtime.
pub fn server_config(
    src: &IdentitySource,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, IdentityError> {
    let cfg = mtls_server(src.x509_source().clone())
        .authorize(authorizer::any())
        .with_alpn_protocols(alpn)
        .build()
        .map_err(|e| tls_error(src, &e))?;
    Ok(Arc::new(cfg))
}

/// A client config that presents the source's current SVID and verifies the
/// server's SVID; with `expected_server = Some(id)` the handshake is refused
/// unless the server presents exactly `id`.
///
/// Must be called inside a Tokio runtime.
pub fn client_config(
    src: &IdentitySource,
    expected_server: Option<&str>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, IdentityError> {
    let builder = mtls_client(src.x509_source().clone()).with_alpn_protocols(alpn);
    let builder = match expected_server {
        Some(id) => builder.authorize(authorizer::exact([id]).map_err(|e| {
            IdentityError::InvalidSpiffeId {
                id: id.to_owned(),
                reason: error_chain(&e),
            }
        })?),
        None => builder.authorize(authorizer::any()),
    };
    let cfg = builder.build().map_err(|e| tls_error(src, &e))?;
    Ok(Arc::new(cfg))
}

/// The SPIFFE ID of a peer from its certificate chain (leaf first), as rustls
/// reports it after a handshake (`peer_certificates()`).
///
/// Requires exactly one URI SAN that is a valid SPIFFE ID by the mesh's one
/// rule ([`meshward_contract::rules::spiffe_id`], the same `meshward
/// validate` and the xDS checks apply). This only extracts; chain and expiry
/// were verified by the handshake.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Result<String, IdentityError> {
    let leaf = certs
        .first()
        .ok_or_else(|| IdentityError::PeerCertificate("no certificate presented".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| IdentityError::PeerCertificate(format!("unparseable leaf: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::PeerCertificate(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| IdentityError::PeerCertificate("leaf has no subjectAltName".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(IdentityError::PeerCertificate(format!(
            "leaf must have exactly one URI SAN, found {}",
            uris.len()
        )));
    };
    meshward_contract::rules::spiffe_id(uri, None).map_err(|reason| {
        IdentityError::InvalidSpiffeId {
            id: (*uri).to_owned(),
            reason,
        }
    })?;
    Ok((*uri).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devserver::ca::{Ca, LeafSpec};
    use std::time::Duration;

    fn leaf(uris: &[&str]) -> Result<CertificateDer<'static>, Box<dyn std::error::Error>> {
        let ca = Ca::new("example.org")?;
        let mut spec = LeafSpec::svid("spiffe://example.org/x", Duration::from_secs(60));
        spec.uris = uris.iter().map(|s| (*s).to_owned()).collect();
        Ok(ca.mint(&spec)?.leaf_der)
    }

    #[test]
    fn peer_id_from_single_uri() -> Result<(), Box<dyn std::error::Error>> {
        let cert = leaf(&["spiffe://example.org/agent/a"])?;
        assert_eq!(peer_spiffe_id(&[cert])?, "spiffe://example.org/agent/a");
        Ok(())
    }

    #[test]
    fn peer_id_refuses_zero_or_two_uris_and_non_spiffe() -> Result<(), Box<dyn std::error::Error>> {
        assert!(peer_spiffe_id(&[]).is_err());
        assert!(peer_spiffe_id(&[leaf(&[])?]).is_err());
        assert!(
            peer_spiffe_id(&[leaf(&["spiffe://example.org/a", "spiffe://example.org/b"])?])
                .is_err()
        );
        assert!(peer_spiffe_id(&[leaf(&["https://example.org/a"])?]).is_err());
        Ok(())
    }

    #[test]
    fn sni_is_a_dns_name() {
        assert!(matches!(
            server_name_for("spiffe://example.org/x"),
            ServerName::DnsName(_)
        ));
    }
}

#[cfg(test)]
mod handshake_tests;
