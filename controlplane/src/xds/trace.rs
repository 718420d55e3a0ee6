//! The xDS push as a trace: one `xds.push` span per model the server
//! pushes, and under it one `xds.deliver` span per stream and type, from
//! the response until the node ACKs or NACKs it.
//!
//! A push has no request to hang a trace on, so the root is made by the
//! first stream that sees the new model ([`PushTracer::push`]); every other
//! stream that sees the same model finds it there and parents its
//! deliveries under it. The root ends when the next model supersedes it or
//! [`PUSH_WINDOW`] after it began, whichever comes first; its recorded end
//! is the last answer it got by then (or the moment it ends, if a delivery
//! is still open), so a push that every node ACKed in 5 ms lasts 5 ms. A
//! delivery still open when its root ends keeps going and ends on its own.
//!
//! State is bounded: the tracer holds one push, each stream at most one
//! open delivery per type ([`Deliveries`]). A newer response of a type ends
//! the open delivery as `superseded` (a SotW client answers only the latest
//! nonce), and a stream that closes ends its deliveries as `abandoned`.
//! With tracing off nothing is made or locked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use meshward_telemetry::{HopSpan, SpanKind, Tracing};
use tokio::task::JoinHandle;

use crate::config::Mesh;
use crate::snapshot::NodeIdentity;

/// How long a push's root waits for streams to pick up its model and nodes
/// to answer before it ends anyway.
pub const PUSH_WINDOW: Duration = Duration::from_secs(10);

/// Makes each model's `xds.push` root; shared by every stream of a server
/// (and, through the control plane, across xDS restarts).
#[derive(Debug)]
pub(crate) struct PushTracer {
    tracing: Tracing,
    window: Duration,
    current: Mutex<Current>,
}

#[derive(Debug, Default)]
struct Current {
    /// Models pushed so far; the current one's number.
    revision: u64,
    mesh: Option<Arc<Mesh>>,
    push: Weak<Push>,
    /// Ends the current push after the window; it holds the push until
    /// then (or until aborted when a newer model supersedes it).
    timer: Option<JoinHandle<()>>,
}

impl PushTracer {
    pub(crate) fn new(tracing: Tracing) -> Self {
        Self::with_window(tracing, PUSH_WINDOW)
    }

    pub(crate) fn with_window(tracing: Tracing, window: Duration) -> Self {
        Self {
            tracing,
            window,
            current: Mutex::default(),
        }
    }

    /// The push of `mesh`, begun by the first stream to ask. `None` when
    /// tracing is off, when `mesh` is no longer the latest model (`latest`
    /// is read under the lock, so a stream that raced a newer model cannot
    /// supersede it), or when this model's root has already ended (a stream
    /// that took longer than the window to pick it up goes untraced).
    pub(crate) fn push(
        &self,
        mesh: &Arc<Mesh>,
        latest: impl FnOnce() -> Arc<Mesh>,
    ) -> Option<Arc<Push>> {
        if !self.tracing.is_on() {
            return None;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.mesh.as_ref().is_some_and(|m| Arc::ptr_eq(m, mesh)) {
            return current.push.upgrade().filter(|p| !p.ended());
        }
        if !Arc::ptr_eq(mesh, &latest()) {
            return None;
        }
        if let Some(older) = current.push.upgrade() {
            older.end(Ended::Superseded);
        }
        if let Some(timer) = current.timer.take() {
            timer.abort();
        }
        current.revision += 1;
        let mut root = self.tracing.root(SpanKind::Internal, "xds.push");
        root.set("meshward.config_revision", current.revision as i64);
        root.set("meshward.policy_revision", mesh.policy.revision.clone());
        root.set("meshward.services", mesh.services.len() as i64);
        root.set("meshward.agents", mesh.agents.len() as i64);
        let push = Arc::new(Push {
            tracing: self.tracing.clone(),
            started: SystemTime::now(),
            state: Mutex::new(PushState {
                root: Some(root),
                ..PushState::default()
            }),
        });
        current.mesh = Some(Arc::clone(mesh));
        current.push = Arc::downgrade(&push);
        // The root must end even if no other model ever comes.
        let held = Arc::clone(&push);
        let window = self.window;
        current.timer = Some(tokio::spawn(async move {
            tokio::time::sleep(window).await;
            held.end(Ended::Window);
        }));
        Some(push)
    }
}

/// Why a push's root ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Superseded,
    Window,
}

/// One model's push: the root span and what its deliveries reported.
#[derive(Debug)]
pub(crate) struct Push {
    tracing: Tracing,
    started: SystemTime,
    state: Mutex<PushState>,
}

#[derive(Debug, Default)]
struct PushState {
    /// `None` once ended.
    root: Option<HopSpan>,
    deliveries: u64,
    open: u64,
    nacks: u64,
    last_answer: Option<SystemTime>,
}

