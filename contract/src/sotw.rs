//! The state-of-the-world xDS stream rules, without I/O: subscriptions,
//! nonces, ACK and NACK, per type URL.
//!
//! Both servers that speak SotW xDS use it: the control plane's ADS
//! (`StreamAggregatedResources`) and the dev identity server's SDS
//! (`StreamSecrets`). Each decides *what* to send; this decides *whether a
//! request counts* and *when a response is due*, by the rules of Envoy's xDS
//! protocol document:
//!
//! - per type, the first request that names nothing subscribes to everything
//!   (the legacy wildcard, kept while later requests name nothing), `*` is the
//!   explicit wildcard, anything else an explicit list;
//! - a request carrying a nonce other than the last one sent is stale and
//!   ignored (a newer response is in flight), and so is a nonce for a type
//!   never answered: such a request changes nothing, not even the
//!   subscription;
//! - with the current nonce, no `error_detail` is an ACK and an
//!   `error_detail` a NACK; a NACKed version is not sent again while it is
//!   the last thing the client rejected: an ACK of a later version clears
//!   it (so a rollback to it is sent), and so does a changed subscription
//!   (the client asked anew, as Envoy's protocol document allows);
//! - a response is due after the first request of a type (even if empty), when
//!   the subscription changes, and when the content's version changes.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;

/// The explicit wildcard resource name.
pub const WILDCARD: &str = "*";

/// What a client holds a subscription to, for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Every resource of the type. `legacy`: subscribed by naming nothing,
    /// so later requests that name nothing keep it.
    Wildcard { legacy: bool },
    /// Exactly these names.
    Names(BTreeSet<String>),
}

impl Subscription {
    /// Whether the resource `name` is subscribed.
    pub fn wants(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard { .. } => true,
            Subscription::Names(names) => names.contains(name),
        }
    }
}

/// What one request meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Stale or unknown nonce: ignored entirely.
    Ignored,
    /// The client accepted `version`.
    Ack { version: String },
    /// The client rejected `version` (never sent again) with `message`.
    Nack { version: String, message: String },
    /// A request without a nonce: the first of its type or a resubscription.
    Subscribe,
}

/// Whether a response should be sent for a request just received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub received: Received,
    /// The first request of its type (always answered).
    pub first: bool,
    /// The subscription differs from before.
    pub changed: bool,
}

impl Outcome {
    /// A response is due now (the caller still skips one whose version has
    /// not changed, see [`SotwStream::respond`]).
    pub fn answer(&self) -> bool {
        self.received != Received::Ignored && (self.first || self.changed)
    }
}

#[derive(Debug)]
struct TypeState {
    subscription: Subscription,
    /// `(version_info, nonce)` of the last response sent.
    sent: Option<(String, String)>,
    /// The version the client NACKed; never sent to it again.
    nacked_version: Option<String>,
}

/// One SotW stream's protocol state, every type it carries.
#[derive(Debug, Default)]
pub struct SotwStream {
    types: BTreeMap<String, TypeState>,
    /// Counter behind the nonces, unique within the stream.
    nonces: u64,
}

impl SotwStream {
    /// Takes in one request: its nonce (stale, ACK, NACK) and subscription.
    pub fn receive(&mut self, request: &DiscoveryRequest) -> Outcome {
        let type_url = request.type_url.as_str();
        let known = self.types.contains_key(type_url);
        let received = match self.types.get(type_url) {
            _ if request.response_nonce.is_empty() => Received::Subscribe,
            Some(TypeState {
                sent: Some((version, nonce)),
                ..
            }) if *nonce == request.response_nonce => match &request.error_detail {
                Some(status) => Received::Nack {
                    version: version.clone(),
                    message: status.message.clone(),
                },
                None => Received::Ack {
                    version: version.clone(),
                },
            },
            // A newer response is in flight, or this type was never
            // answered on this stream: nothing about it counts.
            _ => Received::Ignored,
        };
        if received == Received::Ignored {
            return Outcome {
                received,
                first: false,
                changed: false,
            };
        }
        let state = self
            .types
            .entry(type_url.to_string())
            .or_insert_with(|| TypeState {
                subscription: Subscription::Names(BTreeSet::new()),
                sent: None,
                nacked_version: None,
            });
        match &received {
            Received::Nack { version, .. } => state.nacked_version = Some(version.clone()),
            // The client moved on from what it rejected: if the content
            // comes back to that version later (a rollback), it is owed.
            Received::Ack { .. } => state.nacked_version = None,
            _ => {}
        }
        let mut names: BTreeSet<String> = request
            .resource_names
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        let legacy = matches!(state.subscription, Subscription::Wildcard { legacy: true });
        let subscription = if names.remove(WILDCARD) {
            Subscription::Wildcard { legacy: false }
        } else if names.is_empty() && (!known || legacy) {
            Subscription::Wildcard { legacy: true }
        } else {
            Subscription::Names(names)
        };
        let changed = known && subscription != state.subscription;
        state.subscription = subscription;
        Outcome {
            received,
            first: !known,
            changed,
        }
    }

    /// The subscription for `type_url`, once a request of it counted.
    pub fn subscription(&self, type_url: &str) -> Option<&Subscription> {
        self.types.get(type_url).map(|s| &s.subscription)
    }

    /// The types subscribed on this stream.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// The version and nonce of the last response of `type_url`.
    pub fn last_sent(&self, type_url: &str) -> Option<(&str, &str)> {
        self.types
            .get(type_url)?
            .sent
            .as_ref()
            .map(|(v, n)| (v.as_str(), n.as_str()))
    }

