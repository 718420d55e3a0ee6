//! Jaeger v2 (`scripts/install-jaeger.sh`), the real trace backend for
//! tracing tests: finding the binary, running it on
//! `tests/fixtures/jaeger/config.yaml` with every listener on a loopback
//! port picked here (killed on drop, log kept), and reading traces back
//! through its query API, the JSON API the Jaeger UI uses.
//!
//! Traces are kept in memory: a [`Jaeger::restart`] comes back on the same
//! ports with none of them.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::net::{free_port, get, post};
use super::wait::{eventually, poll};

/// How long a start may take: a cold start binds five listeners within a
/// second, but CI machines are loaded.
const READY: Duration = Duration::from_secs(30);

/// The binary: `MESHWARD_JAEGER`, else `.tools/bin/jaeger`. `None` (after
/// saying why) when missing; a failure under `MESHWARD_REQUIRE_PEERS=1`.
pub fn find() -> Option<PathBuf> {
    let candidate = std::env::var_os("MESHWARD_JAEGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/bin/jaeger"));
    if candidate.is_file() {
        return Some(candidate);
    }
    let msg = format!(
        "Jaeger not found at {} (run scripts/install-jaeger.sh or set MESHWARD_JAEGER)",
        candidate.display()
    );
    assert!(
        std::env::var("MESHWARD_REQUIRE_PEERS").as_deref() != Ok("1"),
        "Jaeger is required here but {msg}"
    );
    eprintln!("SKIPPED: {msg}");
    None
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `host:port` of each of Jaeger's listeners, passed to the config as
/// the `MESHWARD_JAEGER_*` variables it reads.
struct Ports {
    otlp_grpc: String,
    otlp_http: String,
    query_http: String,
    query_grpc: String,
    health: String,
}

impl Ports {
    fn pick() -> Ports {
        let port = || format!("127.0.0.1:{}", free_port());
        Ports {
            otlp_grpc: port(),
            otlp_http: port(),
            query_http: port(),
            query_grpc: port(),
            health: port(),
        }
    }

    fn env(&self) -> [(&'static str, &str); 5] {
        [
            ("MESHWARD_JAEGER_OTLP_GRPC", &self.otlp_grpc),
            ("MESHWARD_JAEGER_OTLP_HTTP", &self.otlp_http),
            ("MESHWARD_JAEGER_QUERY_HTTP", &self.query_http),
            ("MESHWARD_JAEGER_QUERY_GRPC", &self.query_grpc),
            ("MESHWARD_JAEGER_HEALTH", &self.health),
        ]
    }
}

/// A running Jaeger, killed and reaped on drop.
pub struct Jaeger {
    binary: PathBuf,
    child: Option<Child>,
    ports: Ports,
    /// Holds the log, which every start appends to.
    dir: tempfile::TempDir,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Jaeger {
    /// Starts the binary [`find`] finds; `None` when it skipped.
    pub async fn start() -> Option<Jaeger> {
        let binary = find()?;
        Some(Self::start_binary(&binary).await)
    }

    /// Starts `binary` on fresh loopback ports; returns once it is ready
    /// (see [`Jaeger::restart`]).
    pub async fn start_binary(binary: &Path) -> Jaeger {
        let mut jaeger = Jaeger {
            binary: binary.to_path_buf(),
            child: None,
            ports: Ports::pick(),
            dir: tempfile::tempdir().expect("temporary directory for the Jaeger log"),
        };
        jaeger.restart().await;
        jaeger
    }

    /// Where an OTLP/gRPC exporter sends: `http://127.0.0.1:PORT`.
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://{}", self.ports.otlp_grpc)
    }

    /// The OTLP/HTTP base URL, `http://127.0.0.1:PORT`; traces go to
    /// `/v1/traces` below it (protobuf or JSON).
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://{}", self.ports.otlp_http)
    }

    /// The query API and UI, `http://127.0.0.1:PORT` (`/api/traces/{id}`,
    /// `/api/traces?service=`, `/api/services`; the UI is a placeholder page).
    pub fn query_url(&self) -> String {
        format!("http://{}", self.ports.query_http)
    }

