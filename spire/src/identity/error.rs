//! Why identity could not be obtained, and error messages that keep the root cause.

use std::error::Error as StdError;

/// Why identity could not be obtained, verified or turned into TLS configuration.
/// Every variant names the endpoint, identity or peer involved.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The endpoint string is not a usable Workload API address.
    #[error("invalid workload API endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Workload API could not be reached or did not deliver an SVID in time.
    #[error("workload API at {endpoint} unavailable: {reason}")]
    Unavailable {
        /// The endpoint as given.
        endpoint: String,
        /// The underlying failure.
        reason: String,
    },
    /// The source is connected but currently holds no usable SVID
    /// (expired, withdrawn, or the source was closed).
    #[error("no usable SVID from the workload API at {endpoint}: {reason}")]
    NoSvid {
        /// The endpoint the source is connected to.
        endpoint: String,
        /// Why the SVID is not usable.
        reason: String,
    },
    /// A string that should be a SPIFFE ID is not one.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The offending string.
        id: String,
        /// Why it was refused.
        reason: String,
    },
    /// A peer's certificate does not carry a usable SPIFFE identity.
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    /// Building a rustls configuration from the source failed.
    #[error("TLS configuration from the workload API at {endpoint}: {reason}")]
    Tls {
        /// The endpoint the source is connected to.
        endpoint: String,
        /// The underlying failure.
        reason: String,
    },
    /// No SVID has arrived yet from the Workload API; the source keeps trying.
    #[error("waiting for SVID from workload API at {endpoint}: {reason}")]
    Waiting {
        /// The endpoint being tried.
        endpoint: String,
        /// The last failure, or what is being waited for.
        reason: String,
    },
    /// The last SVID has expired and no replacement arrived: fail closed.
    #[error("SVID for {spiffe_id} expired at {not_after}; {detail}")]
    Expired {
        /// The SPIFFE ID of the expired SVID.
        spiffe_id: String,
        /// Its `notAfter`, RFC 3339.
        not_after: String,
        /// Why no replacement arrived (the Workload API link state).
        detail: String,
    },
    /// An outbound mTLS connection failed.
    #[error("mTLS connection to {addr}: {reason}")]
    Connect {
        /// The `host:port` dialled.
        addr: String,
        /// The underlying failure.
        reason: String,
    },
}

/// Formats an error with its whole `source()` chain, so messages keep the root cause.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
