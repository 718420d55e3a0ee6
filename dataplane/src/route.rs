//! Routing: which service a request is for, and what path the service sees.
//!
//! Two conventions are supported because agents use both: the MCP-style
//! `/mcp://<service>/<path>` prefix that the agent SDKs emit, and ordinary
//! `Host` / `:authority` routing so gRPC and `HTTP_PROXY`-style clients work
//! unchanged. The prefix form wins when both are present.

use http::Uri;

/// Where a request goes and the path the upstream should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    /// Path and query as the upstream sees them (prefix stripped).
    pub path_and_query: String,
}

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "request names no service: use /mcp://<service>/<path> or a Host header naming a service"
    )]
    NoService,
    #[error("malformed path {0:?}")]
    BadPath(String),
    /// An outbound request target under `/.meshward/`, reserved for the
    /// sidecar's own endpoints, that names none of them.
    #[error(
        "path {0:?} is reserved for the sidecar's own endpoints (/.meshward/): \
         reach a service's own /.meshward/ path as /mcp://<service>/.meshward/..."
    )]
    Reserved(String),
}

const MCP_PREFIX: &str = "/mcp://";

/// Picks the service from the `/mcp://` prefix, else from the host.
///
/// The host may be `service`, `service:port` or `service.<anything>` (so
/// `hello-skill.mesh.local` works); whether that name is a known service is
/// the caller's question, answered with 404 when not.
pub fn route(uri: &Uri, host: Option<&str>) -> Result<Route, RouteError> {
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Some(rest) = path_and_query.strip_prefix(MCP_PREFIX) {
        let (service, tail) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if service.is_empty() {
            return Err(RouteError::BadPath(path_and_query.to_string()));
        }
        let path_and_query = match tail {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        return Ok(Route {
            service: service.to_string(),
            path_and_query,
        });
    }
    let service = host
        .or_else(|| uri.host())
        .and_then(service_of_host)
        .ok_or(RouteError::NoService)?;
    Ok(Route {
        service: service.to_string(),
        path_and_query: path_and_query.to_string(),
    })
}

/// The service a host names: `service`, `service:port` or
/// `service.<anything>`; `None` for an empty host.
pub fn service_of_host(host: &str) -> Option<&str> {
    let host = strip_port(host);
    let service = host.split('.').next().unwrap_or(host);
    (!service.is_empty()).then_some(service)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: never a service name, but keep it whole.
        return host;
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(uri: &str, host: Option<&str>) -> Result<Route, RouteError> {
        route(&uri.parse().unwrap(), host)
    }

    #[test]
    fn mcp_prefix_picks_service_and_strips_prefix() {
        let got = r("/mcp://hello-skill/say-hello?x=1", Some("127.0.0.1:15001")).unwrap();
        assert_eq!(got.service, "hello-skill");
        assert_eq!(got.path_and_query, "/say-hello?x=1");
    }

    #[test]
    fn mcp_prefix_without_path_gets_root() {
        assert_eq!(r("/mcp://hello-skill", None).unwrap().path_and_query, "/");
        assert_eq!(
            r("/mcp://hello-skill?q=2", None).unwrap().path_and_query,
            "/?q=2"
        );
    }

    #[test]
    fn empty_mcp_service_is_rejected() {
        assert!(matches!(r("/mcp:///x", None), Err(RouteError::BadPath(_))));
    }

    #[test]
    fn host_routing_for_grpc_and_proxy_clients() {
        let got = r("/meshward.demo.v1.Echo/Echo", Some("hello-skill:80")).unwrap();
        assert_eq!(got.service, "hello-skill");
        assert_eq!(got.path_and_query, "/meshward.demo.v1.Echo/Echo");
        let got = r("/x", Some("billing-system.mesh.local")).unwrap();
        assert_eq!(got.service, "billing-system");
    }

    #[test]
    fn absolute_form_uri_uses_its_authority() {
        let got = r("http://customer-lookup/v1/customers", None).unwrap();
        assert_eq!(got.service, "customer-lookup");
        assert_eq!(got.path_and_query, "/v1/customers");
    }

    #[test]
    fn no_host_no_prefix_is_no_service() {
        assert_eq!(r("/x", None), Err(RouteError::NoService));
    }
}
