//! The embedded dev identity server: a tiny SPIRE stand-in for `meshward up` and tests.
//!
//! It owns a CA for one trust domain (ECDSA P-256, built with `rcgen`) and serves
//! the SPIFFE Workload API on Unix sockets. A SPIRE agent attests workloads by
//! inspecting the calling process; this server cannot, so it attests by socket:
//! every registered workload gets its own socket, and whoever can connect to that
//! socket (mode 0600, so only the same user) receives that workload's SVID.
//! The same socket also serves Envoy's SDS (see [`sds`]), as a SPIRE agent's does.
//! Consumers use it exactly like SPIRE — through [`crate::identity::IdentitySource`]
//! pointed at the socket — so the code path under test is the production one and
//! nothing ever reads dev keys directly.

mod authority;
pub(crate) mod ca;
pub mod sds;
mod workload_api;

/// The relay's HPACK rewrite, for the fuzz targets and their replay tests
/// (`fuzz/`, `tests/fuzz_regressions.rs`) only: it parses bytes straight from
/// an untrusted local client, so it is fuzzed on its own, outside the async
/// relay around it. Not an API; the module `authority` itself stays private.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::authority::{DEFAULT_HEADER_TABLE_SIZE, rewrite_block};
}

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use meshward_contract::pb::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::UnixListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use self::ca::Ca;
pub use self::ca::CaError;
use self::sds::SdsService;
pub use self::workload_api::WORKLOAD_API_HEADER;
use self::workload_api::WorkloadService;

/// Shortest SVID lifetime accepted: X.509 validity has one-second resolution and
/// the server re-issues at half the TTL, so anything shorter would hand out
/// certificates that are already expired by the time they are used.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(2);

/// Longest usable Unix socket path (`sun_path` is 108 bytes on Linux, including NUL).
const MAX_SOCKET_PATH: usize = 100;

/// How long [`DevIdentityServer::shutdown`] waits for connections to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to start a [`DevIdentityServer`].
#[derive(Clone, Debug)]
pub struct DevServerOptions {
    /// Directory for the per-workload sockets; created (mode 0700) if missing.
    pub dir: PathBuf,
    /// Trust domain name, e.g. `example.org` (no `spiffe://`).
    pub trust_domain: String,
    /// Lifetime of each issued SVID; a fresh one is pushed at half of it.
    pub svid_ttl: Duration,
}

/// Why the dev identity server could not start or register a workload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevServerError {
    /// The trust domain name is not valid.
    #[error("invalid trust domain {trust_domain:?}: {reason}")]
    InvalidTrustDomain {
        /// The name given.
        trust_domain: String,
        /// Why it was refused.
        reason: String,
    },
    /// The SVID TTL is below [`MIN_SVID_TTL`].
    #[error("SVID TTL {ttl:?} is too short; the minimum is {MIN_SVID_TTL:?}")]
    TtlTooShort {
        /// The TTL given.
        ttl: Duration,
    },
    /// A SPIFFE ID cannot be registered.
    #[error("cannot register {spiffe_id:?}: {reason}")]
    InvalidSpiffeId {
        /// The ID given.
        spiffe_id: String,
        /// Why it was refused.
        reason: String,
    },
    /// Filesystem trouble with the socket directory or a socket file.
    #[error("{what} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket path would exceed the OS limit.
    #[error("socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter directory", path = path.display())]
    SocketPathTooLong {
        /// The path that would have been used.
        path: PathBuf,
    },
    /// The CA could not be created or could not sign.
    #[error("dev CA for {trust_domain}: {source}")]
    Ca {
        /// The trust domain of the CA.
        trust_domain: String,
        /// The underlying failure.
        #[source]
        source: CaError,
    },
    /// The server was shut down.
    #[error("the dev identity server has been shut down")]
    ShutDown,
}

struct Registry {
    by_id: HashMap<String, PathBuf>,
    names: HashSet<String>,
    tasks: Vec<JoinHandle<()>>,
    closed: bool,
}

