//! A policy bundle compiled once per revision, evaluated many times.
//!
//! Parsing, analysis and scheduling happen in [`CompiledPolicy::compile`],
//! which is also what the xDS client calls before it ACKs a bundle: a bundle
//! that does not compile is NACKed with the message this module produces, and
//! the previous revision keeps serving. Requests then evaluate on a clone of
//! the prepared engine — cloning shares the parsed modules, schedule and data
//! (reference-counted) and is several times cheaper than building an engine.

use std::num::NonZeroU32;
use std::time::Duration;

use meshward_proto::meshward::v1::PolicyBundle;
use regorus::utils::limits::ExecutionTimerConfig;
use serde::Deserialize;

use super::PolicyError;
use super::decision::{Decision, UNDEFINED_REASON};

/// Wall-clock budget for one evaluation; beyond it the request is denied
/// (fail closed) instead of tying up a worker on a runaway policy.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(500);

/// A bundle ready to evaluate. Cheap to share behind an `Arc`; `evaluate`
/// takes `&self` and never mutates the prepared engine.
#[derive(Clone)]
pub struct CompiledPolicy {
    name: String,
    revision: String,
    decision_rule: String,
    engine: regorus::Engine,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("name", &self.name)
            .field("revision", &self.revision)
            .field("decision_rule", &self.decision_rule)
            .finish_non_exhaustive()
    }
}

impl CompiledPolicy {
    /// Parses every module, loads the data document, checks that some module
    /// defines the decision rule, and prepares (analyzes and schedules) the
    /// engine so that per-request clones start warm.
    pub fn compile(bundle: &PolicyBundle) -> Result<CompiledPolicy, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            check_interval: NonZeroU32::MIN.saturating_add(63),
        });

        let mut packages = Vec::with_capacity(bundle.modules.len());
        for module in &bundle.modules {
            let package = engine
                .add_policy(module.path.clone(), module.source.clone())
                .map_err(|e| PolicyError::Compile {
                    bundle: bundle.name.clone(),
                    module: module.path.clone(),
                    message: format!("{e:#}"),
                })?;
            packages.push((module.path.as_str(), package));
        }

        if !bundle.data_json.trim().is_empty() {
            engine
                .add_data_json(&bundle.data_json)
                .map_err(|e| PolicyError::Data {
                    bundle: bundle.name.clone(),
                    message: format!("{e:#}"),
                })?;
        }

        let decision_rule = bundle.decision.trim().to_string();
        check_decision_rule(&engine, bundle, &decision_rule, &packages)?;

        // Analysis and scheduling run on the first evaluation; force them now
        // with a query that touches no rule, so errors they find (unsafe
        // variables, recursion, ...) are compile errors, not request errors.
        engine.eval_query("true".to_string(), false).map_err(|e| {
            let message = format!("{e:#}");
            let module = packages
                .iter()
                .map(|(path, _)| *path)
                .find(|path| message.contains(path))
                .unwrap_or("<bundle>")
                .to_string();
            PolicyError::Compile {
                bundle: bundle.name.clone(),
                module,
                message,
            }
        })?;

        let mut policy = CompiledPolicy {
            name: bundle.name.clone(),
            revision: bundle.revision.clone(),
            decision_rule,
            engine,
        };
        // One throwaway evaluation exercises the decision rule's path once so
        // that whatever regorus resolves lazily is resolved on the prototype,
        // not on every clone. Its outcome depends on the (empty) input and
        // is irrelevant.
        policy.engine.set_input(regorus::Value::new_object());
        let _ = policy.engine.eval_rule(policy.decision_rule.clone());
        policy.engine.set_input(regorus::Value::Undefined);
        Ok(policy)
    }

    /// The bundle revision this was compiled from.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The bundle's resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rule path evaluated for a decision.
    pub fn decision_rule(&self) -> &str {
        &self.decision_rule
    }

    /// Evaluates the decision rule for one input document.
    ///
    /// An undefined decision is a deny with reason
    /// [`"policy decision undefined"`](UNDEFINED_REASON), as opa-envoy-plugin
    /// denies on undefined. Errors (evaluation failure, timeout, a value that
    /// is not a decision) are `Err`; callers deny on them too.
    pub fn evaluate(&self, input: &serde_json::Value) -> Result<Decision, PolicyError> {
        let input =
            regorus::Value::deserialize(input).map_err(|e| PolicyError::Input(e.to_string()))?;
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let value =
            engine
                .eval_rule(self.decision_rule.clone())
                .map_err(|e| PolicyError::Eval {
                    rule: self.decision_rule.clone(),
                    revision: self.revision.clone(),
                    message: format!("{e:#}"),
                })?;
        if value == regorus::Value::Undefined {
            return Ok(Decision::deny(UNDEFINED_REASON));
        }
        let invalid = |message: String| PolicyError::InvalidDecision {
            rule: self.decision_rule.clone(),
            revision: self.revision.clone(),
            message,
        };
        let json = serde_json::to_value(&value)
            .map_err(|e| invalid(format!("not representable as JSON: {e}")))?;
        Decision::from_value(&json).map_err(invalid)
    }
}

