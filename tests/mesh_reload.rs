//! Config and policy edits reach every dataplane without a restart; broken
//! edits are refused while the last good config keeps serving; a control
//! plane restart leaves dataplanes serving and they reconnect.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestMesh, eventually, rewrite};

/// Sends requests in a loop until stopped; counts any that fail.
/// Bounded: it stops after `max` requests even if never told to.
fn background_load(
    mesh: &Arc<TestMesh>,
    stop: Arc<AtomicBool>,
    max: usize,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let mesh = mesh.clone();
    tokio::spawn(async move {
        let mut sent = 0;
        let mut failures = Vec::new();
        while !stop.load(Ordering::Relaxed) && sent < max {
            let a = mesh
                .call("billing-bot", "GET", "/mcp://hello-skill/ping", "")
                .await;
            sent += 1;
            if a.status != 200 {
                failures.push(format!(
                    "{}: {}",
                    a.status,
                    String::from_utf8_lossy(&a.body)
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (sent, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edit_reaches_dataplanes_within_a_second() {
    let mesh = TestMesh::start().await;
    let ok = mesh
        .call("billing-bot", "GET", "/mcp://hello-skill/x", "")
        .await;
    assert_eq!(ok.status, 200);
    // Move billing-bot to staging: the environment rule now denies it.
    rewrite(&mesh.config_path(), |y| {
        y.replacen(
            "team: finance\n      type: analysis\n      environment: production",
            "team: finance\n      type: analysis\n      environment: staging",
            1,
        )
    });
    let took = eventually(Duration::from_secs(1), || async {
        mesh.call("billing-bot", "GET", "/mcp://hello-skill/x", "")
            .await
            .status
            == 403
    })
    .await;
    assert!(took.is_some(), "config edit not applied within 1s");
    // The upstream also sees the new attribute once allowed again.
    rewrite(&mesh.config_path(), |y| {
        y.replace("environment: staging", "environment: production")
    });
    let took = eventually(Duration::from_secs(1), || async {
        mesh.call("billing-bot", "GET", "/mcp://hello-skill/x", "")
            .await
            .status
            == 200
    })
    .await;
    assert!(took.is_some(), "revert not applied within 1s");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_edit_reaches_dataplanes_within_a_second() {
    let mesh = TestMesh::start().await;
    assert_eq!(
        mesh.call("billing-bot", "GET", "/mcp://hello-skill/blocked", "")
            .await
            .status,
        200
    );
    let extra = mesh.policy_path("meshward/hotfix.rego");
    std::fs::write(
        &extra,
        "package meshward.teams\n\ndeny contains \"hotfix: /blocked is closed\" if {\n  input.attributes.request.http.path == \"/blocked\"\n}\n",
    )
    .unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        let a = mesh
            .call("billing-bot", "GET", "/mcp://hello-skill/blocked", "")
            .await;
        a.status == 403 && a.json()["reason"].as_str().unwrap_or("").contains("hotfix")
    })
    .await;
    assert!(took.is_some(), "policy edit not applied within 1s");
    // Other paths still pass.
    assert_eq!(
        mesh.call("billing-bot", "GET", "/mcp://hello-skill/open", "")
            .await
            .status,
        200
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_edits_are_refused_and_nothing_fails() {
    let mesh = Arc::new(TestMesh::start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(&mesh, stop.clone(), 5_000);
    let before = mesh.up().mesh();

    // Each broken edit is refused (the watcher reports an error) and the
    // last good model stays published.
    let good_yaml = std::fs::read_to_string(mesh.config_path()).unwrap();
    let authz = mesh.policy_path("meshward/broken.rego");
    type Edit = Box<dyn Fn()>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "broken YAML",
            Box::new({
                let path = mesh.config_path();
                let good = good_yaml.clone();
                move || std::fs::write(&path, format!("{good}\n  - this: [is not yaml\n")).unwrap()
            }),
        ),
        (
            "negative rate",
            Box::new({
                let path = mesh.config_path();
                let good = good_yaml.clone();
                move || {
                    std::fs::write(
                        &path,
                        good.replacen("requests_per_second: 50", "requests_per_second: -1", 1),
                    )
                    .unwrap()
                }
            }),
        ),
        (
            "Rego syntax error",
            Box::new({
                let path = mesh.config_path();
                let good = good_yaml.clone();
                let authz = authz.clone();
                move || {
                    std::fs::write(&path, &good).unwrap();
                    std::fs::write(&authz, "package meshward.global\n\ndeny contains x if {\n")
                        .unwrap();
                }
            }),
        ),
    ];
    for (what, edit) in edits {
        let reloads = mesh.up().reload_status().reloads;
        edit();
        let refused = eventually(Duration::from_secs(2), || async {
            let status = mesh.up().reload_status();
            status.reloads > reloads && status.last_error.is_some()
        })
        .await;
        assert!(refused.is_some(), "{what}: the watcher reported no error");
        assert_eq!(*mesh.up().mesh(), *before, "{what}: must not be published");
    }

    // Fix both: the next good edit is applied.
    std::fs::remove_file(&authz).unwrap();
    std::fs::write(
        mesh.config_path(),
        good_yaml.replace(
            "environment: production\n    permissions: [skills:invoke, billing:read",
            "environment: staging\n    permissions: [skills:invoke, billing:read",
        ),
    )
    .unwrap();
    let applied = eventually(Duration::from_secs(2), || async {
        *mesh.up().mesh() != *before
    })
    .await;
    assert!(
        applied.is_some(),
        "a good edit after broken ones is applied"
    );

    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = load.await.unwrap();
    // The good edit moved billing-bot to staging, so requests after it are
    // denied by design; count only failures before that point.
    let before_fix: Vec<_> = failures.iter().filter(|f| !f.starts_with("403")).collect();
    assert!(sent > 20, "load ran: {sent}");
    assert!(
        before_fix.is_empty(),
        "requests failed during broken edits: {before_fix:?}"
    );
    Arc::try_unwrap(mesh).ok().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplanes_survive_a_controlplane_restart() {
    let mut mesh = TestMesh::start().await;
    mesh.up_mut().controlplane().stop_xds().await;
    // Dataplanes keep serving their last config.
    for _ in 0..10 {
        let a = mesh
            .call("billing-bot", "GET", "/mcp://hello-skill/x", "")
            .await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    }
    // An edit while the control plane is down: the control plane loads it,
    // but no dataplane receives it until xDS is back (proving the streams
    // really closed) ...
    let reloads = mesh.up().reload_status().reloads;
    rewrite(&mesh.config_path(), |y| {
        y.replacen(
            "environment: production\n    permissions: [skills:invoke, billing:read",
            "environment: staging\n    permissions: [skills:invoke, billing:read",
            1,
        )
    });
    let loaded = eventually(Duration::from_secs(2), || async {
        mesh.up().reload_status().reloads > reloads
    })
    .await;
    assert!(loaded.is_some(), "control plane reloaded the edit");
    let pushed_while_down = eventually(Duration::from_millis(300), || async {
        mesh.call("billing-bot", "GET", "/mcp://hello-skill/x", "")
            .await
            .status
            != 200
    })
    .await;
    assert!(
        pushed_while_down.is_none(),
        "a stopped control plane pushed config"
    );
    // ... and every dataplane reconnects and gets it once xDS is back.
    mesh.up_mut()
        .controlplane()
        .start_xds()
        .await
        .expect("xDS restarts");
    let took = eventually(Duration::from_secs(10), || async {
        mesh.call("billing-bot", "GET", "/mcp://hello-skill/x", "")
            .await
            .status
            == 403
    })
    .await;
    assert!(
        took.is_some(),
        "dataplane reconnected and received the new config"
    );
    mesh.shutdown().await;
}
