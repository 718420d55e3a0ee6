//! The identity source: the single seam through which certificates enter Meshward.
//!
//! Every Meshward process, in production and in dev alike, gets its X509-SVID and
//! trust bundles from a SPIFFE Workload API endpoint (a SPIRE agent, or the
//! embedded dev identity server) through the `spiffe` crate's [`X509Source`].
//! The source keeps a streaming connection open and swaps in rotated SVIDs and
//! bundles as they arrive; the TLS configs in [`crate::tls`] read the current
//! material on every handshake, so rotation never needs a restart. Nothing else in
//! Meshward reads keys or certificates from disk.
//!
//! Outages are part of the contract, because a sidecar usually starts before (or
//! outlives) its SPIRE agent:
//!
//! - [`WorkloadIdentity::connect`] returns at once and keeps trying, so a process
//!   can start its admin endpoint and say *why* it has no identity yet
//!   ([`IdentityError::Waiting`]) instead of failing to start;
//! - once connected, a lost Workload API is reconnected with backoff (by the
//!   `spiffe` crate) while the current SVID keeps serving; state changes of the
//!   link are logged once each, not per retry;
//! - when the current SVID expires without a replacement, [`IdentitySource::check`]
//!   fails with [`IdentityError::Expired`] naming the SVID, the time and the
//!   link's last error, so callers fail closed with the reason. `spiffe-rustls`
//!   independently refuses to present or accept an expired SVID in handshakes.
//!
//! None of this depends on which Workload API serves the socket: SPIRE and the
//! dev server are driven through the same client code.

use std::error::Error as StdError;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spiffe::x509_source::{MetricsErrorKind, MetricsRecorder};
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Source, X509Svid};
use tokio::sync::watch;

/// The environment variable that names the Workload API endpoint (SPIFFE standard).
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Why identity could not be obtained, verified or turned into TLS configuration.
/// Every variant names the endpoint, identity or peer involved.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The endpoint string is not a usable Workload API address.
    #[error("invalid workload API endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Workload API could not be reached or did not deliver an SVID in time.
    #[error("workload API at {endpoint} unavailable: {reason}")]
    Unavailable {
        /// The endpoint as given.
        endpoint: String,
        /// The underlying failure.
        reason: String,
    },
    /// The source is connected but currently holds no usable SVID
    /// (expired, withdrawn, or the source was closed).
    #[error("no usable SVID from the workload API at {endpoint}: {reason}")]
    NoSvid {
        /// The endpoint the source is connected to.
        endpoint: String,
        /// Why the SVID is not usable.
        reason: String,
    },
    /// A string that should be a SPIFFE ID is not one.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The offending string.
        id: String,
        /// Why it was refused.
        reason: String,
    },
    /// A peer's certificate does not carry a usable SPIFFE identity.
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    /// Building a rustls configuration from the source failed.
    #[error("TLS configuration from the workload API at {endpoint}: {reason}")]
    Tls {
        /// The endpoint the source is connected to.
        endpoint: String,
        /// The underlying failure.
        reason: String,
    },
    /// No SVID has arrived yet from the Workload API; the source keeps trying.
    #[error("waiting for SVID from workload API at {endpoint}: {reason}")]
    Waiting {
        /// The endpoint being tried.
        endpoint: String,
        /// The last failure, or what is being waited for.
        reason: String,
    },
    /// The last SVID has expired and no replacement arrived: fail closed.
    #[error("SVID for {spiffe_id} expired at {not_after}; {detail}")]
    Expired {
        /// The SPIFFE ID of the expired SVID.
        spiffe_id: String,
        /// Its `notAfter`, RFC 3339.
        not_after: String,
        /// Why no replacement arrived (the Workload API link state).
        detail: String,
    },
    /// An outbound mTLS connection failed.
    #[error("mTLS connection to {addr}: {reason}")]
    Connect {
        /// The `host:port` dialled.
        addr: String,
        /// The underlying failure.
        reason: String,
    },
}

