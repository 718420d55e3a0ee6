//! State-of-the-world ADS (`StreamAggregatedResources`).
//!
//! Per type URL the session remembers the subscription (wildcard or explicit
//! names), the version and nonce of the last response, and the version the
//! client last rejected. A response carries every subscribed resource of the
//! type; its `version_info` is a hash of their names and versions, so it
//! changes exactly when the set the client should hold changes.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use sha2::{Digest, Sha256};
use tracing::debug;

use super::{Nonces, Session, record_nack};
use crate::snapshot::{NodeIdentity, Snapshot, type_url};

/// The explicit wildcard resource name.
pub const WILDCARD: &str = "*";

#[derive(Debug, Default)]
struct TypeState {
    /// Subscribed to every resource of the type.
    wildcard: bool,
    /// Wildcard because the first request named nothing (legacy wildcard):
    /// later requests that name nothing keep it.
    legacy_wildcard: bool,
    /// Explicitly subscribed names (without `*`).
    names: BTreeSet<String>,
    /// `(version_info, nonce)` of the last response sent.
    sent: Option<(String, String)>,
    /// The version the client NACKed; never sent to it again.
    nacked_version: Option<String>,
}

/// One SotW ADS stream's protocol state.
#[derive(Debug)]
pub struct SotwSession {
    node: NodeIdentity,
    snapshot: Snapshot,
    types: BTreeMap<String, TypeState>,
    nonces: Nonces,
}

impl SotwSession {
    /// Builds the response for `type_url` if the client should get one:
    /// always after its first request (`force`), otherwise only when the
    /// subscribed set changed since the last response and is not the version
    /// the client rejected.
    fn respond(&mut self, type_url: &str, force: bool) -> Option<DiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let resources: Vec<_> = self
            .snapshot
            .resources(type_url)
            .filter(|(name, _)| state.wildcard || state.names.contains(*name))
            .collect();
        let mut hasher = Sha256::new();
        for (name, resource) in &resources {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(resource.version.as_bytes());
            hasher.update([b'\n']);
        }
        let version = hex::encode(hasher.finalize());
        let unchanged = state.sent.as_ref().is_some_and(|(v, _)| *v == version);
        if (unchanged && !force) || state.nacked_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        let nonce = self.nonces.next();
        state.sent = Some((version.clone(), nonce.clone()));
        Some(DiscoveryResponse {
            version_info: version,
            resources: resources
                .into_iter()
                .map(|(_, r)| r.resource.clone())
                .collect(),
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        })
    }
}

impl Session for SotwSession {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: &'static str = "sotw";

    fn new(node: NodeIdentity, snapshot: Snapshot) -> Self {
        Self {
            node,
            snapshot,
            types: BTreeMap::new(),
            nonces: Nonces::default(),
        }
    }

    fn request_node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn set_node_id(&mut self, node_id: String) {
        self.node.node_id = node_id;
    }

    fn on_request(&mut self, request: DiscoveryRequest) -> Vec<DiscoveryResponse> {
        let type_url = request.type_url.clone();
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();

        if !request.response_nonce.is_empty() {
            let Some((sent_version, sent_nonce)) = state.sent.clone() else {
                debug!(node = %self.node.node_id, %type_url, "nonce for a type never sent; ignored");
                return Vec::new();
            };
            if sent_nonce != request.response_nonce {
                // A newer response is in flight; this request is stale.
                debug!(node = %self.node.node_id, %type_url, nonce = %request.response_nonce, "stale nonce; ignored");
                return Vec::new();
            }
            match &request.error_detail {
                Some(status) => {
                    record_nack(Self::PROTOCOL, &self.node, &type_url, &status.message);
                    state.nacked_version = Some(sent_version);
                }
                None => {
                    debug!(node = %self.node.node_id, %type_url, version = %request.version_info, "ACK");
                }
            }
        }

        let mut names: BTreeSet<String> = request.resource_names.into_iter().collect();
        if names.remove(WILDCARD) {
            state.wildcard = true;
            state.legacy_wildcard = false;
        } else if names.is_empty() && (first || state.legacy_wildcard) {
            state.wildcard = true;
            state.legacy_wildcard = true;
        } else {
            state.wildcard = false;
            state.legacy_wildcard = false;
        }
        state.names = names;
        self.respond(&type_url, first).into_iter().collect()
    }

    fn on_snapshot(&mut self, snapshot: Snapshot) -> Vec<DiscoveryResponse> {
        self.snapshot = snapshot;
        let mut subscribed: Vec<String> = self.types.keys().cloned().collect();
        subscribed.sort_by_key(|t| type_url::push_rank(t));
        subscribed
            .iter()
            .filter_map(|t| self.respond(t, false))
            .collect()
    }

    fn response_type(response: &DiscoveryResponse) -> &str {
        &response.type_url
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
        SotwSession::new(node.clone(), build(&fixtures::mesh(), &node))
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
        assert!(s.types[type_url::CLUSTER].wildcard);
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
        let mut s = SotwSession::new(node.clone(), build(&mesh, &node));
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
        assert!(s.on_snapshot(build(&mesh, &node)).is_empty());
        let mut changed = mesh.clone();
        if let Some(a) = changed.agents.get_mut("triage") {
            a.permissions.push("more".into());
        }
        let pushed = s.on_snapshot(build(&changed, &node));
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
        assert!(s.types[type_url::CLUSTER].wildcard);
    }

    #[test]
    fn push_order_on_change() {
        let mesh = fixtures::mesh();
        let node = fixtures::node(HELLO);
        let mut s = SotwSession::new(node.clone(), build(&mesh, &node));
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
            .on_snapshot(build(&changed, &node))
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
