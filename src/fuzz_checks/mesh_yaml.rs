//! `mesh_yaml`: the whole `mesh.yaml` loader (YAML, validation, policy
//! bundle) on any text.
//!
//! An operator fixes a refused file by reading its errors, so the properties
//! are: the loader never panics, a refusal lists at least one error, every
//! error names the mesh file, and an accepted mesh remembers its source.
//!
//! Input: the mesh file's text, decoded as UTF-8 with invalid bytes replaced.
//! It is loaded as if it were `<fixture>/deploy/local/mesh.yaml`, where
//! `<fixture>` is a directory under the system temp dir holding a one-rule
//! policy bundle in `policies/` (so the shipped `deploy/local/mesh.yaml`, whose
//! `dir` is `../../policies`, loads as it does in the repository).
//!
//! The loader walks and reads whatever directory `policy.dir` names. So that
//! the fuzzer never walks the host's file system (`dir: /` would read every
//! `.rego` file on the machine, slowly and differently on every machine),
//! inputs with any scalar that, taken as a path from the mesh file's
//! directory, leaves the fixture are skipped. No other field of a mesh file
//! takes such a value, so little is lost.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use meshward_controlplane::config::load_str;
use yaml_rust2::parser::{Event, Parser};

use super::Verdict;

/// The bundle in the fixture: the smallest one that defines the decision rule
/// the shipped mesh file names.
const BUNDLE: &str = "package meshward.authz\n\ndefault decision := false\n";

/// Where the mesh file sits inside the fixture, as in the repository.
const MESH_FILE: &str = "deploy/local/mesh.yaml";

pub fn mesh_yaml(data: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(data);
    let root = fixture();
    let source = root.join(MESH_FILE);
    if leaves(&text, root, &source) {
        return Verdict::Skipped;
    }
    match load_str(&text, &source) {
        Ok(mesh) => {
            assert_eq!(mesh.source, source, "accepted mesh forgot its file");
            Verdict::Accepted
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused with no error: {text:?}");
            let file = source.display().to_string();
            for error in &errors {
                let shown = error.to_string();
                assert!(
                    shown.contains(&file),
                    "error {shown:?} does not name {file} (input {text:?})"
                );
            }
            Verdict::Rejected
        }
    }
}

/// The fixture directory, written once per process. The bundle file is
/// written under a temporary name and renamed, so fuzzers running side by
/// side never read a half-written file; the temporary name starts with `.`,
/// which the bundle loader skips.
fn fixture() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("meshward-fuzz-mesh-yaml");
        let mesh_file = root.join(MESH_FILE);
        let policies = root.join("policies");
        for dir in [mesh_file.parent().unwrap_or(&root), &policies] {
            fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("fixture: cannot create {}: {e}", dir.display()));
        }
        let temp = policies.join(format!(".authz.rego.{}", std::process::id()));
        let file = policies.join("authz.rego");
        fs::write(&temp, BUNDLE)
            .and_then(|()| fs::rename(&temp, &file))
            .unwrap_or_else(|e| panic!("fixture: cannot write {}: {e}", file.display()));
        root
    })
}

/// Whether any scalar of `text`, as a path relative to the mesh file's
/// directory, leads out of `root`. The scan uses the loader's own YAML
/// parser, so it sees every scalar the loader can see (aliases repeat
/// scalars already seen); where the parser fails, the loader stops too,
/// before looking at any directory.
fn leaves(text: &str, root: &Path, source: &Path) -> bool {
    let base = source.parent().unwrap_or(root);
    let root = lexical(root);
    let mut parser = Parser::new_from_str(text);
    loop {
        match parser.next_token() {
            Ok((Event::Scalar(value, ..), _)) => {
                if !lexical(&base.join(value)).starts_with(&root) {
                    return true;
                }
            }
            Ok((Event::StreamEnd, _)) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// `path` with `.` and `..` resolved by name. Inside the fixture there are
/// no symbolic links, so this is where the file system would go too.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_out_of_the_fixture_are_found() {
        let root = Path::new("/tmp/f");
        let source = root.join(MESH_FILE);
        for inside in [
            "policy: {dir: ../../policies}",
            "dir: .",
            "dir: ''",
            "id: spiffe://example.org/a/b",
            "dir: /tmp/f/policies",
        ] {
            assert!(!leaves(inside, root, &source), "{inside}");
        }
        for outside in [
            "policy: {dir: /}",
            "dir: ../../..",
            "dir: \"\\x2e./../..\"",
            "a: &x /etc\nb: *x",
            "dir: |-\n  /etc\n",
        ] {
            assert!(leaves(outside, root, &source), "{outside}");
        }
    }
}