impl Push {
    fn state(&self) -> std::sync::MutexGuard<'_, PushState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ended(&self) -> bool {
        self.state().root.is_none()
    }

    /// Ends the root (once): at the last answer when every delivery was
    /// answered, else now.
    fn end(&self, why: Ended) {
        let mut state = self.state();
        let Some(mut root) = state.root.take() else {
            return;
        };
        root.set(
            "xds.push.ended",
            match why {
                Ended::Superseded => "superseded",
                Ended::Window => "window",
            },
        );
        root.set("xds.deliveries", state.deliveries as i64);
        root.set("xds.unanswered", state.open as i64);
        root.set("xds.nacks", state.nacks as i64);
        if state.open == 0 {
            root.end_at(state.last_answer.unwrap_or(self.started));
        } else {
            root.end();
        }
    }

    /// A child span of the root, or none once the root has ended.
    fn deliver(&self) -> HopSpan {
        let mut state = self.state();
        let Some(root) = &state.root else {
            return HopSpan::none();
        };
        let span = self.tracing.child(root, SpanKind::Producer, "xds.deliver");
        if span.is_recording() {
            state.deliveries += 1;
            state.open += 1;
        }
        span
    }

    fn answered(&self, result: DeliveryResult) {
        let mut state = self.state();
        state.open = state.open.saturating_sub(1);
        if result == DeliveryResult::Nack {
            state.nacks += 1;
        }
        state.last_answer = Some(SystemTime::now());
    }
}

/// How a delivery ended (`xds.result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeliveryResult {
    Ack,
    Nack,
    /// A newer response of the same type was sent before the answer.
    Superseded,
    /// The stream closed before the answer.
    Abandoned,
}

impl DeliveryResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Nack => "nack",
            Self::Superseded => "superseded",
            Self::Abandoned => "abandoned",
        }
    }
}

/// What the trace records of a response sent on a stream.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub type_url: &'a str,
    pub nonce: &'a str,
    /// `version_info` (SotW) or `system_version_info` (delta).
    pub version: &'a str,
    pub resources: usize,
}

/// One stream's open deliveries, at most one per type. Dropping it (the
/// stream ended) ends them as `abandoned`.
#[derive(Debug)]
pub(crate) struct Deliveries {
    protocol: &'static str,
    open: HashMap<String, Delivery>,
}

#[derive(Debug)]
struct Delivery {
    span: HopSpan,
    nonce: String,
    push: Arc<Push>,
}

impl Delivery {
    fn end(self, result: DeliveryResult, error: Option<&str>) {
        let Delivery { mut span, push, .. } = self;
        span.set("xds.result", result.as_str());
        if let Some(message) = error {
            span.set("xds.error", message.to_string());
            span.set_error(message.to_string());
        }
        span.end();
        // After the span ended, so the root never ends before its child.
        push.answered(result);
    }
}

impl Deliveries {
    pub(crate) fn new(protocol: &'static str) -> Self {
        Self {
            protocol,
            open: HashMap::new(),
        }
    }

    /// A response is about to be sent to `node`; `push` is the model's push
    /// when the response is part of one. An open delivery of the same type
    /// is superseded.
    pub(crate) fn sent(&mut self, push: Option<&Arc<Push>>, node: &NodeIdentity, sent: Sent<'_>) {
        if push.is_none() && self.open.is_empty() {
            return;
        }
        if let Some(older) = self.open.remove(sent.type_url) {
            older.end(DeliveryResult::Superseded, None);
        }
        let Some(push) = push else {
            return;
        };
        let mut span = push.deliver();
        if !span.is_recording() {
            // Not sampled, or the root ended: nothing to wait for.
            return;
        }
        span.set("meshward.node", node.node_id.clone());
        span.set("meshward.node_spiffe_id", node.spiffe_id.clone());
        span.set("xds.protocol", self.protocol);
        span.set("xds.type_url", sent.type_url.to_string());
        span.set("xds.version", sent.version.to_string());
        span.set("xds.nonce", sent.nonce.to_string());
        span.set("xds.resources", sent.resources as i64);
        self.open.insert(
            sent.type_url.to_string(),
            Delivery {
                span,
                nonce: sent.nonce.to_string(),
                push: Arc::clone(push),
            },
        );
    }

    /// A request answered `nonce` of `type_url`: an ACK, or a NACK with the
    /// client's `error`. Answers to anything but the open delivery's nonce
    /// are not this trace's business.
    pub(crate) fn answered(&mut self, type_url: &str, nonce: &str, error: Option<&str>) {
        if nonce.is_empty() || self.open.get(type_url).is_none_or(|d| d.nonce != nonce) {
            return;
        }
        if let Some(delivery) = self.open.remove(type_url) {
            match error {
                Some(message) => delivery.end(DeliveryResult::Nack, Some(message)),
                None => delivery.end(DeliveryResult::Ack, None),
            }
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        for (_, delivery) in self.open.drain() {
            delivery.end(DeliveryResult::Abandoned, None);
        }
    }
}

#[cfg(test)]
mod tests;
