//! A service's upstream timeouts, enforced without buffering a byte.
//!
//! - Until the response headers arrive ([`await_headers`]): `response`,
//!   counted from the end of the request body (as Envoy's route `timeout`
//!   starts at the downstream end of stream), so a long upload or a gRPC
//!   client stream is not cut while it is still sending; while it sends,
//!   `idle` applies to it.
//! - Once the headers arrived ([`TimedBody`]): `idle`, a timer pushed back by
//!   every frame in either direction, so an SSE or gRPC server stream runs
//!   as long as it keeps sending.
//! - Throughout: `total`, if the service sets one.
//!
//! Activity on the request body is recorded by [`watch_request`] in a shared
//! [`Activity`]; the response side reads it when its idle timer fires, so
//! request frames cost a clock read and an atomic store, not a wake-up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use meshward_contract::spec::Timeouts;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::body::{BoxError, ProxyBody};

/// Which limit ran out, with the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Expired {
    #[error("no response headers within {0:?} of the request")]
    Response(Duration),
    #[error("no bytes in either direction for {0:?}")]
    Idle(Duration),
    #[error("the exchange exceeded its total time of {0:?}")]
    Total(Duration),
}

impl Expired {
    /// The metric's `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Expired::Response(_) => "response",
            Expired::Idle(_) => "idle",
            Expired::Total(_) => "total",
        }
    }
}

/// When the request body last moved and whether it has ended, shared by
/// the request and response sides of one exchange.
#[derive(Debug)]
pub struct Activity {
    /// The clock's origin for `last`.
    start: Instant,
    /// Nanoseconds from `start` to the last frame of either body.
    last: AtomicU64,
    /// Nanoseconds from `start` to the request body's end, plus one (0:
    /// not ended yet).
    ended: AtomicU64,
    /// Woken when the request body ends.
    ended_notify: Notify,
    /// Set when the request body failed (the client's fault, not a timeout).
    failed: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            ended_notify: Notify::new(),
            failed: AtomicBool::new(false),
        }
    }

    fn since_start(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a frame now.
    pub fn touch(&self) {
        self.last.fetch_max(self.since_start(), Ordering::Relaxed);
    }

    /// The last frame of either body (the start if none yet).
    pub fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    fn end(&self) {
        let at = self.since_start().saturating_add(1);
        if self
            .ended
            .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.ended_notify.notify_waiters();
        }
    }

    /// When the request body ended, if it has.
    pub fn ended(&self) -> Option<Instant> {
        match self.ended.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.start + Duration::from_nanos(n - 1)),
        }
    }
}

/// Wraps the request body so its frames and its end are recorded.
pub fn watch_request(body: ProxyBody) -> (ProxyBody, Arc<Activity>) {
    let activity = Arc::new(Activity::new());
    if body.is_end_stream() {
        // An empty body is never polled: it ended before it was sent.
        activity.end();
    }
    let body = RequestBody {
        inner: body,
        activity: activity.clone(),
    };
    (body.boxed(), activity)
}

