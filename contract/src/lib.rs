//! Meshward's wire contract: everything the control plane sends and a
//! dataplane accepts, defined once.
//!
//! - [`pb`]: the generated protobuf types of Meshward's own xDS resources
//!   (`meshward.v1`), the SPIFFE Workload API served by the dev identity
//!   server and the demo echo service. Envoy's API types come from
//!   `envoy-types`.
//! - [`type_url`]: type URLs, resource names and metadata keys.
//! - [`spec`]: one settings type per resource (service, agent, limits,
//!   breaker, listener limits, policy bundle) with its defaults, its encoding
//!   for the control plane and its checked decoding for the dataplane.
//! - [`rules`]: the syntax of single values (trust domains, SPIFFE IDs,
//!   names, hosts, `host:port`), shared by `meshward validate`, the
//!   dataplane's ACK checks and the TLS layer.
//! - [`sotw`]: the state-of-the-world stream rules (subscriptions, nonces,
//!   ACK/NACK), without I/O, for the control plane's ADS and the dev
//!   server's SDS.
//! - [`admin`]: what an admin endpoint reports.
//! - [`decision_cache`]: which input fields a policy bundle may declare its
//!   decision reads, and the check that its modules read nothing else.
//!
//! Because both planes use these, `meshward validate` accepts exactly what a
//! dataplane ACKs; `controlplane/tests` and the dataplane's xDS tests check it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod decision_cache;
pub mod pb;
pub mod rules;
pub mod sotw;
pub mod spec;
pub mod type_url;
