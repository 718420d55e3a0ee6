//! The body type every proxy path uses, so requests and responses from
//! clients, upstreams and the dataplane itself flow through one type.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Boxed error for bodies; hyper, timeouts and our own errors all fit.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body of any origin.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Boxes any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Whether a body passed through [`watch_errors`] failed, and why.
#[derive(Clone, Default)]
pub struct BodyErrors(Arc<OnceLock<String>>);

impl BodyErrors {
    pub fn failed(&self) -> bool {
        self.0.get().is_some()
    }

    pub fn error(&self) -> Option<String> {
        self.0.get().cloned()
    }
}

/// Wraps `body` so its first error is recorded: when forwarding fails, the
/// proxy can tell a client that sent a broken body (its own error, 400) from
/// an upstream that failed (a breaker event).
pub fn watch_errors(body: ProxyBody) -> (ProxyBody, BodyErrors) {
    let errors = BodyErrors::default();
    let seen = errors.clone();
    let body = body
        .map_err(move |e| {
            let _ = seen.0.set(e.to_string());
            e
        })
        .boxed();
    (body, errors)
}