struct RequestBody {
    inner: ProxyBody,
    activity: Arc<Activity>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                self.activity.touch();
                if self.inner.is_end_stream() {
                    self.activity.end();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.activity.failed.store(true, Ordering::Relaxed);
                self.activity.end();
            }
            Poll::Ready(None) => self.activity.end(),
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

/// Whether an idle expiry before the headers was the client's silence:
/// its request body had not ended, so the upstream was still waiting for it.
pub fn client_was_silent(activity: &Activity) -> bool {
    activity.ended().is_none() && !activity.failed.load(Ordering::Relaxed)
}

/// Waits for `send` (the response headers) within `timeouts`: `idle`
/// while the request body is still streaming, then `response` from its
/// end, and `total` from the start.
pub async fn await_headers<F: Future>(
    send: F,
    activity: &Activity,
    timeouts: &Timeouts,
) -> Result<F::Output, Expired> {
    tokio::pin!(send);
    let total_at = timeouts.total.map(|t| activity.start + t);
    loop {
        // Before reading the state, so an end in between still wakes us.
        let ending = activity.ended_notify.notified();
        let (mut deadline, mut expired) = match activity.ended() {
            Some(end) => (
                end + timeouts.response,
                Expired::Response(timeouts.response),
            ),
            None => (
                activity.last() + timeouts.idle,
                Expired::Idle(timeouts.idle),
            ),
        };
        if let (Some(total), Some(limit)) = (total_at, timeouts.total)
            && total <= deadline
        {
            deadline = total;
            expired = Expired::Total(limit);
        }
        tokio::select! {
            out = &mut send => return Ok(out),
            () = tokio::time::sleep_until(deadline) => {
                // The request body may have moved or ended meanwhile.
                let moved = activity.ended().is_none()
                    && activity.last() + timeouts.idle > Instant::now();
                let ended_late = matches!(expired, Expired::Idle(_)) && activity.ended().is_some();
                if !(moved || ended_late) || matches!(expired, Expired::Total(_)) {
                    return Err(expired);
                }
            }
            () = ending => {}
        }
    }
}

/// A response body under the `idle` and `total` limits. On expiry it ends
/// the stream as a failure, never as a clean end: HTTP clients see an
/// incomplete body (h2 `RST_STREAM`, HTTP/1.1 connection closed), gRPC
/// clients see trailers with `grpc-status: 4` (DEADLINE_EXCEEDED).
pub struct TimedBody {
    inner: ProxyBody,
    activity: Arc<Activity>,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    total: Option<(Duration, Pin<Box<Sleep>>)>,
    grpc: bool,
    /// Told which limit ran out, once (the metric and the log line).
    on_expiry: Option<Box<dyn FnOnce(Expired) + Send + Sync>>,
    done: bool,
}

impl TimedBody {
    /// Wraps `inner`; `activity` is the exchange's, whose `start` the
    /// `total` limit counts from.
    pub fn wrap(
        inner: ProxyBody,
        activity: Arc<Activity>,
        timeouts: &Timeouts,
        grpc: bool,
        on_expiry: impl FnOnce(Expired) + Send + Sync + 'static,
    ) -> ProxyBody {
        activity.touch();
        let total = timeouts
            .total
            .map(|t| (t, Box::pin(tokio::time::sleep_until(activity.start + t))));
        TimedBody {
            inner,
            idle: timeouts.idle,
            idle_timer: Box::pin(tokio::time::sleep_until(activity.last() + timeouts.idle)),
            activity,
            total,
            grpc,
            on_expiry: Some(Box::new(on_expiry)),
            done: false,
        }
        .boxed()
    }

    /// Whether a limit has run out (and the timers are armed again if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        if let Some((limit, timer)) = &mut self.total
            && timer.as_mut().poll(cx).is_ready()
        {
            return Some(Expired::Total(*limit));
        }
        loop {
            if self.idle_timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            // The request side may have moved since the timer was set.
            let next = self.activity.last() + self.idle;
            if next <= Instant::now() {
                return Some(Expired::Idle(self.idle));
            }
            self.idle_timer.as_mut().reset(next);
        }
    }

    fn expire(&mut self, expired: Expired) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        if let Some(on_expiry) = self.on_expiry.take() {
            on_expiry(expired);
        }
        if self.grpc {
            return Poll::Ready(Some(Ok(Frame::trailers(deadline_trailers(&expired)))));
        }
        Poll::Ready(Some(Err(Box::new(expired))))
    }
}

