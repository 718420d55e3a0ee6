//! The body type every proxy path uses, so requests and responses from
//! clients, upstreams and the dataplane itself flow through one type.

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
