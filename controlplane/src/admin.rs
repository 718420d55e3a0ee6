//! The control plane's admin endpoint: ready when it serves xDS with a usable
//! SVID, and `/config_dump` shows the model it serves. The admin server
//! itself is shared with the dataplanes.

use std::time::UNIX_EPOCH;

use meshward_contract::admin::AdminSource;
use meshward_contract::spec::ListenerLimits;

use crate::ControlPlaneStatus;
use crate::config::ReloadStatus;

/// `last_reload_error`: the most recent rejected reload (file, every error,
/// when, and whether it is still the latest outcome), or `null`.
fn last_reload_error(status: &ReloadStatus) -> serde_json::Value {
    let Some(rejected) = &status.last_rejected else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "file": rejected.errors.iter().next().map(|e| e.file.display().to_string()),
        "error": rejected.errors.to_string(),
        "reason": rejected.errors.kind().label(),
        "at": meshward_spire::identity::rfc3339(rejected.at),
        "at_unix": rejected.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
        "current": status.last_error.is_some(),
    })
}

impl AdminSource for ControlPlaneStatus {
    fn readiness(&self) -> Result<(), String> {
        ControlPlaneStatus::readiness(self)
    }

    /// The control plane's admin listener follows `mesh.yaml` like the
    /// dataplanes' do.
    fn listener_limits(&self) -> ListenerLimits {
        self.mesh().listeners
    }

    fn config_dump(&self) -> serde_json::Value {
        let mesh = self.mesh();
        let reloads = self.reload_status();
        serde_json::json!({
            "source": mesh.source,
            "trust_domain": mesh.trust_domain,
            "policy_revision": mesh.policy.revision,
            "reloads": reloads.reloads,
            "last_reload_error": last_reload_error(&reloads),
            "policy_modules": mesh.policy.modules.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            "services": mesh.services.values().map(|s| serde_json::json!({
                "name": s.spec.name,
                "spiffe_id": s.spec.spiffe_id,
                "endpoints": s.endpoints,
                "metadata": s.spec.metadata,
            })).collect::<Vec<_>>(),
            "agents": mesh.agents.values().map(|a| serde_json::json!({
                "name": a.name,
                "spiffe_id": a.spiffe_id,
                "attributes": a.attributes,
                "permissions": a.permissions,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::config::{ConfigError, ConfigErrorKind, ConfigErrors, RejectedReload};

    #[test]
    fn last_reload_error_names_file_error_and_time() {
        assert_eq!(
            last_reload_error(&ReloadStatus::default()),
            serde_json::Value::Null
        );
        let errors = ConfigErrors(vec![
            ConfigError::new(
                "/etc/mesh.yaml",
                Some(7),
                "agents[0].limits.burst",
                "must be >= 1",
            ),
            ConfigError::new("/etc/p/a.rego", Some(2), "", "bad")
                .with_kind(ConfigErrorKind::Policy),
        ]);
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut status = ReloadStatus {
            reloads: 3,
            last_error: Some(errors.clone()),
            last_rejected: Some(RejectedReload { errors, at }),
        };
        let v = last_reload_error(&status);
        assert_eq!(v["file"], "/etc/mesh.yaml");
        assert_eq!(
            v["error"],
            "/etc/mesh.yaml:7: agents[0].limits.burst: must be >= 1\n/etc/p/a.rego:2: bad"
        );
        assert_eq!(v["reason"], "validate");
        assert_eq!(v["at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["at_unix"], 1_700_000_000);
        assert_eq!(v["current"], true);
        status.last_error = None;
        assert_eq!(last_reload_error(&status)["current"], false);
        assert!(SystemTime::now() > at);
    }
}