/// `grpc-status: 4` with the reason, percent-encoded as gRPC requires.
fn deadline_trailers(expired: &Expired) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("4"));
    let message: String = format!("upstream timeout: {expired}")
        .bytes()
        .map(|b| {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&message) {
        trailers.insert("grpc-message", v);
    }
    trailers
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.activity.touch();
                let next = self.activity.last() + self.idle;
                self.idle_timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                self.done = true;
                Poll::Ready(other)
            }
            Poll::Pending => match self.expired(cx) {
                Some(expired) => self.expire(expired),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use tokio::sync::mpsc;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timeouts(response: u64, idle: u64, total: Option<u64>) -> Timeouts {
        Timeouts {
            response: ms(response),
            idle: ms(idle),
            total: total.map(ms),
        }
    }

    /// A body fed frame by frame from the test.
    fn channel_body() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, ProxyBody) {
        let (tx, rx) = mpsc::channel(8);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
        (tx, body)
    }

    fn expiries() -> (
        Arc<std::sync::Mutex<Vec<Expired>>>,
        impl FnOnce(Expired) + Send + Sync + 'static,
    ) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let push = seen.clone();
        (seen, move |e| push.lock().unwrap().push(e))
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_sending_outlives_idle_and_passes_through() {
        let (tx, inner) = channel_body();
        let (_, activity) = watch_request(super::super::body::full(""));
        let (seen, on_expiry) = expiries();
        let mut body =
            TimedBody::wrap(inner, activity, &timeouts(10, 1000, None), false, on_expiry);
        tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(ms(600)).await;
                tx.send(data("chunk")).await.unwrap();
            }
        });
        let mut chunks = 0;
        while let Some(frame) = body.frame().await {
            assert_eq!(frame.unwrap().into_data().unwrap(), "chunk");
            chunks += 1;
        }
        assert_eq!(chunks, 20, "12s of streaming with a 1s idle limit");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_beyond_idle_aborts_the_stream_once() {
        let (tx, inner) = channel_body();
        let (_, activity) = watch_request(super::super::body::full(""));
        let (seen, on_expiry) = expiries();
        let mut body =
            TimedBody::wrap(inner, activity, &timeouts(10, 1000, None), false, on_expiry);
        tx.send(data("first")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), ms(1000));
        assert!(err.to_string().contains("no bytes"), "{err}");
        assert!(body.frame().await.is_none(), "ended after the error");
        assert_eq!(*seen.lock().unwrap(), [Expired::Idle(ms(1000))]);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn request_frames_count_as_activity() {
        let (req_tx, req) = channel_body();
        let (mut req, activity) = watch_request(req);
        let (_tx, inner) = channel_body();
        let (seen, on_expiry) = expiries();
        let mut body =
            TimedBody::wrap(inner, activity, &timeouts(10, 1000, None), false, on_expiry);
        // The client uploads every 600ms for 3s while the response is silent.
        let upload = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(ms(600)).await;
                req_tx.send(data("up")).await.unwrap();
            }
        });
        let drain = tokio::spawn(async move { while req.frame().await.is_some() {} });
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        // Last upload at 3000ms, then 1000ms of silence.
        assert_eq!(started.elapsed(), ms(4000), "{err}");
        assert_eq!(*seen.lock().unwrap(), [Expired::Idle(ms(1000))]);
        upload.await.unwrap();
        drain.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn total_caps_even_a_busy_stream_and_grpc_gets_deadline_trailers() {
        let (tx, inner) = channel_body();
        let (_, activity) = watch_request(super::super::body::full(""));
        let (seen, on_expiry) = expiries();
        let mut body = TimedBody::wrap(
            inner,
            activity,
            &timeouts(10, 1000, Some(2500)),
            true,
            on_expiry,
        );
        let feed = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ms(100)).await;
                if tx.send(data("m")).await.is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let trailers = loop {
            let frame = body.frame().await.unwrap().unwrap();
            if frame.is_trailers() {
                break frame.into_trailers().unwrap();
            }
        };
        assert_eq!(started.elapsed(), ms(2500));
        assert_eq!(trailers["grpc-status"], "4");
        assert!(
            trailers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("total time")
        );
        assert!(body.frame().await.is_none());
        assert_eq!(*seen.lock().unwrap(), [Expired::Total(ms(2500))]);
        drop(body);
        feed.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn headers_wait_response_from_the_end_of_the_request() {
        // Empty request: `response` from the start.
        let (_, activity) = watch_request(super::super::body::full(""));
        let started = Instant::now();
        let never = std::future::pending::<()>();
        let r = await_headers(never, &activity, &timeouts(300, 1000, None)).await;
        assert_eq!(r, Err(Expired::Response(ms(300))));
        assert_eq!(started.elapsed(), ms(300));

        // Headers in time.
        let (_, activity) = watch_request(super::super::body::full(""));
        let soon = async {
            tokio::time::sleep(ms(299)).await;
            7
        };
        assert_eq!(
            await_headers(soon, &activity, &timeouts(300, 1000, None)).await,
            Ok(7)
        );

        // A streaming upload of 2s: idle applies while it sends, then
        // response from its end.
        let (tx, req) = channel_body();
        let (mut req, activity) = watch_request(req);
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(ms(500)).await;
                tx.send(data("up")).await.unwrap();
            }
        });
        tokio::spawn(async move { while req.frame().await.is_some() {} });
        let started = Instant::now();
        let never = std::future::pending::<()>();
        let r = await_headers(never, &activity, &timeouts(300, 1000, None)).await;
        assert_eq!(r, Err(Expired::Response(ms(300))));
        assert_eq!(started.elapsed(), ms(2300));

        // A client that stops sending mid-upload: idle, and its fault.
        let (tx, req) = channel_body();
        let (mut req, activity) = watch_request(req);
        tx.send(data("up")).await.unwrap();
        let _ = req.frame().await;
        let never = std::future::pending::<()>();
        let r = await_headers(never, &activity, &timeouts(300, 1000, None)).await;
        assert_eq!(r, Err(Expired::Idle(ms(1000))));
        assert!(client_was_silent(&activity));
        drop(tx);

        // Total caps the wait for headers too.
        let (_, activity) = watch_request(super::super::body::full(""));
        let never = std::future::pending::<()>();
        let r = await_headers(never, &activity, &timeouts(300, 1000, Some(200))).await;
        assert_eq!(r, Err(Expired::Total(ms(200))));
    }
}