/// The decision path must be `data.<package path>.<rule>` for some loaded
/// package that declares that rule; otherwise every request would be denied
/// as undefined, which is better caught before the bundle is ACKed.
fn check_decision_rule(
    engine: &regorus::Engine,
    bundle: &PolicyBundle,
    rule: &str,
    packages: &[(&str, String)],
) -> Result<(), PolicyError> {
    let err = |message: &str| PolicyError::DecisionRule {
        bundle: bundle.name.clone(),
        rule: rule.to_string(),
        message: message.to_string(),
    };
    let valid_path = rule.starts_with("data.")
        && rule["data.".len()..].split('.').all(|seg| {
            !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if !valid_path {
        return Err(err("is not a rule path like data.meshward.authz.decision"));
    }
    for (path, package) in packages {
        let Some(rest) = rule
            .strip_prefix(package.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        if engine
            .has_declared_rule_rooted_at(path, rest)
            .unwrap_or(false)
        {
            return Ok(());
        }
    }
    Err(err("is not defined by any module"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshward_proto::meshward::v1::RegoModule;
    use serde_json::json;

    fn bundle(modules: &[(&str, &str)], decision: &str) -> PolicyBundle {
        PolicyBundle {
            name: "test".into(),
            revision: "r1".into(),
            modules: modules
                .iter()
                .map(|(path, source)| RegoModule {
                    path: path.to_string(),
                    source: source.to_string(),
                })
                .collect(),
            data_json: String::new(),
            decision: decision.into(),
        }
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CompiledPolicy>();
    }

    #[test]
    fn bool_decision() {
        let p = CompiledPolicy::compile(&bundle(
            &[(
                "a.rego",
                "package a\nallow if input.attributes.request.http.method == \"GET\"\n",
            )],
            "data.a.allow",
        ))
        .unwrap();
        assert_eq!(p.revision(), "r1");
        let get = json!({"attributes": {"request": {"http": {"method": "GET"}}}});
        let post = json!({"attributes": {"request": {"http": {"method": "POST"}}}});
        assert_eq!(p.evaluate(&get).unwrap(), Decision::allow());
        // `allow` has no default: undefined → deny with the undefined reason.
        let d = p.evaluate(&post).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reason.as_deref(), Some(UNDEFINED_REASON));
    }

    #[test]
    fn string_decision_is_error() {
        let p = CompiledPolicy::compile(&bundle(
            &[("a.rego", "package a\ndecision := \"allow\"\n")],
            "data.a.decision",
        ))
        .unwrap();
        let e = p.evaluate(&json!({})).unwrap_err();
        assert!(matches!(e, PolicyError::InvalidDecision { .. }), "{e}");
    }

    #[test]
    fn syntax_error_names_module_and_line() {
        let e = CompiledPolicy::compile(&bundle(
            &[
                ("ok.rego", "package ok\nx := 1\n"),
                (
                    "dir/broken.rego",
                    "package broken\n\nallow if {\n  input.x ==\n",
                ),
            ],
            "data.ok.x",
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, PolicyError::Compile { ref module, .. } if module == "dir/broken.rego")
        );
        assert!(msg.contains("dir/broken.rego"), "{msg}");
        assert!(
            msg.contains(":4") || msg.contains(":5"),
            "no line in: {msg}"
        );
    }

    #[test]
    fn missing_decision_rule_is_error() {
        let e = CompiledPolicy::compile(&bundle(
            &[("a.rego", "package a\nallow := true\n")],
            "data.a.decision",
        ))
        .unwrap_err();
        assert!(matches!(e, PolicyError::DecisionRule { .. }), "{e}");
        let e = CompiledPolicy::compile(&bundle(
            &[("a.rego", "package a\nallow := true\n")],
            "data.b.allow",
        ))
        .unwrap_err();
        assert!(matches!(e, PolicyError::DecisionRule { .. }), "{e}");
        let e = CompiledPolicy::compile(&bundle(
            &[("a.rego", "package a\nallow := true\n")],
            "allow",
        ))
        .unwrap_err();
        assert!(matches!(e, PolicyError::DecisionRule { .. }), "{e}");
    }

    #[test]
    fn eval_error_is_error_and_clone_is_isolated() {
        let p = CompiledPolicy::compile(&bundle(
            &[("a.rego", "package a\nallow if to_number(input.n) > 1\n")],
            "data.a.allow",
        ))
        .unwrap();
        assert!(p.evaluate(&json!({"n": "x"})).is_err());
        // A failed evaluation leaves the prototype usable.
        assert!(p.evaluate(&json!({"n": "5"})).unwrap().allowed);
    }

    #[test]
    fn bad_data_is_error() {
        let mut b = bundle(&[("a.rego", "package a\nallow := true\n")], "data.a.allow");
        b.data_json = "[1]".into();
        assert!(matches!(
            CompiledPolicy::compile(&b),
            Err(PolicyError::Data { .. })
        ));
    }
}
