//! What an admin endpoint (`/ready`, `/metrics`, `/config_dump`) reports.
//!
//! The dataplanes and the control plane answer the same three paths, served
//! by one admin server (in the dataplane crate); each plane says what it is
//! ready for and what it holds by implementing [`AdminSource`] in its own
//! crate. The trait lives here because neither plane may import the other.

use crate::spec::ListenerLimits;

/// What an admin endpoint reports for one component.
pub trait AdminSource: Send + Sync + 'static {
    /// `Ok(())` when ready to serve, else the reason it is not.
    fn readiness(&self) -> Result<(), String>;
    /// The current configuration as JSON.
    fn config_dump(&self) -> serde_json::Value;
    /// The listener limits in force (the defaults unless configured).
    fn listener_limits(&self) -> ListenerLimits {
        ListenerLimits::default()
    }
}
