//! `xds_resources`: every validator the dataplane runs before it ACKs an xDS
//! resource, on any bytes.
//!
//! The control plane is trusted but its messages cross the network and may
//! come from a newer or broken version, so validation must turn any bytes
//! into an ACK or a NACK with a reason: never a panic. On top of that, a NACK
//! has a reason, a value under another type URL is refused, and what is
//! accepted holds what the dataplane relies on (the name it was sent under,
//! finite limits, listener limits in range), and an accepted policy bundle
//! also evaluates a request without panicking.
//!
//! Input: byte 0 picks the resource type ([`XdsKind`], the low seven bits
//! modulo 5). If its high bit is clear, a length byte and that many bytes of
//! resource name follow; if set, the name is taken from the message's own
//! name field, so mutated messages still reach the checks past the name. The
//! rest is the encoded protobuf message, sent under the handler's type URL.
//! Policy bundles over [`MAX_POLICY_BYTES`] are skipped: compiling Rego is
//! slow enough on large inputs to starve the fuzzer.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::Any;
use meshward_dataplane::policy::{Direction, RequestFacts, build_input};
use meshward_dataplane::ratelimit::RateLimitSettings;
use meshward_dataplane::state::Endpoint;
use meshward_dataplane::xds::handlers::{
    AgentHandler, ClusterHandler, EndpointHandler, Handler, PolicyHandler, SettingsHandler,
};

use super::Verdict;
use super::input::Input;

/// Largest encoded policy bundle run.
pub const MAX_POLICY_BYTES: usize = 4096;

/// The resource types, in selector order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsKind {
    Cluster,
    Endpoint,
    Agent,
    Policy,
    Settings,
}

impl XdsKind {
    pub const ALL: [XdsKind; 5] = [
        XdsKind::Cluster,
        XdsKind::Endpoint,
        XdsKind::Agent,
        XdsKind::Policy,
        XdsKind::Settings,
    ];

    /// The fuzz input that sends `message` as a resource named `name`.
    pub fn input(self, name: &str, message: &[u8]) -> Vec<u8> {
        let mut out = vec![self.selector()];
        let name = &name.as_bytes()[..name.len().min(255)];
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name);
        out.extend_from_slice(message);
        out
    }

    /// The fuzz input that sends `message` under the name it carries.
    pub fn input_named_by_message(self, message: &[u8]) -> Vec<u8> {
        let mut out = vec![self.selector() | 0x80];
        out.extend_from_slice(message);
        out
    }

    fn selector(self) -> u8 {
        match self {
            XdsKind::Cluster => 0,
            XdsKind::Endpoint => 1,
            XdsKind::Agent => 2,
            XdsKind::Policy => 3,
            XdsKind::Settings => 4,
        }
    }

    fn from_selector(selector: u8) -> Self {
        Self::ALL[usize::from(selector & 0x7f) % Self::ALL.len()]
    }

    fn type_url(self) -> &'static str {
        match self {
            XdsKind::Cluster => ClusterHandler::TYPE_URL,
            XdsKind::Endpoint => EndpointHandler::TYPE_URL,
            XdsKind::Agent => AgentHandler::TYPE_URL,
            XdsKind::Policy => PolicyHandler::TYPE_URL,
            XdsKind::Settings => SettingsHandler::TYPE_URL,
        }
    }

    /// The protobuf field the resource name must equal: `name` (1) in all
    /// but `Agent`, which is named by its `spiffe_id` (2).
    fn name_field(self) -> u64 {
        match self {
            XdsKind::Agent => 2,
            _ => 1,
        }
    }

    /// Another type, whose URL this type's handler must refuse.
    fn other(self) -> Self {
        Self::from_selector(self.selector() + 1)
    }
}

pub fn xds_resources(data: &[u8]) -> Verdict {
    let mut input = Input::new(data);
    let Some(selector) = input.byte() else {
        return Verdict::Skipped;
    };
    let kind = XdsKind::from_selector(selector);
    let explicit_name = (selector & 0x80 == 0).then(|| input.prefixed8());
    let message = input.rest();
    if kind == XdsKind::Policy && message.len() > MAX_POLICY_BYTES {
        return Verdict::Skipped;
    }
    let name_bytes = explicit_name
        .or_else(|| string_field(message, kind.name_field()))
        .unwrap_or_default();
    let name = String::from_utf8_lossy(name_bytes);
    let sent = Sent {
        name: &name,
        message,
        wrong_type_url: kind.other().type_url(),
    };
    match kind {
        XdsKind::Cluster => sent.run::<ClusterHandler>(|spec| {
            assert_eq!(spec.name, name, "cluster accepted under another name");
            assert!(spec.spiffe_id.starts_with("spiffe://"), "{spec:?}");
            check_map(&spec.metadata);
            check_limits(&spec.per_caller_limits);
        }),
        XdsKind::Endpoint => sent.run::<EndpointHandler>(|endpoints| {
            for endpoint in endpoints.iter() {
                let port = match endpoint {
                    Endpoint::Ip(addr) => addr.port(),
                    Endpoint::Dns { host, port } => {
                        assert!(!host.is_empty(), "{endpoints:?}");
                        *port
                    }
                };
                assert_ne!(port, 0, "endpoint with port 0 accepted: {endpoints:?}");
            }
        }),
        XdsKind::Agent => sent.run::<AgentHandler>(|agent| {
            assert_eq!(agent.spiffe_id, name, "agent accepted under another name");
            check_map(&agent.attributes);
            check_limits(&agent.limits);
        }),
        XdsKind::Policy => sent.run::<PolicyHandler>(|policy| {
            assert_eq!(policy.name(), name, "bundle accepted under another name");
            // Any outcome, allow, deny or error, is fine; a panic is not.
            let _ = policy.evaluate(&sample_input());
        }),
        XdsKind::Settings => sent.run::<SettingsHandler>(|limits| {
            let problems = limits.problems();
            assert!(problems.is_empty(), "{limits:?} accepted: {problems:?}");
        }),
    }
}