/// A running dev identity server. Dropping it stops all sockets from serving;
/// [`DevIdentityServer::shutdown`] additionally waits for that and removes the socket files.
pub struct DevIdentityServer {
    dir: PathBuf,
    ca: Arc<Ca>,
    ttl: Duration,
    shutdown_tx: watch::Sender<bool>,
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for DevIdentityServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdentityServer")
            .field("dir", &self.dir)
            .field("trust_domain", &self.ca.trust_domain())
            .field("svid_ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DevServerError + 'a {
    move |source| DevServerError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A readable, filesystem-safe socket file name for `spiffe_id`
/// (`spiffe://td/ns/a/sa/b` becomes `ns_a_sa_b.sock`).
fn socket_name(path: &str) -> String {
    let mut name: String = path
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, 'w');
    }
    name
}

/// Removes a socket file left behind by an earlier run; refuses to touch anything else.
fn remove_stale_socket(path: &Path) -> Result<(), DevServerError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io_err("removing stale socket", path))
        }
        Ok(_) => Err(DevServerError::Io {
            what: "refusing to replace non-socket file",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "not a socket"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspecting", path)(e)),
    }
}

impl DevIdentityServer {
    /// Creates the CA and the socket directory. No socket serves until a
    /// workload is [registered](Self::register).
    pub async fn start(opts: DevServerOptions) -> Result<Self, DevServerError> {
        let td = spiffe::TrustDomain::new(&opts.trust_domain).map_err(|e| {
            DevServerError::InvalidTrustDomain {
                trust_domain: opts.trust_domain.clone(),
                reason: e.to_string(),
            }
        })?;
        let td = td.to_string();
        if td.contains("://") || td != opts.trust_domain {
            return Err(DevServerError::InvalidTrustDomain {
                trust_domain: opts.trust_domain.clone(),
                reason: "give the bare trust domain name, e.g. example.org".into(),
            });
        }
        if opts.svid_ttl < MIN_SVID_TTL {
            return Err(DevServerError::TtlTooShort { ttl: opts.svid_ttl });
        }
        if !opts.dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&opts.dir)
                .map_err(io_err("creating socket directory", &opts.dir))?;
        }
        let ca = Ca::new(&td).map_err(|source| DevServerError::Ca {
            trust_domain: td.clone(),
            source,
        })?;
        let (shutdown_tx, _) = watch::channel(false);
        tracing::info!(trust_domain = %td, dir = %opts.dir.display(), ttl = ?opts.svid_ttl, "dev identity server started");
        Ok(Self {
            dir: opts.dir,
            ca: Arc::new(ca),
            ttl: opts.svid_ttl,
            shutdown_tx,
            registry: Mutex::new(Registry {
                by_id: HashMap::new(),
                names: HashSet::new(),
                tasks: Vec::new(),
                closed: false,
            }),
        })
    }

    /// The trust domain this server issues for.
    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    /// The directory holding the sockets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The trust bundle (the CA certificate) as PEM, e.g. for Envoy or OPA configs.
    pub fn bundle_pem(&self) -> String {
        self.ca.cert_pem().to_owned()
    }

    /// The trust bundle as DER.
    pub fn bundle_der(&self) -> Vec<u8> {
        self.ca.cert_der().to_vec()
    }

    /// Starts serving the Workload API and Envoy SDS for `spiffe_id` on its own
    /// socket and returns the socket path (give it to the workload as
    /// `SPIFFE_ENDPOINT_SOCKET=unix:<path>`, or to Envoy as the SDS cluster's
    /// pipe address). Registering the same ID again returns the same path.
    pub async fn register(&self, spiffe_id: &str) -> Result<PathBuf, DevServerError> {
        self.register_with_dns(spiffe_id, &[]).await
    }

    /// [`Self::register`], with DNS SANs in the workload's SVIDs beside its
    /// SPIFFE ID (SPIRE's `entry create -dns`), for clients that verify a
    /// host name: gRPC's xDS client checks the control plane's that way. A
    /// workload already registered keeps the SANs it was registered with.
    pub async fn register_with_dns(
        &self,
        spiffe_id: &str,
        dns_names: &[&str],
    ) -> Result<PathBuf, DevServerError> {
        let invalid = |reason: String| DevServerError::InvalidSpiffeId {
            spiffe_id: spiffe_id.to_owned(),
            reason,
        };
        let id = spiffe::SpiffeId::new(spiffe_id).map_err(|e| invalid(e.to_string()))?;
        if id.trust_domain_name() != self.ca.trust_domain() {
            return Err(invalid(format!(
                "not in trust domain {}",
                self.ca.trust_domain()
            )));
        }
        if id.path().is_empty() {
            return Err(invalid(
                "a workload ID needs a path after the trust domain".into(),
            ));
        }
        let id = id.to_string();

        let mut reg = self.registry.lock().await;
        if reg.closed {
            return Err(DevServerError::ShutDown);
        }
        if let Some(path) = reg.by_id.get(&id) {
            return Ok(path.clone());
        }

        let base = socket_name(
            id.trim_start_matches("spiffe://")
                .split_once('/')
                .map_or("", |(_, p)| p),
        );
        let mut name = format!("{base}.sock");
        let mut n = 1;
        while reg.names.contains(&name) {
            n += 1;
            name = format!("{base}-{n}.sock");
        }
        let path = self.dir.join(&name);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(DevServerError::SocketPathTooLong { path });
        }

        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(io_err("binding socket", &path))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("restricting permissions of", &path))?;
        }

        let svc = WorkloadService {
            spiffe_id: id.clone(),
            dns_names: dns_names.iter().map(|n| n.to_string()).collect(),
            ca: Arc::clone(&self.ca),
            ttl: self.ttl,
            shutdown: self.shutdown_tx.subscribe(),
            current: Arc::default(),
        };
        let sds = SdsService::new(svc.clone());
        // Through the relay, so gRPC clients that send the socket path as
        // :authority (grpcio, grpc-java) are served as a SPIRE agent serves them.
        let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(authority::relay));
        let mut stop = self.shutdown_tx.subscribe();
        let task_id = id.clone();
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(svc))
                .add_service(SecretDiscoveryServiceServer::new(sds))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|down| *down).await;
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(spiffe_id = %task_id, error = %e, "workload API socket stopped");
            }
        });

        tracing::info!(spiffe_id = %id, socket = %path.display(), "registered workload");
        reg.names.insert(name);
        reg.by_id.insert(id, path.clone());
        reg.tasks.push(task);
        Ok(path)
    }

    /// Stops serving: ends open SVID streams, waits (bounded) for connections to
    /// close, and removes the socket files.
    pub async fn shutdown(self) {
        self.shutdown_tx.send_replace(true);
        let (tasks, paths) = {
            let mut reg = self.registry.lock().await;
            reg.closed = true;
            (
                std::mem::take(&mut reg.tasks),
                reg.by_id.values().cloned().collect::<Vec<_>>(),
            )
        };
        for mut task in tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        for path in paths {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::debug!(socket = %path.display(), error = %e, "could not remove socket");
            }
        }
        tracing::info!(trust_domain = %self.ca.trust_domain(), "dev identity server stopped");
    }

    /// A [`crate::test_util::TestCa`] that signs with *this* server's CA, for
    /// minting deliberately bad certificates that still chain to the trusted bundle.
    #[cfg(any(test, feature = "test-util"))]
    pub fn test_ca(&self) -> crate::test_util::TestCa {
        crate::test_util::TestCa::from_ca(Arc::clone(&self.ca))
    }
}

impl Drop for DevIdentityServer {
    fn drop(&mut self) {
        // Without an explicit shutdown, at least stop serving.
        self.shutdown_tx.send_replace(true);
    }
}

#[cfg(test)]
mod tests;
