//! Facts read from DER certificates: expiry, serial, key identifiers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Formats a Unix time as RFC 3339 (UTC), for messages.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (Unix time)"))
}

/// `notAfter` of a DER certificate (e.g. a peer's leaf from a handshake).
pub fn leaf_not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The authority key identifier of a DER certificate, lowercase hex: the
/// subject key identifier of the CA that signed it. SPIRE names its X.509
/// authorities by that value (`spire-server localauthority x509 show`), so
/// this tells which authority issued an SVID, e.g. across a CA rotation.
pub fn leaf_authority_key_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    authority_key_id(&cert)
}

/// The subject key identifier of a DER certificate, lowercase hex; for a
/// CA in a trust bundle this is SPIRE's authority ID.
pub fn subject_key_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => Some(hex(ski.0)),
            _ => None,
        })
}

/// The serial number of a DER certificate, lowercase hex (as [`SvidInfo::serial`]).
pub fn leaf_serial(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(hex(cert.raw_serial()))
}

pub(super) fn authority_key_id(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Option<String> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| hex(k.0))
            }
            _ => None,
        })
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
