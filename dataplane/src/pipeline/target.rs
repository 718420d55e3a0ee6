//! Stages 2 and 3, route and canonicalize: which service a request is for,
//! and the one path both the policy and the service will see.
//!
//! Routing reads only the service name (`/mcp://<service>` or `Host`), never
//! the path, so the path is canonicalized after the service is known and
//! under that service's [`PathRules`](crate::state::PathRules).

use std::sync::Arc;

use http::Uri;

use super::identify::Identity;
use super::refusal::{BadRequest, NotReady, Refusal};
use crate::canonical;
use crate::policy::Direction;
use crate::route;
use crate::state::Upstream;

/// The upstream of a request and its path as sent (after the outbound side's
/// `/mcp://<service>` prefix is removed).
pub fn route(
    identity: &Identity,
    direction: Direction,
    uri: &Uri,
    host: Option<&str>,
) -> Result<(Arc<Upstream>, String), Refusal> {
    match direction {
        Direction::Inbound => {
            let own = identity
                .own_service
                .clone()
                .ok_or_else(|| NotReady::NotRegistered {
                    spiffe_id: identity.own_spiffe_id.clone(),
                })?;
            let path = uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
            Ok((own, path))
        }
        Direction::Outbound => {
            let r = route::route(uri, host)?;
            let upstream = identity
                .state
                .clusters
                .get(&r.service)
                .cloned()
                .ok_or(Refusal::UnknownService(r.service))?;
            Ok((upstream, r.path_and_query))
        }
    }
}

/// The canonical form of `path`, or why it has none (400).
pub fn canonicalize(upstream: &Upstream, path: &str) -> Result<String, Refusal> {
    canonical::canonicalize(path, upstream.service.paths)
        .map(canonical::CanonicalPath::into_string)
        .map_err(|error| {
            Refusal::BadRequest(BadRequest::Path {
                path: path.to_string(),
                error,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::identify::identify;
    use crate::pipeline::test_support::{AGENT, SERVICE, state};

    fn outbound() -> Identity {
        identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap()
    }

    #[test]
    fn outbound_routes_by_prefix_or_host_and_knows_unknown_services() {
        let id = outbound();
        let uri: Uri = "/mcp://svc/a/b?q=1".parse().unwrap();
        let (up, path) = route(&id, Direction::Outbound, &uri, None).unwrap();
        assert_eq!(up.service.name, "svc");
        assert_eq!(path, "/a/b?q=1");
        let uri: Uri = "/x".parse().unwrap();
        let (up, _) = route(&id, Direction::Outbound, &uri, Some("svc:80")).unwrap();
        assert_eq!(up.service.name, "svc");
        let uri: Uri = "/mcp://nope/x".parse().unwrap();
        assert!(matches!(
            route(&id, Direction::Outbound, &uri, None),
            Err(Refusal::UnknownService(s)) if s == "nope"
        ));
        let uri: Uri = "/x".parse().unwrap();
        assert!(matches!(
            route(&id, Direction::Outbound, &uri, None),
            Err(Refusal::NoRoute(_))
        ));
    }

    #[test]
    fn inbound_goes_to_the_own_service_with_the_path_as_sent() {
        let peer = crate::pipeline::VerifiedPeer {
            spiffe_id: AGENT.into(),
            cert_sha256: String::new(),
        };
        let id = identify(
            Ok(SERVICE.into()),
            Some(state()),
            Direction::Inbound,
            Some(&peer),
        )
        .unwrap();
        let uri: Uri = "/mcp://other/x/../y".parse().unwrap();
        let (up, path) = route(&id, Direction::Inbound, &uri, Some("other")).unwrap();
        assert_eq!(up.service.spiffe_id, SERVICE);
        assert_eq!(path, "/mcp://other/x/../y", "no prefix routing inbound");
    }

    #[test]
    fn canonicalize_refuses_with_the_path_and_reason() {
        let id = outbound();
        let up = id.state.clusters["svc"].clone();
        assert_eq!(canonicalize(&up, "/a/./b").unwrap(), "/a/b");
        match canonicalize(&up, "/%2Fadmin") {
            Err(Refusal::BadRequest(BadRequest::Path { path, error })) => {
                assert_eq!(path, "/%2Fadmin");
                assert_eq!(error, canonical::PathError::EncodedSlash);
            }
            other => panic!("{other:?}"),
        }
    }
}
