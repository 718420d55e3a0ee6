//! Workload identity for Meshward.
//!
//! Meshward's whole security model is "identity is the peer's mTLS certificate":
//! every agent, service and Meshward process is a SPIFFE ID proven by an X509-SVID.
//! This crate is the one place that knowledge lives, so the planes never touch
//! keys or certificate parsing themselves:
//!
//! - [`identity`] — [`IdentitySource`], the single seam through which SVIDs and
//!   trust bundles enter, from a SPIFFE Workload API (SPIRE in production, the
//!   dev server locally), following rotation without restart;
//! - [`tls`] — rustls client/server configs that present the current SVID and
//!   verify peers by SPIFFE ID and trust-domain bundle on every handshake;
//! - [`grpc`] — tonic plumbing: an mTLS accept stream that tags requests with the
//!   verified [`PeerIdentity`], and an mTLS [`tonic::transport::Channel`];
//! - [`entries`] and [`cluster_spiffe_ids`] — the mesh's registry as SPIRE
//!   registration entries, or as spire-controller-manager resources;
//! - [`devserver`] — [`DevIdentityServer`], a small CA serving the Workload API on
//!   per-workload Unix sockets, for `meshward up` and tests;
//! - `test_util` (feature `test-util`) — a CA that mints deliberately bad
//!   certificates for negative tests.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster_spiffe_ids;
pub mod devserver;
pub mod entries;
pub mod grpc;
pub mod identity;
#[cfg(test)]
mod test_support;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod tls;

pub use devserver::{DevIdentityServer, DevServerError, DevServerOptions};
pub use grpc::{PeerIdentity, TlsStream, peer_identity};
pub use identity::{IdentityError, IdentitySource, SvidInfo, WorkloadApiLink, WorkloadIdentity};
pub use tls::{client_config, peer_spiffe_id, server_config, server_name_for};
