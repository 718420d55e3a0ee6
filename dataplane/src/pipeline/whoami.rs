//! `GET /.meshward/identity` on the outbound listener: the agent asks its own
//! sidecar who the mesh says it is.
//!
//! The answer comes from the verified registry (the `meshward.v1.Agent`
//! resources the control plane pushed) for the SPIFFE ID of this sidecar's
//! own SVID, never from anything the agent sent: an agent cannot learn
//! another agent's attributes by asking differently. It exists so the SDK's
//! `agent.identity()` reports what policy and limits actually see.
//!
//! The path prefix `/.meshward/` is reserved on the outbound listener for
//! the sidecar's own endpoints: a request target under it is answered here
//! (or refused) and never proxied, whatever the `Host`. A service's own
//! `/.meshward/...` path stays reachable as `/mcp://<service>/.meshward/...`
//! or with an absolute-form (proxy-style) HTTP/1.1 request. Inbound
//! listeners serve none of this; there the path belongs to the service.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};

use super::identify::Identity;
use super::refusal::{BadRequest, NotReady, Refusal};
use crate::proxy::body::{ProxyBody, full};
use crate::route::RouteError;
use crate::state::Agent;

/// Prefix of the request targets the outbound sidecar answers itself.
pub const RESERVED_PREFIX: &str = "/.meshward/";
/// The identity endpoint.
pub const IDENTITY_PATH: &str = "/.meshward/identity";
/// The methods the identity endpoint answers (its `Allow` header).
pub const IDENTITY_METHODS: &str = "GET, HEAD";

/// The sidecar's own answer to an outbound request for a reserved path, or
/// `None` when the request is for a service (the caller routes it on).
///
/// Reserved are request targets in origin form (`/.meshward/...`; every
/// HTTP/2 `:path` is) whose path starts with [`RESERVED_PREFIX`]. The
/// identity endpoint takes no query: one would mean the client expects
/// something this endpoint does not do, so it is refused (400), as are
/// other methods than GET and HEAD (405) and other reserved paths (404).
pub fn serve<B>(
    identity: &Identity,
    req: &Request<B>,
) -> Option<Result<Response<ProxyBody>, Refusal>> {
    let uri = req.uri();
    let origin_form = req.version() == Version::HTTP_2 || uri.authority().is_none();
    if !origin_form || !uri.path().starts_with(RESERVED_PREFIX) {
        return None;
    }
    Some(identity_endpoint(identity, req))
}

fn identity_endpoint<B>(
    identity: &Identity,
    req: &Request<B>,
) -> Result<Response<ProxyBody>, Refusal> {
    let uri = req.uri();
    if uri.path() != IDENTITY_PATH {
        return Err(Refusal::NoRoute(RouteError::Reserved(
            uri.path().to_string(),
        )));
    }
    if uri.query().is_some() {
        return Err(BadRequest::QueryNotAllowed {
            path: IDENTITY_PATH,
        }
        .into());
    }
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        ref other => {
            return Err(BadRequest::MethodNotAllowed {
                method: other.to_string(),
                path: IDENTITY_PATH,
                allow: IDENTITY_METHODS,
            }
            .into());
        }
    };
    let agent = identity
        .caller
        .as_deref()
        .ok_or_else(|| NotReady::UnregisteredAgent {
            spiffe_id: identity.caller_id.clone(),
        })?;
    let body = Bytes::from(document(agent).to_string());
    let length = body.len();
    let mut response = Response::new(if head { full(Bytes::new()) } else { full(body) });
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

/// The identity document: the registry entry as the SDK's `Identity` reads
/// it. `limits` is `null` when the agent has neither a rate nor a
/// concurrency limit; otherwise `0` in a field means "no limit" in that
/// dimension, as in `mesh.yaml`, and `burst` is the effective one (a rate
/// with burst 0 bursts 1).
pub fn document(agent: &Agent) -> serde_json::Value {
    let limits = &agent.limits;
    let limits = (!limits.is_unlimited()).then(|| {
        let (rate, burst) = if limits.rate_limited() {
            (limits.requests_per_second, limits.burst.max(1))
        } else {
            (0.0, 0)
        };
        serde_json::json!({
            "requests_per_second": rate,
            "burst": burst,
            "max_concurrent": limits.max_concurrent,
        })
    });
    serde_json::json!({
        "spiffe_id": agent.spiffe_id,
        "trust_domain": trust_domain_of(&agent.spiffe_id),
        "name": agent.name,
        "attributes": agent.attributes,
        "permissions": agent.permissions,
        "limits": limits,
    })
}

