//! The config watcher's metrics: whether reloads apply, and which policy
//! revision is in force.
//!
//! A rejected edit changes nothing the mesh does, so without these an
//! operator learns of it only from the logs. `reason` is the
//! [`ConfigErrorKind`] (a fixed set), never the error text, which would make
//! a new series per typo; the text is in `/config_dump`'s
//! `last_reload_error`.
//!
//! `meshward_policy_revision_info{revision}` is the usual info-gauge: 1 for
//! the revision in force, 0 for one that was, so "which revision" joins onto
//! any other series. A process normally runs one control plane; several
//! (as in tests) share the gauge, each setting its own revision.

use super::error::ConfigErrors;

/// Counter: reloads, labelled `result` (`ok`, `rejected`) and `reason`.
pub const RELOADS: &str = "meshward_config_reloads_total";
/// Gauge: 1 for the policy revision in force, labelled `revision`.
pub const POLICY_REVISION: &str = "meshward_policy_revision_info";

/// The `reason` of an applied reload.
const NO_REASON: &str = "none";

/// Describes the families above (HELP).
pub fn describe() {
    metrics::describe_counter!(
        RELOADS,
        "mesh.yaml and policy bundle reloads, by result (ok, rejected) and reason (none, io, parse, validate, policy); a rejected reload keeps the last good config."
    );
    metrics::describe_gauge!(
        POLICY_REVISION,
        "1 for the policy bundle revision the control plane serves (0 for earlier ones), labelled revision."
    );
}

/// Makes the reload counter exist from start, so a dashboard sees 0 rather
/// than nothing before the first edit.
pub fn started() {
    metrics::counter!(RELOADS, "result" => "ok", "reason" => NO_REASON).absolute(0);
}

/// Counts one reload that was applied (`Ok`) or rejected.
pub fn reloaded(result: Result<(), &ConfigErrors>) {
    let (result, reason) = match result {
        Ok(()) => ("ok", NO_REASON),
        Err(errors) => ("rejected", errors.kind().label()),
    };
    metrics::counter!(RELOADS, "result" => result, "reason" => reason).increment(1);
}

/// The policy revision in force is now `new` (it was `old`).
pub fn revision(old: Option<&str>, new: &str) {
    if let Some(old) = old.filter(|old| *old != new) {
        metrics::gauge!(POLICY_REVISION, "revision" => old.to_string()).set(0.0);
    }
    metrics::gauge!(POLICY_REVISION, "revision" => new.to_string()).set(1.0);
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::config::{ConfigError, ConfigErrorKind};

    fn capture(f: impl FnOnce()) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    #[test]
    fn reloads_count_by_result_and_kind_not_text() {
        let rejected = ConfigErrors(vec![
            ConfigError::new("p/a.rego", Some(3), "", "unexpected token `{`")
                .with_kind(ConfigErrorKind::Policy),
        ]);
        let text = capture(|| {
            started();
            reloaded(Ok(()));
            reloaded(Err(&rejected));
            reloaded(Err(&rejected));
        });
        assert!(
            text.contains(r#"meshward_config_reloads_total{result="ok",reason="none"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshward_config_reloads_total{result="rejected",reason="policy"} 2"#),
            "{text}"
        );
        assert!(!text.contains("unexpected"), "{text}");
    }

    #[test]
    fn only_the_revision_in_force_is_one() {
        let text = capture(|| {
            revision(None, "r1");
            revision(Some("r1"), "r2");
            revision(Some("r2"), "r2");
        });
        assert!(
            text.contains(r#"meshward_policy_revision_info{revision="r1"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshward_policy_revision_info{revision="r2"} 1"#),
            "{text}"
        );
    }
}
