//! The dataplane's xDS client: delta ADS over mTLS to the control plane.
//!
//! It subscribes (wildcard) to clusters, endpoints, the policy bundle and
//! agents, validates every response before it ACKs it ([`handlers`]), and
//! publishes a new [`MeshState`] only once every type has arrived and the
//! policy bundle compiled ([`cache`]). A NACKed response changes nothing, so
//! the last good state keeps serving; so does a lost connection, while the
//! client reconnects with backoff and tells the server what it already holds
//! (`initial_resource_versions`) so only differences are resent.

pub mod cache;
pub mod handlers;
pub mod rejected;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshward_spire::IdentitySource;
use meshward_spire::identity::IdentityError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::state::MeshState;
use cache::Caches;
use rejected::LastRejected;

/// Counter: responses handled, labelled `type_url` and `result` (`ack`/`nack`).
pub const METRIC_UPDATES: &str = "meshward_xds_client_updates_total";

/// First reconnect delay; doubles per failed attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Largest response accepted (policy bundles can be big).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// `google.rpc.Code.INVALID_ARGUMENT`, the code of every NACK.
const INVALID_ARGUMENT: i32 = 3;

/// Where the control plane is and who this node says it is.
#[derive(Debug, Clone)]
pub struct XdsClientConfig {
    /// `host:port` of the control plane's xDS listener.
    pub address: String,
    /// The SPIFFE ID the control plane must present; `None` accepts any ID
    /// of a trusted trust domain.
    pub server_spiffe_id: Option<String>,
    /// `Node.id` (informational: the server authorizes by certificate).
    pub node_id: String,
    /// `Node.cluster`.
    pub cluster: String,
}

/// Why one xDS session ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsClientError {
    #[error("xDS server {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: IdentityError,
    },
    #[error("xDS server {address}: stream refused: {status}")]
    Refused {
        address: String,
        status: tonic::Status,
    },
    #[error("xDS server {address}: stream broke: {status}")]
    Stream {
        address: String,
        status: tonic::Status,
    },
    #[error("xDS server {address}: closed the stream")]
    Closed { address: String },
}

/// Starts the client. The receiver holds `None` until the first warm state,
/// then always the last good state (also while disconnected, or if a later
/// update is rejected). The task ends when every receiver is dropped.
pub fn spawn(
    config: XdsClientConfig,
    identity: IdentitySource,
) -> (watch::Receiver<Option<Arc<MeshState>>>, JoinHandle<()>) {
    spawn_reporting(config, identity, Arc::default())
}

/// [`spawn`], recording every rejected response in `rejected`.
pub fn spawn_reporting(
    config: XdsClientConfig,
    identity: IdentitySource,
    rejected: Arc<LastRejected>,
) -> (watch::Receiver<Option<Arc<MeshState>>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let handle = tokio::spawn(run(config, identity, tx, rejected));
    (rx, handle)
}

async fn run(
    config: XdsClientConfig,
    identity: IdentitySource,
    state: watch::Sender<Option<Arc<MeshState>>>,
    rejected: Arc<LastRejected>,
) {
    let mut caches = Caches::default();
    let mut backoff = Backoff::default();
    loop {
        let result = tokio::select! {
            r = session(&config, &identity, &mut caches, &state, &rejected, &mut backoff) => r,
            () = state.closed() => return,
        };
        if let Err(e) = result {
            warn!(error = %e, "xDS session ended; serving the last good state while reconnecting");
        }
        let delay = backoff.next_delay();
        debug!(?delay, address = %config.address, "xDS reconnect scheduled");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = state.closed() => return,
        }
    }
}

