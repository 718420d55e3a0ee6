//! Which of OPA's built-in functions regorus (the engine Meshward evaluates
//! Rego with, built with the dataplane's features) lacks, against real OPA's
//! own list (`opa capabilities --current`), and that the README lists
//! exactly those: a policy written for OPA that calls one of them fails to
//! evaluate in Meshward (and so denies), and users must be able to know.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn opa() -> Option<PathBuf> {
    let path = std::env::var_os("MESHWARD_OPA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/opa"));
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("MESHWARD_REQUIRE_PEERS").as_deref() != Ok("1"),
        "OPA is required here but {} is missing",
        path.display()
    );
    eprintln!("SKIPPED: OPA not found at {}", path.display());
    None
}

/// Whether regorus knows `name`: a call with the right number of (wrong)
/// arguments fails on types, an unknown function fails on its name.
fn known(name: &str, arity: usize) -> bool {
    let args = vec!["null"; arity].join(", ");
    let module = format!("package p\n\nx := {name}({args})\n");
    let mut engine = regorus::Engine::new();
    if let Err(e) = engine.add_policy("p.rego".into(), module) {
        return !format!("{e:#}").contains("could not find function");
    }
    match engine.eval_rule("data.p.x".into()) {
        Ok(_) => true,
        Err(e) => !format!("{e:#}").contains("could not find function"),
    }
}

/// The names between the README's markers.
fn listed_in_readme() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let start = readme
        .find("<!-- regorus-missing:start -->")
        .expect("README has the regorus-missing markers");
    let end = readme.find("<!-- regorus-missing:end -->").unwrap();
    readme[start..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_lists_every_opa_builtin_regorus_lacks() {
    let Some(opa) = opa() else { return };
    let out = Command::new(&opa)
        .args(["capabilities", "--current"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let caps: Value = serde_json::from_slice(&out.stdout).unwrap();
    let builtins = caps["builtins"].as_array().unwrap();
    let mut missing = BTreeSet::new();
    let mut checked = 0;
    for b in builtins {
        // Operators (`==`, `+`, ...) are syntax, not calls.
        if b.get("infix").is_some() {
            continue;
        }
        let name = b["name"].as_str().unwrap();
        let arity = b["decl"]["args"].as_array().map_or(0, Vec::len);
        checked += 1;
        if !known(name, arity) {
            missing.insert(name.to_string());
        }
    }
    assert!(checked > 150, "only {checked} builtins in OPA's list");
    // The check can fail: a made-up name is unknown, a real one is known.
    assert!(!known("meshward.no_such_builtin", 1));
    assert!(known("startswith", 2));
    let listed = listed_in_readme();
    assert_eq!(
        listed,
        missing,
        "README's list is stale: add {:?}, remove {:?}",
        missing.difference(&listed).collect::<Vec<_>>(),
        listed.difference(&missing).collect::<Vec<_>>()
    );
}
