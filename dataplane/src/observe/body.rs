//! The response body of an observed request: counts what is sent and, when
//! the body ends (or the client goes away), finishes the request's record:
//! its span ends and its access-log line is written.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::Observability;
use super::record::Record;
use crate::proxy::body::{BoxError, ProxyBody};

pub struct ObservedBody {
    inner: ProxyBody,
    record: Option<Record>,
    observe: Observability,
}

impl ObservedBody {
    pub fn wrap(inner: ProxyBody, record: Record, observe: Observability) -> ProxyBody {
        use http_body_util::BodyExt;
        let done = inner.is_end_stream();
        let mut body = ObservedBody {
            inner,
            record: Some(record),
            observe,
        };
        if done {
            body.finish();
        }
        body.boxed()
    }

    fn finish(&mut self) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        let trace_id = record.span.trace_id();
        record.finish_span();
        if let Some(log) = &self.observe.access_log {
            log.log(&record, trace_id.as_deref());
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(r)) = (frame.data_ref(), self.record.as_mut()) {
                    r.bytes_sent += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish();
    }
}