/// Formats an error with its whole `source()` chain, so messages keep the root cause.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Turns `SPIFFE_ENDPOINT_SOCKET`-style input into the URI form the `spiffe` crate parses.
///
/// Accepts `unix:/path`, `unix:///path`, `tcp://ip:port` unchanged, and a bare
/// filesystem path (absolute or relative to the working directory) as a Unix socket.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, IdentityError> {
    let invalid = |reason: &str| IdentityError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = endpoint.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    if trimmed.starts_with("unix:") || trimmed.starts_with("tcp:") {
        return Ok(trimmed.to_owned());
    }
    if trimmed.contains("://") {
        return Err(invalid("scheme must be unix: or tcp:"));
    }
    let path = std::path::absolute(Path::new(trimmed))
        .map_err(|e| invalid(&format!("cannot make the path absolute: {e}")))?;
    let path = path
        .to_str()
        .ok_or_else(|| invalid("socket path is not UTF-8"))?;
    Ok(format!("unix:{path}"))
}

/// First delay between attempts to reach the Workload API; doubles per failed
/// attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between attempts to reach the Workload API.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Gauge: `notAfter` of the current SVID as a Unix timestamp, labelled with the
/// caller's labels plus `spiffe_id`; set on every rotation.
pub const METRIC_SVID_EXPIRY: &str = "meshward_svid_expiry_timestamp_seconds";
/// Counter: SVID rotations seen (a new leaf replacing an earlier one).
pub const METRIC_SVID_ROTATIONS: &str = "meshward_svid_rotations_total";

/// The Workload API connection as last observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadApiLink {
    /// No attempt has completed yet.
    Connecting,
    /// Connected: a client was created and its stream has not failed since.
    Connected,
    /// The last attempt, or the open stream, failed with this error.
    Unavailable(String),
}

impl WorkloadApiLink {
    fn reason(&self) -> String {
        match self {
            WorkloadApiLink::Connecting => "connecting".into(),
            WorkloadApiLink::Connected => "connected, no SVID received yet".into(),
            WorkloadApiLink::Unavailable(r) => r.clone(),
        }
    }
}

/// What the identity machinery tells its consumers, shared by the connecting
/// task, the `spiffe` crate's hooks, the monitor and every handle.
#[derive(Debug)]
struct Signals {
    endpoint: String,
    link: watch::Sender<WorkloadApiLink>,
    /// Bumped on anything that can change [`IdentitySource::check`]: first SVID,
    /// rotation, bundle change, link change, expiry.
    generation: watch::Sender<u64>,
}

impl Signals {
    fn new(endpoint: &str) -> Arc<Self> {
        Arc::new(Self {
            endpoint: endpoint.to_owned(),
            link: watch::channel(WorkloadApiLink::Connecting).0,
            generation: watch::channel(0).0,
        })
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn set_link(&self, link: WorkloadApiLink) {
        let changed = self.link.send_if_modified(|cur| {
            if *cur == link {
                false
            } else {
                *cur = link;
                true
            }
        });
        if changed {
            self.bump();
        }
    }
}

/// Feeds [`WorkloadApiLink`] from the `spiffe` crate's metrics callbacks:
/// stream failures mark the link down, accepted updates mark it up.
/// (Connection attempts are reported by the client factory, with the error.)
struct LinkRecorder(Arc<Signals>);

impl MetricsRecorder for LinkRecorder {
    fn record_update(&self) {
        self.0.set_link(WorkloadApiLink::Connected);
    }

    fn record_reconnect(&self) {}

