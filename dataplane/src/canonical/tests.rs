use proptest::prelude::*;

use super::*;

fn canon(p: &str) -> Result<String, PathError> {
    canonicalize(p, PathRules::default()).map(CanonicalPath::into_string)
}

fn keep_all() -> PathRules {
    PathRules {
        escaped_slashes: PathAction::Keep,
        path_parameters: PathAction::Keep,
    }
}

/// The breach report's spellings of `/admin/users`, and the rest of the
/// known bypass families: each is either rewritten to the canonical path
/// (so a prefix rule sees `/admin`) or refused.
#[test]
fn every_spelling_of_admin_is_canonical_or_refused() {
    let rewritten = [
        "/x/../admin/users",
        "/./admin/users",
        "/%61dmin/users",
        "/%2e/admin/users",
        "/%2E/admin/users",
        "//admin/users",
        "///admin//users",
        "/%2e%2E/x/../admin/users",
        "/x/%2e%2e/admin/users",
        "/x/.%2e/admin/users",
        "/adm%69n/users",
        "/admi%6E/users",
        "/admi%6e/users",
        "/%61%64%6d%69%6E/users",
    ];
    for p in rewritten {
        match canon(p) {
            Ok(c) => assert_eq!(c, "/admin/users", "{p}"),
            // `/%2e%2E/...` climbs above the root first: refused, also fine.
            Err(e) => assert_eq!(e, PathError::ClimbsAboveRoot, "{p}"),
        }
    }
    let refused = [
        ("/%2Fadmin/users", PathError::EncodedSlash),
        ("/%2fadmin/users", PathError::EncodedSlash),
        ("/%5Cadmin/users", PathError::EncodedBackslash),
        ("/%5cadmin/users", PathError::EncodedBackslash),
        ("/;/admin/users", PathError::PathParameter),
        ("/admin;x=1/users", PathError::PathParameter),
        ("/\\admin/users", PathError::Backslash),
        ("/admin%00/users", PathError::EncodedNul),
        ("/../admin/users", PathError::ClimbsAboveRoot),
        ("/x/../../admin/users", PathError::ClimbsAboveRoot),
        ("/%2e%2e/admin/users", PathError::ClimbsAboveRoot),
        ("/%zz/admin", PathError::BadEscape { at: 1 }),
        ("/admin%2", PathError::BadEscape { at: 6 }),
        ("/admin%", PathError::BadEscape { at: 6 }),
        ("/ad min", PathError::ControlCharacter),
        ("/ad\tmin", PathError::ControlCharacter),
        ("/public/..#", PathError::Fragment),
        ("/admin#x", PathError::Fragment),
        ("admin", PathError::NotAbsolute),
        ("*", PathError::NotAbsolute),
        ("", PathError::NotAbsolute),
    ];
    for (p, want) in refused {
        assert_eq!(canon(p), Err(want), "{p}");
    }
}

#[test]
fn canonical_paths_pass_unchanged() {
    for p in [
        "/",
        "/say-hello",
        "/admin/users",
        "/v1/customers/42?expand=orders&x=%2F",
        "/meshward.demo.v1.Echo/Echo",
        "/a/b/",
        "/~user/file_name-1.txt",
        "/a%20b/%3B/%25",
        "/a:b@c!$&'()*+,=",
    ] {
        assert_eq!(canon(p).as_deref(), Ok(p), "{p}");
    }
}

#[test]
fn rewrites_follow_rfc3986() {
    let cases = [
        ("/a/b/c/./../../g", "/a/g"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/..", "/"),
        ("/.", "/"),
        ("//", "/"),
        ("/a//b//", "/a/b/"),
        ("/%7e%7Euser", "/~~user"),
        ("/%3b%2c", "/%3B%2C"),
        ("/a%2d%5f%2E", "/a-_."),
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/a{b}|c", "/a%7Bb%7D%7Cc"),
        ("/[v6]", "/%5Bv6%5D"),
        // The query is not part of the path: left as sent.
        ("/a/../b?x=/../y&z=%2F", "/b?x=/../y&z=%2F"),
        ("/?", "/?"),
    ];
    for (p, want) in cases {
        assert_eq!(canon(p).as_deref(), Ok(want), "{p}");
    }
    let c = canonicalize("/a/./b?q=1", PathRules::default()).unwrap();
    assert_eq!(c.path(), "/a/b");
    assert_eq!(c.as_str(), "/a/b?q=1");
}

#[test]
fn keep_rules_forward_escaped_slashes_and_parameters() {
    let keep = keep_all();
    let c = |p| canonicalize(p, keep).map(CanonicalPath::into_string);
    assert_eq!(c("/repos/a%2fb/x").as_deref(), Ok("/repos/a%2Fb/x"));
    assert_eq!(c("/a%5c").as_deref(), Ok("/a%5C"));
    assert_eq!(c("/a;v=1/b").as_deref(), Ok("/a;v=1/b"));
    // Still canonical otherwise, and NUL and climbs stay refused.
    assert_eq!(c("/x/../a;v=1").as_deref(), Ok("/a;v=1"));
    assert_eq!(c("/a%00"), Err(PathError::EncodedNul));
    assert_eq!(c("/../a"), Err(PathError::ClimbsAboveRoot));
    // `..;` is `..` to Tomcat-style servers: never a plain name.
    assert_eq!(c("/x/..;/admin"), Err(PathError::PathParameter));
    assert_eq!(c("/x/.;a/admin"), Err(PathError::PathParameter));
    assert_eq!(c("/;/admin"), Err(PathError::PathParameter));
}

/// Pieces paths are made of: names, dot segments in every spelling,
/// escapes that must be decoded, kept or refused, and separators.
fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "admin", "users", ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%61", "%41", "%7e",
        "%7E", "~", "-", "_", "%2F", "%2f", "%5C", "%00", "%3b", "%3B", ";", "%25", "%252e", "%20",
        "%", "%4", "/", "//", "\\", "?", "x=1", "%C3%A9", "é", "{", "|", ":", "@",
    ])
}

