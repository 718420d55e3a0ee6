//! State-of-the-world ADS (`StreamAggregatedResources`).
//!
//! The stream rules (subscriptions, nonces, ACK/NACK) are the contract's
//! [`SotwStream`]; this session decides what to send: per type, every
//! subscribed resource of the node's snapshot, at a `version_info` that is a
//! hash of their names and versions, so it changes exactly when the set the
//! client should hold changes.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use meshward_contract::sotw::{Received, SotwStream};
use sha2::{Digest, Sha256};
use tracing::debug;

use super::trace::Sent;
use super::{Session, record_nack};
use crate::snapshot::{NodeIdentity, Snapshot, type_url};

pub use meshward_contract::sotw::WILDCARD;

/// One SotW ADS stream's protocol state.
#[derive(Debug)]
pub struct SotwSession {
    node: NodeIdentity,
    snapshot: Arc<Snapshot>,
    stream: SotwStream,
}

impl SotwSession {
    /// The response for `type_url` if the client should get one: always
    /// when `force`d, otherwise only when the subscribed set changed since
    /// the last response and is not the version the client rejected.
    fn respond(&mut self, type_url: &str, force: bool) -> Option<DiscoveryResponse> {
        let subscription = self.stream.subscription(type_url)?;
        let resources: Vec<_> = self
            .snapshot
            .resources(type_url)
            .filter(|(name, _)| subscription.wants(name))
            .collect();
        let mut hasher = Sha256::new();
        for (name, resource) in &resources {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(resource.version.as_bytes());
            hasher.update([b'\n']);
        }
        let version = hex::encode(hasher.finalize());
        let resources = resources
            .into_iter()
            .map(|(_, r)| r.resource.clone())
            .collect();
        self.stream.respond(type_url, version, resources, force)
    }
}

impl Session for SotwSession {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: &'static str = "sotw";

    fn new(node: NodeIdentity, snapshot: Arc<Snapshot>) -> Self {
        Self {
            node,
            snapshot,
            stream: SotwStream::default(),
        }
    }

    fn request_node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn request_type(request: &DiscoveryRequest) -> &str {
        &request.type_url
    }

    fn request_type_mut(request: &mut DiscoveryRequest) -> &mut String {
        &mut request.type_url
    }

    fn on_request(&mut self, request: DiscoveryRequest) -> Vec<DiscoveryResponse> {
        let type_url = request.type_url.as_str();
        let outcome = self.stream.receive(&request);
        match &outcome.received {
            Received::Ignored => {
                // A newer response is in flight, or the type was never sent.
                debug!(node = %self.node.node_id, type_url, nonce = %request.response_nonce, "stale nonce; ignored");
                return Vec::new();
            }
            Received::Nack { message, .. } => {
                record_nack(Self::PROTOCOL, &self.node, type_url, message);
            }
            Received::Ack { version } => {
                debug!(node = %self.node.node_id, type_url, %version, "ACK");
            }
            Received::Subscribe => {}
        }
        // A first request and a changed subscription are always answered
        // (even with a version the client once rejected: it asked anew);
        // otherwise only a changed set is.
        self.respond(type_url, outcome.first || outcome.changed)
            .into_iter()
            .collect()
    }

    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<DiscoveryResponse> {
        self.snapshot = snapshot;
        let mut subscribed: Vec<String> = self.stream.types().map(str::to_string).collect();
        subscribed.sort_by_key(|t| type_url::push_rank(t));
        subscribed
            .iter()
            .filter_map(|t| self.respond(t, false))
            .collect()
    }

    fn request_answer(request: &DiscoveryRequest) -> (&str, Option<&str>) {
        let error = request.error_detail.as_ref().map(|e| e.message.as_str());
        (&request.response_nonce, error)
    }

