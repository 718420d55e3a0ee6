//! The decision cache: a bundle that says which input fields its decision
//! reads gets each decision remembered per value of those fields.
//!
//! A sidecar sees the same few (caller, service, method, path) combinations
//! over and over; evaluating the bundle for each of them again is most of a
//! request's CPU (`benches/RESULTS.md`). A decision is a pure function of the
//! input fields the policy reads and the bundle's data, so a bundle that
//! declares those fields in `data.meshward.decision_cache.inputs` (dotted
//! input paths, e.g. `"attributes.request.http.method"`) lets the sidecar
//! key decisions by their values.
//!
//! Why the cache is safe, and not just fast:
//!
//! - **The declaration is checked, not trusted.** Compiling the bundle scans
//!   every module's tokens for references to `input` and refuses the bundle
//!   (NACK) when one reads a field the declaration does not cover, or when a
//!   module calls a builtin whose answer changes between calls with the same
//!   input (`time.now_ns`, `http.send`, ...). A reference the scan cannot
//!   follow (`input[x]`, `input` passed whole) counts as reading everything
//!   below the point where it stops, so the check errs towards refusing.
//! - **Only facts that do not change per request can be keys.** Request ids,
//!   addresses, times and bodies are refused as declared inputs, so a bundle
//!   that reads any of them has no cache.
//! - **A hit refuses what an evaluation refuses.** Building the input
//!   document refuses some requests (a malformed escape, query or JSON body:
//!   400); a request answered from the cache passes the same checks
//!   ([`check_request`](super::document::check_request)) first.
//! - **The key is the values themselves**, length-prefixed, compared
//!   exactly (no hash stands in for them), and it always holds the caller's
//!   and the destination's principals and the checkpoint, declared or not.
//! - **One cache per compiled revision.** A new bundle revision is a new
//!   [`CompiledPolicy`](super::CompiledPolicy) with an empty cache; registry
//!   facts (the caller's permissions, ...) are in the key when declared, so
//!   an edit of the mesh file that changes them misses the old entries.
//! - **Bounded.** At [`MAX_ENTRIES`] the cache is emptied and refills; a
//!   caller varying its paths only makes every request evaluate again.
//! - Errors are never cached: they deny, and are evaluated every time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use regorus::unstable::{Lexer, Source, TokenKind};
use serde_json::Value;

use super::decision::Decision;
use super::input::{CallerFacts, RequestFacts, ServiceFacts};

/// Where a bundle declares its decision's inputs, under `data`.
pub const DECLARATION: &str = "data.meshward.decision_cache.inputs";

/// Entries kept before the cache is emptied.
pub const MAX_ENTRIES: usize = 4096;

/// Builtins whose answer depends on something besides their arguments:
/// a bundle that calls one is not cacheable.
const IMPURE_BUILTINS: &[&str] = &[
    "time.now_ns",
    "http.send",
    "rand.intn",
    "uuid.rfc4122",
    "opa.runtime",
    "net.lookup_ip_addr",
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify_certificates",
    "crypto.x509.parse_and_verify_certificates_with_options",
];

/// Why a bundle's cache declaration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("{DECLARATION} must be an array of dotted input paths")]
    NotAList,
    #[error("{DECLARATION}: {path:?} cannot key the decision cache: {why}")]
    Unsupported { path: String, why: &'static str },
    #[error(
        "{module}:{line}: reads {read}, which {DECLARATION} does not cover; \
         declare it or remove the declaration"
    )]
    Undeclared {
        module: String,
        line: u32,
        read: String,
    },
    #[error(
        "{module}:{line}: calls {builtin}, whose answer changes between calls: \
         the decision cannot be cached"
    )]
    Impure {
        module: String,
        line: u32,
        builtin: &'static str,
    },
    #[error("{module}: {message}")]
    Scan { module: String, message: String },
}

/// One request fact that goes into the key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Method,
    /// Path and query: also what `parsed_path` and `parsed_query` derive from.
    Path,
    RawPath,
    Host,
    Scheme,
    Protocol,
    /// All values of one (lowercase) request header.
    Header(String),
    Caller,
    Service,
    /// Present in the input document but the same for every request the
    /// cache serves (`version`; `meshward.mcp`, absent outside MCP messages,
    /// which are never served from the cache).
    Constant,
}

