//! Workload processes: their unix users, spawning with a log file, and
//! waiting for one to become ready while it stays alive.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long any one component may take to become ready.
pub(super) const READY: Duration = Duration::from_secs(60);

/// Serialises `useradd` (it locks /etc/passwd) between parallel tests.
pub(super) static USERS: Mutex<()> = Mutex::new(());

/// A unix user for a workload: created when missing; returns (uid, gid).
pub fn ensure_user(user: &str) -> (u32, u32) {
    let _guard = USERS.lock().unwrap_or_else(|p| p.into_inner());
    let lookup = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if lookup("-u").is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ])
            .output()
            .expect("run useradd");
        assert!(
            out.status.success() || lookup("-u").is_some(),
            "useradd {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        lookup("-u").expect("uid of new user"),
        lookup("-g").expect("gid of new user"),
    )
}

pub(super) fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Makes a directory tree readable (and traversable) by every user.
pub fn open_up(dir: &Path) {
    chmod(dir, 0o755);
    for entry in fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            open_up(&path);
        } else {
            chmod(&path, 0o644);
        }
    }
}

/// A child process killed (and reaped) on drop, with its output in a log file.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` with its output to `<logs>/<name>.log`.
pub fn spawn(logs: &Path, name: &str, mut cmd: Command) -> Proc {
    let log = logs.join(format!("{name}.log"));
    let file = fs::File::create(&log).expect("create log");
    let err = file.try_clone().expect("clone log");
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Proc {
        name: name.to_string(),
        log,
        child,
    }
}

/// Polls `check` (every 50 ms) until it holds; panics after [`READY`] with
/// `what` and the process's log.
pub fn wait_for(proc: &mut Proc, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if check() {
            return;
        }
        proc.assert_running();
        assert!(
            start.elapsed() < READY,
            "{} not {what} within {READY:?}; log {}:\n{}",
            proc.name,
            proc.log.display(),
            proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