    fn sent(response: &DiscoveryResponse) -> Sent<'_> {
        Sent {
            type_url: &response.type_url,
            nonce: &response.nonce,
            version: &response.version_info,
            resources: response.resources.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::rpc::Status;

    use super::*;
    use crate::snapshot::{build, tests as fixtures};

    const HELLO: &str = "spiffe://example.org/service/hello";

    fn session() -> SotwSession {
        let node = fixtures::node(HELLO);
        SotwSession::new(node.clone(), build(&fixtures::mesh(), &node).into())
    }

    fn request(
        type_url: &str,
        names: &[&str],
        ack_of: Option<&DiscoveryResponse>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.to_string(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: ack_of.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: ack_of.map(|r| r.nonce.clone()).unwrap_or_default(),
            ..Default::default()
        }
    }

    fn only(mut responses: Vec<DiscoveryResponse>) -> DiscoveryResponse {
        assert_eq!(responses.len(), 1, "expected exactly one response");
        responses.remove(0)
    }

    /// A request with a nonce this stream never sent is ignored, and the
    /// next request naming nothing is still the first: the wildcard set, not
    /// zero clusters (which a SotW client reads as "delete everything").
    #[test]
    fn an_ignored_request_keeps_the_legacy_wildcard() {
        let mut s = session();
        let ignored = DiscoveryRequest {
            response_nonce: "unknown".into(),
            ..request(type_url::CLUSTER, &[], None)
        };
        assert!(s.on_request(ignored).is_empty());
        let first = only(s.on_request(request(type_url::CLUSTER, &[], None)));
        assert_eq!(first.resources.len(), 2);
    }

    #[test]
    fn wildcard_gets_everything_and_ack_gets_nothing() {
        let mut s = session();
        let first = only(s.on_request(request(type_url::CLUSTER, &[], None)));
        assert_eq!(first.resources.len(), 2);
        assert!(
            s.on_request(request(type_url::CLUSTER, &[], Some(&first)))
                .is_empty()
        );
        // Legacy wildcard survives the empty-names ACK.
        assert!(matches!(
            s.stream.subscription(type_url::CLUSTER),
            Some(meshward_contract::sotw::Subscription::Wildcard { .. })
        ));
    }

    #[test]
    fn explicit_names_and_star() {
        let mut s = session();
        let r = only(s.on_request(request(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            &["hello", "nope"],
            None,
        )));
        assert_eq!(r.resources.len(), 1);
        let r2 = only(s.on_request(request(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            &["hello", "*"],
            Some(&r),
        )));
        assert_eq!(r2.resources.len(), 2);
        // Names without "*" leave wildcard mode.
        let r3 = only(s.on_request(request(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            &["billing"],
            Some(&r2),
        )));
        assert_eq!(r3.resources.len(), 1);
    }

    #[test]
    fn empty_snapshot_type_still_answers_first_request() {
        let mut s = session();
        let r = only(s.on_request(request(type_url::LISTENER, &[], None)));
        assert!(r.resources.is_empty());
    }

    #[test]
    fn nack_is_not_resent_until_change() {
        let mesh = fixtures::mesh();
        let node = fixtures::node(HELLO);
        let mut s = SotwSession::new(node.clone(), build(&mesh, &node).into());
        let first = only(s.on_request(request(type_url::AGENT, &[], None)));
        let mut nack = request(type_url::AGENT, &[], Some(&first));
        nack.version_info = String::new();
        nack.error_detail = Some(Status {
            code: 3,
            message: "bad agent".into(),
            details: vec![],
        });
        assert!(s.on_request(nack).is_empty());
        // Same content rebuilt: nothing.
        assert!(s.on_snapshot(build(&mesh, &node).into()).is_empty());
        let mut changed = mesh.clone();
        if let Some(a) = changed.agents.get_mut("triage") {
            a.permissions.push("more".into());
        }
        let pushed = s.on_snapshot(build(&changed, &node).into());
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].type_url, type_url::AGENT);
    }

    #[test]
    fn stale_nonce_is_ignored() {
        let mut s = session();
        let first = only(s.on_request(request(type_url::CLUSTER, &[], None)));
        let mut stale = request(type_url::CLUSTER, &["hello"], Some(&first));
        stale.response_nonce = "not-a-nonce".into();
        assert!(s.on_request(stale).is_empty());
        assert!(matches!(
            s.stream.subscription(type_url::CLUSTER),
            Some(meshward_contract::sotw::Subscription::Wildcard { .. })
        ));
    }

    #[test]
    fn push_order_on_change() {
        let mesh = fixtures::mesh();
        let node = fixtures::node(HELLO);
        let mut s = SotwSession::new(node.clone(), build(&mesh, &node).into());
        for t in [
            type_url::AGENT,
            type_url::POLICY_BUNDLE,
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            type_url::CLUSTER,
        ] {
            let r = only(s.on_request(request(t, &[], None)));
            assert!(s.on_request(request(t, &[], Some(&r))).is_empty());
        }
        let mut changed = mesh.clone();
        changed.policy.revision = "r2".into();
        changed.services.retain(|name, _| name == "hello");
        if let Some(a) = changed.agents.get_mut("triage") {
            a.permissions.push("more".into());
        }
        let order: Vec<_> = s
            .on_snapshot(build(&changed, &node).into())
            .into_iter()
            .map(|r| r.type_url)
            .collect();
        assert_eq!(
            order,
            vec![
                type_url::CLUSTER,
                type_url::CLUSTER_LOAD_ASSIGNMENT,
                type_url::POLICY_BUNDLE,
                type_url::AGENT
            ]
        );
    }
}
