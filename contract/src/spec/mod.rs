//! One type per thing the mesh configures, with its defaults, used by both
//! planes: the control plane validates `mesh.yaml` into these types and
//! encodes them (`to_*` / `From`), the dataplane decodes them with the checks
//! it applies before it ACKs (`from_*` / `TryFrom`, errors naming the field),
//! so a value `meshward validate` accepts is a value every dataplane ACKs.

mod agent;
mod encoding;
mod endpoint;
mod limits;
mod listeners;
pub mod mcp;
mod paths;
mod policy;
mod service;
mod timeouts;

pub use agent::Agent;
pub use endpoint::{Endpoint, endpoints_of, load_assignment};
pub use limits::{BreakerSettings, RateLimitSettings};
pub use listeners::ListenerLimits;
pub use mcp::McpSettings;
pub use paths::{ForwardClientCert, PathAction, PathRules};
pub use policy::{check_policy_bundle, policy_bundle};
pub use service::Service;
pub use timeouts::{RouteTimeouts, ServiceTimeouts, Timeouts};