    /// The response carrying `resources` at `version`, if one is due: when
    /// `force`d (a request that must be answered: the client's first, or a
    /// changed subscription where the version does not say so), or when
    /// `version` differs from the last one sent and is not the version the
    /// client rejected. `None` for a type the client never asked for.
    pub fn respond(
        &mut self,
        type_url: &str,
        version: String,
        resources: Vec<Any>,
        force: bool,
    ) -> Option<DiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let unchanged = state.sent.as_ref().is_some_and(|(v, _)| *v == version);
        let nacked = state.nacked_version.as_deref() == Some(version.as_str());
        if !force && (unchanged || nacked) {
            return None;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        state.sent = Some((version.clone(), nonce.clone()));
        Some(DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::rpc::Status;

    use super::*;

    const T: &str = "type.googleapis.com/x.Y";

    fn request(names: &[&str], nonce: &str, nack: bool) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: T.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            error_detail: nack.then(|| Status {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn first_request_is_answered_even_when_empty_and_acks_are_quiet() {
        let mut s = SotwStream::default();
        let first = s.receive(&request(&[], "", false));
        assert!(first.first && first.answer());
        assert_eq!(
            s.subscription(T),
            Some(&Subscription::Wildcard { legacy: true })
        );
        let r = s.respond(T, "v1".into(), vec![], first.first).unwrap();
        let ack = s.receive(&request(&[], &r.nonce, false));
        assert_eq!(
            ack.received,
            Received::Ack {
                version: "v1".into()
            }
        );
        assert!(!ack.answer());
        assert!(
            s.respond(T, "v1".into(), vec![], false).is_none(),
            "unchanged"
        );
        assert!(
            s.respond(T, "v2".into(), vec![], false).is_some(),
            "changed"
        );
    }

    #[test]
    fn nacked_versions_are_not_resent_and_stale_nonces_change_nothing() {
        let mut s = SotwStream::default();
        s.receive(&request(&["a"], "", false));
        let r1 = s.respond(T, "v1".into(), vec![], true).unwrap();
        let r2 = s.respond(T, "v2".into(), vec![], false).unwrap();
        // The ACK of r1 arrives after r2 was sent: stale, even with new names.
        let stale = s.receive(&request(&["b"], &r1.nonce, false));
        assert_eq!(stale.received, Received::Ignored);
        assert_eq!(
            s.subscription(T),
            Some(&Subscription::Names(["a".to_string()].into()))
        );
        let nack = s.receive(&request(&["a"], &r2.nonce, true));
        assert_eq!(
            nack.received,
            Received::Nack {
                version: "v2".into(),
                message: "bad".into()
            }
        );
        assert!(s.respond(T, "v2".into(), vec![], false).is_none());
        // A request that must be answered is, even at the rejected version.
        assert!(s.respond(T, "v2".into(), vec![], true).is_some());
        assert!(s.respond(T, "v3".into(), vec![], false).is_some());
    }

    /// v1 ACKed, v2 NACKed, v3 ACKed, then the content rolls back to v2: the
    /// client must get it, or it stays on v3 while the server serves v2.
    #[test]
    fn a_rollback_to_a_once_rejected_version_is_sent() {
        let mut s = SotwStream::default();
        s.receive(&request(&[], "", false));
        let r1 = s.respond(T, "v1".into(), vec![], true).unwrap();
        s.receive(&request(&[], &r1.nonce, false));
        let r2 = s.respond(T, "v2".into(), vec![], false).unwrap();
        s.receive(&request(&[], &r2.nonce, true));
        assert!(s.respond(T, "v2".into(), vec![], false).is_none());
        let r3 = s.respond(T, "v3".into(), vec![], false).unwrap();
        s.receive(&request(&[], &r3.nonce, false));
        assert!(s.respond(T, "v2".into(), vec![], false).is_some());
    }

    /// A request with a nonce for a type never answered is ignored and must
    /// not create the type's state: the next request naming nothing is still
    /// the first, a legacy wildcard ("everything", not "nothing").
    #[test]
    fn an_ignored_request_does_not_spoil_the_legacy_wildcard() {
        let mut s = SotwStream::default();
        assert_eq!(
            s.receive(&request(&[], "42", false)).received,
            Received::Ignored
        );
        assert_eq!(s.subscription(T), None);
        let first = s.receive(&request(&[], "", false));
        assert!(first.first);
        assert_eq!(
            s.subscription(T),
            Some(&Subscription::Wildcard { legacy: true })
        );
    }

    #[test]
    fn subscriptions_follow_the_wildcard_rules() {
        let mut s = SotwStream::default();
        s.receive(&request(&[], "", false));
        let r = s.respond(T, "v".into(), vec![], true).unwrap();
        // Legacy wildcard survives requests that name nothing.
        let again = s.receive(&request(&[], &r.nonce, false));
        assert!(!again.changed);
        // Naming something leaves the wildcard; naming nothing then is "none".
        let named = s.receive(&request(&["a"], &r.nonce, false));
        assert!(named.changed && named.answer());
        let none = s.receive(&request(&[], &r.nonce, false));
        assert_eq!(
            s.subscription(T),
            Some(&Subscription::Names(BTreeSet::new()))
        );
        assert!(none.changed);
        // `*` is the explicit wildcard, alone or with names.
        s.receive(&request(&["*", "a"], &r.nonce, false));
        assert_eq!(
            s.subscription(T),
            Some(&Subscription::Wildcard { legacy: false })
        );
        assert!(s.subscription(T).unwrap().wants("anything"));
    }
}
