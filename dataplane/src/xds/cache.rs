//! The client's copy of what the control plane sent, one typed cache per
//! subscribed type, and the assembly of [`MeshState`] from them.
//!
//! The subscribed types are a registered list ([`Caches::default`]): adding
//! a resource type is one handler and one entry there, plus reading it in
//! [`Caches::state`]. A delta response is applied all-or-nothing: every
//! resource in it is validated first, and only if all pass are they stored
//! and the removals applied. So a NACKed response leaves the cache, and the
//! published state, exactly as they were.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use meshward_contract::type_url::{self, DATAPLANE_SETTINGS_NAME, POLICY_BUNDLE_NAME};

use super::handlers::{
    AgentHandler, ClusterHandler, EndpointHandler, Handler, PolicyHandler, SettingsHandler,
};
use crate::state::{MeshState, Upstream};

/// Validated resources of one type.
#[derive(Debug)]
pub struct TypeCache<H: Handler> {
    /// name → (version, validated item).
    resources: BTreeMap<String, (String, H::Item)>,
    /// A response of this type has been applied at least once.
    received: bool,
    /// `system_version_info` of the last applied response.
    system_version: String,
}

impl<H: Handler> Default for TypeCache<H> {
    fn default() -> Self {
        Self {
            resources: BTreeMap::new(),
            received: false,
            system_version: String::new(),
        }
    }
}

impl<H: Handler> TypeCache<H> {
    fn get(&self, name: &str) -> Option<&H::Item> {
        self.resources.get(name).map(|(_, item)| item)
    }

    fn items(&self) -> impl Iterator<Item = (&String, &H::Item)> {
        self.resources.iter().map(|(name, (_, item))| (name, item))
    }
}

/// A [`TypeCache`] of any handler, so the caches can be one list.
trait AnyCache: Send + Sync {
    fn type_url(&self) -> &'static str;
    /// Validates the whole response, then applies it; on any invalid
    /// resource nothing changes and the error lists every reason.
    fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), String>;
    /// name → version of everything held, for `initial_resource_versions`.
    fn versions(&self) -> HashMap<String, String>;
    fn received(&self) -> bool;
    fn system_version(&self) -> &str;
    fn as_any(&self) -> &dyn Any;
}

