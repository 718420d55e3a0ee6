//! Bringing a dataplane up around its identity.
//!
//! A sidecar often starts before its SPIRE agent is reachable, so a dataplane
//! starts its listeners and admin endpoint without an SVID (refusing traffic,
//! `/ready` saying why) and finishes starting here when the first SVID
//! arrives: the inbound TLS config is built and the xDS client connects.
//! After that, identity is checked per request and per handshake (see
//! [`crate::proxy`]), so an SVID that expires while the Workload API is away
//! fails closed, and a renewed one recovers without a restart.

use std::sync::Arc;

use meshward_spire::WorkloadIdentity;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::proxy::Shared;
use crate::state::MeshState;
use crate::xds::{self, XdsClientConfig};

/// ALPN the inbound listener offers.
const INBOUND_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Waits for the first SVID, then configures inbound TLS (if the dataplane
/// has an inbound listener) and runs the xDS client, forwarding its state to
/// `state` until `stop`.
pub(crate) async fn bring_up(
    identity: WorkloadIdentity,
    xds_config: XdsClientConfig,
    shared: Arc<Shared>,
    has_inbound: bool,
    state: watch::Sender<Option<Arc<MeshState>>>,
    stop: CancellationToken,
) {
    let mut updates = identity.updated();
    let source = tokio::select! {
        r = identity.ready() => match r {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(dataplane = %shared.name, "identity: {e}");
                return;
            }
        },
        () = stop.cancelled() => return,
    };
    tracing::info!(dataplane = %shared.name, spiffe_id = ?source.spiffe_id().ok(), "identity available; starting");

    if has_inbound {
        // Needs a usable SVID at the moment it is built; if the first one
        // already expired, wait for the next.
        loop {
            match meshward_spire::tls::server_config(&source, INBOUND_ALPN) {
                Ok(tls) => {
                    let _ = shared.inbound_tls.set(tls);
                    break;
                }
                Err(e) => {
                    tracing::warn!(dataplane = %shared.name, "inbound TLS config: {e}; retrying on the next identity update");
                    tokio::select! {
                        r = updates.changed() => if r.is_err() { return },
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    let (mut rx, xds_task) = xds::spawn_reporting(xds_config, source, shared.xds_rejected.clone());
    loop {
        let current = rx.borrow_and_update().clone();
        state.send_replace(current);
        tokio::select! {
            r = rx.changed() => if r.is_err() { break },
            () = stop.cancelled() => break,
        }
    }
    drop(rx);
    xds_task.abort();
}
