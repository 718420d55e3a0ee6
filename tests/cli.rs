//! The `meshward` binary itself: `validate` reports every error with file,
//! line and field; `up` raises its descriptor limit, serves, writes up.json,
//! and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshward");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_accepts_the_shipped_mesh() {
    let out = Command::new(BIN)
        .args(["validate", "deploy/local/mesh.yaml"])
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 agents, 5 services"), "{stdout}");
}

#[test]
fn validate_reports_every_error_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/authz.rego"),
        "package meshward.authz\n\ndecision := {\"allowed\": false}\n",
    )
    .unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        "trust_domain: example.org\n\
         policy:\n  dir: policies\n  decision: data.meshward.authz.decision\n\
         agents:\n  - name: a\n    spiffe_id: spiffe://other.org/agent/a\n    limits:\n      brust: 3\n\
         services:\n  - name: s\n    spiffe_id: spiffe://example.org/s\n    endpoints: [\"not-an-address\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = file.display().to_string();
    for (line, field) in [
        (7, "agents[0].spiffe_id"),
        (9, "agents[0].limits.brust"),
        (13, "services[0].endpoints[0]"),
    ] {
        let want = format!("{name}:{line}: {field}");
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

/// `meshward up` started through `sh -c '<shell>; exec meshward up ...'`
/// (so the pid is meshward's), running once it logged "mesh ready"; every
/// later stderr line arrives on the receiver.
struct UpProcess {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    info: serde_json::Value,
    lines: std::sync::mpsc::Receiver<String>,
}

impl UpProcess {
    fn start(shell: &str) -> UpProcess {
        Self::start_with(shell, &[]).0
    }

    /// Also returns the lines logged up to and including "mesh ready".
    fn start_with(shell: &str, args: &[&str]) -> (UpProcess, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut child = Command::new("sh")
            .args(["-c", &format!("{shell} && exec \"$0\" \"$@\""), BIN])
            .arg("up")
            .arg("--state-dir")
            .arg(&state)
            // Tests run side by side: not DESIGN.md's fixed 9191.
            .args(["--ext-authz", "127.0.0.1:0", "--rate-limit", "127.0.0.1:0"])
            .args(args)
            .current_dir(repo())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Readiness signal: the one "mesh ready" log line.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("mesh ready within 60s");
            let ready = line.contains("mesh ready");
            seen.push(line);
            if ready {
                break;
            }
        }
        let info =
            serde_json::from_str(&std::fs::read_to_string(state.join("up.json")).unwrap()).unwrap();
        let up = UpProcess {
            child,
            _dir: dir,
            info,
            lines: rx,
        };
        (up, seen)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The address `key` of the agent or service `name` in up.json.
    fn addr(&self, kind: &str, name: &str, key: &str) -> String {
        self.info[kind]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()[key]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// SIGTERM, then the exit status (within 20 s).
    fn terminate(mut self) -> std::process::ExitStatus {
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.pid()])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "meshward up did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn up_serves_writes_up_json_and_stops_on_sigterm() {
    // Started with a small soft descriptor limit, to see the process raise
    // it to the hard limit.
    let (up, lines) = UpProcess::start_with("ulimit -Sn 256", &[]);
    // Logging to a pipe: no colour codes.
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "escape sequences in {lines:?}"
    );
    let outbound = up.addr("agents", "support-triage", "outbound");
    // A request through the real binary, with a plain HTTP/1.1 exchange.
    let reply = http_post(
        &outbound,
        "/mcp://hello-skill/say-hello",
        r#"{"name":"Ada"}"#,
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("spiffe://example.org/agent/support-triage"),
        "{reply}"
    );
    let (soft, hard) = open_file_limits(&up.pid());
    assert!(hard > 256, "hard limit {hard} leaves nothing to raise");
    assert_eq!(soft, hard, "soft RLIMIT_NOFILE was not raised");
    let status = up.terminate();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn json_logs_are_one_object_per_line_at_the_level_asked() {
    let (up, lines) =
        UpProcess::start_with("true", &["--log-format", "json", "--log-level", "info"]);
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert_ne!(v["level"], "DEBUG", "{line}");
    }
    let ready: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(ready["message"], "mesh ready");
    assert_eq!(ready["level"], "INFO");
    assert!(ready["agents"].is_number(), "{ready}");
    assert!(up.terminate().success());
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// With its descriptors exhausted (hard limit 160) and connections pending
/// on every listener, including admin, `up` backs off on accept errors
/// instead of spinning a core and flooding the log, and serves again once
/// descriptors are free.
#[test]
fn accept_errors_back_off_when_descriptors_run_out() {
    let up = UpProcess::start("ulimit -n 160");
    let pid = up.pid();
    let outbound = up.addr("agents", "billing-bot", "outbound");
    let admin = up.addr("agents", "billing-bot", "admin");
    // Hold connections until the process has no descriptor left, then queue
    // some on the admin listener too.
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = std::net::TcpStream::connect(&outbound) {
            held.push(s);
        }
    }
    for _ in 0..5 {
        if let Ok(s) = std::net::TcpStream::connect(&admin) {
            held.push(s);
        }
    }
    let exhausted = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        up.lines.try_iter().any(|l| l.contains("accept failed"))
    });
    assert!(exhausted, "the process never ran out of descriptors");
    let cpu_before = cpu_seconds(&pid);
    let window = Duration::from_secs(2);
    std::thread::sleep(window);
    let used = cpu_seconds(&pid) - cpu_before;
    let logged = up
        .lines
        .try_iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(used < 0.5, "{used:.2} CPU-seconds in {window:?} at EMFILE");
    assert!(logged < 40, "{logged} accept warnings in {window:?}");

    // Free the descriptors: the process serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = std::net::TcpStream::connect(&admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        use std::io::{Read, Write};
        let _ = write!(
            s,
            "GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "admin not serving after the descriptors were freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = up.terminate();
    assert!(status.success(), "exit status {status}");
}

/// Soft and hard "Max open files" of a process, from /proc.
fn open_file_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in:\n{limits}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

fn http_post(addr: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn kubernetes_mesh_file_validates_in_the_repository() {
    // deploy/k8s/mesh.yaml names the bundle as it lies in the repository;
    // in the cluster, /etc/meshward mirrors that layout (tests/k8s_deploy.rs
    // checks the mounted copy).
    let out = Command::new(BIN)
        .arg("validate")
        .arg(repo().join("deploy/k8s/mesh.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
