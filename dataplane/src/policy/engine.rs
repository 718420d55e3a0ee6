//! A policy bundle compiled once per revision, evaluated many times.
//!
//! Parsing, analysis and scheduling happen in [`CompiledPolicy::compile`],
//! which is also what the xDS client calls before it ACKs a bundle: a bundle
//! that does not compile is NACKed with the message this module produces, and
//! the previous revision keeps serving.
//!
//! Compilation then goes one step further and translates the bundle into a
//! program for regorus's Rego virtual machine (RVM): a request evaluates that
//! program on a pooled VM instead of walking the syntax tree on a cloned
//! interpreter, which is several times faster on the reference bundle (see
//! `benches/RESULTS.md`). A bundle the RVM compiler does not support (for
//! example one that uses `with`) is not refused: it is evaluated by the
//! interpreter, as before, and a warning says so.
//!
//! Both paths bound each evaluation by [`EVAL_TIME_LIMIT`] and fail closed.
//!
//! Every evaluation is metered here, the one place both the sidecar and the
//! ext_authz server decide: `meshward_policy_evaluations_total{result}` and
//! `meshward_policy_evaluation_duration_seconds`.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meshward_contract::pb::v1::PolicyBundle;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use regorus::utils::limits::ExecutionTimerConfig;

use super::PolicyError;
use super::cache::DecisionCache;
use super::decision::{Decision, UNDEFINED_REASON};

/// Wall-clock budget for one evaluation; beyond it the request is denied
/// (fail closed) instead of tying up a worker on a runaway policy.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(500);

/// How many evaluation steps run between two reads of the clock.
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::MIN.saturating_add(63);

/// Idle VMs kept per policy revision; enough for one per worker thread in
/// flight, beyond that a VM is built per request and dropped afterwards.
const MAX_IDLE_VMS: usize = 64;

/// A bundle ready to evaluate. Cheap to share behind an `Arc`; `evaluate`
/// takes `&self` and never mutates the prepared program or engine.
#[derive(Clone)]
pub struct CompiledPolicy {
    name: String,
    revision: String,
    decision_rule: String,
    evaluator: Evaluator,
    /// The bundle's decision cache, when it declares one; new (empty) with
    /// every revision.
    cache: Option<Arc<DecisionCache>>,
}

/// How a compiled bundle is evaluated.
#[derive(Clone)]
enum Evaluator {
    /// The bundle as an RVM program: the fast path.
    Vm(Arc<VmEvaluator>),
    /// A prepared interpreter, cloned per request: bundles the RVM compiler
    /// does not support still run, at the interpreter's speed.
    Interpreter(Box<regorus::Engine>),
}

/// An RVM program plus a pool of idle VMs already loaded with it and the
/// bundle's data, so a request only sets its input and runs.
struct VmEvaluator {
    policy: regorus::CompiledPolicy,
    program: Arc<Program>,
    data: regorus::Value,
    time_limit: Duration,
    idle: Mutex<Vec<RegoVM>>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let evaluator = match self.evaluator {
            Evaluator::Vm(_) => "rvm",
            Evaluator::Interpreter(_) => "interpreter",
        };
        f.debug_struct("CompiledPolicy")
            .field("name", &self.name)
            .field("revision", &self.revision)
            .field("decision_rule", &self.decision_rule)
            .field("evaluator", &evaluator)
            .finish_non_exhaustive()
    }
}

impl CompiledPolicy {
    /// Parses every module, loads the data document, checks that some module
    /// defines the decision rule, analyzes and schedules the bundle, and
    /// compiles it into an RVM program (or prepares the interpreter for
    /// bundles the RVM compiler does not support).
    pub fn compile(bundle: &PolicyBundle) -> Result<CompiledPolicy, PolicyError> {
        Self::compile_with_time_limit(bundle, EVAL_TIME_LIMIT)
    }

    fn compile_with_time_limit(
        bundle: &PolicyBundle,
        time_limit: Duration,
    ) -> Result<CompiledPolicy, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(timer_config(time_limit));

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

        let data_error = |e: &dyn std::fmt::Display| PolicyError::Data {
            bundle: bundle.name.clone(),
            message: format!("{e:#}"),
        };
        let data = if bundle.data_json.trim().is_empty() {
            regorus::Value::new_object()
        } else {
            engine
                .add_data_json(&bundle.data_json)
                .map_err(|e| data_error(&e))?;
            regorus::Value::from_json_str(&bundle.data_json).map_err(|e| data_error(&e))?
        };

        let decision_rule = bundle.decision.trim().to_string();
        check_decision_rule(&engine, bundle, &decision_rule, &packages)?;
        let cache = decision_cache(bundle)?;

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

