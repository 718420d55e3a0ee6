//! One snapshot per *view* of the mesh, shared by every stream that has it.
//!
//! A snapshot depends on the mesh and on what the node is (its [`NodeKind`],
//! its [`ClientKind`] and, for Envoys, where its listeners bind), not on
//! which of many nodes with that view asks. Without sharing, a model change
//! on a control plane with 10,000 streams built and hashed 10,000 copies of
//! the same resources, and each stream held its own copy; with it, a change
//! costs one build per view, and streams hold an `Arc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{ClientKind, NodeIdentity, NodeKind, Snapshot, build, classify, envoy::EnvoyNode};
use crate::config::Mesh;

/// Everything besides the mesh that [`build`] reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct View {
    kind: NodeKind,
    client: ClientKind,
    envoy: EnvoyNode,
}

/// Snapshots of the current mesh, by view. Holding the mesh's `Arc` (not
/// its address) means a new mesh can never be mistaken for the cached one.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    state: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    mesh: Option<Arc<Mesh>>,
    views: HashMap<View, Arc<Snapshot>>,
}

impl SnapshotCache {
    /// The snapshot of `mesh` for `node`, built at most once per view and
    /// mesh (two streams racing on a miss may both build; the first stored
    /// wins, and both are equal). Asking with another mesh drops every
    /// snapshot of the one before: streams ask with the latest mesh they
    /// were told of, so only a stream that raced a change asks with an
    /// older one, and that costs one rebuild, never a wrong answer.
    pub fn get(&self, mesh: &Arc<Mesh>, node: &NodeIdentity) -> Arc<Snapshot> {
        let view = View {
            kind: classify(mesh, &node.spiffe_id),
            client: node.client,
            envoy: node.envoy.clone(),
        };
        if let Some(hit) = self.with_mesh(mesh, |views| views.get(&view).cloned()) {
            return hit;
        }
        // Built outside the lock, so a slow view does not hold up the rest.
        let built = Arc::new(build(mesh, node));
        self.with_mesh(mesh, |views| Arc::clone(views.entry(view).or_insert(built)))
    }

    /// Runs `f` on the snapshots of `mesh`, first dropping those of any
    /// other mesh.
    fn with_mesh<T>(
        &self,
        mesh: &Arc<Mesh>,
        f: impl FnOnce(&mut HashMap<View, Arc<Snapshot>>) -> T,
    ) -> T {
        // A panic elsewhere cannot leave the map half-updated: every
        // change is one insert or one clear.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.mesh.as_ref().is_some_and(|m| Arc::ptr_eq(m, mesh)) {
            state.mesh = Some(Arc::clone(mesh));
            state.views.clear();
        }
        f(&mut state.views)
    }

    /// Number of views cached for the current mesh.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .views
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests as fixtures;

    #[test]
    fn nodes_with_one_view_share_one_snapshot_until_the_mesh_changes() {
        let cache = SnapshotCache::default();
        let mesh = Arc::new(fixtures::mesh());
        let gateway = |n: &str| NodeIdentity {
            spiffe_id: format!("spiffe://example.org/gateway/{n}"),
            node_id: n.to_string(),
            client: ClientKind::Envoy,
            envoy: EnvoyNode::default(),
        };
        let a = cache.get(&mesh, &gateway("a"));
        let b = cache.get(&mesh, &gateway("b"));
        assert!(Arc::ptr_eq(&a, &b), "two unregistered Envoys share a view");
        assert_eq!(*a, build(&mesh, &gateway("a")));

        // Another kind of client is another view, with other resources.
        let mut meshward = gateway("a");
        meshward.client = ClientKind::Meshward;
        let m = cache.get(&mesh, &meshward);
        assert_ne!(*m, *a);
        assert_eq!(cache.len(), 2);

        // Each agent is its own view: one never gets another's `Agent`.
        let triage = cache.get(&mesh, &fixtures::node("spiffe://example.org/agent/triage"));
        let bot = cache.get(
            &mesh,
            &fixtures::node("spiffe://example.org/agent/billing-bot"),
        );
        assert_ne!(*triage, *bot);
        assert_eq!(
            *bot,
            build(
                &mesh,
                &fixtures::node("spiffe://example.org/agent/billing-bot")
            )
        );
        assert_eq!(cache.len(), 4);

        // A new mesh (even an equal one) is never answered from the old.
        let next = Arc::new(fixtures::mesh());
        let c = cache.get(&next, &gateway("a"));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, *a);
        assert_eq!(cache.len(), 1);
    }
}