impl<H: Handler> AnyCache for TypeCache<H> {
    fn type_url(&self) -> &'static str {
        H::TYPE_URL
    }

    fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), String> {
        let mut updates = Vec::with_capacity(response.resources.len());
        let mut removals: Vec<&str> = response
            .removed_resources
            .iter()
            .map(String::as_str)
            .collect();
        let mut errors = Vec::new();
        for resource in &response.resources {
            match &resource.resource {
                // A named resource without a body means "does not exist".
                None => removals.push(&resource.name),
                Some(any) => match H::validate(&resource.name, any) {
                    Ok(item) => updates.push((&resource.name, &resource.version, item)),
                    Err(reason) => errors.push(format!(
                        "{} {:?}: {reason}",
                        type_url::short(H::TYPE_URL),
                        resource.name
                    )),
                },
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        for name in removals {
            self.resources.remove(name);
        }
        for (name, version, item) in updates {
            self.resources.insert(name.clone(), (version.clone(), item));
        }
        self.received = true;
        self.system_version = response.system_version_info.clone();
        Ok(())
    }

    fn versions(&self) -> HashMap<String, String> {
        self.resources
            .iter()
            .map(|(name, (version, _))| (name.clone(), version.clone()))
            .collect()
    }

    fn received(&self) -> bool {
        self.received
    }

    fn system_version(&self) -> &str {
        &self.system_version
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One cache per subscribed type, in subscription order.
pub struct Caches {
    caches: Vec<Box<dyn AnyCache>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.caches.iter().map(|c| type_url::short(c.type_url())))
            .finish()
    }
}

impl Default for Caches {
    /// The registry: every type the dataplane subscribes to, in the order
    /// it is requested (clusters before the endpoints that refer to them).
    fn default() -> Self {
        Caches {
            caches: vec![
                Box::new(TypeCache::<ClusterHandler>::default()),
                Box::new(TypeCache::<EndpointHandler>::default()),
                Box::new(TypeCache::<SettingsHandler>::default()),
                Box::new(TypeCache::<PolicyHandler>::default()),
                Box::new(TypeCache::<AgentHandler>::default()),
            ],
        }
    }
}

impl Caches {
    /// The subscribed type URLs, in the order they are requested.
    pub fn type_urls(&self) -> Vec<&'static str> {
        self.caches.iter().map(|c| c.type_url()).collect()
    }

    /// Applies one response to the cache of its type.
    pub fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), String> {
        match self
            .caches
            .iter_mut()
            .find(|c| c.type_url() == response.type_url)
        {
            Some(cache) => cache.apply(response),
            None => Err(format!(
                "type {:?} was not subscribed to",
                response.type_url
            )),
        }
    }

    /// What is held of `type_url`, for a reconnect.
    pub fn versions(&self, type_url: &str) -> HashMap<String, String> {
        self.caches
            .iter()
            .find(|c| c.type_url() == type_url)
            .map(|c| c.versions())
            .unwrap_or_default()
    }

    /// Every type has been received at least once.
    pub fn all_received(&self) -> bool {
        self.caches.iter().all(|c| c.received())
    }

    fn typed<H: Handler>(&self) -> &TypeCache<H> {
        self.caches
            .iter()
            .find_map(|c| c.as_any().downcast_ref::<TypeCache<H>>())
            .unwrap_or_else(|| unreachable!("{} is not in the registry", H::TYPE_URL))
    }

    /// The state to publish, or `None` while not warm: some type has not
    /// arrived yet, or there is no `default` policy bundle (without policy
    /// the request path can only deny, so it must not look ready).
    pub fn state(&self) -> Option<MeshState> {
        if !self.all_received() {
            return None;
        }
        let policy = Arc::clone(self.typed::<PolicyHandler>().get(POLICY_BUNDLE_NAME)?);
        let endpoints = self.typed::<EndpointHandler>();
        let clusters = self
            .typed::<ClusterHandler>()
            .items()
            .map(|(name, service)| {
                let upstream = Upstream {
                    service: service.clone(),
                    endpoints: endpoints.get(name).map(|e| e.to_vec()).unwrap_or_default(),
                };
                (name.clone(), Arc::new(upstream))
            })
            .collect();
        let agents = self
            .typed::<AgentHandler>()
            .items()
            .map(|(name, agent)| (name.clone(), Arc::clone(agent)))
            .collect();
        let versions = self
            .caches
            .iter()
            .map(|c| (c.type_url().to_string(), c.system_version().to_string()))
            .collect();
        // A control plane that sends no settings leaves the defaults.
        let listeners = self
            .typed::<SettingsHandler>()
            .get(DATAPLANE_SETTINGS_NAME)
            .copied()
            .unwrap_or_default();
        Some(MeshState {
            clusters,
            agents,
            policy,
            versions,
            listeners,
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;
    use meshward_contract::pb::v1 as mw;
    use prost::Message;

    use super::*;
    use crate::state::ListenerLimits;

    const GOOD: &str = "package meshward.authz\n\ndefault decision := false\n";

    fn response(
        type_url: &str,
        resources: Vec<(&str, Any)>,
        removed: &[&str],
    ) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url.to_string(),
            system_version_info: "v".into(),
            nonce: "n".into(),
            resources: resources
                .into_iter()
                .map(|(name, any)| Resource {
                    name: name.to_string(),
                    version: format!("{name}-v"),
                    resource: Some(any),
                    ..Default::default()
                })
                .collect(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn bundle(source: &str) -> Any {
        let bundle = mw::PolicyBundle {
            name: POLICY_BUNDLE_NAME.into(),
            revision: "r".into(),
            modules: vec![mw::RegoModule {
                path: "authz.rego".into(),
                source: source.into(),
            }],
            data_json: "{}".into(),
            decision: "data.meshward.authz.decision".into(),
        };
        Any {
            type_url: type_url::POLICY_BUNDLE.into(),
            value: bundle.encode_to_vec(),
        }
    }

    fn agent(id: &str) -> Any {
        Any {
            type_url: type_url::AGENT.into(),
            value: mw::Agent {
                name: "a".into(),
                spiffe_id: id.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        }
    }

    fn warm_without_policy() -> Caches {
        let mut c = Caches::default();
        for t in [
            ClusterHandler::TYPE_URL,
            EndpointHandler::TYPE_URL,
            SettingsHandler::TYPE_URL,
            AgentHandler::TYPE_URL,
        ] {
            assert_eq!(c.apply(&response(t, vec![], &[])), Ok(()));
        }
        c
    }

    #[test]
    fn not_warm_until_every_type_and_a_policy_bundle() {
        let mut c = warm_without_policy();
        assert!(c.state().is_none());
        assert_eq!(
            c.apply(&response(PolicyHandler::TYPE_URL, vec![], &[])),
            Ok(())
        );
        assert!(c.all_received());
        assert!(c.state().is_none(), "warm without a policy bundle");
        assert_eq!(
            c.apply(&response(
                PolicyHandler::TYPE_URL,
                vec![("default", bundle(GOOD))],
                &[]
            )),
            Ok(())
        );
        assert!(c.state().is_some());
    }

    #[test]
    fn listener_limits_come_from_the_settings_resource_or_default() {
        let mut c = warm_without_policy();
        assert_eq!(
            c.apply(&response(
                PolicyHandler::TYPE_URL,
                vec![("default", bundle(GOOD))],
                &[]
            )),
            Ok(())
        );
        // The control plane sent no settings: defaults.
        let state = c.state().expect("warm");
        assert_eq!(state.listeners, ListenerLimits::default());
        let settings = |max_connections| Any {
            type_url: SettingsHandler::TYPE_URL.into(),
            value: mw::DataplaneSettings {
                name: "default".into(),
                listeners: Some(mw::ListenerLimits {
                    max_connections,
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        };
        assert_eq!(
            c.apply(&response(
                SettingsHandler::TYPE_URL,
                vec![("default", settings(7))],
                &[]
            )),
            Ok(())
        );
        assert_eq!(c.state().expect("warm").listeners.max_connections, 7);
        // Out of range: NACKed with the field, the last good value stays.
        let nack = c.apply(&response(
            SettingsHandler::TYPE_URL,
            vec![(
                "default",
                Any {
                    type_url: SettingsHandler::TYPE_URL.into(),
                    value: mw::DataplaneSettings {
                        name: "default".into(),
                        listeners: Some(mw::ListenerLimits {
                            max_request_headers_bytes: 10,
                            ..Default::default()
                        }),
                    }
                    .encode_to_vec(),
                },
            )],
            &[],
        ));
        assert!(
            nack.as_ref()
                .is_err_and(|e| e.contains("listeners.max_request_headers_kb")),
            "{nack:?}"
        );
        assert_eq!(c.state().expect("warm").listeners.max_connections, 7);
    }

    #[test]
    fn a_rejected_response_changes_nothing() {
        let mut c = warm_without_policy();
        let a = "spiffe://example.org/agent/a";
        let b = "spiffe://example.org/agent/b";
        assert_eq!(
            c.apply(&response(AgentHandler::TYPE_URL, vec![(a, agent(a))], &[])),
            Ok(())
        );
        // One good, one bad resource and a removal: all or nothing.
        let bad = response(
            AgentHandler::TYPE_URL,
            vec![(b, agent(b)), ("x", agent(a))],
            &[a],
        );
        let err = c.apply(&bad);
        assert!(
            err.as_ref().is_err_and(|e| e.contains("Agent \"x\"")),
            "{err:?}"
        );
        assert_eq!(
            c.versions(AgentHandler::TYPE_URL)
                .keys()
                .collect::<Vec<_>>(),
            vec![a]
        );

        let broken = response(
            PolicyHandler::TYPE_URL,
            vec![("default", bundle("package {{{"))],
            &[],
        );
        assert!(c.apply(&broken).is_err());
        assert!(c.versions(PolicyHandler::TYPE_URL).is_empty());
    }

    #[test]
    fn removals_and_empty_bodies_delete() {
        let mut c = warm_without_policy();
        let a = "spiffe://example.org/agent/a";
        let b = "spiffe://example.org/agent/b";
        assert_eq!(
            c.apply(&response(
                AgentHandler::TYPE_URL,
                vec![(a, agent(a)), (b, agent(b))],
                &[]
            )),
            Ok(())
        );
        let mut r = response(AgentHandler::TYPE_URL, vec![], &[a]);
        r.resources.push(Resource {
            name: b.into(),
            ..Default::default()
        });
        assert_eq!(c.apply(&r), Ok(()));
        assert!(c.versions(AgentHandler::TYPE_URL).is_empty());
    }

    #[test]
    fn unsubscribed_type_is_rejected() {
        let mut c = Caches::default();
        assert!(
            c.apply(&response("type.googleapis.com/x.Y", vec![], &[]))
                .is_err()
        );
    }
}
