//! Canonical request paths: one form of every path, decided before routing
//! reads the service's path and before policy sees it.
//!
//! A policy rule such as `startswith(path, "/admin")` is only safe if no other
//! spelling of `/admin` reaches the service: `/x/../admin`, `/./admin`,
//! `//admin`, `/%61dmin`, `/%2e/admin` all name it for a backend that
//! normalizes, and `/%2Fadmin`, `/;/admin`, `/\admin` do for lenient ones. So
//! the dataplane rewrites each path to its canonical form (RFC 3986 §6.2.2:
//! percent-encoded unreserved characters decoded, other escapes upper-cased,
//! dot segments removed, repeated slashes merged) and refuses, with 400,
//! what has no safe canonical form: an encoded `/`, `\` or NUL, a `;` path
//! parameter, a literal `\` or control character, a malformed escape, and a
//! `..` that would climb above the root. The canonical path is what the policy
//! sees *and* what the upstream receives, so both judge the same bytes.
//!
//! A service whose API needs encoded slashes or matrix parameters can opt in
//! to forwarding them ([`PathRules`]); those paths are then still canonical in
//! every other respect. The query string is passed through untouched (it is
//! not part of the path hierarchy and `input.parsed_query` decodes it).
//!
//! The table of inputs and outcomes, and how this compares with Envoy's
//! `normalize_path` / `merge_slashes` / `path_with_escaped_slashes_action`,
//! is in `docs/security.md`.

use std::fmt::Write as _;

pub use meshward_contract::spec::{PathAction, PathRules};

/// Why a path was refused; every variant is the client's error (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("malformed percent-encoding at byte {at}")]
    BadEscape { at: usize },
    #[error("encoded '/' (%2F) in path")]
    EncodedSlash,
    #[error("encoded '\\' (%5C) in path")]
    EncodedBackslash,
    #[error("encoded NUL (%00) in path")]
    EncodedNul,
    #[error("'\\' in path")]
    Backslash,
    #[error("control character or space in path")]
    ControlCharacter,
    #[error("path parameter (';') in path")]
    PathParameter,
    #[error("'#' in path (a fragment is never sent to a server)")]
    Fragment,
    #[error("path climbs above the root with '..'")]
    ClimbsAboveRoot,
}

/// A canonicalized path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    path_and_query: String,
    /// Length of the path part (the query, if any, follows).
    path_len: usize,
}

impl CanonicalPath {
    /// Path and query, as the upstream will receive them.
    pub fn as_str(&self) -> &str {
        &self.path_and_query
    }

    /// The path alone.
    pub fn path(&self) -> &str {
        &self.path_and_query[..self.path_len]
    }

    pub fn into_string(self) -> String {
        self.path_and_query
    }
}

/// Canonicalizes `path_and_query` (origin form: `/path[?query]`).
///
/// Idempotent: the canonical form of a canonical path is itself. The result
/// never contains `.` or `..` segments or an empty segment (`//`), except
/// that a trailing `/` is kept because it is meaningful to many APIs.
pub fn canonicalize(path_and_query: &str, rules: PathRules) -> Result<CanonicalPath, PathError> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => (&path_and_query[..i], Some(&path_and_query[i..])),
        None => (path_and_query, None),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let mut segments: Vec<String> = Vec::new();
    let mut current = String::new();
    // Whether the path ends in a way that names a directory: a final `/`,
    // or a final dot segment (RFC 3986 §5.2.4: `/a/b/..` is `/a/`).
    let mut trailing_slash;
    let mut i = 1;
    loop {
        let b = bytes.get(i).copied();
        match b {
            None | Some(b'/') => {
                trailing_slash = end_segment(&mut segments, &mut current, rules)?;
                if b.is_none() {
                    break;
                }
            }
            Some(b'%') => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(PathError::BadEscape { at: i })?;
                let decoded = hex_pair(hex).ok_or(PathError::BadEscape { at: i })?;
                match decoded {
                    b'/' if rules.escaped_slashes == PathAction::Reject => {
                        return Err(PathError::EncodedSlash);
                    }
                    b'\\' if rules.escaped_slashes == PathAction::Reject => {
                        return Err(PathError::EncodedBackslash);
                    }
                    0 => return Err(PathError::EncodedNul),
                    c if is_unreserved(c) => current.push(char::from(c)),
                    c => push_escaped(&mut current, c),
                }
                i += 2;
            }
            Some(b'\\') => return Err(PathError::Backslash),
            Some(b'#') => return Err(PathError::Fragment),
            Some(b';') => {
                if rules.path_parameters == PathAction::Reject {
                    return Err(PathError::PathParameter);
                }
                current.push(';');
            }
            Some(c) if c <= b' ' || c == 0x7f => return Err(PathError::ControlCharacter),
            Some(c) if c >= 0x80 || NOT_IN_RFC3986.contains(&c) => push_escaped(&mut current, c),
            Some(c) => current.push(char::from(c)),
        }
        i += 1;
    }
    let mut out = String::with_capacity(path.len() + query.map_or(0, str::len));
    out.push('/');
    out.push_str(&segments.join("/"));
    if trailing_slash && !segments.is_empty() {
        out.push('/');
    }
    let path_len = out.len();
    if let Some(q) = query {
        out.push_str(q);
    }
    Ok(CanonicalPath {
        path_and_query: out,
        path_len,
    })
}

/// Closes the segment in `current`: drops empty and `.` segments, applies
/// `..`, keeps anything else. Returns whether the closed segment leaves the
/// path ending in `/`.
fn end_segment(
    segments: &mut Vec<String>,
    current: &mut String,
    rules: PathRules,
) -> Result<bool, PathError> {
    let segment = std::mem::take(current);
    // With path parameters kept, `..;x` must not slip past as a name: Tomcat
    // and others strip the parameter and then see `..`.
    let name = if rules.path_parameters == PathAction::Keep {
        segment.split(';').next().unwrap_or_default()
    } else {
        segment.as_str()
    };
    match name {
        "" | "." | ".." if segment.contains(';') => Err(PathError::PathParameter),
        "" | "." => Ok(true),
        ".." => {
            segments.pop().ok_or(PathError::ClimbsAboveRoot)?;
            Ok(true)
        }
        _ => {
            segments.push(segment);
            Ok(false)
        }
    }
}

/// Printable ASCII that RFC 3986 does not allow in a path; some clients send
/// them raw, so they are escaped rather than refused.
const NOT_IN_RFC3986: &[u8] = b"\"<>[]^`{|}";

/// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex_pair(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| char::from(c).to_digit(16);
    match hex {
        [hi, lo] => Some(u8::try_from(digit(*hi)? * 16 + digit(*lo)?).ok()?),
        _ => None,
    }
}

fn push_escaped(out: &mut String, c: u8) {
    let _ = write!(out, "%{c:02X}");
}

#[cfg(test)]
mod tests;
