//! Delta (incremental) ADS (`DeltaAggregatedResources`).
//!
//! Per type URL the session keeps the subscription (wildcard and/or explicit
//! names) and what the client holds: name → version, seeded from
//! `initial_resource_versions` on a reconnect and updated with every resource
//! sent. A push carries only resources whose version differs from what the
//! client holds, plus `removed_resources` for what it holds that no longer
//! exists. A NACKed resource is recorded as held at the rejected version, so
//! it is sent again only when its content changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use sha2::{Digest, Sha256};
use tracing::debug;

use super::sotw::WILDCARD;
use super::trace::Sent;
use super::{Nonces, Session, record_nack};
use crate::snapshot::{NodeIdentity, Snapshot, type_url};

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    /// Explicitly subscribed names (without `*`).
    names: BTreeSet<String>,
    /// What the client holds (or was last sent, or rejected): name → version.
    held: HashMap<String, String>,
    /// Explicitly subscribed names already reported as not existing.
    told_absent: BTreeSet<String>,
}

impl TypeState {
    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// One delta ADS stream's protocol state.
#[derive(Debug)]
pub struct DeltaSession {
    node: NodeIdentity,
    snapshot: Arc<Snapshot>,
    types: BTreeMap<String, TypeState>,
    nonces: Nonces,
}

impl DeltaSession {
    /// The diff between what the client holds and the snapshot for
    /// `type_url`, or `None` when there is nothing to say (unless `force`:
    /// the first request of a type is always answered, so a client learns the
    /// type is empty instead of waiting for a timeout).
    fn respond(&mut self, type_url: &str, force: bool) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let mut resources = Vec::new();
        for (name, resource) in self.snapshot.resources(type_url) {
            if state.covers(name) && state.held.get(name) != Some(&resource.version) {
                resources.push(Resource {
                    name: name.to_string(),
                    version: resource.version.clone(),
                    resource: Some(resource.resource.clone()),
                    ..Default::default()
                });
                state
                    .held
                    .insert(name.to_string(), resource.version.clone());
                state.told_absent.remove(name);
            }
        }
        let mut removed: BTreeSet<String> = state
            .held
            .keys()
            .filter(|name| self.snapshot.get(type_url, name).is_none())
            .cloned()
            .collect();
        for name in &removed {
            state.held.remove(name);
        }
        for name in &state.names {
            if self.snapshot.get(type_url, name).is_none() && !state.told_absent.contains(name) {
                removed.insert(name.clone());
            }
        }
        for name in &removed {
            if state.names.contains(name) {
                state.told_absent.insert(name.clone());
            }
        }
        if resources.is_empty() && removed.is_empty() && !force {
            return None;
        }
        let mut hasher = Sha256::new();
        for (name, resource) in self.snapshot.resources(type_url) {
            if state.covers(name) {
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update(resource.version.as_bytes());
                hasher.update([b'\n']);
            }
        }
        Some(DeltaDiscoveryResponse {
            system_version_info: hex::encode(hasher.finalize()),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed.into_iter().collect(),
            nonce: self.nonces.next(),
            ..Default::default()
        })
    }
}

impl Session for DeltaSession {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const PROTOCOL: &'static str = "delta";

    fn new(node: NodeIdentity, snapshot: Arc<Snapshot>) -> Self {
        Self {
            node,
            snapshot,
            types: BTreeMap::new(),
            nonces: Nonces::default(),
        }
    }

    fn request_node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn request_type(request: &DeltaDiscoveryRequest) -> &str {
        &request.type_url
    }

    fn request_type_mut(request: &mut DeltaDiscoveryRequest) -> &mut String {
        &mut request.type_url
    }

    fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Vec<DeltaDiscoveryResponse> {
        let type_url = request.type_url.clone();
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();

        if !request.response_nonce.is_empty() {
            match &request.error_detail {
                Some(status) => {
                    // What was sent stays recorded in `held`: the rejected
                    // versions are not resent, a changed resource is.
                    record_nack(Self::PROTOCOL, &self.node, &type_url, &status.message);
                }
                None => {
                    debug!(node = %self.node.node_id, %type_url, nonce = %request.response_nonce, "ACK");
                }
            }
        }

        if first {
            // A reconnecting client says what it already holds; the first
            // request without names is a (legacy) wildcard subscription.
            state.held = request.initial_resource_versions;
            state.wildcard = request.resource_names_subscribe.is_empty();
        }
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                state.wildcard = true;
                continue;
            }
            if !first {
                // The client may have forgotten it: send it again.
                state.held.remove(&name);
            }
            state.told_absent.remove(&name);
            state.names.insert(name);
        }
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                state.wildcard = false;
                continue;
            }
            state.names.remove(&name);
            state.told_absent.remove(&name);
        }
        // Forget what the client no longer asks for (it drops it itself).
        let TypeState {
            held,
            wildcard,
            names,
            ..
        } = state;
        held.retain(|name, _| *wildcard || names.contains(name));

        self.respond(&type_url, first).into_iter().collect()
    }

    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<DeltaDiscoveryResponse> {
        self.snapshot = snapshot;
        let mut subscribed: Vec<String> = self.types.keys().cloned().collect();
        subscribed.sort_by_key(|t| type_url::push_rank(t));
        subscribed
            .iter()
            .filter_map(|t| self.respond(t, false))
            .collect()
    }

    fn request_answer(request: &DeltaDiscoveryRequest) -> (&str, Option<&str>) {
        let error = request.error_detail.as_ref().map(|e| e.message.as_str());
        (&request.response_nonce, error)
    }

    fn sent(response: &DeltaDiscoveryResponse) -> Sent<'_> {
        Sent {
            type_url: &response.type_url,
            nonce: &response.nonce,
            version: &response.system_version_info,
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
    const TRIAGE: &str = "spiffe://example.org/agent/triage";

    fn session() -> DeltaSession {
        let node = fixtures::node(HELLO);
        DeltaSession::new(node.clone(), build(&fixtures::mesh(), &node).into())
    }

    fn subscribe(type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ack(response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        }
    }

    fn only(mut responses: Vec<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
        assert_eq!(responses.len(), 1, "expected exactly one response");
        responses.remove(0)
    }

    fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn wildcard_initial_then_ack_is_quiet() {
        let mut s = session();
        let r = only(s.on_request(subscribe(type_url::AGENT, &[])));
        assert_eq!(
            names(&r),
            vec!["spiffe://example.org/agent/billing-bot", TRIAGE]
        );
        assert!(s.on_request(ack(&r)).is_empty());
        assert!(
            s.on_snapshot(build(&fixtures::mesh(), &fixtures::node(HELLO)).into())
                .is_empty()
        );
    }

    #[test]
    fn only_changed_resources_and_removals_are_pushed() {
        let mesh = fixtures::mesh();
        let node = fixtures::node(HELLO);
        let mut s = DeltaSession::new(node.clone(), build(&mesh, &node).into());
        let r = only(s.on_request(subscribe(type_url::AGENT, &[])));
        assert!(s.on_request(ack(&r)).is_empty());

        let mut changed = mesh.clone();
        if let Some(a) = changed.agents.get_mut("triage") {
            a.permissions.push("more".into());
        }
        changed.agents.remove("billing-bot");
        let r = only(s.on_snapshot(build(&changed, &node).into()));
        assert_eq!(names(&r), vec![TRIAGE]);
        assert_eq!(
            r.removed_resources,
            vec!["spiffe://example.org/agent/billing-bot"]
        );
    }

    #[test]
    fn nack_is_not_resent_until_change() {
        let mesh = fixtures::mesh();
        let node = fixtures::node(HELLO);
        let mut s = DeltaSession::new(node.clone(), build(&mesh, &node).into());
        let r = only(s.on_request(subscribe(type_url::POLICY_BUNDLE, &[])));
        let mut nack = ack(&r);
        nack.error_detail = Some(Status {
            code: 3,
            message: "rego parse error".into(),
            details: vec![],
        });
        assert!(s.on_request(nack).is_empty());
        assert!(s.on_snapshot(build(&mesh, &node).into()).is_empty());
        let mut fixed = mesh.clone();
        fixed.policy.revision = "r2".into();
        let r = only(s.on_snapshot(build(&fixed, &node).into()));
        assert_eq!(names(&r), vec!["default"]);
    }

    #[test]
    fn initial_resource_versions_suppress_unchanged_and_remove_gone() {
        let mut s = session();
        let snapshot = build(&fixtures::mesh(), &fixtures::node(HELLO));
        let mut req = subscribe(type_url::CLUSTER, &[]);
        req.initial_resource_versions = snapshot
            .resources(type_url::CLUSTER)
            .map(|(n, r)| (n.to_string(), r.version.clone()))
            .collect();
        req.initial_resource_versions
            .insert("deleted-service".into(), "old".into());
        if let Some(v) = req.initial_resource_versions.get_mut("billing") {
            *v = "stale".into();
        }
        let r = only(s.on_request(req));
        assert_eq!(names(&r), vec!["billing"]);
        assert_eq!(r.removed_resources, vec!["deleted-service"]);
    }

    #[test]
    fn explicit_subscription_absent_name_is_reported_once() {
        let mut s = session();
        let r = only(s.on_request(subscribe(type_url::CLUSTER, &["hello", "ghost"])));
        assert_eq!(names(&r), vec!["hello"]);
        assert_eq!(r.removed_resources, vec!["ghost"]);
        assert!(s.on_request(ack(&r)).is_empty());
        // Re-subscribing to a held name resends it.
        let r = only(s.on_request(subscribe(type_url::CLUSTER, &["hello"])));
        assert_eq!(names(&r), vec!["hello"]);
        // Unsubscribe then a change: nothing for the dropped name.
        let mut unsub = subscribe(type_url::CLUSTER, &[]);
        unsub.resource_names_unsubscribe = vec!["hello".into()];
        assert!(s.on_request(unsub).is_empty());
    }

    #[test]
    fn agent_node_never_sees_other_agents_even_when_asking() {
        let node = fixtures::node(TRIAGE);
        let mut s = DeltaSession::new(node.clone(), build(&fixtures::mesh(), &node).into());
        let r = only(s.on_request(subscribe(
            type_url::AGENT,
            &["spiffe://example.org/agent/billing-bot", TRIAGE],
        )));
        assert_eq!(names(&r), vec![TRIAGE]);
        assert_eq!(
            r.removed_resources,
            vec!["spiffe://example.org/agent/billing-bot"]
        );
    }
}