        let evaluator = match compile_program(&engine, &decision_rule) {
            Ok((policy, program)) => {
                let vm = VmEvaluator {
                    policy,
                    program,
                    data,
                    time_limit,
                    idle: Mutex::new(Vec::new()),
                };
                // Loading the data checks it against the rule tree (a rule
                // and a data document at the same path); do it once here so a
                // conflict is a compile error and the pool starts warm.
                let first = vm.new_vm().map_err(|e| data_error(&e))?;
                vm.release(first);
                Evaluator::Vm(Arc::new(vm))
            }
            Err(message) => {
                tracing::warn!(
                    bundle = %bundle.name,
                    revision = %bundle.revision,
                    decision = %decision_rule,
                    error = %message,
                    "the Rego VM cannot compile this policy bundle; \
                     evaluating it with the (slower) interpreter"
                );
                // One throwaway evaluation exercises the decision rule's path
                // once so that whatever regorus resolves lazily is resolved on
                // the prototype, not on every clone. Its outcome depends on
                // the (empty) input and is irrelevant.
                engine.set_input(regorus::Value::new_object());
                let _ = engine.eval_rule(decision_rule.clone());
                engine.set_input(regorus::Value::Undefined);
                Evaluator::Interpreter(Box::new(engine))
            }
        };

        Ok(CompiledPolicy {
            name: bundle.name.clone(),
            revision: bundle.revision.clone(),
            decision_rule,
            evaluator,
            cache,
        })
    }

    /// The bundle's decision cache, if it declares one.
    pub fn decision_cache(&self) -> Option<&DecisionCache> {
        self.cache.as_deref()
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
        let started = std::time::Instant::now();
        let result = self.decide(input);
        let outcome = match &result {
            Ok(d) if d.allowed => "allow",
            Ok(_) => "deny",
            Err(_) => "error",
        };
        metrics::histogram!(crate::metrics::POLICY_EVALUATION_DURATION)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(crate::metrics::POLICY_EVALUATIONS, "result" => outcome).increment(1);
        result
    }

    fn decide(&self, input: &serde_json::Value) -> Result<Decision, PolicyError> {
        let input = rego_value(input);
        let eval_error = |message: String| PolicyError::Eval {
            rule: self.decision_rule.clone(),
            revision: self.revision.clone(),
            message,
        };
        let value = match &self.evaluator {
            Evaluator::Vm(vm) => vm.evaluate(input).map_err(eval_error)?,
            Evaluator::Interpreter(prototype) => {
                let mut engine = prototype.as_ref().clone();
                engine.set_input(input);
                engine
                    .eval_rule(self.decision_rule.clone())
                    .map_err(|e| eval_error(format!("{e:#}")))?
            }
        };
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

impl VmEvaluator {
    /// A VM loaded with the program and data, limited to the time budget.
    fn new_vm(&self) -> Result<RegoVM, String> {
        let mut vm = RegoVM::new_with_policy(self.policy.clone());
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone()).map_err(|e| e.to_string())?;
        vm.set_execution_timer_config(Some(timer_config(self.time_limit)));
        // The interpreter has no instruction cap, and a bundle that works
        // there must work here; the wall-clock limit bounds runaway policies.
        vm.set_max_instructions(usize::MAX);
        Ok(vm)
    }

    fn evaluate(&self, input: regorus::Value) -> Result<regorus::Value, String> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut vm = match idle {
            Some(vm) => vm,
            None => self.new_vm()?,
        };
        vm.set_input(input);
        // A VM that failed is dropped rather than reused: nothing of a failed
        // evaluation can leak into the next request.
        let value = vm.execute().map_err(|e| e.to_string())?;
        vm.set_input(regorus::Value::Undefined);
        self.release(vm);
        Ok(value)
    }

    fn release(&self, vm: RegoVM) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_VMS {
            idle.push(vm);
        }
    }
}

fn timer_config(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: TIMER_CHECK_INTERVAL,
    }
}

/// Compiles the analyzed bundle into an RVM program whose entry point is the
/// decision rule. `Err` carries the reason the RVM compiler gave up.
fn compile_program(
    engine: &regorus::Engine,
    decision_rule: &str,
) -> Result<(regorus::CompiledPolicy, Arc<Program>), String> {
    // compile_with_entrypoint prepares the engine in place; keep the caller's
    // engine untouched for the interpreter fallback.
    let mut engine = engine.clone();
    let policy = engine
        .compile_with_entrypoint(&decision_rule.into())
        .map_err(|e| format!("{e:#}"))?;
    let program =
        Compiler::compile_from_policy(&policy, &[decision_rule]).map_err(|e| format!("{e:#}"))?;
    Ok((policy, program))
}

