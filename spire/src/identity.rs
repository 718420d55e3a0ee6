//! The identity source: the single seam through which certificates enter Meshward.
//!
//! Every Meshward process, in production and in dev alike, gets its X509-SVID and
//! trust bundles from a SPIFFE Workload API endpoint (a SPIRE agent, or the
//! embedded dev identity server) through the `spiffe` crate's [`X509Source`].
//! The source keeps a streaming connection open and swaps in rotated SVIDs and
//! bundles as they arrive; the TLS configs in [`crate::tls`] read the current
//! material on every handshake, so rotation never needs a restart. Nothing else in
//! Meshward reads keys or certificates from disk.

use std::error::Error as StdError;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spiffe::{X509Source, X509SourceError, X509Svid};
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
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
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
    endpoint: String,
    source: X509Source,
    updates: watch::Receiver<u64>,
}

impl IdentitySource {
    /// Connects to the Workload API at `endpoint` and waits (at most `timeout`)
    /// for the first SVID.
    ///
    /// `endpoint` follows `SPIFFE_ENDPOINT_SOCKET` syntax (`unix:/path`,
    /// `unix:///path`, `tcp://ip:port`) and also accepts a bare socket path.
    /// Must be called inside a Tokio runtime: the source keeps a background task
    /// that follows rotation.
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Self, IdentityError> {
        let uri = normalize_endpoint(endpoint)?;
        let source = X509Source::builder()
            .endpoint(&uri)
            .initial_sync_timeout(timeout)
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5))
            .build()
            .await
            .map_err(|e| match &e {
                X509SourceError::Source(spiffe::WorkloadApiError::Endpoint(_)) => {
                    IdentityError::InvalidEndpoint {
                        endpoint: endpoint.to_owned(),
                        reason: error_chain(&e),
                    }
                }
                X509SourceError::InitialSyncTimeout => IdentityError::Unavailable {
                    endpoint: endpoint.to_owned(),
                    reason: format!("no SVID received within {timeout:?}"),
                },
                _ => IdentityError::Unavailable {
                    endpoint: endpoint.to_owned(),
                    reason: error_chain(&e),
                },
            })?;

        // Re-publish the source's update sequence on a plain tokio watch channel so
        // consumers get the familiar `changed()` / `borrow()` API. The task holds
        // only the update handle, not the source, and ends when the source closes.
        let mut upstream = source.updated();
        let (tx, rx) = watch::channel(upstream.last());
        tokio::spawn(async move {
            while let Ok(seq) = upstream.changed().await {
                if tx.send(seq).is_err() {
                    break;
                }
            }
        });

        let src = Self {
            inner: Arc::new(Inner {
                endpoint: endpoint.to_owned(),
                source,
                updates: rx,
            }),
        };
        tracing::debug!(endpoint, spiffe_id = ?src.spiffe_id().ok(), "identity source connected");
        Ok(src)
    }

    /// Connects to the endpoint named by `SPIFFE_ENDPOINT_SOCKET`.
    pub async fn connect_env(timeout: Duration) -> Result<Self, IdentityError> {
        let endpoint =
            std::env::var(SPIFFE_ENDPOINT_SOCKET).map_err(|e| IdentityError::InvalidEndpoint {
                endpoint: format!("${SPIFFE_ENDPOINT_SOCKET}"),
                reason: e.to_string(),
            })?;
        Self::connect(&endpoint, timeout).await
    }

    /// The endpoint this source was connected to, as given.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    fn svid(&self) -> Result<Arc<X509Svid>, IdentityError> {
        self.inner.source.svid().map_err(|e| IdentityError::NoSvid {
            endpoint: self.inner.endpoint.clone(),
            reason: error_chain(&e),
        })
    }

    /// The SPIFFE ID of the current SVID, e.g. `spiffe://example.org/agent/a`.
    pub fn spiffe_id(&self) -> Result<String, IdentityError> {
        Ok(self.svid()?.spiffe_id().to_string())
    }

    /// The trust domain of the current SVID, e.g. `example.org`.
    pub fn trust_domain(&self) -> Result<String, IdentityError> {
        Ok(self.svid()?.spiffe_id().trust_domain_name().to_owned())
    }

    /// Expiry (`notAfter`) of the current SVID's leaf, or `None` when no SVID is usable.
    pub fn not_after(&self) -> Option<SystemTime> {
        let svid = self.svid().ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).ok()?;
        let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
        Some(UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// DER of the current SVID's leaf certificate (for diagnostics and tests:
    /// comparing it tells whether a rotation happened).
    pub fn leaf_der(&self) -> Result<Vec<u8>, IdentityError> {
        Ok(self.svid()?.leaf().as_bytes().to_vec())
    }

    /// Change notification: the value is a sequence number that increases each
    /// time the SVID or bundles change (rotation, withdrawal, recovery). The
    /// initial value is the sequence at connect time; `changed()` fires on the
    /// next change. The channel closes when the source shuts down.
    pub fn updated(&self) -> watch::Receiver<u64> {
        self.inner.updates.clone()
    }

    /// The underlying `spiffe` source, for code that needs raw access
    /// (the TLS configs in [`crate::tls`]).
    pub fn x509_source(&self) -> &X509Source {
        &self.inner.source
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
}