/// `example.org` of `spiffe://example.org/agent/a` (the contract checked
/// the form before the agent reached the registry).
fn trust_domain_of(spiffe_id: &str) -> &str {
    let rest = spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::identify::identify;
    use crate::pipeline::test_support::{AGENT, state};
    use crate::policy::Direction;
    use http_body_util::BodyExt;
    use meshward_contract::spec::RateLimitSettings;

    fn outbound(own: &str) -> Identity {
        identify(Ok(own.into()), Some(state()), Direction::Outbound, None).unwrap()
    }

    fn req(method: Method, target: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .header("host", "anything:15001")
            .body(())
            .unwrap()
    }

    async fn body(r: Response<ProxyBody>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn get_answers_the_registry_entry_of_this_sidecars_workload() {
        let r = serve(&outbound(AGENT), &req(Method::GET, IDENTITY_PATH))
            .expect("reserved")
            .expect("registered");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "spiffe_id": AGENT,
                "trust_domain": "example.org",
                "name": "agent",
                "attributes": {"team": "t"},
                "permissions": [],
                "limits": {"requests_per_second": 1.0, "burst": 3, "max_concurrent": 1},
            })
        );
    }

    #[tokio::test]
    async fn head_has_the_headers_and_no_body() {
        let get = serve(&outbound(AGENT), &req(Method::GET, IDENTITY_PATH))
            .unwrap()
            .unwrap();
        let head = serve(&outbound(AGENT), &req(Method::HEAD, IDENTITY_PATH))
            .unwrap()
            .unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"],
            get.headers()["content-length"]
        );
        assert!(body(head).await.is_empty());
    }

    #[test]
    fn other_methods_are_405_with_allow() {
        let refused = serve(&outbound(AGENT), &req(Method::POST, IDENTITY_PATH)).unwrap();
        let Err(refusal) = refused else {
            panic!("POST answered")
        };
        assert!(matches!(
            refusal,
            Refusal::BadRequest(BadRequest::MethodNotAllowed { .. })
        ));
        let r = refusal.into_response(false, "rid");
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["allow"], "GET, HEAD");
        assert_eq!(r.headers()["x-meshward-refusal"], "bad_request");
    }

    #[test]
    fn an_unregistered_workload_is_refused_not_described() {
        let stranger = "spiffe://example.org/agent/stranger";
        let refused = serve(&outbound(stranger), &req(Method::GET, IDENTITY_PATH)).unwrap();
        match refused {
            Err(Refusal::NotReady(NotReady::UnregisteredAgent { spiffe_id })) => {
                assert_eq!(spiffe_id, stranger);
            }
            other => panic!("{other:?}"),
        }
        let r = Refusal::from(NotReady::UnregisteredAgent {
            spiffe_id: stranger.into(),
        })
        .into_response(false, "rid");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-meshward-refusal"], "not_ready");
    }

    #[test]
    fn query_and_other_reserved_paths_are_refused() {
        let id = outbound(AGENT);
        assert!(matches!(
            serve(&id, &req(Method::GET, "/.meshward/identity?x=1")),
            Some(Err(Refusal::BadRequest(BadRequest::QueryNotAllowed { .. })))
        ));
        assert!(matches!(
            serve(&id, &req(Method::GET, "/.meshward/config")),
            Some(Err(Refusal::NoRoute(RouteError::Reserved(p)))) if p == "/.meshward/config"
        ));
        assert!(matches!(
            serve(&id, &req(Method::GET, "/.meshward/identity/")),
            Some(Err(Refusal::NoRoute(RouteError::Reserved(_))))
        ));
    }

    #[test]
    fn service_paths_are_left_to_routing() {
        let id = outbound(AGENT);
        for target in [
            "/mcp://svc/.meshward/identity",
            "/.meshward",
            "/meshward/identity",
            "/x/.meshward/identity",
            // Absolute form names a service: a proxy-style client's request.
            "http://svc/.meshward/identity",
        ] {
            assert!(serve(&id, &req(Method::GET, target)).is_none(), "{target}");
        }
        // Every HTTP/2 request is in origin form, whatever its :authority.
        let mut h2 = req(Method::GET, "http://svc/.meshward/identity");
        *h2.version_mut() = Version::HTTP_2;
        assert!(matches!(serve(&id, &h2), Some(Ok(_))));
    }

    #[test]
    fn limits_are_null_without_any_and_effective_otherwise() {
        let mut agent = crate::pipeline::test_support::agent();
        agent.limits = RateLimitSettings::default();
        assert!(document(&agent)["limits"].is_null());
        agent.limits = RateLimitSettings {
            requests_per_second: 2.5,
            burst: 0,
            ..Default::default()
        };
        assert_eq!(
            document(&agent)["limits"],
            serde_json::json!({"requests_per_second": 2.5, "burst": 1, "max_concurrent": 0})
        );
        agent.limits = RateLimitSettings {
            burst: 7,
            max_concurrent: 4,
            ..Default::default()
        };
        assert_eq!(
            document(&agent)["limits"],
            serde_json::json!({"requests_per_second": 0.0, "burst": 0, "max_concurrent": 4})
        );
    }

    #[test]
    fn trust_domain_is_the_ids_authority() {
        assert_eq!(
            trust_domain_of("spiffe://example.org/agent/a"),
            "example.org"
        );
        assert_eq!(trust_domain_of("spiffe://td"), "td");
    }
}
