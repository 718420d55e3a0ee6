//! A registered agent identity and its `meshward.v1.Agent` resource, named by
//! its SPIFFE ID.

use std::collections::BTreeMap;

use prost::Message;

use super::RateLimitSettings;
use super::encoding::{string_map, with_sorted_string_map};
use crate::pb::v1 as pb;
use crate::rules;

/// A registered agent identity: attributes, permissions and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub name: String,
    pub spiffe_id: String,
    /// Registry attributes: team, type, environment, ...
    pub attributes: BTreeMap<String, String>,
    pub permissions: Vec<String>,
    /// The agent's own egress limit, applied by its outbound dataplane.
    pub limits: RateLimitSettings,
}

impl Agent {
    /// The resource's canonical bytes (attributes sorted by key).
    pub fn encode(&self) -> Vec<u8> {
        let message = pb::Agent {
            name: self.name.clone(),
            spiffe_id: self.spiffe_id.clone(),
            attributes: Default::default(),
            permissions: self.permissions.clone(),
            limits: Some((&self.limits).into()),
        };
        // Agent.attributes is field 3.
        with_sorted_string_map(message.encode_to_vec(), 3, &self.attributes)
    }

    /// The agent an `Agent` resource named `name` describes; the error is
    /// the NACK reason and names the field.
    pub fn from_resource(name: &str, agent: &pb::Agent) -> Result<Agent, String> {
        rules::spiffe_id(&agent.spiffe_id, None)
            .map_err(|e| format!("spiffe_id {:?} {e}", agent.spiffe_id))?;
        if agent.spiffe_id != name {
            return Err(format!(
                "resource name {name:?} but spiffe_id {:?}",
                agent.spiffe_id
            ));
        }
        Ok(Agent {
            name: agent.name.clone(),
            spiffe_id: agent.spiffe_id.clone(),
            attributes: string_map(&agent.attributes).map_err(|e| format!("attributes: {e}"))?,
            permissions: agent.permissions.clone(),
            limits: RateLimitSettings::try_from(agent.limits.as_ref())
                .map_err(|e| format!("limits: {e}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        Agent {
            name: "a".into(),
            spiffe_id: "spiffe://example.org/agent/a".into(),
            attributes: (0..20)
                .map(|i| (format!("k{i}"), format!("v{i}")))
                .collect(),
            permissions: vec!["p".into()],
            limits: RateLimitSettings::default(),
        }
    }

    #[test]
    fn agents_round_trip_with_sorted_attributes() {
        let a = agent();
        let decoded = pb::Agent::decode(a.encode().as_slice()).unwrap();
        assert_eq!(decoded.attributes.len(), 20);
        assert_eq!(Agent::from_resource(&a.spiffe_id, &decoded), Ok(a.clone()));
        assert_eq!(a.encode(), agent().encode(), "canonical bytes");
    }

    #[test]
    fn agent_name_must_be_its_spiffe_id_and_limits_sane() {
        let a = agent();
        let wire = pb::Agent::decode(a.encode().as_slice()).unwrap();
        assert!(Agent::from_resource("a", &wire).is_err());
        let nan = pb::Agent {
            limits: Some(pb::RateLimit {
                requests_per_second: f64::NAN,
                ..Default::default()
            }),
            ..wire.clone()
        };
        let err = Agent::from_resource(&a.spiffe_id, &nan).unwrap_err();
        assert!(err.starts_with("limits:"), "{err}");
        let empty_key = pb::Agent {
            attributes: [(String::new(), "x".to_string())].into_iter().collect(),
            ..wire
        };
        assert!(Agent::from_resource(&a.spiffe_id, &empty_key).is_err());
    }
}