/// One connection: subscribe, then validate / ACK / NACK / publish until
/// the stream ends. Always returns an error (a stream does not end well).
async fn session(
    config: &XdsClientConfig,
    identity: &IdentitySource,
    caches: &mut Caches,
    state: &watch::Sender<Option<Arc<MeshState>>>,
    rejected: &LastRejected,
    backoff: &mut Backoff,
) -> Result<(), XdsClientError> {
    let address = config.address.clone();
    let connect = |source| XdsClientError::Connect {
        address: address.clone(),
        source,
    };
    let tls = meshward_spire::tls::client_config(
        identity,
        config.server_spiffe_id.as_deref(),
        &[meshward_spire::grpc::ALPN_H2],
    )
    .map_err(connect)?;
    let channel = meshward_spire::grpc::channel(&config.address, tls)
        .await
        .map_err(connect)?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);

    let subscribed = caches.type_urls();
    let (requests, rx) = mpsc::channel(subscribed.len() * 2);
    let node = Node {
        id: config.node_id.clone(),
        cluster: config.cluster.clone(),
        user_agent_name: meshward_contract::type_url::MESHWARD_USER_AGENT.to_string(),
        ..Default::default()
    };
    for type_url in subscribed {
        // Wildcard subscription (no names), with what we hold from an
        // earlier stream so unchanged resources are not resent. The channel
        // has room for all of them, so this never waits.
        let _ = requests
            .send(DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: type_url.to_string(),
                initial_resource_versions: caches.versions(type_url),
                ..Default::default()
            })
            .await;
    }
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|status| XdsClientError::Refused {
            address: address.clone(),
            status,
        })?
        .into_inner();
    info!(%address, node = %config.node_id, "xDS stream open");

    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(XdsClientError::Closed { address }),
            Err(status) => return Err(XdsClientError::Stream { address, status }),
        };
        backoff.reset();
        let reply = handle(&response, caches, state, rejected);
        if requests.send(reply).await.is_err() {
            return Err(XdsClientError::Closed { address });
        }
    }
}

/// Validates and applies one response; returns its ACK or NACK.
fn handle(
    response: &DeltaDiscoveryResponse,
    caches: &mut Caches,
    state: &watch::Sender<Option<Arc<MeshState>>>,
    rejected: &LastRejected,
) -> DeltaDiscoveryRequest {
    let mut reply = DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    };
    match caches.apply(response) {
        Ok(()) => {
            debug!(
                type_url = %response.type_url,
                updated = response.resources.len(),
                removed = response.removed_resources.len(),
                "xDS update applied"
            );
            metrics::counter!(METRIC_UPDATES, "type_url" => response.type_url.clone(), "result" => "ack")
                .increment(1);
            publish(caches, state);
        }
        Err(reason) => {
            warn!(
                type_url = %response.type_url,
                nonce = %response.nonce,
                %reason,
                "xDS update rejected (NACK); keeping the last good state"
            );
            metrics::counter!(METRIC_UPDATES, "type_url" => response.type_url.clone(), "result" => "nack")
                .increment(1);
            rejected.record(&response.type_url, &reason);
            reply.error_detail = Some(RpcStatus {
                code: INVALID_ARGUMENT,
                message: reason,
                details: Vec::new(),
            });
        }
    }
    reply
}

/// Publishes the assembled state once warm. After warm-up, losing the
/// policy bundle publishes `None`: the request path then refuses (fails
/// closed) instead of running without policy.
fn publish(caches: &Caches, state: &watch::Sender<Option<Arc<MeshState>>>) {
    match caches.state() {
        Some(new) => {
            let first = state.borrow().is_none();
            state.send_replace(Some(Arc::new(new)));
            if first {
                info!("xDS configuration warm; dataplane state published");
            }
        }
        None if caches.all_received() && state.borrow().is_some() => {
            warn!(
                "policy bundle withdrawn by the control plane; refusing traffic until one arrives"
            );
            state.send_replace(None);
        }
        None => {}
    }
}

/// Exponential backoff with full jitter between [`BACKOFF_MIN`] and the
/// current ceiling, so many dataplanes do not reconnect in lockstep.
#[derive(Debug)]
struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            ceiling: BACKOFF_MIN,
        }
    }
}

impl Backoff {
    fn reset(&mut self) {
        self.ceiling = BACKOFF_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(BACKOFF_MAX);
        let span =
            u64::try_from(ceiling.saturating_sub(BACKOFF_MIN).as_millis()).unwrap_or(u64::MAX);
        let jitter = if span == 0 {
            0
        } else {
            rand::random_range(0..=span)
        };
        BACKOFF_MIN + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests;