/// The input document as a regorus value, built directly from the JSON tree
/// (faster than going through serde's data model; same values).
fn rego_value(json: &serde_json::Value) -> regorus::Value {
    use serde_json::Value as Json;
    match json {
        Json::Null => regorus::Value::Null,
        Json::Bool(b) => regorus::Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                regorus::Value::from(u)
            } else if let Some(i) = n.as_i64() {
                regorus::Value::from(i)
            } else {
                // Without serde_json's arbitrary_precision every other number
                // is a finite f64.
                regorus::Value::from(n.as_f64().unwrap_or_default())
            }
        }
        Json::String(s) => regorus::Value::String(s.as_str().into()),
        Json::Array(items) => {
            regorus::Value::from(items.iter().map(rego_value).collect::<Vec<_>>())
        }
        Json::Object(fields) => regorus::Value::from(
            fields
                .iter()
                .map(|(k, v)| (regorus::Value::String(k.as_str().into()), rego_value(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
    }
}

/// The cache the bundle declares (see [`super::cache`]), checked against
/// its modules.
fn decision_cache(bundle: &PolicyBundle) -> Result<Option<Arc<DecisionCache>>, PolicyError> {
    let data: serde_json::Value = if bundle.data_json.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&bundle.data_json).map_err(|e| PolicyError::Data {
            bundle: bundle.name.clone(),
            message: e.to_string(),
        })?
    };
    let modules: Vec<(&str, &str)> = bundle
        .modules
        .iter()
        .map(|m| (m.path.as_str(), m.source.as_str()))
        .collect();
    DecisionCache::for_bundle(&data, &modules)
        .map(|c| c.map(Arc::new))
        .map_err(|e| PolicyError::Cache {
            bundle: bundle.name.clone(),
            message: e.to_string(),
        })
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
    use meshward_contract::pb::v1::RegoModule;
    use serde::Deserialize;
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
    fn every_evaluation_is_counted_by_result_and_timed() {
        use crate::metrics::test_support::{capture, sample};
        let p = CompiledPolicy::compile(&bundle(
            &[(
                "a.rego",
                "package a\ndecision := {\"allowed\": true} if input.m == \"GET\"\n\
                 decision := {\"allowed\": false} if input.m == \"POST\"\n\
                 decision := \"not a decision\" if input.m == \"PUT\"\n",
            )],
            "data.a.decision",
        ))
        .unwrap();
        let text = capture(|| {
            for m in ["GET", "GET", "POST", "PUT", "DELETE"] {
                let _ = p.evaluate(&json!({ "m": m }));
            }
        });
        let count = |result| {
            sample(
                &text,
                "meshward_policy_evaluations_total",
                &[("result", result)],
            )
        };
        assert_eq!(count("allow"), Some(2.0));
        // DELETE: undefined, which denies.
        assert_eq!(count("deny"), Some(2.0));
        assert_eq!(count("error"), Some(1.0));
        assert_eq!(
            sample(
                &text,
                "meshward_policy_evaluation_duration_seconds_count",
                &[]
            ),
            Some(5.0)
        );
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
    fn builtin_error_fails_the_body_and_pool_is_isolated() {
        let p = CompiledPolicy::compile(&bundle(
            &[("a.rego", "package a\nallow if to_number(input.n) > 1\n")],
            "data.a.allow",
        ))
        .unwrap();
        assert!(matches!(p.evaluator, Evaluator::Vm(_)));
        // As in OPA (without --strict-builtin-errors), a builtin error makes
        // the rule body fail: the decision is undefined, which denies.
        let d = p.evaluate(&json!({"n": "x"})).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reason.as_deref(), Some(UNDEFINED_REASON));
        // Pooled VMs carry nothing from one request into the next.
        assert!(p.evaluate(&json!({"n": "5"})).unwrap().allowed);
        assert!(!p.evaluate(&json!({"n": "0"})).unwrap().allowed);
        assert!(p.evaluate(&json!({"n": 7})).unwrap().allowed);
    }

    #[test]
    fn runaway_policy_times_out() {
        let b = bundle(
            &[(
                "a.rego",
                "package a\nallow if count([1 | some i in numbers.range(1, 4000); \
                 some j in numbers.range(1, 4000)]) > 0\n",
            )],
            "data.a.allow",
        );
        let p = CompiledPolicy::compile_with_time_limit(&b, Duration::from_millis(20)).unwrap();
        assert!(matches!(p.evaluator, Evaluator::Vm(_)));
        let e = p.evaluate(&json!({})).unwrap_err();
        assert!(matches!(e, PolicyError::Eval { .. }), "{e}");
        // The failed VM was dropped; the policy keeps answering (and failing
        // closed) on the next request.
        assert!(p.evaluate(&json!({})).is_err());
    }

    #[test]
    fn bundle_the_vm_cannot_compile_runs_on_the_interpreter() {
        // The RVM compiler does not support `with`.
        let p = CompiledPolicy::compile(&bundle(
            &[(
                "a.rego",
                "package a\nmethod := input.m\nallow if method == \"GET\" with input.m as \"GET\"\n\
                 deny if input.m == \"DELETE\"\n",
            )],
            "data.a.allow",
        ))
        .unwrap();
        assert!(matches!(p.evaluator, Evaluator::Interpreter(_)), "{p:?}");
        assert!(p.evaluate(&json!({"m": "POST"})).unwrap().allowed);
    }

    #[test]
    fn input_conversion_matches_serde() {
        let doc = json!({
            "s": "x", "n": 1, "neg": -3, "f": 1.5, "big": u64::MAX, "t": true, "z": null,
            "a": [1, "b", [], {}], "o": {"k": {"nested": [0.25]}}, "": ""
        });
        let via_serde = regorus::Value::deserialize(&doc).unwrap();
        assert_eq!(rego_value(&doc), via_serde);
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