    fn record_error(&self, kind: MetricsErrorKind) {
        let reason = match kind {
            MetricsErrorKind::StreamConnect => "opening the X509-SVID stream failed",
            MetricsErrorKind::StreamError => "the X509-SVID stream failed",
            MetricsErrorKind::StreamEnded => "the X509-SVID stream ended",
            // Client creation is reported by the factory with its error text;
            // the rest are about content, not the link.
            _ => return,
        };
        // A more specific error from the factory wins.
        if !matches!(*self.0.link.borrow(), WorkloadApiLink::Unavailable(_)) {
            self.0
                .set_link(WorkloadApiLink::Unavailable(reason.to_owned()));
        }
    }
}

type ClientFuture =
    Pin<Box<dyn Future<Output = Result<WorkloadApiClient, WorkloadApiError>> + Send + 'static>>;

/// The `spiffe` crate's client factory, instrumented: every attempt reports
/// its outcome on the link. Until the first SVID has arrived, an attempt also
/// fetches one SVID, so "waiting" names the real cause (no such socket,
/// permission denied, no identity issued) rather than a timeout.
fn client_factory(
    uri: String,
    signals: Arc<Signals>,
    synced: Arc<AtomicBool>,
) -> Arc<dyn Fn() -> ClientFuture + Send + Sync + 'static> {
    Arc::new(move || {
        let uri = uri.clone();
        let signals = signals.clone();
        let synced = synced.clone();
        Box::pin(async move {
            let attempt = async {
                let client = WorkloadApiClient::connect_to(&uri).await?;
                if !synced.load(Ordering::Acquire) {
                    client.fetch_x509_svid().await?;
                }
                Ok(client)
            };
            let result: Result<WorkloadApiClient, WorkloadApiError> = attempt.await;
            match &result {
                Ok(_) => signals.set_link(WorkloadApiLink::Connected),
                Err(e) => signals.set_link(WorkloadApiLink::Unavailable(error_chain(e))),
            }
            result
        })
    })
}

/// Formats a Unix time as RFC 3339 (UTC), for messages.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (Unix time)"))
}

/// `notAfter` of a DER certificate (e.g. a peer's leaf from a handshake).
pub fn leaf_not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The authority key identifier of a DER certificate, lowercase hex: the
/// subject key identifier of the CA that signed it. SPIRE names its X.509
/// authorities by that value (`spire-server localauthority x509 show`), so
/// this tells which authority issued an SVID, e.g. across a CA rotation.
pub fn leaf_authority_key_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    authority_key_id(&cert)
}

/// The subject key identifier of a DER certificate, lowercase hex; for a
/// CA in a trust bundle this is SPIRE's authority ID.
pub fn subject_key_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => Some(hex(ski.0)),
            _ => None,
        })
}

/// The serial number of a DER certificate, lowercase hex (as [`SvidInfo::serial`]).
pub fn leaf_serial(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(hex(cert.raw_serial()))
}

fn authority_key_id(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| hex(k.0))
            }
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Facts about one X509-SVID, parsed once per SVID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidInfo {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: String,
    /// The leaf's serial number, lowercase hex; changes on every rotation.
    pub serial: String,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
    /// The leaf's authority key identifier, lowercase hex: which CA signed
    /// it (SPIRE's authority ID), if the leaf names it.
    pub authority_key_id: Option<String>,
}

impl SvidInfo {
    fn parse(svid: &X509Svid) -> Self {
        let mut serial = String::new();
        let mut not_after = UNIX_EPOCH;
        let mut authority = None;
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()) {
            serial = hex(cert.raw_serial());
            if let Ok(secs) = u64::try_from(cert.validity().not_after.timestamp()) {
                not_after = UNIX_EPOCH + Duration::from_secs(secs);
            }
            authority = authority_key_id(&cert);
        }
        Self {
            spiffe_id: svid.spiffe_id().to_string(),
            serial,
            authority_key_id: authority,
            not_after,
        }
    }

    /// `notAfter` as RFC 3339 (UTC).
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }

    /// `notAfter` as seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }
}

/// A workload's identity as it becomes available: *waiting* until the
/// Workload API delivers a first SVID, then a live [`IdentitySource`].
///
/// This is what a long-running process holds, so it can start, serve its
/// admin endpoint and report why it is not ready while the Workload API is
/// unavailable. Cloning is cheap; all clones share one connection attempt,
/// which stops when the last clone is dropped before it succeeded.
#[derive(Clone, Debug)]
pub struct WorkloadIdentity {
    signals: Arc<Signals>,
    source: watch::Receiver<Option<IdentitySource>>,
}

impl From<IdentitySource> for WorkloadIdentity {
    fn from(source: IdentitySource) -> Self {
        Self {
            signals: source.inner.signals.clone(),
            source: watch::channel(Some(source)).1,
        }
    }
}

