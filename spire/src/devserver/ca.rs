//! The dev identity server's certificate authority.
//!
//! One self-signed ECDSA P-256 CA per trust domain, minting X509-SVIDs the way
//! SPIRE does (one `spiffe://` URI SAN, `CA:FALSE`, digitalSignature, server and
//! client auth). Kept apart from the Workload API service so the same minting
//! code backs both the dev server and the negative-test CA in `test_util`.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// How long the dev CA itself is valid. Longer than any `meshward up` session.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating of `notBefore`, so small clock skew between peers does not refuse fresh SVIDs.
pub(crate) const BACKDATE: Duration = Duration::from_secs(60);

/// Why the CA could not mint a certificate.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct CaError {
    what: String,
    #[source]
    source: rcgen::Error,
}

impl CaError {
    fn new(what: impl Into<String>, source: rcgen::Error) -> Self {
        Self {
            what: what.into(),
            source,
        }
    }
}

/// A minted leaf: chain (leaf first, CA is not included since it is the bundle) and key.
pub(crate) struct MintedSvid {
    pub(crate) leaf_der: CertificateDer<'static>,
    /// PKCS#8 DER of the leaf's private key.
    pub(crate) key_pkcs8_der: Vec<u8>,
}

/// What goes into one leaf certificate. The normal path uses [`LeafSpec::svid`];
/// the test CA builds deliberately broken specs.
pub(crate) struct LeafSpec {
    pub(crate) uris: Vec<String>,
    /// DNS SANs beside the SPIFFE ID (the X509-SVID spec allows them), for
    /// clients that verify a host name, such as gRPC's xDS client.
    pub(crate) dns_names: Vec<String>,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) is_ca: bool,
}

impl LeafSpec {
    /// A well-formed X509-SVID for `spiffe_id`, valid from now-60s to now+ttl.
    pub(crate) fn svid(spiffe_id: &str, ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uris: vec![spiffe_id.to_owned()],
            dns_names: Vec::new(),
            not_before: now - BACKDATE,
            not_after: now + ttl,
            is_ca: false,
        }
    }
}

/// The signing half of a dev trust domain.
pub(crate) struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a fresh CA for `trust_domain` (a bare name such as `example.org`).
    pub(crate) fn new(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::new("generating the CA key", e))?;
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Meshward dev identity server");
        dn.push(DnType::CommonName, format!("{trust_domain} dev CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let td_uri = format!("spiffe://{trust_domain}");
        params.subject_alt_names =
            vec![SanType::URI(td_uri.as_str().try_into().map_err(|e| {
                CaError::new(format!("trust domain URI {td_uri}"), e)
            })?)];
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::new(format!("self-signing the CA of {trust_domain}"), e))?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub(crate) fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub(crate) fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Mints a leaf with a fresh P-256 key, signed by this CA.
    pub(crate) fn mint(&self, spec: &LeafSpec) -> Result<MintedSvid, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::new("generating an SVID key", e))?;
        let mut params = CertificateParams::default();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Meshward dev identity server");
        params.distinguished_name = dn;
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|u| {
                u.as_str()
                    .try_into()
                    .map(SanType::URI)
                    .map_err(|e| CaError::new(format!("URI SAN {u}"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for name in &spec.dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e| CaError::new(format!("DNS SAN {name}"), e))?,
            ));
        }
        if spec.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::new(format!("signing an SVID for {:?}", spec.uris), e))?;
        Ok(MintedSvid {
            leaf_der: cert.der().clone(),
            key_pkcs8_der: key.serialize_der(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    #[test]
    fn ca_has_trust_domain_uri_and_is_ca() -> Result<(), Box<dyn std::error::Error>> {
        let ca = Ca::new("example.org")?;
        let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der())?;
        assert!(
            cert.basic_constraints()?
                .map(|b| b.value.ca)
                .unwrap_or(false)
        );
        let san = cert.subject_alternative_name()?.ok_or("no SAN")?;
        let uris: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec!["spiffe://example.org"]);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        Ok(())
    }

    #[test]
    fn svid_is_a_valid_x509_svid() -> Result<(), Box<dyn std::error::Error>> {
        let ca = Ca::new("example.org")?;
        let minted = ca.mint(&LeafSpec::svid(
            "spiffe://example.org/agent/a",
            Duration::from_secs(3600),
        ))?;
        // The spiffe crate's own X509-SVID validation is the reference.
        let svid = spiffe::X509Svid::parse_from_der(&minted.leaf_der, &minted.key_pkcs8_der)?;
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/agent/a");
        let (_, cert) = x509_parser::parse_x509_certificate(&minted.leaf_der)?;
        let ku = cert.key_usage()?.ok_or("no key usage")?.value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        let eku = cert.extended_key_usage()?.ok_or("no EKU")?.value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(
            !cert
                .basic_constraints()?
                .ok_or("no basic constraints")?
                .value
                .ca
        );
        Ok(())
    }
}
