//! The last xDS update this dataplane rejected (NACKed), kept for
//! `/config_dump`.
//!
//! A NACK leaves the last good state serving, so nothing on the request
//! path shows it; the control plane's NACK counter says that some node
//! refused something. This says, on the node itself, which type, why, and
//! when, so the operator can fix the config without reading logs.

use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// One rejected response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub type_url: String,
    /// The reason sent back in the NACK.
    pub error: String,
    pub at: SystemTime,
}

/// The latest [`Rejection`], shared by the xDS client and the admin endpoint.
#[derive(Debug, Default)]
pub struct LastRejected(Mutex<Option<Rejection>>);

impl LastRejected {
    pub fn record(&self, type_url: &str, error: &str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Rejection {
            type_url: type_url.to_string(),
            error: error.to_string(),
            at: SystemTime::now(),
        });
    }

    pub fn get(&self) -> Option<Rejection> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest() {
        let last = LastRejected::default();
        assert_eq!(last.get(), None);
        last.record("t1", "bad");
        last.record("t2", "worse");
        let r = last.get().unwrap();
        assert_eq!((r.type_url.as_str(), r.error.as_str()), ("t2", "worse"));
        assert!(r.at <= SystemTime::now());
    }
}
