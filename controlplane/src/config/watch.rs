//! Keeps the mesh model current while the control plane runs: reloads the
//! mesh file and its policy bundle when they change, and publishes each new
//! valid model on a `tokio::sync::watch` channel. A broken edit is logged
//! (one warning per error, `file:line: field: message`) and ignored: the
//! last good model stays in force.
//!
//! # Why polling by content hash, not `notify`
//!
//! Every ~200 ms the watcher hashes the bytes of the mesh file and of every
//! bundle file, and reloads when the hash changes. Event-based watching
//! (inotify through the `notify` crate) looks cheaper but is fragile exactly
//! where this config lives:
//!
//! - Kubernetes updates a ConfigMap volume by writing a new `..<timestamp>/`
//!   directory and atomically swapping the `..data` symlink; `mesh.yaml` is a
//!   symlink through `..data`. inotify watches inodes, so a watch on the
//!   file sees nothing; one has to watch the directory, recognise the swap
//!   and re-resolve links.
//! - Editors write a temp file and rename it over the original (vim, many
//!   IDEs), which again replaces the inode under a file watch.
//! - Bursts of events need debouncing, and events are lost on overlay, NFS
//!   and some container filesystems.
//!
//! Reading a few kilobytes of config five times a second costs nothing,
//! follows symlinks by construction (`read` resolves them each time), sees
//! every kind of replacement, and bounds reload latency at one poll
//! interval plus a load. A change in content is also the only change that
//! matters: a `touch` does not reload.
//!
//! A file caught half-written fails to load; if the bytes moved while the
//! load ran, the watcher stays quiet and retries on the next poll, so
//! warnings are only logged for content that is stable and wrong.
//!
//! Every reload that settles is counted ([`super::metrics`]), and the last
//! rejected one is kept with its time in [`ReloadStatus::last_rejected`]
//! for `/config_dump`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch as channel;
use tokio::task::JoinHandle;

use super::error::ConfigErrors;
use super::model::{Mesh, Overlay};
use super::{attempt, bundle, metrics};

/// How often inputs are hashed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Loads `path` (failing fast: the control plane refuses to start on an
/// invalid file), then keeps reloading it in a background task. The task
/// ends when every receiver is dropped, or when the handle is aborted.
///
/// The receiver only sees a new value when the model (after `overlay`)
/// actually differs from the last one published.
///
/// # Panics
///
/// Must be called from within a Tokio runtime (it spawns the poll task).
pub fn watch(
    path: PathBuf,
    overlay: Option<Overlay>,
) -> Result<(channel::Receiver<Arc<Mesh>>, JoinHandle<()>), ConfigErrors> {
    let (mesh, _status, task) = watch_with_status(path, overlay)?;
    Ok((mesh, task))
}

/// The outcome of the latest reload, for admin endpoints (a rejected edit is
/// otherwise only visible in the logs) and for tests that must know a
/// reload happened without sleeping.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReloadStatus {
    /// Reloads attempted since start (changed inputs seen and loaded).
    pub reloads: u64,
    /// Why the latest reload was rejected; `None` when it succeeded.
    pub last_error: Option<ConfigErrors>,
    /// The most recent rejected reload, kept after later reloads succeed
    /// (so an operator can still see what went wrong, and when).
    pub last_rejected: Option<RejectedReload>,
}

/// A reload that was rejected, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedReload {
    pub errors: ConfigErrors,
    pub at: SystemTime,
}

/// [`watch`], plus a channel reporting every reload attempt.
///
/// # Panics
///
/// Must be called from within a Tokio runtime (it spawns the poll task).
#[allow(clippy::type_complexity)]
pub fn watch_with_status(
    path: PathBuf,
    overlay: Option<Overlay>,
) -> Result<
    (
        channel::Receiver<Arc<Mesh>>,
        channel::Receiver<ReloadStatus>,
        JoinHandle<()>,
    ),
    ConfigErrors,
