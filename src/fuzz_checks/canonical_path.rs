//! `canonical_path`: the request path canonicalizer, on any text.
//!
//! Policy rules such as `startswith(path, "/admin")` are only sound if every
//! accepted path has exactly one spelling, so the properties are the ones the
//! canonicalizer promises: canonicalizing twice changes nothing, the path
//! part is absolute with no empty, `.` or `..` segment (nor `.`/`..` hidden
//! behind a kept `;` parameter), the query passes untouched, and relaxing the
//! rules never changes the canonical form of a path the stricter rules took.
//!
//! Input: byte 0 picks the [`PathRules`] (bit 0 keeps escaped slashes, bit 1
//! keeps path parameters; seeds use the digits `0`..`3`), the rest is the path
//! and query, decoded as UTF-8 with invalid bytes replaced.

use meshward_dataplane::canonical::{CanonicalPath, PathAction, PathRules, canonicalize};

use super::Verdict;

const LENIENT: PathRules = PathRules {
    escaped_slashes: PathAction::Keep,
    path_parameters: PathAction::Keep,
};

pub fn canonical_path(data: &[u8]) -> Verdict {
    let Some((&selector, rest)) = data.split_first() else {
        return Verdict::Skipped;
    };
    let rules = rules(selector);
    let input = String::from_utf8_lossy(rest);
    let Ok(canonical) = canonicalize(&input, rules) else {
        return Verdict::Rejected;
    };
    check_form(&input, rules, &canonical);

    let again = canonicalize(canonical.as_str(), rules);
    assert_eq!(
        again.as_ref(),
        Ok(&canonical),
        "not idempotent: {input:?} ({rules:?}) gave {:?}",
        canonical.as_str()
    );

    if rules != LENIENT {
        let lenient = canonicalize(&input, LENIENT);
        assert_eq!(
            lenient.as_ref(),
            Ok(&canonical),
            "{input:?}: accepted as {:?} with {rules:?}, but lenient rules disagree",
            canonical.as_str()
        );
    }
    Verdict::Accepted
}

fn rules(selector: u8) -> PathRules {
    let action = |keep: bool| {
        if keep {
            PathAction::Keep
        } else {
            PathAction::Reject
        }
    };
    PathRules {
        escaped_slashes: action(selector & 1 != 0),
        path_parameters: action(selector & 2 != 0),
    }
}

/// The shape of an accepted path and query.
fn check_form(input: &str, rules: PathRules, canonical: &CanonicalPath) {
    let path = canonical.path();
    let shown = canonical.as_str();
    assert!(
        path.starts_with('/'),
        "{input:?} ({rules:?}): path {path:?} is not absolute"
    );
    assert!(
        !path.contains("//"),
        "{input:?} ({rules:?}): path {path:?} has an empty segment"
    );
    if rules.path_parameters == PathAction::Reject {
        assert!(
            !path.contains(';'),
            "{input:?} ({rules:?}): path {path:?} kept a parameter"
        );
    }
    for segment in path[1..].split('/') {
        // What a server that strips `;` parameters would see as the name.
        let name = segment.split(';').next().unwrap_or(segment);
        assert!(
            !matches!(segment, "." | "..") && !matches!(name, "." | ".."),
            "{input:?} ({rules:?}): path {path:?} has the dot segment {segment:?}"
        );
        assert!(
            !(segment.contains(';') && name.is_empty()),
            "{input:?} ({rules:?}): path {path:?} has a nameless segment {segment:?}"
        );
    }
    let query = input.find('?').map_or("", |i| &input[i..]);
    assert_eq!(
        &shown[path.len()..],
        query,
        "{input:?} ({rules:?}): the query changed in {shown:?}"
    );
}
