//! A mesh of separate processes with identities from a real SPIRE.
//!
//! One `spire-server` and one `spire-agent` on loopback (the shipped
//! `spire/conf/local/*.conf`, join-token node attestation, the unix workload
//! attestor), registration entries from `meshward spire entries --apply`,
//! and every workload — `meshward controlplane`, one `meshward dataplane`
//! per agent and service, one `meshward skill` per service — as its own
//! process under its own unix user `mw-<name>`, so the agent tells them apart
//! by uid exactly as it would on a real node. Readiness is always a signal
//! (SPIRE healthchecks, the admin `/ready` endpoints, a skill accepting
//! connections); everything is killed when the harness is dropped.
//!
//! Needs root (to create users and switch uid) and the SPIRE binaries
//! (`scripts/install-spire.sh`). Without them [`SpireMesh::start`] reports
//! why; `MESHWARD_REQUIRE_SPIRE=1` turns that into a test failure.

mod load;
mod mesh;
mod probe;
mod process;
mod server;

use std::path::PathBuf;
use std::process::Command;

// What the SPIRE-backed tests use, from one place; each test binary uses
// a different part of it.
#[allow(unused_imports)]
pub use super::net::{admin, free_port, get, http_status, metric};
#[allow(unused_imports)]
pub use super::wait::poll;
#[allow(unused_imports)]
pub use load::{Load, LoadReport};
#[allow(unused_imports)]
pub use mesh::{Addresses, External, SpireMesh, SpireOptions};
#[allow(unused_imports)]
pub use probe::{Leaf, Probe};
#[allow(unused_imports)]
pub use process::{Proc, ensure_user, open_up, spawn, wait_for};
use process::{READY, chmod};
pub use server::Spire;

pub(super) const MESHWARD: &str = env!("CARGO_BIN_EXE_meshward");

pub(super) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the SPIRE binaries are: `MESHWARD_SPIRE_BIN_DIR` or `.tools/bin`.
pub fn spire_bin_dir() -> PathBuf {
    std::env::var_os("MESHWARD_SPIRE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/bin"))
}

/// Why SPIRE tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    let bin = spire_bin_dir();
    for b in ["spire-server", "spire-agent"] {
        if !bin.join(b).is_file() {
            return Some(format!(
                "{} not found (run scripts/install-spire.sh, or set MESHWARD_SPIRE_BIN_DIR)",
                bin.join(b).display()
            ));
        }
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("SPIRE tests run workloads under their own uids and need root".into());
    }
    None
}

/// `Some(reason)` means: skip (with the reason printed). Panics instead when
/// `MESHWARD_REQUIRE_SPIRE=1`, so CI cannot pass by skipping.
pub fn skip_reason(what: &str) -> Option<String> {
    let reason = unavailable()?;
    if std::env::var("MESHWARD_REQUIRE_SPIRE").is_ok_and(|v| v == "1") {
        panic!("MESHWARD_REQUIRE_SPIRE=1 but {what} cannot run: {reason}");
    }
    eprintln!("SKIPPED {what}: {reason} (set MESHWARD_REQUIRE_SPIRE=1 to make this a failure)");
    Some(reason)
}