impl WorkloadIdentity {
    /// Starts connecting to the Workload API at `endpoint` in the background
    /// and returns at once. Fails only if `endpoint` is not a valid address.
    /// Retries with backoff ([`BACKOFF_MIN`]..[`BACKOFF_MAX`]) until an SVID
    /// arrives. Must be called inside a Tokio runtime.
    pub fn connect(endpoint: &str) -> Result<Self, IdentityError> {
        let uri = normalize_endpoint(endpoint)?;
        spiffe::transport::Endpoint::parse(&uri).map_err(|e| IdentityError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: error_chain(&e),
        })?;
        let signals = Signals::new(endpoint);
        let (tx, rx) = watch::channel(None);
        tokio::spawn(establish(uri, signals.clone(), tx));
        Ok(Self {
            signals,
            source: rx,
        })
    }

    /// [`Self::connect`] to the endpoint named by `SPIFFE_ENDPOINT_SOCKET`.
    pub fn connect_env() -> Result<Self, IdentityError> {
        Self::connect(&endpoint_from_env()?)
    }

    /// The endpoint, as given.
    pub fn endpoint(&self) -> &str {
        &self.signals.endpoint
    }

    /// The live source, once the first SVID has arrived.
    pub fn source(&self) -> Option<IdentitySource> {
        self.source.borrow().clone()
    }

    /// The current usable SVID, or why there is none: [`IdentityError::Waiting`]
    /// before the first SVID, then as [`IdentitySource::check`].
    pub fn check(&self) -> Result<SvidInfo, IdentityError> {
        match self.source() {
            Some(src) => src.check(),
            None => Err(IdentityError::Waiting {
                endpoint: self.signals.endpoint.clone(),
                reason: self.signals.link.borrow().reason(),
            }),
        }
    }

    /// The Workload API connection as last observed.
    pub fn link(&self) -> WorkloadApiLink {
        self.signals.link.borrow().clone()
    }

    /// Waits for the first SVID.
    pub async fn ready(&self) -> Result<IdentitySource, IdentityError> {
        let mut rx = self.source.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(src) => src.clone().ok_or_else(|| self.gave_up()),
            Err(_) => Err(self.gave_up()),
        }
    }

    fn gave_up(&self) -> IdentityError {
        IdentityError::Unavailable {
            endpoint: self.signals.endpoint.clone(),
            reason: "the connection attempt ended".into(),
        }
    }

    /// Change notification for everything [`Self::check`] depends on: the
    /// first SVID, rotations, bundle changes, link changes and expiry.
    /// Subscribe *before* checking so no change is missed.
    pub fn updated(&self) -> watch::Receiver<u64> {
        self.signals.generation.subscribe()
    }
}

fn endpoint_from_env() -> Result<String, IdentityError> {
    std::env::var(SPIFFE_ENDPOINT_SOCKET).map_err(|e| IdentityError::InvalidEndpoint {
        endpoint: format!("${SPIFFE_ENDPOINT_SOCKET}"),
        reason: e.to_string(),
    })
}

