//! Stage 1, identify: who is calling, as the mesh proves it, and whether this
//! dataplane may decide anything at all.
//!
//! Fail closed: without a usable SVID of its own (none yet, or expired while
//! the Workload API is away) or a warm configuration (no policy means no
//! decisions) the dataplane refuses. The caller is this sidecar's own
//! workload on the outbound side and the peer the mTLS handshake verified on
//! the inbound side; an inbound dataplane must also be a registered service.
//! Nothing here reads the request, so the ext_authz server can reuse it.

use std::sync::Arc;

use meshward_spire::IdentityError;

use super::VerifiedPeer;
use super::refusal::{Denial, NotReady, Refusal};
use crate::policy::Direction;
use crate::state::{Agent, MeshState, Upstream};

/// The proven parties of one request.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The configuration the whole request is judged under.
    pub state: Arc<MeshState>,
    /// This dataplane's own SPIFFE ID (from its current SVID).
    pub own_spiffe_id: String,
    /// The caller's SPIFFE ID.
    pub caller_id: String,
    /// The caller's registry entry, if it is a registered agent.
    pub caller: Option<Arc<Agent>>,
    /// Inbound: the service this dataplane fronts.
    pub own_service: Option<Arc<Upstream>>,
}

/// Identifies the caller of a request arriving in `direction`.
pub fn identify(
    own: Result<String, IdentityError>,
    state: Option<Arc<MeshState>>,
    direction: Direction,
    peer: Option<&VerifiedPeer>,
) -> Result<Identity, Refusal> {
    let own_spiffe_id = own.map_err(NotReady::Identity)?;
    let state = state.ok_or(NotReady::NoConfig)?;
    let (caller_id, own_service) = match direction {
        Direction::Inbound => {
            let peer =
                peer.ok_or_else(|| Refusal::Forbidden(Denial::plain("no verified peer identity")))?;
            let own = state
                .service_by_spiffe_id(&own_spiffe_id)
                .cloned()
                .ok_or_else(|| NotReady::NotRegistered {
                    spiffe_id: own_spiffe_id.clone(),
                })?;
            (peer.spiffe_id.clone(), Some(own))
        }
        Direction::Outbound => (own_spiffe_id.clone(), None),
    };
    let caller = state.agents.get(&caller_id).cloned();
    Ok(Identity {
        state,
        own_spiffe_id,
        caller_id,
        caller,
        own_service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::test_support::{AGENT, SERVICE, state};

    fn peer(id: &str) -> VerifiedPeer {
        VerifiedPeer {
            spiffe_id: id.into(),
            cert_sha256: String::new(),
        }
    }

    #[test]
    fn outbound_caller_is_this_workload() {
        let id = identify(Ok(AGENT.into()), Some(state()), Direction::Outbound, None).unwrap();
        assert_eq!(id.caller_id, AGENT);
        assert_eq!(id.caller.as_ref().map(|a| a.name.as_str()), Some("agent"));
        assert!(id.own_service.is_none());
    }

    #[test]
    fn inbound_caller_is_the_verified_peer_and_own_service_is_known() {
        let id = identify(
            Ok(SERVICE.into()),
            Some(state()),
            Direction::Inbound,
            Some(&peer(AGENT)),
        )
        .unwrap();
        assert_eq!(id.caller_id, AGENT);
        assert_eq!(id.own_service.unwrap().service.spiffe_id, SERVICE);
        // An unregistered caller is identified but has no registry entry.
        let id = identify(
            Ok(SERVICE.into()),
            Some(state()),
            Direction::Inbound,
            Some(&peer("spiffe://example.org/agent/stranger")),
        )
        .unwrap();
        assert!(id.caller.is_none());
    }

    #[test]
    fn fails_closed_without_svid_config_peer_or_registration() {
        let no_svid = identify(
            Err(IdentityError::Waiting {
                endpoint: "unix:/x".into(),
                reason: "down".into(),
            }),
            Some(state()),
            Direction::Outbound,
            None,
        );
        assert!(matches!(
            no_svid,
            Err(Refusal::NotReady(NotReady::Identity(_)))
        ));
        let no_config = identify(Ok(AGENT.into()), None, Direction::Outbound, None);
        assert!(matches!(
            no_config,
            Err(Refusal::NotReady(NotReady::NoConfig))
        ));
        let no_peer = identify(Ok(SERVICE.into()), Some(state()), Direction::Inbound, None);
        assert!(matches!(no_peer, Err(Refusal::Forbidden(_))));
        let unregistered = identify(
            Ok("spiffe://example.org/service/other".into()),
            Some(state()),
            Direction::Inbound,
            Some(&peer(AGENT)),
        );
        assert!(matches!(
            unregistered,
            Err(Refusal::NotReady(NotReady::NotRegistered { .. }))
        ));
    }
}
