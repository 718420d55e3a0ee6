//! Meshward's own protobuf types.
//!
//! Envoy's API types come from `envoy-types`; this crate only holds what Envoy
//! does not define: the custom xDS resources (`meshward.v1`), the SPIFFE
//! Workload API served by the dev identity server, and the demo echo service.
//! [`spec`] holds the settings types both planes convert those resources to.

#![forbid(unsafe_code)]

pub mod spec;

#[allow(clippy::all, missing_docs)]
pub mod meshward {
    pub mod v1 {
        tonic::include_proto!("meshward.v1");

        /// Type URL of [`PolicyBundle`] resources on the ADS stream.
        pub const POLICY_BUNDLE_TYPE_URL: &str = "type.googleapis.com/meshward.v1.PolicyBundle";
        /// Type URL of [`Agent`] resources on the ADS stream.
        pub const AGENT_TYPE_URL: &str = "type.googleapis.com/meshward.v1.Agent";
    }
    pub mod demo {
        pub mod v1 {
            tonic::include_proto!("meshward.demo.v1");
        }
    }
}

/// The SPIFFE Workload API (package-less in the upstream proto).
#[allow(clippy::all, missing_docs)]
pub mod workload {
    tonic::include_proto!("_");
}
