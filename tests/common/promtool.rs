//! promtool, Prometheus' own checker (`scripts/install-promtool.sh`): finding
//! the binary and running `check metrics` / `check rules` with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binary: `MESHWARD_PROMTOOL`, else `.tools/bin/promtool`. `None`
/// (after saying why) when missing; a failure under `MESHWARD_REQUIRE_PEERS=1`.
pub fn find() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidate = std::env::var_os("MESHWARD_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".tools/bin/promtool"));
    if candidate.is_file() {
        return Some(candidate);
    }
    let msg = format!(
        "promtool not found at {} (run scripts/install-promtool.sh or set MESHWARD_PROMTOOL)",
        candidate.display()
    );
    assert!(
        std::env::var("MESHWARD_REQUIRE_PEERS").as_deref() != Ok("1"),
        "promtool is required here but {msg}"
    );
    eprintln!("SKIPPED: {msg}");
    None
}

/// What one promtool run said.
pub struct Outcome {
    pub success: bool,
    pub output: String,
}

/// `promtool check metrics` on `exposition`, fed on stdin as a scrape would be.
pub fn check_metrics(promtool: &Path, exposition: &str) -> Outcome {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", promtool.display()));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(exposition.as_bytes())
            .unwrap_or_else(|e| panic!("writing the scrape to promtool: {e}"));
    }
    outcome(child.wait_with_output())
}

/// `promtool check rules` on the rule file at `path`.
pub fn check_rules(promtool: &Path, path: &Path) -> Outcome {
    outcome(
        Command::new(promtool)
            .args(["check", "rules"])
            .arg(path)
            .output(),
    )
}

fn outcome(out: std::io::Result<std::process::Output>) -> Outcome {
    let out = out.unwrap_or_else(|e| panic!("running promtool: {e}"));
    Outcome {
        success: out.status.success(),
        output: format!(
            "exit {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
