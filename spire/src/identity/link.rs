//! The Workload API connection as the `spiffe` crate reports it, turned into
//! signals consumers can wait on and one log line per state change.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use spiffe::x509_source::{MetricsErrorKind, MetricsRecorder};
use spiffe::{WorkloadApiClient, WorkloadApiError};
use tokio::sync::watch;

use super::error::error_chain;
use super::svid::SvidInfo;

/// First delay between attempts to reach the Workload API; doubles per failed
/// attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between attempts to reach the Workload API.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
    pub(super) fn reason(&self) -> String {
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
pub(super) struct Signals {
    pub(super) endpoint: String,
    pub(super) link: watch::Sender<WorkloadApiLink>,
    /// Bumped on anything that can change [`IdentitySource::check`]: first SVID,
    /// rotation, bundle change, link change, expiry.
    pub(super) generation: watch::Sender<u64>,
}

impl Signals {
    pub(super) fn new(endpoint: &str) -> Arc<Self> {
        Arc::new(Self {
            endpoint: endpoint.to_owned(),
            link: watch::channel(WorkloadApiLink::Connecting).0,
            generation: watch::channel(0).0,
        })
    }

    pub(super) fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub(super) fn set_link(&self, link: WorkloadApiLink) {
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
pub(super) struct LinkRecorder(pub(super) Arc<Signals>);

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

pub(super) type ClientFuture =
    Pin<Box<dyn Future<Output = Result<WorkloadApiClient, WorkloadApiError>> + Send + 'static>>;

/// The `spiffe` crate's client factory, instrumented: every attempt reports
/// its outcome on the link. Until the first SVID has arrived, an attempt also
/// fetches one SVID, so "waiting" names the real cause (no such socket,
/// permission denied, no identity issued) rather than a timeout.
pub(super) fn client_factory(
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

pub(super) fn log_link_change(
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
