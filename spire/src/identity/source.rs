//! [`IdentitySource`]: a connected identity, kept fresh by the Workload API,
//! and the monitor that follows it.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use spiffe::{X509Source, X509Svid};
use tokio::sync::watch;

use super::endpoint::endpoint_from_env;
use super::error::{IdentityError, error_chain};
use super::link::{Signals, WorkloadApiLink, log_link_change};
use super::svid::SvidInfo;
use super::workload::WorkloadIdentity;
use super::x509::subject_key_id;

/// A workload's live SPIFFE identity: current SVID and trust bundles, kept fresh
/// by the Workload API stream.
///
/// Cloning is cheap (reference counted) and all clones share one Workload API
/// connection. The connection lives until the last clone, and the last TLS
/// config built from it, is dropped.
#[derive(Clone, Debug)]
pub struct IdentitySource {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) source: X509Source,
    pub(super) signals: Arc<Signals>,
    /// The last SVID parsed, so per-request checks do not parse certificates.
    pub(super) parsed: Mutex<Option<(Arc<X509Svid>, SvidInfo)>>,
}

impl IdentitySource {
    pub(super) fn new(source: X509Source, signals: Arc<Signals>) -> Self {
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

    pub(super) fn svid(&self) -> Result<Arc<X509Svid>, IdentityError> {
        self.inner.source.svid().map_err(|e| IdentityError::NoSvid {
            endpoint: self.endpoint().to_owned(),
            reason: error_chain(&e),
        })
    }

    pub(super) fn info(&self, svid: &Arc<X509Svid>) -> SvidInfo {
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
pub(super) async fn monitor(
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