/// What a declared path keys on; `Err` says why it cannot.
fn part(path: &[&str]) -> Result<Part, &'static str> {
    const PER_REQUEST: &str = "it changes with every request";
    Ok(match path {
        ["source_principal"] | ["attributes", "source", "principal"] => Part::Constant,
        ["attributes", "destination", "principal"] => Part::Constant,
        ["attributes", "request", "http", "method"] => Part::Method,
        ["attributes", "request", "http", "path"] | ["parsed_path" | "parsed_query", ..] => {
            Part::Path
        }
        ["attributes", "request", "http", "host"] => Part::Host,
        ["attributes", "request", "http", "scheme"] => Part::Scheme,
        ["attributes", "request", "http", "protocol"] => Part::Protocol,
        ["attributes", "request", "http", "headers", name] => match *name {
            ":method" => Part::Method,
            ":path" => Part::Path,
            ":authority" => Part::Host,
            ":scheme" => Part::Scheme,
            "x-request-id" | "traceparent" | "tracestate" => return Err(PER_REQUEST),
            name => Part::Header(name.to_ascii_lowercase()),
        },
        ["meshward", "direction"] | ["version", ..] | ["meshward", "mcp", ..] => Part::Constant,
        ["meshward", "raw_path"] => Part::RawPath,
        ["meshward", "caller", ..] => Part::Caller,
        ["meshward", "service", ..] => Part::Service,
        [
            "attributes",
            "request",
            "http",
            "id" | "body" | "raw_body" | "size",
        ]
        | ["attributes", "request", "time", ..]
        | ["attributes", "source" | "destination", "address", ..]
        | ["parsed_body" | "truncated_body", ..] => return Err(PER_REQUEST),
        _ => {
            return Err("not a field the cache can key on (see docs/policy.md, \
                        \"Decision cache\")");
        }
    })
}

/// A bundle's decision cache: the key plan its declaration compiled to, and
/// the remembered decisions.
#[derive(Debug)]
pub struct DecisionCache {
    parts: Vec<Part>,
    entries: DashMap<Box<[u8]>, Arc<Decision>>,
    len: AtomicUsize,
}

impl DecisionCache {
    /// The cache a bundle declares, checked against its modules; `None` when
    /// the bundle declares none.
    pub fn for_bundle(
        data: &Value,
        modules: &[(&str, &str)],
    ) -> Result<Option<DecisionCache>, CacheError> {
        let declared = data
            .pointer("/meshward/decision_cache/inputs")
            .filter(|v| !v.is_null());
        let Some(declared) = declared else {
            return Ok(None);
        };
        let declared = declared.as_array().ok_or(CacheError::NotAList)?;
        let mut paths = Vec::with_capacity(declared.len());
        let mut parts = Vec::with_capacity(declared.len());
        for entry in declared {
            let text = entry.as_str().ok_or(CacheError::NotAList)?;
            let path: Vec<&str> = text.split('.').collect();
            if path.iter().any(|s| s.is_empty()) {
                return Err(CacheError::Unsupported {
                    path: text.to_string(),
                    why: "not a dotted input path",
                });
            }
            let p = part(&path).map_err(|why| CacheError::Unsupported {
                path: text.to_string(),
                why,
            })?;
            parts.push(p);
            paths.push(path.into_iter().map(str::to_string).collect::<Vec<_>>());
        }
        for (module, source) in modules {
            check_module(module, source, &paths)?;
        }
        parts.sort();
        parts.dedup();
        parts.retain(|p| *p != Part::Constant);
        Ok(Some(DecisionCache {
            parts,
            entries: DashMap::new(),
            len: AtomicUsize::new(0),
        }))
    }

    /// The key of `facts`: the principals and the checkpoint, then every
    /// declared part. (The body is never part of it: a bundle that reads
    /// the body cannot declare a cache.)
    pub fn key(&self, facts: &RequestFacts) -> Vec<u8> {
        let mut key = Vec::with_capacity(256);
        put(&mut key, facts.checkpoint.as_str().as_bytes());
        put_opt(&mut key, facts.source_principal);
        put_opt(&mut key, facts.destination_principal);
        for part in &self.parts {
            match part {
                Part::Method => put(&mut key, facts.method.as_bytes()),
                Part::Path => put(&mut key, facts.path.as_bytes()),
                Part::RawPath => put(&mut key, facts.raw_path.as_bytes()),
                Part::Host => put(&mut key, facts.host.as_bytes()),
                Part::Scheme => put(&mut key, facts.scheme.as_bytes()),
                Part::Protocol => put(&mut key, facts.protocol.as_bytes()),
                Part::Header(name) => {
                    let values = facts.headers.get_all(name.as_str());
                    key.extend_from_slice(&(values.iter().count() as u32).to_le_bytes());
                    for v in values {
                        put(&mut key, v.as_bytes());
                    }
                }
                Part::Caller => put_caller(&mut key, facts.caller.as_ref()),
                Part::Service => put_service(&mut key, facts.service.as_ref()),
                Part::Constant => {}
            }
        }
        key
    }

    /// The decision remembered for `key`.
    pub fn get(&self, key: &[u8]) -> Option<Arc<Decision>> {
        let hit = self.entries.get(key).map(|d| d.value().clone());
        let outcome = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!(crate::metrics::POLICY_CACHE_LOOKUPS, "outcome" => outcome).increment(1);
        hit
    }