fn raw_path() -> impl Strategy<Value = String> {
    prop::collection::vec((token(), prop::bool::weighted(0.6)), 0..12).prop_map(|parts| {
        let mut p = String::from("/");
        for (t, slash) in parts {
            p.push_str(t);
            if slash {
                p.push('/');
            }
        }
        p
    })
}

fn rules() -> impl Strategy<Value = PathRules> {
    let action = prop::sample::select(vec![PathAction::Reject, PathAction::Keep]);
    (action.clone(), action).prop_map(|(escaped_slashes, path_parameters)| PathRules {
        escaped_slashes,
        path_parameters,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn canonicalization_is_idempotent(p in raw_path(), rules in rules()) {
        if let Ok(once) = canonicalize(&p, rules) {
            let twice = canonicalize(once.as_str(), rules);
            prop_assert_eq!(twice, Ok(once), "input {:?}", p);
        }
    }

    #[test]
    fn canonical_paths_have_no_dot_or_empty_segments(p in raw_path(), rules in rules()) {
        if let Ok(c) = canonicalize(&p, rules) {
            let path = c.path();
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains("//"), "{:?} -> {:?}", p, path);
            for segment in path.split('/') {
                prop_assert!(segment != "." && segment != "..", "{:?} -> {:?}", p, path);
            }
            // Nothing that decodes to a separator or a dot is left encoded.
            let upper = path.to_ascii_uppercase();
            prop_assert!(!upper.contains("%2E"), "{:?} -> {:?}", p, path);
            if rules.escaped_slashes == PathAction::Reject {
                prop_assert!(!upper.contains("%2F") && !upper.contains("%5C"));
            }
            if rules.path_parameters == PathAction::Reject {
                prop_assert!(!path.contains(';'));
            }
        }
    }
}

/// Agrees with an implementation nobody here wrote: Python's
/// `posixpath.normpath` over the percent-decoded path. Python clamps `..` at
/// the root where Meshward refuses, so climbs are checked separately (a path
/// climbs iff normalizing it below a marker directory loses the marker).
#[test]
fn agrees_with_python_normpath() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let Some(python) = python() else {
        return;
    };
    let mut runner = TestRunner::deterministic();
    let mut inputs = Vec::new();
    while inputs.len() < 3000 {
        let p = raw_path().new_tree(&mut runner).unwrap().current();
        // Compare the path hierarchy only; escapes that have no decoded
        // meaning to Python are refused by both sides' rules below.
        let path = p.split('?').next().unwrap_or_default().to_string();
        inputs.push(path);
    }
    let script = r#"
import json, posixpath, re, sys
UNRESERVED = re.compile(r'%([0-9A-Fa-f]{2})')
def dec(m):
    c = chr(int(m.group(1), 16))
    return c if (c.isascii() and (c.isalnum() or c in '-._~')) else m.group(0).upper()
for line in sys.stdin:
    p = json.loads(line)
    d = UNRESERVED.sub(dec, p)
    marker = '/\x01m'
    climbs = not posixpath.normpath(marker + '/' + d).startswith(marker)
    n = posixpath.normpath('/' + d.lstrip('/'))
    print(json.dumps({'climbs': climbs, 'norm': n}))
"#;
    let out = run_python(&python, script, &inputs);
    let mut compared = 0;
    for (input, line) in inputs.iter().zip(out.lines()) {
        let reference: serde_json::Value = serde_json::from_str(line).unwrap();
        let climbs = reference["climbs"].as_bool().unwrap();
        let norm = reference["norm"].as_str().unwrap();
        match canonicalize(input, keep_all()) {
            Err(PathError::ClimbsAboveRoot) => assert!(climbs, "{input:?}: Python does not climb"),
            Err(_) => {}
            Ok(c) => {
                assert!(!climbs, "{input:?}: Python climbs, Meshward gave {c:?}");
                let ours = c.path();
                let ours = if ours.len() > 1 {
                    ours.trim_end_matches('/')
                } else {
                    ours
                };
                // Python keeps raw non-ASCII and RFC-excluded characters that
                // Meshward escapes; compare after escaping Python's the same way.
                assert_eq!(ours, escape_like_meshward(norm), "{input:?}");
                compared += 1;
            }
        }
    }
    assert!(compared > 500, "only {compared} accepted inputs compared");
}

fn escape_like_meshward(p: &str) -> String {
    let mut out = String::new();
    for &b in p.as_bytes() {
        if b >= 0x80 || NOT_IN_RFC3986.contains(&b) {
            push_escaped(&mut out, b);
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// The Python interpreter for reference checks: `MESHWARD_PYTHON`, else
/// `python3`. Missing is a failure under `MESHWARD_REQUIRE_PEERS=1`.
fn python() -> Option<String> {
    let python = std::env::var("MESHWARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .arg("-c")
        .arg("import posixpath")
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var("MESHWARD_REQUIRE_PEERS").is_err(),
        "{python} is not runnable and MESHWARD_REQUIRE_PEERS is set"
    );
    eprintln!("skipping: {python} is not runnable");
    None
}

fn run_python(python: &str, script: &str, inputs: &[String]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body: String = inputs
        .iter()
        .map(|p| serde_json::to_string(p).unwrap() + "\n")
        .collect();
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "python failed");
    String::from_utf8(out.stdout).unwrap()
}
