//! Meshward's dataplane: the proxy beside every agent and service.
//!
//! It authenticates peers by the SPIFFE ID of their mTLS certificate,
//! evaluates Rego policy in-process, rate-limits and circuit-breaks per caller
//! identity, and proxies HTTP/1.1, h2 and gRPC. Its configuration arrives over
//! delta xDS from the control plane and is validated before it is ACKed.

#![forbid(unsafe_code)]

pub mod admin;
pub mod breaker;
pub mod canonical;
pub mod config_dump;
pub mod extauthz;
pub mod grpc_server;
pub mod identity;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod observe;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod server;
pub mod state;
pub mod xds;

pub use server::{Dataplane, DataplaneAddrs, DataplaneError, DataplaneOptions, ExtAuthzListener};