    /// Remembers `decision` for `key`.
    pub fn insert(&self, key: Vec<u8>, decision: Arc<Decision>) {
        if self.len.fetch_add(1, Ordering::Relaxed) >= MAX_ENTRIES {
            self.entries.clear();
            self.len.store(1, Ordering::Relaxed);
        }
        self.entries.insert(key.into_boxed_slice(), decision);
    }

    /// Entries held now (for tests and the admin dump).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn put(key: &mut Vec<u8>, bytes: &[u8]) {
    key.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    key.extend_from_slice(bytes);
}

fn put_opt(key: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => key.push(0),
        Some(v) => {
            key.push(1);
            put(key, v.as_bytes());
        }
    }
}

fn put_map<'a>(key: &mut Vec<u8>, map: impl ExactSizeIterator<Item = (&'a String, &'a String)>) {
    key.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        put(key, k.as_bytes());
        put(key, v.as_bytes());
    }
}

fn put_caller(key: &mut Vec<u8>, caller: Option<&CallerFacts>) {
    let Some(c) = caller else {
        key.push(0);
        return;
    };
    key.push(1);
    put(key, c.spiffe_id.as_bytes());
    put(key, c.name.as_bytes());
    put_map(key, c.attributes.iter());
    key.extend_from_slice(&(c.permissions.len() as u32).to_le_bytes());
    for p in c.permissions {
        put(key, p.as_bytes());
    }
}

fn put_service(key: &mut Vec<u8>, service: Option<&ServiceFacts>) {
    let Some(s) = service else {
        key.push(0);
        return;
    };
    key.push(1);
    put(key, s.name.as_bytes());
    put(key, s.spiffe_id.as_bytes());
    put_map(key, s.metadata.iter());
}

/// Checks that every `input` reference in `source` is covered by a declared
/// path and that no impure builtin is called.
fn check_module(module: &str, source: &str, declared: &[Vec<String>]) -> Result<(), CacheError> {
    let scan_error = |e: anyhow::Error| CacheError::Scan {
        module: module.to_string(),
        message: format!("{e:#}"),
    };
    let source =
        Source::from_contents(module.to_string(), source.to_string()).map_err(scan_error)?;
    let mut lexer = Lexer::new(&source);
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token().map_err(scan_error)?;
        if token.0 == TokenKind::Eof {
            break;
        }
        tokens.push(token);
    }
    let text = |i: usize| tokens.get(i).map(|t| t.1.text());
    let is = |i: usize, kind: TokenKind, s: &str| {
        tokens
            .get(i)
            .is_some_and(|t| t.0 == kind && t.1.text() == s)
    };
    for (i, token) in tokens.iter().enumerate() {
        if token.0 != TokenKind::Ident || is(i.wrapping_sub(1), TokenKind::Symbol, ".") {
            continue;
        }
        // A dotted name from here: `time.now_ns`, `input.a.b`.
        let mut name = vec![token.1.text()];
        let mut j = i + 1;
        while is(j, TokenKind::Symbol, ".")
            && tokens.get(j + 1).is_some_and(|t| t.0 == TokenKind::Ident)
        {
            name.push(text(j + 1).unwrap_or_default());
            j += 2;
        }
        let line = token.1.line;
        let dotted = name.join(".");
        if let Some(builtin) = IMPURE_BUILTINS.iter().find(|b| **b == dotted) {
            return Err(CacheError::Impure {
                module: module.to_string(),
                line,
                builtin,
            });
        }
        if name[0] != "input" {
            continue;
        }
        // Then `["literal"]` segments, as long as they are plain strings.
        let mut read: Vec<String> = name[1..].iter().map(|s| s.to_string()).collect();
        loop {
            if is(j, TokenKind::Symbol, "[")
                && tokens.get(j + 1).is_some_and(|t| {
                    matches!(t.0, TokenKind::String | TokenKind::RawString)
                        && !t.1.text().contains('\\')
                })
                && is(j + 2, TokenKind::Symbol, "]")
            {
                read.push(text(j + 1).unwrap_or_default().to_string());
                j += 3;
            } else if is(j, TokenKind::Symbol, ".")
                && tokens.get(j + 1).is_some_and(|t| t.0 == TokenKind::Ident)
            {
                read.push(text(j + 1).unwrap_or_default().to_string());
                j += 2;
            } else {
                break;
            }
        }
        let covered = declared
            .iter()
            .any(|d| d.len() <= read.len() && d.iter().zip(&read).all(|(a, b)| a == b));
        if !covered {
            return Err(CacheError::Undeclared {
                module: module.to_string(),
                line,
                read: std::iter::once("input")
                    .chain(read.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join("."),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
