//! The syntax rules of single values: trust domains, SPIFFE IDs, names,
//! hosts and `host:port` addresses, Rego rule paths.
//!
//! One rule per kind of value, used by `meshward validate` on `mesh.yaml`,
//! by every dataplane before it ACKs a resource, and by the TLS layer on a
//! peer certificate's URI SAN: so a value one of them accepts, all accept.
//! Each rule is a pure function returning the reason a value is wrong, so it
//! can be unit tested on its own and the message reads the same wherever the
//! value appears.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::spec::Endpoint;

/// SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_` (SPIFFE ID
/// spec, section 2.1). Upper case is rejected rather than folded so the ID a
/// workload presents matches the config byte for byte.
pub fn trust_domain(td: &str) -> Result<(), String> {
    if td.starts_with("spiffe://") {
        return Err("must be the bare trust domain (e.g. example.org), without spiffe://".into());
    }
    if td.is_empty() {
        return Err("must not be empty".into());
    }
    if td.len() > 255 {
        return Err("must be at most 255 characters".into());
    }
    if let Some(c) = td.chars().find(|c| !is_trust_domain_char(*c)) {
        return Err(format!(
            "invalid character {c:?}: a SPIFFE trust domain holds only lowercase letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

/// A workload SPIFFE ID, `spiffe://<trust domain>/<path>`, whose trust domain
/// is `expected_td` (skipped when `None`: the configured domain is itself
/// invalid and already reported). Returns the reason, without a prefix.
pub fn spiffe_id(id: &str, expected_td: Option<&str>) -> Result<(), String> {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err("does not start with spiffe://".into());
    };
    if id.len() > 2048 {
        return Err("is longer than 2048 bytes".into());
    }
    let (td, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    trust_domain(td).map_err(|e| format!("trust domain `{td}` {e}"))?;
    if let Some(expected) = expected_td
        && td != expected
    {
        return Err(format!("is in trust domain {td}"));
    }
    if path.is_empty() {
        return Err("has no path: a workload ID needs one, e.g. /agent/<name>".into());
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err("has an empty path segment (`//` or a trailing `/`)".into()),
            "." | ".." => return Err("has a `.` or `..` path segment".into()),
            _ => {
                if let Some(c) = segment.chars().find(|c| !is_path_char(*c)) {
                    return Err(format!(
                        "invalid character {c:?} in path: segments hold only letters, digits, '.', '-' and '_'"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Names appear in URLs (`/mcp://<name>/`), cluster names and hostnames, so
/// they follow RFC 1123 DNS labels.
pub fn dns_label(name: &str) -> Result<(), String> {
    const RULE: &str = "must be a DNS label: 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit";
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(RULE.into()) }
}

/// `host:port` with `host` an IPv4 address, a bracketed IPv6 address or a DNS
/// name. Port 0 is accepted only when `allow_port_zero`.
pub fn host_port(addr: &str, allow_port_zero: bool) -> Result<(), String> {
    endpoint(addr, allow_port_zero).map(drop)
}

/// Parses `host:port` (`[v6]:port` for IPv6) into an [`Endpoint`] by the
/// rules of [`host_port`].
pub fn endpoint(addr: &str, allow_port_zero: bool) -> Result<Endpoint, String> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let Some((v6, port)) = rest.split_once("]:") else {
            return Err("must be host:port ([v6-address]:port for IPv6)".into());
        };
        let ip = v6
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err("must be host:port".into());
        };
        if host.contains(':') {
            return Err("must be host:port (write IPv6 addresses as [addr]:port)".into());
        }
        (self::host(host)?, port)
    };
    let port: u16 = match port.parse() {
        Ok(p) if port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => return Err(format!("port `{port}` must be a number 0-65535")),
    };
    if port == 0 && !allow_port_zero {
        return Err("port must be 1-65535".into());
    }
    Ok(host.with_port(port))
}

/// An endpoint as EDS carries it: an address (IP literal, IPv6 without
/// brackets, or DNS name) and a port that must be 1-65535.
pub fn endpoint_parts(address: &str, port: u32) -> Result<Endpoint, String> {
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port} is out of range 1-65535"))?;
    let host = match address.parse::<Ipv6Addr>() {
        Ok(v6) => Host::Ip(IpAddr::V6(v6)),
        Err(_) => host(address)?,
    };
    Ok(host.with_port(port))
}

/// A host: an IP address or an RFC 1123 host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    fn with_port(self, port: u16) -> Endpoint {
        match self {
            Host::Ip(ip) => Endpoint::Ip(SocketAddr::new(ip, port)),
            Host::Name(host) => Endpoint::Dns { host, port },
        }
    }
}

/// An IPv4 address or an RFC 1123 host name: dot-separated labels of
/// letters, digits and inner hyphens, at most 63 bytes each and 253 in all.
/// `_` is refused (Kubernetes Service names and RFC 1123 names have none,
/// and resolvers disagree about it); all-numeric names must be valid IPv4.
pub fn host(host: &str) -> Result<Host, String> {
    let looks_numeric = host
        .split('.')
        .all(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if looks_numeric {
        return host
            .parse::<Ipv4Addr>()
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|_| format!("`{host}` is not an IPv4 address"));
    }
    if is_hostname(host) {
        Ok(Host::Name(host.to_string()))
    } else {
        Err(format!(
            "`{host}` is not a valid host name (letters, digits and inner '-' per label)"
        ))
    }
}

fn is_hostname(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A Rego rule reference of the form `data.a.b.c` (at least one component
/// after `data`, each an identifier).
pub fn decision_path(path: &str) -> Result<(), String> {
    const RULE: &str = "must be a Rego rule path like data.meshward.authz.decision";
    let mut parts = path.split('.');
    if parts.next() != Some("data") {
        return Err(RULE.into());
    }
    let mut count = 0;
    for part in parts {
        let mut chars = part.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(RULE.into());
        }
        count += 1;
    }
    if count == 0 {
        return Err(RULE.into());
    }
    Ok(())
}

/// A path prefix that a canonical request path can start with (a route's
/// `prefix`): `/` first, then only what the dataplane's canonicalizer leaves
/// in a path, so a prefix that could never match is refused instead of
/// silently ignored. No query, fragment, `;` parameter, `\`, space or
/// control character, empty (`//`) or dot (`.`, `..`) segment; escapes are
/// `%XX` with upper-case hex, not of an unreserved character (those are
/// decoded) nor of `/`, `\` or NUL (refused).
pub fn path_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("must start with '/', found {prefix:?}"));
    }
    if prefix.len() > 1024 {
        return Err("must be at most 1024 bytes".into());
    }
    let bytes = prefix.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'?' | b'#' => {
                return Err(format!(
                    "{prefix:?} holds {:?}: a prefix is a path only",
                    b as char
                ));
            }
            b';' => return Err(format!("{prefix:?} holds a ';' path parameter")),
            b'\\' => return Err(format!("{prefix:?} holds a backslash")),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
                let upper = |h: u8| h.is_ascii_digit() || (b'A'..=b'F').contains(&h);
                if hex.len() != 2 || !hex.iter().all(|h| upper(*h)) {
                    return Err(format!(
                        "{prefix:?}: malformed escape at byte {i} (canonical escapes are %XX, upper-case hex)"
                    ));
                }
                let decoded = u8::from_str_radix(&prefix[i + 1..i + 3], 16).unwrap_or_default();
                if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
                    return Err(format!(
                        "{prefix:?}: %{} is the unreserved {:?}, which canonical paths hold decoded",
                        &prefix[i + 1..i + 3],
                        decoded as char
                    ));
                }
                if matches!(decoded, b'/' | b'\\' | 0) {
                    return Err(format!(
                        "{prefix:?}: %{} is refused in request paths, so it cannot match",
                        &prefix[i + 1..i + 3]
                    ));
                }
                i += 3;
                continue;
            }
            b if !(0x21..=0x7e).contains(&b) => {
                return Err(format!(
                    "{prefix:?} holds a space, control or non-ASCII byte (percent-encode it)"
                ));
            }
            _ => {}
        }
        i += 1;
    }
    // Every segment but the last is complete; the last may be a partial
    // one (`/str` matches `/stream`), but `.` and `..` never survive.
    for segment in prefix[1..].split('/') {
        if segment == "." || segment == ".." {
            return Err(format!(
                "{prefix:?} holds a dot segment, which canonical paths never do"
            ));
        }
    }
    if prefix.contains("//") {
        return Err(format!(
            "{prefix:?} holds an empty segment ('//'), which canonical paths never do"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes_are_canonical() {
        for ok in [
            "/", "/stream", "/stream/", "/a/b%20c", "/v1.2/x", "/a/.well",
        ] {
            assert_eq!(path_prefix(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("stream", "start with '/'"),
            ("/a?b", "a path only"),
            ("/a#b", "a path only"),
            ("/a;b", "';'"),
            ("/a\\b", "backslash"),
            ("/a b", "space"),
            ("/a//b", "'//'"),
            ("/a/./b", "dot segment"),
            ("/a/..", "dot segment"),
            ("/%61", "unreserved"),
            ("/%2f", "upper-case"),
            ("/%2F", "refused"),
            ("/%4", "malformed"),
        ] {
            let err = path_prefix(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn trust_domains() {
        assert!(trust_domain("example.org").is_ok());
        assert!(trust_domain("prod_eu-1.example").is_ok());
        assert!(trust_domain("").is_err());
        assert!(trust_domain("Example.org").is_err());
        assert!(trust_domain("spiffe://example.org").is_err());
        assert!(trust_domain("example.org/x").is_err());
        assert!(trust_domain("example.org:443").is_err());
    }

    #[test]
    fn spiffe_ids() {
        let td = Some("example.org");
        assert!(spiffe_id("spiffe://example.org/agent/a", td).is_ok());
        assert!(spiffe_id("spiffe://example.org/ns/x/sa/y.z_1-2", td).is_ok());
        assert!(spiffe_id("spiffe://other.org/agent/a", td).is_err());
        assert!(spiffe_id("spiffe://other.org/agent/a", None).is_ok());
        assert!(spiffe_id("spiffe://example.org", td).is_err());
        assert!(spiffe_id("spiffe://example.org/", td).is_err());
        assert!(spiffe_id("spiffe://example.org/a//b", td).is_err());
        assert!(spiffe_id("spiffe://example.org/a/../b", td).is_err());
        assert!(spiffe_id("spiffe://example.org/a?b", td).is_err());
        assert!(spiffe_id("spiffe://example.org:8443/a", td).is_err());
        assert!(spiffe_id("http://example.org/a", td).is_err());
        assert!(spiffe_id("SPIFFE://example.org/a", td).is_err());
    }

    #[test]
    fn dns_labels() {
        assert!(dns_label("hello-skill").is_ok());
        assert!(dns_label("a").is_ok());
        assert!(dns_label("9x").is_ok());
        assert!(dns_label("").is_err());
        assert!(dns_label("Hello").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label("a-").is_err());
        assert!(dns_label("a.b").is_err());
        assert!(dns_label("a_b").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn host_ports() {
        assert!(host_port("127.0.0.1:0", true).is_ok());
        assert!(host_port("127.0.0.1:0", false).is_err());
        assert!(host_port("localhost:8080", false).is_ok());
        assert!(host_port("svc.ns.svc.cluster.local:15006", false).is_ok());
        assert!(host_port("[::1]:15006", false).is_ok());
        assert!(host_port("::1:15006", false).is_err());
        assert!(host_port("[zz]:1", false).is_err());
        assert!(host_port("127.0.0.1", false).is_err());
        assert!(host_port("127.0.0.1:65536", false).is_err());
        assert!(host_port("127.0.0.1:+1", false).is_err());
        assert!(host_port("300.0.0.1:1", false).is_err());
        assert!(host_port("bad host:1", false).is_err());
        assert!(host_port(":80", false).is_err());
    }

    #[test]
    fn decision_paths() {
        assert!(decision_path("data.meshward.authz.decision").is_ok());
        assert!(decision_path("data.x").is_ok());
        assert!(decision_path("data").is_err());
        assert!(decision_path("meshward.authz").is_err());
        assert!(decision_path("data.a..b").is_err());
        assert!(decision_path("data.a.1b").is_err());
        assert!(decision_path("data.a[\"b\"]").is_err());
    }
}

/// The one rule against an implementation nobody here wrote: the `spiffe`
/// crate's parser of the SPIFFE ID spec. Meshward is stricter in two ways,
/// both on purpose: workload IDs need a path, and an upper-case trust domain
/// or scheme is refused rather than folded (the crate accepts both), so the ID in
/// `mesh.yaml` matches the certificate byte for byte.
#[cfg(test)]
mod spiffe_crate_agreement {
    use super::spiffe_id;

    #[test]
    fn agrees_with_the_spiffe_crate_on_ids_with_a_path() {
        let cases = [
            "spiffe://example.org/agent/a",
            "spiffe://example.org/ns/x/sa/y.z_1-2",
            "spiffe://a-b_c.d/x",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a/./b",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/",
            "spiffe://example.org/a?b",
            "spiffe://example.org/a#b",
            "spiffe://example.org/a%20b",
            "spiffe://example.org/a b",
            "spiffe://example.org:8443/a",
            "spiffe://user@example.org/a",
            "spiffe://exa mple.org/a",
            "spiffe:/example.org/a",
            "http://example.org/a",
            "spiffe:///a",
            "spiffe://example.org/A/Upper",
            "spiffe://example.org/é",
        ];
        for id in cases {
            assert_eq!(
                spiffe_id(id, None).is_ok(),
                spiffe::SpiffeId::new(id).is_ok(),
                "{id}"
            );
        }
        // Stricter than the spec: a workload ID needs a path.
        assert!(spiffe::SpiffeId::new("spiffe://example.org").is_ok());
        assert!(spiffe_id("spiffe://example.org", None).is_err());
        assert!(spiffe::SpiffeId::new("spiffe://Example.org/a").is_ok());
        assert!(spiffe::SpiffeId::new("SPIFFE://example.org/a").is_ok());
        assert!(spiffe_id("SPIFFE://example.org/a", None).is_err());
        assert!(spiffe_id("spiffe://Example.org/a", None).is_err());
    }
}
