//! Keeps a value alive until a response body is finished, so a concurrency
//! permit is released when the caller has the whole answer, not when the
//! headers arrive (a streaming response is still "in flight").

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, ProxyBody};

pub struct GuardedBody<G> {
    inner: ProxyBody,
    _guard: G,
}

impl<G: Send + Sync + Unpin + 'static> GuardedBody<G> {
    pub fn wrap(inner: ProxyBody, guard: G) -> ProxyBody {
        use http_body_util::BodyExt;
        GuardedBody {
            inner,
            _guard: guard,
        }
        .boxed()
    }
}

impl<G: Unpin> Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
