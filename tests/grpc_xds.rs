//! Proxyless gRPC on Meshward's xDS: grpcio's own xDS client, with no
//! sidecar, resolves `xds:///<service>` through LDS, RDS, CDS and EDS from
//! the control plane (over mTLS, checking the control plane's host name),
//! takes the mTLS for the call from the cluster Meshward sent (certificate
//! provider instances, the service's SPIFFE ID pinned) and calls the
//! service's Meshward inbound dataplane, which authenticates it by its SVID
//! and applies policy as for any other agent.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{SUPPORT_TRIAGE, TestMesh, python};
use meshward_contract::pb::demo::{EchoReply, EchoRequest};
use prost::Message;
use serde_json::{Value, json};

const ECHO: &str = "/meshward.demo.v1.Echo/Echo";
/// Bound on one client run: a cold interpreter, four xDS round trips and
/// two handshakes, on a loaded CI machine.
const CALL: Duration = Duration::from_secs(60);

/// Writes the workload's files and gRPC's xDS bootstrap into `dir`: the
/// `default` certificate provider instance (what Meshward's clusters name)
/// watches the SVID, key and bundle files, as spiffe-helper would keep them.
fn grpc_bootstrap(mesh: &TestMesh, dir: &Path, spiffe_id: &str) -> std::path::PathBuf {
    let up = mesh.up();
    let identity = up.identity_server();
    let svid = identity
        .test_ca()
        .issue(spiffe_id, Duration::from_secs(3600))
        .unwrap();
    let file = |name: &str, contents: String| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    };
    let cert = file("svid.pem", svid.chain_pem());
    let key = file("svid.key", svid.key_pem());
    let bundle = file("bundle.pem", identity.bundle_pem());
    let port = up.info.controlplane.xds.rsplit(':').next().unwrap();
    let bootstrap = json!({
        "xds_servers": [{
            "server_uri": format!("localhost:{port}"),
            "channel_creds": [{
                "type": "tls",
                "config": {
                    "ca_certificate_file": bundle,
                    "certificate_file": cert,
                    "private_key_file": key,
                },
            }],
            "server_features": ["xds_v3"],
        }],
        "node": { "id": "grpc-support-triage", "cluster": "agents" },
        "certificate_providers": {
            "default": {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": cert,
                    "private_key_file": key,
                    "ca_certificate_file": bundle,
                    "refresh_interval": "10s",
                },
            },
        },
    });
    let path = dir.join("grpc-bootstrap.json");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    path
}

/// What one call of `tests/python/grpc_xds_client.py` came back with.
enum Outcome {
    Reply(EchoReply),
    Status { code: String, details: String },
}

async fn call(python: &Path, bootstrap: &Path, service: &str, message: &str) -> Outcome {
    let request = EchoRequest {
        message: message.into(),
        fail_with_code: 0,
    }
    .encode_to_vec();
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    let run = tokio::process::Command::new(python)
        .arg(python::script("grpc_xds_client.py"))
        .args([service, ECHO, &hex, &CALL.as_secs().to_string()])
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CALL + Duration::from_secs(10), run)
        .await
        .expect("the gRPC client finished")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grpc client failed: {stderr}");
    let line: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("client output ({e}): {stderr}"));
    if let Some(reply) = line["reply"].as_str() {
        let bytes: Vec<u8> = (0..reply.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&reply[i..i + 2], 16).unwrap())
            .collect();
        return Outcome::Reply(EchoReply::decode(bytes.as_slice()).unwrap());
    }
    Outcome::Status {
        code: line["code"].as_str().unwrap_or_default().to_string(),
        details: format!("{} ({stderr})", line["details"]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_services_with_meshward_xds_and_mtls() {
    let Some(python) = python::find() else { return };
    let mesh = TestMesh::start().await;
    let bootstrap = grpc_bootstrap(&mesh, mesh.dir.path(), SUPPORT_TRIAGE);

    // Allowed: the reply comes from hello-skill's backend through its
    // inbound dataplane, which named the caller by the SVID gRPC presented.
    match call(&python, &bootstrap, "hello-skill", "hi from grpcio").await {
        Outcome::Reply(reply) => {
            assert_eq!(reply.message, "hi from grpcio");
            assert_eq!(reply.service, "hello-skill");
            assert_eq!(reply.path, ECHO);
            assert_eq!(reply.headers["x-agent-id"], SUPPORT_TRIAGE);
            assert_eq!(reply.headers["x-agent-team"], "customer-success");
        }
        Outcome::Status { code, details } => panic!("hello-skill: {code} {details}"),
    }

    // Denied by policy at billing-system's dataplane, as for a sidecar'd
    // agent: proxyless does not mean unauthorized.
    match call(&python, &bootstrap, "billing-system", "hi").await {
        Outcome::Status { code, details } => {
            assert_eq!(code, "PERMISSION_DENIED", "{details}");
            assert!(details.contains("billing-system"), "{details}");
        }
        Outcome::Reply(reply) => panic!("billing-system answered: {reply:?}"),
    }
    mesh.shutdown().await;
}
