//! The properties the fuzz targets in `fuzz/` check, one function per target.
//!
//! They live here, not in the fuzz crate, so that a crash libFuzzer finds can
//! become a regression test that runs on stable in the normal `cargo test`
//! (`tests/fuzz_regressions.rs`) and checks exactly what the fuzzer checked:
//! the targets and the replay test call the same functions. Each function
//! takes the raw fuzz input, decodes it the way its module documents (so a
//! saved input means the same thing forever), runs it through the product
//! code and panics, describing the input, when a property does not hold.
//!
//! Not an API: hidden from the docs and free to change with the targets.

mod canonical_path;
mod hpack_relay;
mod input;
mod mcp_inspect;
mod mesh_yaml;
mod policy_input;
mod xds_resources;

pub use canonical_path::canonical_path;
pub use hpack_relay::hpack_relay;
pub use mcp_inspect::mcp_inspect;
pub use mesh_yaml::mesh_yaml;
pub use policy_input::policy_input;
pub use xds_resources::{XdsKind, xds_resources};

/// How far one input got. Any outcome is a pass (a failed property panics);
/// the replay test uses it to prove the committed seeds reach the code under
/// test instead of being thrown out at the first check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The product code accepted the input and every property of the
    /// accepted value held.
    Accepted,
    /// The product code refused the input, and the refusal was well formed.
    Rejected,
    /// The input was not run (too short, too large, or outside what the
    /// harness can run safely); the module says when.
    Skipped,
}

/// A check: raw fuzz input in, verdict out, panic on a broken property.
pub type Check = fn(&[u8]) -> Verdict;

/// Every target, by the name of its file in `fuzz/fuzz_targets/` and of its
/// directories under `fuzz/seeds/` and `fuzz/regressions/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("canonical_path", canonical_path),
    ("mesh_yaml", mesh_yaml),
    ("xds_resources", xds_resources),
    ("policy_input", policy_input),
    ("hpack_relay", hpack_relay),
    ("mcp_inspect", mcp_inspect),
];
