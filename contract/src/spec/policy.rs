//! The mesh-wide policy bundle resource: Rego modules, their data document
//! and the rule evaluated for a decision. Compiling it is the dataplane's
//! job (it owns the policy engine); what both planes agree on is its shape.

use crate::pb::v1 as pb;
use crate::rules;
use crate::type_url::POLICY_BUNDLE_NAME;

/// The `PolicyBundle` resource for `modules` (path, source) and `data`.
pub fn policy_bundle(
    revision: &str,
    modules: &[(String, String)],
    data_json: String,
    decision: &str,
) -> pb::PolicyBundle {
    pb::PolicyBundle {
        name: POLICY_BUNDLE_NAME.to_string(),
        revision: revision.to_string(),
        modules: modules
            .iter()
            .map(|(path, source)| pb::RegoModule {
                path: path.clone(),
                source: source.clone(),
            })
            .collect(),
        data_json,
        decision: decision.to_string(),
    }
}

/// A bundle resource named `name` is named for itself and its decision is a
/// Rego rule path (the compile step checks the rest).
pub fn check_policy_bundle(name: &str, bundle: &pb::PolicyBundle) -> Result<(), String> {
    if bundle.name != name {
        return Err(format!(
            "resource name {name:?} but bundle name {:?}",
            bundle.name
        ));
    }
    rules::decision_path(&bundle.decision)
        .map_err(|e| format!("decision {:?} {e}", bundle.decision))
}