    /// Starts Jaeger again on the same ports (stopping it first if it runs)
    /// and waits until it is ready: its health check answers 200, which it
    /// does once every extension, receiver and exporter has started, and the
    /// query API answers. Traces stored before are gone.
    pub async fn restart(&mut self) {
        self.stop();
        let log = self.log_path();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let clone = |f: &File| {
            f.try_clone()
                .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
        };
        let config = repo().join("tests/fixtures/jaeger/config.yaml");
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&config)
            .envs(self.ports.env())
            .stdin(Stdio::null())
            .stdout(clone(&file))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Kills Jaeger (SIGKILL) and reaps it; nothing listens on its ports
    /// afterwards. Does nothing when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_ready(&mut self) {
        let health = format!("http://{}/status", self.ports.health);
        let services = format!("{}/api/services", self.query_url());
        let mut exited = None;
        let child = self.child.as_mut().expect("Jaeger was just started");
        let ready = eventually(READY, || {
            // An exited Jaeger ends the wait at once (reported below).
            if exited.is_none() {
                exited = child.try_wait().ok().flatten();
            }
            let gone = exited.is_some();
            let (health, services) = (health.clone(), services.clone());
            async move {
                gone || (matches!(get(&health).await, Ok((200, _)))
                    && matches!(get(&services).await, Ok((200, _))))
            }
        })
        .await;
        if let Some(status) = exited {
            self.child = None;
            panic!("Jaeger exited with {status}:\n{}", self.log_tail());
        }
        assert!(
            ready.is_some(),
            "Jaeger not ready within {READY:?} ({health}, {services}):\n{}",
            self.log_tail()
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("jaeger.log")
    }

    /// The last lines of its log (all starts), for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// One query API GET: the `data` member of a 200 answer, `None` for a
    /// 404; panics on anything else.
    async fn query(&self, path_and_query: &str) -> Option<Value> {
        let url = format!("{}{path_and_query}", self.query_url());
        let (status, body) = get(&url)
            .await
            .unwrap_or_else(|e| panic!("Jaeger query API: {e}"));
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "GET {url}: {body}");
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {url}: body is not JSON ({e}): {body}"));
        Some(json["data"].clone())
    }

    /// The services that sent spans (`/api/services`).
    pub async fn services(&self) -> Vec<String> {
        let data = self.query("/api/services").await.unwrap_or(Value::Null);
        data.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    }

    /// The traces with a span of `service` (`/api/traces?service=`, the
    /// default lookback, at most 1000), each in the query API's form:
    /// `{traceID, spans: [{spanID, operationName, references, processID,
    /// tags, ..}], processes: {id: {serviceName, tags}}}`.
    pub async fn traces(&self, service: &str) -> Vec<Value> {
        let path = format!("/api/traces?service={}&limit=1000", urlencode(service));
        let data = self.query(&path).await.unwrap_or(Value::Null);
        data.as_array().cloned().unwrap_or_default()
    }

    /// The trace with this id (32 lowercase hex digits), in the form
    /// [`Jaeger::traces`] gives; `None` when Jaeger has none.
    pub async fn trace(&self, trace_id_hex: &str) -> Option<Value> {
        let data = self.query(&format!("/api/traces/{trace_id_hex}")).await?;
        data.as_array()?.first().cloned()
    }

    /// Polls every service's traces until one satisfies `predicate`, at
    /// most `within`; panics then, naming the traces it saw.
    pub async fn wait_for_trace(
        &self,
        predicate: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Value {
        let predicate = &predicate;
        poll(within, "a trace the predicate accepts", || async move {
            let mut seen = Vec::new();
            for service in self.services().await {
                for trace in self.traces(&service).await {
                    if predicate(&trace) {
                        return Ok(trace);
                    }
                    seen.push(format!("{service}: {}", trace["traceID"]));
                }
            }
            Err(format!("traces seen: {seen:?}"))
        })
        .await
    }

    /// POSTs an OTLP/HTTP JSON export request (`resourceSpans`) to
    /// `/v1/traces`; panics unless Jaeger accepts it.
    pub async fn send_otlp_json(&self, request: &Value) {
        let url = format!("{}/v1/traces", self.otlp_http_endpoint());
        let (status, body) = post(&url, "application/json", request.to_string())
            .await
            .unwrap_or_else(|e| panic!("OTLP export: {e}"));
        assert_eq!(status, 200, "POST {url}: {body}");
    }
}

/// Percent-encodes a query parameter value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The spans of a trace in the query API's form.
pub fn spans(trace: &Value) -> Vec<&Value> {
    trace["spans"].as_array().into_iter().flatten().collect()
}

/// The span of `trace` named `operation`, if any.
pub fn span<'a>(trace: &'a Value, operation: &str) -> Option<&'a Value> {
    spans(trace)
        .into_iter()
        .find(|s| s["operationName"] == operation)
}

/// The service that sent `span` (its process's `serviceName`).
pub fn service_of<'a>(trace: &'a Value, span: &Value) -> Option<&'a str> {
    let process = span["processID"].as_str()?;
    trace["processes"][process]["serviceName"].as_str()
}

/// The span id `span` is a child of (its `CHILD_OF` reference), if any.
pub fn parent_of(span: &Value) -> Option<&str> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")?["spanID"]
        .as_str()
}

/// The value of `span`'s tag (span attribute) `key`, if it has one.
pub fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}