> {
    let first = attempt(&path);
    let policy_dir = first.policy_dir.clone();
    // Hash before trusting the load's content: a change that lands between
    // the two is then seen as a change on the first poll.
    let seen = fingerprint(&path, policy_dir.as_deref());
    let mut mesh = first.result?;
    if let Some(overlay) = &overlay {
        overlay(&mut mesh);
    }
    tracing::info!(
        file = %path.display(),
        revision = %mesh.policy.revision,
        services = mesh.services.len(),
        agents = mesh.agents.len(),
        "mesh config loaded"
    );
    metrics::started();
    metrics::revision(None, &mesh.policy.revision);
    let (tx, rx) = channel::channel(Arc::new(mesh));
    let (status, status_rx) = channel::channel(ReloadStatus::default());
    let watcher = Watcher {
        path,
        policy_dir,
        overlay,
        seen,
        tx,
        status,
    };
    Ok((rx, status_rx, tokio::spawn(watcher.run())))
}

struct Watcher {
    path: PathBuf,
    policy_dir: Option<PathBuf>,
    overlay: Option<Overlay>,
    /// Fingerprint of the inputs last dealt with (loaded, or reported broken).
    seen: [u8; 32],
    tx: channel::Sender<Arc<Mesh>>,
    status: channel::Sender<ReloadStatus>,
}

impl Watcher {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.tx.closed() => return,
                _ = ticker.tick() => {}
            }
            let path = self.path.clone();
            let dir = self.policy_dir.clone();
            let seen = self.seen;
            // File reads, hashing and Rego compilation are blocking work.
            let polled = tokio::task::spawn_blocking(move || poll(&path, dir, seen)).await;
            match polled {
                Ok(Some(outcome)) => self.apply(outcome),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "mesh config poll task failed"),
            }
        }
    }

    fn apply(&mut self, outcome: Outcome) {
        if let Some(dir) = outcome.policy_dir {
            self.policy_dir = Some(dir);
        }
        if let Some(seen) = outcome.settled {
            self.seen = seen;
        }
        // Published after the model, so whoever sees the status also sees
        // the model it describes.
        let status = (outcome.settled.is_some() || outcome.result.is_ok()).then(|| {
            let previous = self.status.borrow();
            let last_error = outcome.result.as_ref().err().cloned();
            ReloadStatus {
                reloads: previous.reloads + 1,
                last_rejected: match &last_error {
                    Some(errors) => Some(RejectedReload {
                        errors: errors.clone(),
                        at: SystemTime::now(),
                    }),
                    None => previous.last_rejected.clone(),
                },
                last_error,
            }
        });
        if status.is_some() {
            metrics::reloaded(outcome.result.as_ref().map(drop));
        }
        match outcome.result {
            Ok(mut mesh) => {
                if let Some(overlay) = &self.overlay {
                    overlay(&mut mesh);
                }
                let revision = mesh.policy.revision.clone();
                let old_revision = self.tx.borrow().policy.revision.clone();
                let changed = self.tx.send_if_modified(|current| {
                    if **current == mesh {
                        false
                    } else {
                        *current = Arc::new(mesh);
                        true
                    }
                });
                if changed {
                    metrics::revision(Some(&old_revision), &revision);
                    tracing::info!(file = %self.path.display(), %revision, "mesh config reloaded");
                } else {
                    tracing::debug!(file = %self.path.display(), "mesh config rewritten without changes");
                }
            }
            // Content that moved while loading is not reported: it is being
            // written, and the next poll loads the finished file.
            Err(_) if outcome.settled.is_none() => {}
            Err(errors) => {
                let current = self.tx.borrow().policy.revision.clone();
                let total = errors.len();
                for (i, error) in errors.iter().enumerate() {
                    tracing::warn!(
                        "mesh config reload rejected ({}/{total}), keeping last good config (policy revision {}): {error}",
                        i + 1,
                        short(&current),
                    );
                }
            }
        }
        if let Some(status) = status {
            self.status.send_replace(status);
        }
    }
}

fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

/// What a poll found, when the inputs had changed.
struct Outcome {
    result: Result<Mesh, ConfigErrors>,
    policy_dir: Option<PathBuf>,
    /// The fingerprint to remember, or `None` when the inputs moved during
    /// the load (so the next poll tries again).
    settled: Option<[u8; 32]>,
}

/// Checks the inputs and loads them if they changed since `seen`.
fn poll(path: &Path, dir: Option<PathBuf>, seen: [u8; 32]) -> Option<Outcome> {
    let before = fingerprint(path, dir.as_deref());
    if before == seen {
        return None;
    }
    let loaded = attempt(path);
    let new_dir = loaded.policy_dir.clone().or(dir.clone());
    let after = fingerprint(path, new_dir.as_deref());
    // With the same directory, a different hash means a writer was busy.
    // If the file now names another directory the hashes differ anyway;
    // accept the load then (its own reads were of the new inputs).
    let settled = (new_dir != dir || after == before).then_some(after);
    Some(Outcome {
        result: loaded.result,
        policy_dir: loaded.policy_dir,
        settled,
    })
}

/// Hash of the mesh file's bytes and of every bundle file under `dir`
/// (paths and bytes). Unreadable files hash as such, so their return is a
/// change too.
fn fingerprint(path: &Path, dir: Option<&Path>) -> [u8; 32] {
    let mut hash = Sha256::new();
    feed_file(&mut hash, path);
    if let Some(dir) = dir {
        hash.update(dir.as_os_str().as_encoded_bytes());
        hash.update(b"\0");
        let (files, errors) = bundle::files(dir);
        for file in files {
            hash.update(file.rel.as_bytes());
            hash.update(b"\0");
            feed_file(&mut hash, &file.path);
        }
        hash.update((errors.len() as u64).to_be_bytes());
    }
    hash.finalize().into()
}

