//! The `meshward` binary's library half: the commands, kept thin, dispatching
//! to the control plane, dataplane and identity crates. Integration tests use
//! it to run a whole mesh in-process.

#![forbid(unsafe_code)]

pub mod demo;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod telemetry;
pub mod up;

pub use up::{AuthorizerInfo, Up, UpInfo, UpOptions};
