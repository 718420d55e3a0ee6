//! Generated protobuf code: Meshward's own xDS resources (`meshward.v1`), the
//! demo echo service and the SPIFFE Workload API served by the dev identity
//! server. Envoy's API types come from `envoy-types`.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("meshward.v1");
}

pub mod demo {
    tonic::include_proto!("meshward.demo.v1");
}

/// The SPIFFE Workload API (package-less in the upstream proto).
pub mod workload {
    tonic::include_proto!("_");
}
