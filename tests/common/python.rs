//! The Python peers' interpreter (`.venv`, with grpcio and xds-protos from
//! `scripts/install-python-peers.sh`) and the scripts in `tests/python/`.

use std::path::PathBuf;

/// `MESHWARD_PYTHON`, else `.venv/bin/python`. `None` (after saying why)
/// when missing; a failure under `MESHWARD_REQUIRE_PEERS=1`.
pub fn find() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidate = std::env::var_os("MESHWARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    if candidate.is_file() {
        return Some(candidate);
    }
    let msg = format!(
        "Python peers not found at {} (run scripts/install-python-peers.sh or set MESHWARD_PYTHON)",
        candidate.display()
    );
    assert!(
        std::env::var("MESHWARD_REQUIRE_PEERS").as_deref() != Ok("1"),
        "Python is required here but {msg}"
    );
    eprintln!("SKIPPED: {msg}");
    None
}

/// `tests/python/<name>`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}
