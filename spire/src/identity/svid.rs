//! Facts about one X509-SVID, parsed once per SVID.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spiffe::X509Svid;

use super::x509::{authority_key_id, hex, rfc3339};

/// Facts about one X509-SVID, parsed once per SVID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidInfo {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: String,
    /// The leaf's serial number, lowercase hex; changes on every rotation.
    pub serial: String,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
    /// The leaf's authority key identifier, lowercase hex: which CA signed
    /// it (SPIRE's authority ID), if the leaf names it.
    pub authority_key_id: Option<String>,
}

impl SvidInfo {
    pub(super) fn parse(svid: &X509Svid) -> Self {
        let mut serial = String::new();
        let mut not_after = UNIX_EPOCH;
        let mut authority = None;
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()) {
            serial = hex(cert.raw_serial());
            if let Ok(secs) = u64::try_from(cert.validity().not_after.timestamp()) {
                not_after = UNIX_EPOCH + Duration::from_secs(secs);
            }
            authority = authority_key_id(&cert);
        }
        Self {
            spiffe_id: svid.spiffe_id().to_string(),
            serial,
            authority_key_id: authority,
            not_after,
        }
    }

    /// `notAfter` as RFC 3339 (UTC).
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }

    /// `notAfter` as seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }
}
