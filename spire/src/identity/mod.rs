//! The identity source: the single seam through which certificates enter Meshward.
//!
//! Every Meshward process, in production and in dev alike, gets its X509-SVID and
//! trust bundles from a SPIFFE Workload API endpoint (a SPIRE agent, or the
//! embedded dev identity server) through the `spiffe` crate's [`X509Source`].
//! The source keeps a streaming connection open and swaps in rotated SVIDs and
//! bundles as they arrive; the TLS configs in [`crate::tls`] read the current
//! material on every handshake, so rotation never needs a restart. Nothing else in
//! Meshward reads keys or certificates from disk.
//!
//! Outages are part of the contract, because a sidecar usually starts before (or
//! outlives) its SPIRE agent:
//!
//! - [`WorkloadIdentity::connect`] returns at once and keeps trying, so a process
//!   can start its admin endpoint and say *why* it has no identity yet
//!   ([`IdentityError::Waiting`]) instead of failing to start;
//! - once connected, a lost Workload API is reconnected with backoff (by the
//!   `spiffe` crate) while the current SVID keeps serving; state changes of the
//!   link are logged once each, not per retry;
//! - when the current SVID expires without a replacement, [`IdentitySource::check`]
//!   fails with [`IdentityError::Expired`] naming the SVID, the time and the
//!   link's last error, so callers fail closed with the reason. `spiffe-rustls`
//!   independently refuses to present or accept an expired SVID in handshakes.
//!
//! None of this depends on which Workload API serves the socket: SPIRE and the
//! dev server are driven through the same client code.

mod endpoint;
mod error;
mod link;
mod metrics;
mod source;
mod svid;
mod workload;
mod x509;

pub use endpoint::{SPIFFE_ENDPOINT_SOCKET, normalize_endpoint};
pub use error::{IdentityError, error_chain};
pub use link::{BACKOFF_MAX, BACKOFF_MIN, WorkloadApiLink};
pub use metrics::{
    METRIC_SVID_EXPIRY, METRIC_SVID_ROTATIONS, describe as describe_metrics, export_svid_metrics,
};
pub use source::IdentitySource;
pub use svid::SvidInfo;
pub use workload::WorkloadIdentity;
pub use x509::{leaf_authority_key_id, leaf_not_after, leaf_serial, rfc3339, subject_key_id};

#[cfg(test)]
mod tests;
