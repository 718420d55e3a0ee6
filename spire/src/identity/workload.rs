//! [`WorkloadIdentity`]: an identity that may still be waiting for the
//! Workload API, and the task that establishes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use spiffe::X509Source;
use tokio::sync::watch;

use super::endpoint::{endpoint_from_env, normalize_endpoint};
use super::error::{IdentityError, error_chain};
use super::link::{
    BACKOFF_MAX, BACKOFF_MIN, LinkRecorder, Signals, WorkloadApiLink, client_factory,
};
use super::source::IdentitySource;
use super::svid::SvidInfo;

/// A workload's identity as it becomes available: *waiting* until the
/// Workload API delivers a first SVID, then a live [`IdentitySource`].
///
/// This is what a long-running process holds, so it can start, serve its
/// admin endpoint and report why it is not ready while the Workload API is
/// unavailable. Cloning is cheap; all clones share one connection attempt,
/// which stops when the last clone is dropped before it succeeded.
#[derive(Clone, Debug)]
pub struct WorkloadIdentity {
    pub(super) signals: Arc<Signals>,
    pub(super) source: watch::Receiver<Option<IdentitySource>>,
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

    pub(super) fn gave_up(&self) -> IdentityError {
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

/// Builds the `X509Source` (which retries by itself) and publishes it; if the
/// build fails for a reason the `spiffe` crate treats as final (the server
/// refused the request), tries again later: a sidecar must outlast a
/// misconfigured or restarting agent. Ends when every handle is dropped.
pub(super) async fn establish(
    uri: String,
    signals: Arc<Signals>,
    tx: watch::Sender<Option<IdentitySource>>,
) {
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
