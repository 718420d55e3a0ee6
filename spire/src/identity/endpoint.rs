//! Where the Workload API is: `SPIFFE_ENDPOINT_SOCKET` and its accepted forms.

use std::path::Path;

use super::error::IdentityError;

/// The environment variable that names the Workload API endpoint (SPIFFE standard).
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Turns `SPIFFE_ENDPOINT_SOCKET`-style input into the URI form the `spiffe` crate parses.
///
/// Accepts `unix:/path`, `unix:///path`, `tcp://ip:port` unchanged, and a bare
/// filesystem path (absolute or relative to the working directory) as a Unix socket.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, IdentityError> {
    let invalid = |reason: &str| IdentityError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = endpoint.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    if trimmed.starts_with("unix:") || trimmed.starts_with("tcp:") {
        return Ok(trimmed.to_owned());
    }
    if trimmed.contains("://") {
        return Err(invalid("scheme must be unix: or tcp:"));
    }
    let path = std::path::absolute(Path::new(trimmed))
        .map_err(|e| invalid(&format!("cannot make the path absolute: {e}")))?;
    let path = path
        .to_str()
        .ok_or_else(|| invalid("socket path is not UTF-8"))?;
    Ok(format!("unix:{path}"))
}

pub(super) fn endpoint_from_env() -> Result<String, IdentityError> {
    std::env::var(SPIFFE_ENDPOINT_SOCKET).map_err(|e| IdentityError::InvalidEndpoint {
        endpoint: format!("${SPIFFE_ENDPOINT_SOCKET}"),
        reason: e.to_string(),
    })
}
