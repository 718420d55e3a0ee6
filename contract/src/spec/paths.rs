//! Per-service rules for paths that cannot be canonicalized safely, and what
//! the inbound side tells the service about the client certificate.

use crate::pb::v1 as pb;

/// What to do with a path feature that has no safe canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathAction {
    /// Refuse the request with 400 (the default).
    #[default]
    Reject,
    /// Forward it as written (escapes upper-cased), for APIs that need it.
    Keep,
}

impl PathAction {
    /// The names `mesh.yaml` uses.
    pub const NAMES: &'static [&'static str] = &["reject", "keep"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "reject" => Some(PathAction::Reject),
            "keep" => Some(PathAction::Keep),
            _ => None,
        }
    }

    fn from_wire(value: i32, field: &str) -> Result<Self, String> {
        match pb::PathAction::try_from(value) {
            Ok(pb::PathAction::Reject) => Ok(PathAction::Reject),
            Ok(pb::PathAction::Keep) => Ok(PathAction::Keep),
            Err(_) => Err(format!("{field}: unknown path action {value}")),
        }
    }

    fn to_wire(self) -> i32 {
        match self {
            PathAction::Reject => pb::PathAction::Reject as i32,
            PathAction::Keep => pb::PathAction::Keep as i32,
        }
    }
}

/// Per-service choices for paths that cannot be canonicalized safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathRules {
    /// `%2F` and `%5C` in a path (Envoy's `path_with_escaped_slashes_action`).
    pub escaped_slashes: PathAction,
    /// `;` in a path segment (a path parameter, as in `/a;jsessionid=1`).
    pub path_parameters: PathAction,
}

impl From<PathRules> for pb::PathRules {
    fn from(r: PathRules) -> Self {
        pb::PathRules {
            escaped_slashes: r.escaped_slashes.to_wire(),
            path_parameters: r.path_parameters.to_wire(),
        }
    }
}

impl TryFrom<Option<&pb::PathRules>> for PathRules {
    type Error = String;

    /// Absent means the defaults (refuse both).
    fn try_from(r: Option<&pb::PathRules>) -> Result<Self, String> {
        let Some(r) = r else {
            return Ok(PathRules::default());
        };
        Ok(PathRules {
            escaped_slashes: PathAction::from_wire(r.escaped_slashes, "paths.escaped_slashes")?,
            path_parameters: PathAction::from_wire(r.path_parameters, "paths.path_parameters")?,
        })
    }
}

/// What an inbound dataplane tells its service about the client certificate,
/// in `x-forwarded-client-cert` (Envoy's `forward_client_cert_details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// Remove any `x-forwarded-client-cert` (the default).
    #[default]
    Sanitize,
    /// Replace it with the verified peer's details.
    SanitizeSet,
    /// Keep what the verified peer sent and append its details.
    AppendForward,
}

impl ForwardClientCert {
    /// The names `mesh.yaml` uses (Envoy's, lower-cased).
    pub const NAMES: &'static [&'static str] = &["sanitize", "sanitize_set", "append_forward"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sanitize" => Some(ForwardClientCert::Sanitize),
            "sanitize_set" => Some(ForwardClientCert::SanitizeSet),
            "append_forward" => Some(ForwardClientCert::AppendForward),
            _ => None,
        }
    }

    pub fn from_wire(value: i32) -> Result<Self, String> {
        match pb::ForwardClientCert::try_from(value) {
            Ok(pb::ForwardClientCert::Sanitize) => Ok(ForwardClientCert::Sanitize),
            Ok(pb::ForwardClientCert::SanitizeSet) => Ok(ForwardClientCert::SanitizeSet),
            Ok(pb::ForwardClientCert::AppendForward) => Ok(ForwardClientCert::AppendForward),
            Err(_) => Err(format!("forward_client_cert: unknown mode {value}")),
        }
    }

    pub fn to_wire(self) -> i32 {
        match self {
            ForwardClientCert::Sanitize => pb::ForwardClientCert::Sanitize as i32,
            ForwardClientCert::SanitizeSet => pb::ForwardClientCert::SanitizeSet as i32,
            ForwardClientCert::AppendForward => pb::ForwardClientCert::AppendForward as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_reject_unknown_wire_values() {
        let rules = pb::PathRules {
            escaped_slashes: 9,
            path_parameters: 0,
        };
        assert!(
            PathRules::try_from(Some(&rules))
                .unwrap_err()
                .contains("escaped_slashes")
        );
        assert!(ForwardClientCert::from_wire(42).is_err());
        for mode in [
            ForwardClientCert::Sanitize,
            ForwardClientCert::SanitizeSet,
            ForwardClientCert::AppendForward,
        ] {
            assert_eq!(ForwardClientCert::from_wire(mode.to_wire()), Ok(mode));
        }
        let keep = PathRules {
            escaped_slashes: PathAction::Keep,
            path_parameters: PathAction::Reject,
        };
        assert_eq!(
            PathRules::try_from(Some(&pb::PathRules::from(keep))),
            Ok(keep)
        );
    }
}
