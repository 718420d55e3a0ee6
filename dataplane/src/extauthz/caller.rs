//! Who is calling, from what Envoy tells the ext_authz server.
//!
//! Envoy puts the URI SAN of the downstream's verified client certificate in
//! `attributes.source.principal`. That is the caller, unless the principal is
//! a front proxy this listener was told to trust: then the caller is the one
//! `URI` of the `x-forwarded-client-cert` header that proxy set. Either way
//! it must be exactly one SPIFFE ID in the mesh's trust domain, or the
//! request is denied: a request without an identity never reaches the
//! policy's allow rules or a shared budget.

use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use meshward_contract::rules;

/// Why no caller identity could be established (all are denials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    #[error(
        "no verified client identity (attributes.source.principal is empty: is downstream mTLS on?)"
    )]
    NoPrincipal,
    #[error("caller {0:?} is not a SPIFFE ID")]
    NotSpiffe(String),
    #[error("caller {id} is outside the trust domain {trust_domain}")]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error("x-forwarded-client-cert from trusted proxy {proxy}: {why}")]
    Xfcc { proxy: String, why: &'static str },
}

/// The caller's SPIFFE ID. `trusted_proxies`: principals whose
/// `x-forwarded-client-cert` names the caller instead of themselves.
pub fn caller(
    attributes: &AttributeContext,
    trusted_proxies: &[String],
    trust_domain: &str,
) -> Result<String, CallerError> {
    let principal = attributes
        .source
        .as_ref()
        .map(|s| s.principal.as_str())
        .filter(|p| !p.is_empty())
        .ok_or(CallerError::NoPrincipal)?;
    let id = if trusted_proxies.iter().any(|t| t == principal) {
        let header = attributes
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.headers.get("x-forwarded-client-cert"));
        let xfcc = |why| CallerError::Xfcc {
            proxy: principal.to_string(),
            why,
        };
        let header = header.ok_or_else(|| xfcc("header missing"))?;
        forwarded_uri(header).map_err(xfcc)?
    } else {
        principal.to_string()
    };
    check_in_domain(&id, trust_domain)?;
    Ok(id)
}

fn check_in_domain(id: &str, trust_domain: &str) -> Result<(), CallerError> {
    rules::spiffe_id(id, None).map_err(|_| CallerError::NotSpiffe(id.to_string()))?;
    let domain = id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    if domain != trust_domain {
        return Err(CallerError::ForeignTrustDomain {
            id: id.to_string(),
            trust_domain: trust_domain.to_string(),
        });
    }
    Ok(())
}

/// The single `URI` of a single-element XFCC header. More than one element
/// (a chain of proxies) or more than one URI is ambiguous, so refused.
fn forwarded_uri(header: &str) -> Result<String, &'static str> {
    let elements = split_unquoted(header, ',');
    if elements.len() != 1 {
        return Err("more than one element (only the trusted proxy's own may be present)");
    }
    let mut uris = split_unquoted(&elements[0], ';')
        .into_iter()
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("uri")
                .then(|| unquote(v.trim()))
        });
    let uri = uris.next().ok_or("no URI")?;
    if uris.next().is_some() {
        return Err("more than one URI");
    }
    Ok(uri)
}

/// Splits on `sep` outside double quotes (XFCC quotes values holding `,;=`).
fn split_unquoted(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        let cur = out.last_mut().expect("never empty");
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => out.push(String::new()),
            c => cur.push(c),
        }
    }
    out
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };

    const TD: &str = "example.org";
    const AGENT: &str = "spiffe://example.org/agent/a";
    const PROXY: &str = "spiffe://example.org/gateway";

    fn attrs(principal: &str, xfcc: Option<&str>) -> AttributeContext {
        AttributeContext {
            source: Some(Peer {
                principal: principal.into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    headers: xfcc
                        .map(|v| [("x-forwarded-client-cert".to_string(), v.to_string())].into())
                        .unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_principal_is_the_caller_and_xfcc_is_ignored_from_untrusted_peers() {
        let forged = format!("URI={PROXY}");
        assert_eq!(
            caller(&attrs(AGENT, Some(&forged)), &[], TD).unwrap(),
            AGENT
        );
        assert_eq!(
            caller(&attrs("", None), &[], TD),
            Err(CallerError::NoPrincipal)
        );
        assert!(matches!(
            caller(&attrs("spiffe://other.org/agent/a", None), &[], TD),
            Err(CallerError::ForeignTrustDomain { .. })
        ));
        assert!(matches!(
            caller(&attrs("CN=agent", None), &[], TD),
            Err(CallerError::NotSpiffe(_))
        ));
    }

    #[test]
    fn a_trusted_proxy_names_exactly_one_caller() {
        let trusted = [PROXY.to_string()];
        let xfcc = format!("By={PROXY};Hash=ab12;URI={AGENT}");
        assert_eq!(
            caller(&attrs(PROXY, Some(&xfcc)), &trusted, TD).unwrap(),
            AGENT
        );
        let quoted = format!("Hash=ab12;Subject=\"CN=a,O=b\";URI=\"{AGENT}\"");
        assert_eq!(
            caller(&attrs(PROXY, Some(&quoted)), &trusted, TD).unwrap(),
            AGENT
        );
        for bad in [
            None,
            Some("Hash=ab12".to_string()),
            Some(format!("URI={AGENT};URI=spiffe://example.org/agent/b")),
            Some(format!("URI={AGENT},URI=spiffe://example.org/agent/b")),
        ] {
            assert!(
                matches!(
                    caller(&attrs(PROXY, bad.as_deref()), &trusted, TD),
                    Err(CallerError::Xfcc { .. })
                ),
                "{bad:?}"
            );
        }
        // What the proxy forwards must itself be in the trust domain.
        let foreign = "URI=spiffe://other.org/agent/a";
        assert!(matches!(
            caller(&attrs(PROXY, Some(foreign)), &trusted, TD),
            Err(CallerError::ForeignTrustDomain { .. })
        ));
    }
}