/// Builds the `X509Source` (which retries by itself) and publishes it; if the
/// build fails for a reason the `spiffe` crate treats as final (the server
/// refused the request), tries again later: a sidecar must outlast a
/// misconfigured or restarting agent. Ends when every handle is dropped.
async fn establish(uri: String, signals: Arc<Signals>, tx: watch::Sender<Option<IdentitySource>>) {
    let endpoint = signals.endpoint.clone();
    let mut link = signals.link.subscribe();
    // Log each distinct reason once, not every retry.
    let log_waiting = async {
        while link.changed().await.is_ok() {
            let state = link.borrow_and_update().clone();
            if let WorkloadApiLink::Unavailable(reason) = state {
                tracing::warn!(%endpoint, "waiting for SVID from workload API: {reason}; retrying with backoff");
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::pin!(log_waiting);
    let synced = Arc::new(AtomicBool::new(false));
    let mut backoff = BACKOFF_MIN;
    loop {
        let build = X509Source::builder()
            .client_factory(client_factory(uri.clone(), signals.clone(), synced.clone()))
            .metrics(Arc::new(LinkRecorder(signals.clone())))
            .reconnect_backoff(BACKOFF_MIN, BACKOFF_MAX)
            .build();
        let result = tokio::select! {
            r = build => r,
            () = tx.closed() => return,
            () = &mut log_waiting => return,
        };
        match result {
            Ok(source) => {
                synced.store(true, Ordering::Release);
                let src = IdentitySource::new(source, signals.clone());
                tracing::info!(%endpoint, spiffe_id = ?src.spiffe_id().ok(), "identity source connected");
                tx.send_replace(Some(src));
                signals.bump();
                return;
            }
            Err(e) => {
                signals.set_link(WorkloadApiLink::Unavailable(error_chain(&e)));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = tx.closed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// A workload's live SPIFFE identity: current SVID and trust bundles, kept fresh
/// by the Workload API stream.
///
/// Cloning is cheap (reference counted) and all clones share one Workload API
/// connection. The connection lives until the last clone, and the last TLS
/// config built from it, is dropped.
#[derive(Clone, Debug)]
pub struct IdentitySource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: X509Source,
    signals: Arc<Signals>,
    /// The last SVID parsed, so per-request checks do not parse certificates.
    parsed: Mutex<Option<(Arc<X509Svid>, SvidInfo)>>,
}

impl IdentitySource {
    fn new(source: X509Source, signals: Arc<Signals>) -> Self {
        let upstream = source.updated();
        let src = Self {
            inner: Arc::new(Inner {
                source,
                signals: signals.clone(),
                parsed: Mutex::new(None),
            }),
        };
        tokio::spawn(monitor(Arc::downgrade(&src.inner), signals, upstream));
        src
    }

    /// Connects to the Workload API at `endpoint` and waits (at most `timeout`)
    /// for the first SVID.
    ///
    /// `endpoint` follows `SPIFFE_ENDPOINT_SOCKET` syntax (`unix:/path`,
    /// `unix:///path`, `tcp://ip:port`) and also accepts a bare socket path.
    /// Must be called inside a Tokio runtime: the source keeps a background task
    /// that follows rotation. To start without waiting, use [`WorkloadIdentity::connect`].
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Self, IdentityError> {
        let pending = WorkloadIdentity::connect(endpoint)?;
        match tokio::time::timeout(timeout, pending.ready()).await {
            Ok(result) => result,
            Err(_) => Err(IdentityError::Unavailable {
                endpoint: endpoint.to_owned(),
                reason: format!(
                    "no SVID received within {timeout:?}: {}",
                    pending.signals.link.borrow().reason()
                ),
            }),
        }
    }

    /// Connects to the endpoint named by `SPIFFE_ENDPOINT_SOCKET`.
    pub async fn connect_env(timeout: Duration) -> Result<Self, IdentityError> {
        Self::connect(&endpoint_from_env()?, timeout).await
    }

    /// The endpoint this source was connected to, as given.
    pub fn endpoint(&self) -> &str {
        &self.inner.signals.endpoint
    }

    fn svid(&self) -> Result<Arc<X509Svid>, IdentityError> {
        self.inner.source.svid().map_err(|e| IdentityError::NoSvid {
            endpoint: self.endpoint().to_owned(),
            reason: error_chain(&e),
        })
    }

    fn info(&self, svid: &Arc<X509Svid>) -> SvidInfo {
        let mut parsed = match self.inner.parsed.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((cached, info)) = parsed.as_ref()
            && Arc::ptr_eq(cached, svid)
        {
            return info.clone();
        }
        let info = SvidInfo::parse(svid);
        *parsed = Some((svid.clone(), info.clone()));
        info
    }

    /// The current usable SVID, or why there is none — fail closed on `Err`:
    /// [`IdentityError::Expired`] once the last SVID is past its `notAfter`
    /// without a replacement (naming the Workload API's last error),
    /// [`IdentityError::NoSvid`] if the Workload API withdrew it.
    /// Cheap enough to call per request.
    pub fn check(&self) -> Result<SvidInfo, IdentityError> {
        let state = self.inner.source.state();
        if !state.is_closed()
            && let Ok(svid) = state.svid()
        {
            return Ok(self.info(&svid));
        }
        let no_svid = |reason: String| IdentityError::NoSvid {
            endpoint: self.endpoint().to_owned(),
            reason,
        };
        if state.is_closed() {
            return Err(no_svid("the identity source was shut down".into()));
        }
        if let Some(why) = state.withdrawal() {
            return Err(no_svid(format!("withdrawn by the workload API: {why}")));
        }
        let last = state
            .context()
            .ok()
            .and_then(|ctx| ctx.default_svid().cloned())
            .map(|svid| self.info(&svid));
        match last {
            Some(info) if info.not_after <= SystemTime::now() => {
                let detail = match self.link() {
                    WorkloadApiLink::Unavailable(reason) => {
                        format!("workload API unavailable ({}: {reason})", self.endpoint())
                    }
                    _ => format!(
                        "the workload API at {} has not issued a replacement",
                        self.endpoint()
                    ),
                };
                Err(IdentityError::Expired {
                    spiffe_id: info.spiffe_id.clone(),
                    not_after: info.not_after_rfc3339(),
                    detail,
                })
            }
            _ => Err(self
                .svid()
                .err()
                .unwrap_or_else(|| no_svid("the workload API delivered no usable SVID".into()))),
        }
    }

    /// The last SVID received, usable or not (expired SVIDs included), for
    /// diagnostics and metrics.
    pub fn last_svid(&self) -> Option<SvidInfo> {
        let state = self.inner.source.state();
        let ctx = state.context().ok()?;
        let svid = ctx.default_svid()?;
        Some(self.info(svid))
    }

    /// The Workload API connection as last observed.
    pub fn link(&self) -> WorkloadApiLink {
        self.inner.signals.link.borrow().clone()
    }

    /// The X.509 authorities of every trust bundle currently held, by
    /// trust domain, each as its subject key identifier (lowercase hex,
    /// SPIRE's authority ID): shows a CA rotation reaching this workload
    /// (new CA added, old one removed).
    pub fn bundle_authorities(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(set) = self.inner.source.bundle_set() {
            for (td, bundle) in set.iter() {
                let ids = bundle
                    .authorities()
                    .iter()
                    .map(|c| subject_key_id(c.as_bytes()).unwrap_or_else(|| "unknown".into()))
                    .collect();
                out.insert(td.to_string(), ids);
            }
        }
        out
    }

    /// The SPIFFE ID of the current SVID, e.g. `spiffe://example.org/agent/a`.
    pub fn spiffe_id(&self) -> Result<String, IdentityError> {
        Ok(self.svid()?.spiffe_id().to_string())
    }

    /// The trust domain of the current SVID, e.g. `example.org`.
    pub fn trust_domain(&self) -> Result<String, IdentityError> {
        Ok(self.svid()?.spiffe_id().trust_domain_name().to_owned())
    }

    /// Expiry (`notAfter`) of the current SVID's leaf, or `None` when no SVID
    /// is usable (an expired SVID is not usable: see [`Self::last_svid`]).
    pub fn not_after(&self) -> Option<SystemTime> {
        let svid = self.svid().ok()?;
        Some(self.info(&svid).not_after)
    }

    /// DER of the current SVID's leaf certificate (for diagnostics and tests:
    /// comparing it tells whether a rotation happened).
    pub fn leaf_der(&self) -> Result<Vec<u8>, IdentityError> {
        Ok(self.svid()?.leaf().as_bytes().to_vec())
    }

    /// Change notification: the value is a sequence number that increases on
    /// anything that can change [`Self::check`] — SVID or bundle rotation,
    /// withdrawal, recovery, Workload API link changes, and SVID expiry.
    /// `changed()` fires on the next change.
    pub fn updated(&self) -> watch::Receiver<u64> {
        self.inner.signals.generation.subscribe()
    }

    /// The underlying `spiffe` source, for code that needs raw access
    /// (the TLS configs in [`crate::tls`]).
    pub fn x509_source(&self) -> &X509Source {
        &self.inner.source
    }
}

/// Follows one source for its whole life: re-publishes its updates, wakes up
/// when the current SVID expires (so waiters see the fail-closed state), and
/// logs each state change once: rotation, link lost / back, expiry, recovery.
/// Holds no strong reference, so it ends when the source is dropped.
async fn monitor(
    inner: Weak<Inner>,
    signals: Arc<Signals>,
    mut upstream: spiffe::X509SourceUpdates,
) {
    let endpoint = signals.endpoint.clone();
    let mut link = signals.link.subscribe();
    let mut last_link = link.borrow_and_update().clone();
    let mut last_serial: Option<String> = None;
    let mut failing = false;
    loop {
        let Some(inner_now) = inner.upgrade() else {
            return;
        };
        let src = IdentitySource { inner: inner_now };
        let current = src.check();
        match &current {
            Ok(info) => {
                if last_serial.as_deref() != Some(info.serial.as_str()) {
                    if last_serial.is_some() {
                        tracing::info!(%endpoint, spiffe_id = %info.spiffe_id, serial = %info.serial, not_after = %info.not_after_rfc3339(), "SVID rotated");
                    }
                    last_serial = Some(info.serial.clone());
                }
                if failing {
                    tracing::info!(%endpoint, spiffe_id = %info.spiffe_id, not_after = %info.not_after_rfc3339(), "usable SVID again; serving");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(%endpoint, "{e}; refusing traffic (fail closed) until a new SVID arrives");
                    failing = true;
                }
            }
        }
        let wake_at = current.as_ref().ok().map(|info| {
            let left = info
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            // Just past notAfter, when the source stops handing the SVID out.
            tokio::time::Instant::now() + left + Duration::from_millis(20)
        });
        drop(src);
        tokio::select! {
            r = upstream.changed() => {
                if r.is_err() {
                    return;
                }
                signals.bump();
            }
            r = link.changed() => {
                if r.is_err() {
                    return;
                }
                let now = link.borrow_and_update().clone();
                log_link_change(&endpoint, &last_link, &now, current.as_ref().ok());
                last_link = now;
            }
            () = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => signals.bump(),
        }
    }
}

fn log_link_change(
    endpoint: &str,
    before: &WorkloadApiLink,
    now: &WorkloadApiLink,
    svid: Option<&SvidInfo>,
) {
    match (before, now) {
        (WorkloadApiLink::Unavailable(_), WorkloadApiLink::Unavailable(_)) => {}
        (_, WorkloadApiLink::Unavailable(reason)) => match svid {
            Some(info) => tracing::warn!(
                %endpoint,
                spiffe_id = %info.spiffe_id,
                "workload API unavailable: {reason}; serving with the current SVID until {} while reconnecting with backoff",
                info.not_after_rfc3339()
            ),
            None => {
                tracing::warn!(%endpoint, "workload API unavailable: {reason}; reconnecting with backoff")
            }
        },
        (WorkloadApiLink::Unavailable(_), WorkloadApiLink::Connected) => {
            tracing::info!(%endpoint, "workload API reachable again");
        }
        _ => {}
    }
}

/// Publishes [`METRIC_SVID_EXPIRY`] and [`METRIC_SVID_ROTATIONS`] for `identity`,
/// labelled with `labels` plus `spiffe_id`, until the identity is dropped.
/// Uses whatever `metrics` recorder the process installed.
pub async fn export_svid_metrics(identity: WorkloadIdentity, labels: Vec<(&'static str, String)>) {
    let mut updates = identity.updated();
    let Ok(src) = identity.ready().await else {
        return;
    };
    drop(identity);
    let mut last_serial: Option<String> = None;
    loop {
        if let Some(info) = src.last_svid()
            && last_serial.as_deref() != Some(info.serial.as_str())
        {
            let mut l: Vec<metrics::Label> = labels
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, v.clone()))
                .collect();
            l.push(metrics::Label::new("spiffe_id", info.spiffe_id.clone()));
            // f64 holds Unix seconds exactly for the next 285 million years.
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(METRIC_SVID_EXPIRY, l.clone()).set(info.not_after_unix() as f64);
            if last_serial.is_some() {
                metrics::counter!(METRIC_SVID_ROTATIONS, l).increment(1);
            }
            last_serial = Some(info.serial);
        }
        if updates.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() -> Result<(), IdentityError> {
        assert_eq!(normalize_endpoint("unix:/x/y.sock")?, "unix:/x/y.sock");
        assert_eq!(normalize_endpoint("unix:///x/y.sock")?, "unix:///x/y.sock");
        assert_eq!(normalize_endpoint("/x/y.sock")?, "unix:/x/y.sock");
        assert_eq!(
            normalize_endpoint("tcp://127.0.0.1:8081")?,
            "tcp://127.0.0.1:8081"
        );
        assert!(normalize_endpoint("rel.sock")?.starts_with("unix:/"));
        assert!(matches!(
            normalize_endpoint(""),
            Err(IdentityError::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            normalize_endpoint("http://x"),
            Err(IdentityError::InvalidEndpoint { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn unavailable_endpoint_is_named_in_the_error() {
        let path = std::env::temp_dir().join(format!(
            "meshward-spire-missing-{}.sock",
            std::process::id()
        ));
        let endpoint = format!("unix:{}", path.display());
        let err = IdentitySource::connect(&endpoint, Duration::from_millis(300))
            .await
            .err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with(&format!("workload API at {endpoint} unavailable:")),
            "{msg}"
        );
    }

    /// Waits (bounded) until `f` holds for `identity`, re-checking on every change.
    async fn wait_until(
        identity: &WorkloadIdentity,
        f: impl Fn(&Result<SvidInfo, IdentityError>) -> bool,
    ) -> Result<SvidInfo, IdentityError> {
        let mut updates = identity.updated();
        let deadline = tokio::time::Instant::now() + crate::test_support::WAIT;
        loop {
            let now = identity.check();
            if f(&now) {
                return now;
            }
            if tokio::time::timeout_at(deadline, updates.changed())
                .await
                .is_err()
            {
                return now;
            }
        }
    }

    #[tokio::test]
    async fn lazy_identity_says_why_it_waits_then_connects() -> crate::test_support::TestResult {
        use crate::test_support::{CLIENT_ID, dev_server};
        let (dev, _dir) = dev_server(Duration::from_secs(3600)).await?;
        let socket = dev.dir().join("agent_client.sock");
        let endpoint = format!("unix:{}", socket.display());
        let identity = WorkloadIdentity::connect(&endpoint)?;
        let waiting = wait_until(
            &identity,
            |r| matches!(r, Err(IdentityError::Waiting { reason, .. }) if reason != "connecting"),
        )
        .await;
        let msg = waiting.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with(&format!(
                "waiting for SVID from workload API at {endpoint}: "
            )) && msg.contains("os error 2"),
            "{msg}"
        );
        assert_eq!(dev.register(CLIENT_ID).await?, socket);
        let src = tokio::time::timeout(crate::test_support::WAIT, identity.ready()).await??;
        assert_eq!(src.spiffe_id()?, CLIENT_ID);
        assert_eq!(identity.check()?.spiffe_id, CLIENT_ID);
        dev.shutdown().await;
        Ok(())
    }

    /// With the Workload API gone, the SVID serves until it expires; then
    /// `check` fails closed naming it, and spiffe-rustls refuses to present it.
    #[tokio::test]
    async fn expired_svid_fails_closed_and_is_not_presented() -> crate::test_support::TestResult {
        use crate::test_support::{CLIENT_ID, SERVER_ID, dev_server, handshake, source_for};
        let (dev, _dir) = dev_server(Duration::from_secs(2)).await?;
        let server = source_for(&dev, SERVER_ID).await?;
        let client = source_for(&dev, CLIENT_ID).await?;
        let server_tls = crate::tls::server_config(&server, &[b"h2"])?;
        let client_tls = crate::tls::client_config(&client, Some(SERVER_ID), &[b"h2"])?;
        dev.shutdown().await;

        let identity = WorkloadIdentity::from(server.clone());
        let expired = wait_until(&identity, |r| {
            matches!(r, Err(IdentityError::Expired { .. }))
        })
        .await;
        let msg = expired.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with(&format!("SVID for {SERVER_ID} expired at "))
                && msg.contains("workload API unavailable"),
            "{msg}"
        );
        assert!(
            server
                .last_svid()
                .is_some_and(|s| s.not_after <= SystemTime::now())
        );
        let client_identity = WorkloadIdentity::from(client);
        wait_until(&client_identity, |r| {
            matches!(r, Err(IdentityError::Expired { .. }))
        })
        .await
        .err()
        .ok_or("client SVID did not expire")?;

        let hs = handshake(server_tls, client_tls).await;
        assert!(hs.server.is_err(), "server accepted with an expired SVID");
        assert!(hs.client.is_err(), "client completed with an expired SVID");
        Ok(())
    }
}
