//! Meshward's control plane: the mesh config model and its validation, file
//! watching, per-node snapshot building and the xDS (ADS) server.

#![forbid(unsafe_code)]

pub mod admin;
pub mod bootstrap;
pub mod config;
pub mod server;
pub mod snapshot;
pub mod xds;

pub use server::{ControlPlane, ControlPlaneError, ControlPlaneOptions, ControlPlaneStatus};