/// One resource as the control plane sent it.
struct Sent<'a> {
    name: &'a str,
    message: &'a [u8],
    wrong_type_url: &'static str,
}

impl Sent<'_> {
    fn run<H: Handler>(&self, check: impl FnOnce(&H::Item)) -> Verdict {
        let any = |type_url: &str| Any {
            type_url: type_url.to_string(),
            value: self.message.to_vec(),
        };
        assert!(
            H::validate(self.name, &any(self.wrong_type_url)).is_err(),
            "{} accepted a {} message",
            H::TYPE_URL,
            self.wrong_type_url
        );
        match H::validate(self.name, &any(H::TYPE_URL)) {
            Ok(item) => {
                check(&item);
                Verdict::Accepted
            }
            Err(reason) => {
                assert!(!reason.trim().is_empty(), "NACK without a reason");
                Verdict::Rejected
            }
        }
    }
}

fn check_map(map: &BTreeMap<String, String>) {
    assert!(!map.contains_key(""), "empty key accepted: {map:?}");
}

fn check_limits(limits: &RateLimitSettings) {
    let rps = limits.requests_per_second;
    assert!(rps.is_finite() && rps >= 0.0, "rate {rps} accepted");
}

/// A plain request, to evaluate accepted bundles against.
fn sample_input() -> serde_json::Value {
    let headers = http::HeaderMap::new();
    build_input(&RequestFacts {
        checkpoint: Direction::Inbound.into(),
        method: "GET",
        path: "/admin/users?x=1",
        raw_path: "/admin/users?x=1",
        host: "svc",
        scheme: "https",
        protocol: "HTTP/2",
        headers: &headers,
        body: None,
        request_id: "fuzz",
        source_principal: Some("spiffe://example.org/agent/a"),
        destination_principal: Some("spiffe://example.org/service/s"),
        source_address: None,
        destination_address: None,
        caller: None,
        service: None,
    })
    .expect("a plain request has an input document")
}

/// The last top-level length-delimited field `field` of a protobuf message
/// (the value prost decodes for a singular string), read from the wire
/// format by hand; `None` where there is none or the message is malformed
/// before one (prost then refuses the message anyway).
fn string_field(message: &[u8], field: u64) -> Option<&[u8]> {
    let mut rest = message;
    let mut found = None;
    while !rest.is_empty() {
        let Some(key) = varint(&mut rest) else {
            return found;
        };
        let skip = match key & 7 {
            0 => varint(&mut rest).map(|_| 0),
            1 => Some(8),
            5 => Some(4),
            2 => {
                let len = varint(&mut rest).and_then(|l| usize::try_from(l).ok());
                if let Some(value) = len.and_then(|l| rest.get(..l))
                    && key >> 3 == field
                {
                    found = Some(value);
                }
                len
            }
            _ => None,
        };
        match skip.and_then(|n| rest.get(n..)) {
            Some(next) => rest = next,
            None => return found,
        }
    }
    found
}

fn varint(rest: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_fields_are_read_from_the_wire() {
        // field 3 varint 150, field 1 "ab", field 2 "x", field 1 "cd"
        let message = [
            0x18, 0x96, 0x01, 0x0a, 2, b'a', b'b', 0x12, 1, b'x', 0x0a, 2, b'c', b'd',
        ];
        assert_eq!(string_field(&message, 1), Some(&b"cd"[..]));
        assert_eq!(string_field(&message, 2), Some(&b"x"[..]));
        assert_eq!(string_field(&message, 4), None);
        assert_eq!(string_field(&message[..6], 1), None);
    }

    #[test]
    fn inputs_round_trip_through_the_layout() {
        for kind in XdsKind::ALL {
            let input = kind.input("n", b"m");
            assert_eq!(XdsKind::from_selector(input[0]), kind);
            assert_eq!(&input[1..], b"\x01nm");
            let input = kind.input_named_by_message(b"m");
            assert_eq!(XdsKind::from_selector(input[0]), kind);
            assert_ne!(kind.other(), kind);
        }
    }
}
