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

#[test]
fn up_serves_writes_up_json_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Started with a small soft descriptor limit (`exec` keeps the pid), to
    // see the process raise it to the hard limit.
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" \"$@\"", BIN])
        .arg("up")
        .arg("--state-dir")
        .arg(&state)
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
            if line.contains("mesh ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("mesh ready within 60s");

    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("up.json")).unwrap()).unwrap();
    let outbound = info["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "support-triage")
        .unwrap()["outbound"]
        .as_str()
        .unwrap()
        .to_string();
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

    let pid = child.id().to_string();
    let (soft, hard) = open_file_limits(&pid);
    assert!(hard > 256, "hard limit {hard} leaves nothing to raise");
    assert_eq!(soft, hard, "soft RLIMIT_NOFILE was not raised");
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "meshward up did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
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
fn kubernetes_mesh_file_validates_with_the_bundle_where_the_manifests_mount_it() {
    // deploy/k8s/meshward.yaml mounts mesh.yaml at /etc/meshward/mesh/ and the
    // bundle at /etc/meshward/policies/: recreate that layout.
    let dir = tempfile::tempdir().unwrap();
    let mesh_dir = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh_dir).unwrap();
    std::fs::copy(
        repo().join("deploy/k8s/mesh.yaml"),
        mesh_dir.join("mesh.yaml"),
    )
    .unwrap();
    copy_tree(&repo().join("policies"), &dir.path().join("policies"));
    let out = Command::new(BIN)
        .arg("validate")
        .arg(mesh_dir.join("mesh.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