fn feed_file(hash: &mut Sha256, path: &Path) {
    match std::fs::read(path) {
        Ok(bytes) => {
            hash.update(b"ok\0");
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(&bytes);
        }
        Err(e) => {
            hash.update(b"err\0");
            hash.update(format!("{:?}", e.kind()).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Instant;

    use tokio::time::timeout;

    use super::*;
    use crate::config::tests::{MESH, POLICY, TempDir, line_of, mesh_dir};

    /// The reload latency the watcher promises.
    const RELOAD_WITHIN: Duration = Duration::from_secs(1);
    /// For waits that are not latency assertions.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn with_burst(burst: &str) -> String {
        MESH.replacen("burst: 10", &format!("burst: {burst}"), 1)
    }

    fn burst(mesh: &Mesh) -> u32 {
        mesh.agents["agent-a"].limits.burst
    }

    async fn next_model(rx: &mut channel::Receiver<Arc<Mesh>>, within: Duration) -> Arc<Mesh> {
        let started = Instant::now();
        timeout(within, rx.changed())
            .await
            .unwrap_or_else(|_| panic!("no new model within {within:?}"))
            .expect("watcher stopped");
        tracing::debug!(elapsed = ?started.elapsed(), "reload observed");
        rx.borrow_and_update().clone()
    }

    async fn status_where(
        status: &mut channel::Receiver<ReloadStatus>,
        pred: impl FnMut(&ReloadStatus) -> bool,
    ) -> ReloadStatus {
        timeout(PATIENCE, status.wait_for(pred))
            .await
            .expect("reload status did not arrive")
            .expect("watcher stopped")
            .clone()
    }

    #[tokio::test]
    async fn edit_then_broken_edit_then_fix() {
        let (_dir, path) = mesh_dir("watch-edit", MESH);
        let (mut rx, mut status, task) = watch_with_status(path.clone(), None).unwrap();
        assert_eq!(burst(&rx.borrow_and_update()), 10);

        fs::write(&path, with_burst("11")).unwrap();
        assert_eq!(burst(&*next_model(&mut rx, RELOAD_WITHIN).await), 11);

        // Broken: rejected, reported, and the last good model stays.
        fs::write(&path, with_burst("0")).unwrap();
        let rejected = status_where(&mut status, |s| s.last_error.is_some()).await;
        let errors = rejected.last_error.unwrap();
        assert_eq!(errors.len(), 1, "{errors}");
        assert_eq!(errors.0[0].field, "agents[0].limits.burst");
        assert_eq!(errors.0[0].line, Some(line_of(MESH, "burst: 10")));
        assert_eq!(errors.kind().label(), "validate");
        let kept = rejected.last_rejected.expect("the rejection is kept");
        assert_eq!(kept.errors, errors);
        assert!(!rx.has_changed().unwrap(), "a broken edit must not publish");
        assert_eq!(burst(&rx.borrow()), 11);

        fs::write(&path, with_burst("12")).unwrap();
        assert_eq!(burst(&*next_model(&mut rx, RELOAD_WITHIN).await), 12);
        let fixed = status_where(&mut status, |s| s.last_error.is_none()).await;
        assert_eq!(
            fixed.last_rejected.map(|r| r.at),
            Some(kept.at),
            "a later good reload keeps the last rejection on record"
        );
        task.abort();
    }

    #[tokio::test]
    async fn policy_changes_reload_and_broken_rego_is_kept_out() {
        let (dir, path) = mesh_dir("watch-policy", MESH);
        let (mut rx, mut status, task) = watch_with_status(path, None).unwrap();
        let first = rx.borrow_and_update().policy.revision.clone();

        dir.write("policies/meshward/data.json", r#"{"allowed": ["a"]}"#);
        let reloaded = next_model(&mut rx, RELOAD_WITHIN).await;
        assert_ne!(reloaded.policy.revision, first);
        assert_eq!(reloaded.policy.data["meshward"]["allowed"][0], "a");

        let rego = dir.write(
            "policies/meshward/more.rego",
            "package meshward.more\n\nx if {\n",
        );
        let rejected = status_where(&mut status, |s| s.last_error.is_some()).await;
        let errors = rejected.last_error.unwrap();
        assert!(errors.iter().any(|e| e.file == rego), "{errors}");
        assert!(!rx.has_changed().unwrap());

        fs::remove_file(&rego).unwrap();
        // Back to the content already published: nothing new to send.
        let fixed = status_where(&mut status, |s| s.last_error.is_none()).await;
        assert!(fixed.reloads >= 2);
        assert!(!rx.has_changed().unwrap());
        task.abort();
    }

    /// What the kubelet does on a ConfigMap update: a new timestamped dir, a
    /// new `..data` symlink renamed over the old one, the old dir removed.
    fn configmap_swap(root: &Path, generation: &str, files: &[(&str, &str)]) {
        let target = root.join(generation);
        fs::create_dir_all(&target).unwrap();
        for (name, contents) in files {
            fs::write(target.join(name), contents).unwrap();
        }
        let old = fs::read_link(root.join("..data")).ok();
        let tmp = root.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(generation, &tmp).unwrap();
        fs::rename(&tmp, root.join("..data")).unwrap();
        for (name, _) in files {
            let link = root.join(name);
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        if let Some(old) = old {
            fs::remove_dir_all(root.join(old)).unwrap();
        }
    }

    #[tokio::test]
    async fn configmap_symlink_swap_reloads() {
        let dir = TempDir::new("watch-configmap");
        let mesh = MESH.replace("dir: policies", "dir: .");
        configmap_swap(
            dir.path(),
            "..2026_01_01_00_00_00.1",
            &[("mesh.yaml", &mesh), ("authz.rego", POLICY)],
        );
        let (mut rx, task) = watch(dir.path().join("mesh.yaml"), None).unwrap();
        let first = rx.borrow_and_update().clone();
        assert_eq!(
            first.policy.modules.len(),
            1,
            "only the top-level link is a module"
        );

        let edited = mesh.replacen("burst: 10", "burst: 11", 1);
        configmap_swap(
            dir.path(),
            "..2026_01_01_00_00_01.2",
            &[("mesh.yaml", &edited), ("authz.rego", POLICY)],
        );
        let second = next_model(&mut rx, RELOAD_WITHIN).await;
        assert_eq!(burst(&second), 11);
        assert_eq!(second.policy.revision, first.policy.revision);

        let policy = format!("{POLICY}\nother if input.y\n");
        configmap_swap(
            dir.path(),
            "..2026_01_01_00_00_02.3",
            &[("mesh.yaml", &edited), ("authz.rego", &policy)],
        );
        let third = next_model(&mut rx, RELOAD_WITHIN).await;
        assert_ne!(third.policy.revision, second.policy.revision);
        task.abort();
    }

    #[tokio::test]
    async fn editor_write_rename_reloads() {
        let (dir, path) = mesh_dir("watch-rename", MESH);
        let (mut rx, task) = watch(path.clone(), None).unwrap();
        let swap = dir.write(".mesh.yaml.swp", &with_burst("13"));
        fs::rename(&swap, &path).unwrap();
        assert_eq!(burst(&*next_model(&mut rx, RELOAD_WITHIN).await), 13);
        task.abort();
    }

    #[tokio::test]
    async fn overlay_applies_and_unchanged_models_are_not_sent() {
        let (_dir, path) = mesh_dir("watch-overlay", MESH);
        let overlay: Overlay = Arc::new(|mesh: &mut Mesh| {
            for service in mesh.services.values_mut() {
                for endpoint in &mut service.endpoints {
                    if let Some(host) = endpoint.strip_suffix(":0") {
                        *endpoint = format!("{host}:40001");
                    }
                }
            }
        });
        let (mut rx, mut status, task) = watch_with_status(path.clone(), Some(overlay)).unwrap();
        assert_eq!(
            rx.borrow_and_update().services["hello"].endpoints,
            vec!["127.0.0.1:40001"]
        );

        // Same model, different bytes: reloaded, but nothing to send.
        fs::write(&path, format!("{MESH}# a comment\n")).unwrap();
        status_where(&mut status, |s| s.reloads >= 1).await;
        assert!(!rx.has_changed().unwrap());

        fs::write(&path, with_burst("14")).unwrap();
        let next = next_model(&mut rx, RELOAD_WITHIN).await;
        assert_eq!(burst(&next), 14);
        assert_eq!(next.services["hello"].endpoints, vec!["127.0.0.1:40001"]);
        task.abort();
    }

    #[tokio::test]
    async fn a_new_policy_dir_is_watched() {
        let (dir, path) = mesh_dir("watch-newdir", MESH);
        let (mut rx, task) = watch(path.clone(), None).unwrap();
        dir.write("other/meshward/authz.rego", POLICY);
        fs::write(&path, MESH.replace("dir: policies", "dir: other")).unwrap();
        let moved = next_model(&mut rx, RELOAD_WITHIN).await;
        assert_eq!(moved.policy.dir, dir.path().join("other"));

        dir.write("other/data.json", r#"{"k": 1}"#);
        let next = next_model(&mut rx, RELOAD_WITHIN).await;
        assert_eq!(next.policy.data["k"], 1);
        task.abort();
    }

    #[tokio::test]
    async fn invalid_file_fails_fast_and_dropping_the_receiver_stops_the_task() {
        let (_dir, path) = mesh_dir("watch-invalid", &with_burst("0"));
        let errors = watch(path.clone(), None).unwrap_err();
        assert_eq!(errors.0[0].field, "agents[0].limits.burst");

        fs::write(&path, MESH).unwrap();
        let (rx, task) = watch(path, None).unwrap();
        drop(rx);
        timeout(PATIENCE, task)
            .await
            .expect("watch task must end when nobody listens")
            .unwrap();
    }
}
