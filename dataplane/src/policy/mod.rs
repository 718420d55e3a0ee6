//! Authorization policy: Rego bundles evaluated in-process with `regorus`.
//!
//! This is what the request path's authorize stage evaluates, on the
//! outbound and the inbound side alike, so that one bundle gives one answer
//! whichever way a request arrives. The pieces:
//!
//! - [`input`] turns what the proxy knows about a request into the input
//!   document — a superset of opa-envoy-plugin's, so policies written for
//!   OPA-Envoy run unchanged, plus `input.meshward` with the caller's registry
//!   facts.
//! - [`engine`] compiles a [`PolicyBundle`](meshward_contract::pb::v1::PolicyBundle)
//!   once per revision into a program for regorus's Rego VM and evaluates
//!   requests on pooled VMs, because walking the syntax tree per request is
//!   several times slower (bundles the VM cannot compile fall back to the
//!   interpreter).
//! - [`cache`] remembers decisions per value of the input fields a bundle
//!   declares (and is checked to read), so the same question is not
//!   evaluated twice within a revision.
//! - [`decision`] reads the decision rule's value with opa-envoy-plugin's
//!   contract (a bool, or an object with `allowed`, `headers`, ...). Anything
//!   it cannot read is an error, and every error denies: the policy layer
//!   fails closed.

pub mod cache;
pub mod decision;
pub mod document;
pub mod engine;
pub mod input;
pub mod multipart;
pub mod protomap;

#[cfg(test)]
mod rego_tests;

pub use cache::DecisionCache;
pub use decision::Decision;
pub use document::{InputError, MeshFacts, check_request, document};
pub use engine::CompiledPolicy;
pub use input::{CallerFacts, Checkpoint, Direction, RequestFacts, ServiceFacts, build_input};

/// Why a bundle could not be compiled or a decision could not be made.
///
/// Every variant is a deny for the request that hit it; the messages name the
/// module, rule or field involved so the operator can fix the bundle.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A module did not parse or the bundle did not type-check / schedule.
    #[error("policy bundle {bundle:?}: module {module}: {message}")]
    Compile {
        bundle: String,
        module: String,
        message: String,
    },
    /// `data_json` is not a JSON object or conflicts with itself.
    #[error("policy bundle {bundle:?}: data document: {message}")]
    Data { bundle: String, message: String },
    /// The decision path is malformed or no module defines it.
    #[error("policy bundle {bundle:?}: decision rule {rule:?} {message}")]
    DecisionRule {
        bundle: String,
        rule: String,
        message: String,
    },
    /// The bundle declares a decision cache its modules do not honour.
    #[error("policy bundle {bundle:?}: decision cache: {message}")]
    Cache { bundle: String, message: String },
    /// The input document could not be handed to the engine.
    #[error("policy input: {0}")]
    Input(String),
    /// Evaluation failed (builtin error, conflict, timeout, ...).
    #[error("evaluating {rule} (revision {revision}): {message}")]
    Eval {
        rule: String,
        revision: String,
        message: String,
    },
    /// The decision rule produced a value that is not a valid decision.
    #[error("decision {rule} (revision {revision}): {message}")]
    InvalidDecision {
        rule: String,
        revision: String,
        message: String,
    },
}
