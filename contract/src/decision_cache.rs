//! The decision cache's contract with a policy bundle: which input fields
//! a bundle may declare its decision reads (`data.meshward.decision_cache
//! .inputs`), and the check that its modules read nothing else.
//!
//! The control plane runs [`declared`] when it loads a bundle, so `meshward
//! validate` and a reload refuse a wrong declaration with the module and
//! line; a dataplane runs it again before it ACKs (and builds its keys from
//! the [`Part`]s it returns). See `docs/policy.md`, "Decision cache".
//!
//! The check scans every module's tokens with regorus's lexer. Every
//! reference to `input` must be covered by a declared path (a declared path
//! covers everything below it); a reference the scan cannot follow counts as
//! reading everything below the point where it stops (`input.x[y]` reads
//! `input.x`; `input` passed whole reads the document), so the check errs
//! towards refusing. Builtins whose answer changes between calls with the
//! same input (`time.now_ns`, `http.send`, ...) refuse the cache too.

use regorus::unstable::{Lexer, Source, TokenKind};
use serde_json::Value;

/// Where a bundle declares its decision's inputs, under `data`.
pub const DECLARATION: &str = "data.meshward.decision_cache.inputs";

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
    #[error("{module}:{line}: reads {read}, which {DECLARATION} does not cover; {remedy}")]
    Undeclared {
        module: String,
        line: u32,
        read: String,
        /// What to do: declare the field, or, for a field no cache can key
        /// on (the body, the request id, ...), drop the declaration.
        remedy: &'static str,
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

/// One request fact that goes into a dataplane's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
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

/// The parts a bundle's declaration keys on (sorted, without the ones
/// that are the same for every request), checked against its modules;
/// `None` when the bundle declares no cache.
pub fn declared(data: &Value, modules: &[(&str, &str)]) -> Result<Option<Vec<Part>>, CacheError> {
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
    Ok(Some(parts))
}

/// Checks that every `input` reference in `source` is covered by a declared
/// path and that no impure builtin is called.
fn check_module(module: &str, source: &str, declared: &[Vec<String>]) -> Result<(), CacheError> {
    let scan_error = |e: &dyn std::fmt::Display| CacheError::Scan {
        module: module.to_string(),
        message: format!("{e:#}"),
    };
    let source = Source::from_contents(module.to_string(), source.to_string())
        .map_err(|e| scan_error(&e))?;
    let mut lexer = Lexer::new(&source);
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token().map_err(|e| scan_error(&e))?;
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
            let segments: Vec<&str> = read.iter().map(String::as_str).collect();
            let remedy = match part(&segments) {
                Ok(_) => "declare it or remove the declaration",
                Err(_) => {
                    "it cannot be declared (it changes per request or cannot key a cache): \
                     remove the declaration, a bundle that reads it is evaluated every time"
                }
            };
            return Err(CacheError::Undeclared {
                module: module.to_string(),
                line,
                remedy,
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
