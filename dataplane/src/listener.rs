//! Accepting and serving HTTP connections within limits, for every listener
//! a dataplane has (outbound, inbound, admin).
//!
//! A sidecar shares its process's descriptors and memory between every
//! agent that reaches it, so no one client may hold them: each listener caps
//! its open connections (and, on the outbound side, those of one client IP);
//! a connection must deliver a complete first request head within
//! `header_read_timeout` of being accepted (TLS handshake included), every
//! later HTTP/1.1 head within the same time, and is closed after
//! `idle_timeout` with no request in flight, which also ends h2 connections
//! that trickle header frames without ever completing a request. Header size
//! and h2 concurrent streams are bounded per connection. Accept errors (out of
//! descriptors) back off instead of spinning. The limits are read at each
//! accept from the current configuration ([`ListenerLimits`]), so a change
//! applies to new connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use meshward_contract::spec::ListenerLimits;

use crate::proxy::body::ProxyBody;
use crate::proxy::guard::GuardedBody;

/// First and longest pause after a failed `accept` (doubling in between).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// How long a connection closed for idleness or expiry may take to finish
/// what is in flight (h2 GOAWAY, then the last responses).
const DRAIN: Duration = Duration::from_secs(30);
/// Refusals are logged at `warn` at most this often per listener.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Which listener, for its connection cap and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Agent-facing, plain text on loopback; also capped per client IP.
    Outbound,
    /// mTLS from other workloads.
    Inbound,
    /// `/ready`, `/metrics`, `/config_dump`.
    Admin,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Outbound => "outbound",
            ListenerKind::Inbound => "inbound",
            ListenerKind::Admin => "admin",
        }
    }

    fn max_connections(self, limits: &ListenerLimits) -> u32 {
        match self {
            ListenerKind::Admin => limits.admin_max_connections,
            _ => limits.max_connections,
        }
    }
}

/// Open connections per client IP (outbound listeners).
type PerIp = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// A bound TCP listener with its connection accounting.
pub struct Listener {
    tcp: TcpListener,
    kind: ListenerKind,
    /// The owning dataplane (or `controlplane`), for logs and labels.
    owner: String,
    open: Arc<AtomicUsize>,
    per_ip: PerIp,
    /// Milliseconds since `epoch` of the last refusal warning.
    last_warning: AtomicU64,
    epoch: Instant,
}

/// An accepted connection and the slot it holds until dropped.
pub struct Accepted {
    pub tcp: TcpStream,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub accepted_at: Instant,
    pub slot: ConnectionSlot,
}

/// One open connection of a listener (and of its client IP); released on drop.
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
    per_ip: Option<(PerIp, IpAddr)>,
    gauge: metrics::Gauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.decrement(1.0);
        if let Some((map, ip)) = &self.per_ip {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(ip);
                }
            }
        }
    }
}

impl Listener {
    pub fn new(tcp: TcpListener, kind: ListenerKind, owner: impl Into<String>) -> Self {
        Self {
            tcp,
            kind,
            owner: owner.into(),
            open: Arc::new(AtomicUsize::new(0)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            last_warning: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The dataplane (or `controlplane`) this listener belongs to.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The next connection within `limits`, or `None` once `stop` is
    /// cancelled. Connections over a cap are closed at once (counted in
    /// `meshward_connections_refused_total`); accept errors are retried
    /// after a pause that doubles up to a second.
    pub async fn accept(
        &self,
        stop: &CancellationToken,
        limits: impl Fn() -> ListenerLimits,
    ) -> Option<Accepted> {
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return None,
                accepted = self.tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(owner = %self.owner, listener = self.kind.as_str(),
                            "accept failed, retrying in {backoff:?}: {e}");
                        tokio::select! {
                            _ = stop.cancelled() => return None,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                        continue;
                    }
                },
            };
            backoff = ACCEPT_BACKOFF.0;
            match self.admit(remote.ip(), &limits()) {
                Ok(slot) => {
                    let _ = tcp.set_nodelay(true);
                    let local = tcp.local_addr().unwrap_or(remote);
                    return Some(Accepted {
                        tcp,
                        remote,
                        local,
                        accepted_at: Instant::now(),
                        slot,
                    });
                }
                Err(reason) => {
                    self.refused(remote, reason);
                    drop(tcp);
                }
            }
        }
    }

    /// Takes a slot for a connection from `ip`, or names the cap it hits.
    fn admit(&self, ip: IpAddr, limits: &ListenerLimits) -> Result<ConnectionSlot, &'static str> {
        let cap = self.kind.max_connections(limits) as usize;
        if self.open.fetch_add(1, Ordering::AcqRel) >= cap {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err("max_connections");
        }
        let gauge = metrics::gauge!("meshward_connections_open",
            "dataplane" => self.owner.clone(), "listener" => self.kind.as_str());
        let mut slot = ConnectionSlot {
            open: self.open.clone(),
            per_ip: None,
            gauge,
        };
        slot.gauge.increment(1.0);
        if self.kind == ListenerKind::Outbound {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= limits.max_connections_per_client_ip {
                // `slot` releases the listener-wide count on return.
                return Err("max_connections_per_client_ip");
            }
            *n += 1;
            slot.per_ip = Some((self.per_ip.clone(), ip));
        }
        Ok(slot)
    }

    fn refused(&self, remote: SocketAddr, reason: &'static str) {
        metrics::counter!("meshward_connections_refused_total",
            "dataplane" => self.owner.clone(), "listener" => self.kind.as_str(), "reason" => reason)
        .increment(1);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warning.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= every)
            && self
                .last_warning
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(owner = %self.owner, listener = self.kind.as_str(), peer = %remote,
                "connection refused: {reason} reached (further refusals counted in meshward_connections_refused_total)");
        } else {
            tracing::debug!(owner = %self.owner, listener = self.kind.as_str(), peer = %remote,
                "connection refused: {reason}");
        }
    }
}

/// How one connection is served.
pub struct ConnectionOptions<'a> {
    pub limits: ListenerLimits,
    /// When the connection was accepted: the first request head is due
    /// `header_read_timeout` after it.
    pub accepted_at: Instant,
    /// Shut the connection down gracefully at this time (the peer
    /// certificate's expiry).
    pub close_at: Option<SystemTime>,
    pub owner: &'a str,
    pub kind: ListenerKind,
    pub remote: SocketAddr,
    /// Ends the connection at once (the dataplane is stopping).
    pub stop: &'a CancellationToken,
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    seen_request: AtomicBool,
    /// Milliseconds after `start` when the connection last became idle.
    idle_since: AtomicU64,
    start: Instant,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(self.start.elapsed().saturating_sub(since))
    }
}

/// Marks one request in flight until the response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.seen_request.store(true, Ordering::Release);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let now = u64::try_from(a.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since.store(now, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves HTTP/1.1 or h2 (auto-detected) on `io` with `handler`, within the
/// limits in `opts`, until the client closes, `stop` is cancelled, a timeout
/// fires or `close_at` passes.
pub async fn serve<I, F, Fut>(io: I, opts: ConnectionOptions<'_>, handler: F)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let limits = opts.limits;
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        seen_request: AtomicBool::new(false),
        idle_since: AtomicU64::new(0),
        start: Instant::now(),
    });
    let handler = Arc::new(handler);
    let tracked = activity.clone();
    let svc = service_fn(move |req| {
        let in_flight = InFlight::new(tracked.clone());
        let handler = handler.clone();
        async move {
            let resp = handler(req).await;
            let (parts, body) = resp.into_parts();
            Ok::<_, Infallible>(Response::from_parts(
                parts,
                GuardedBody::wrap(body, in_flight),
            ))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper refuses a read buffer below 8 KiB (and would panic): the
    // contract never sends less, and this keeps it so whatever arrives.
    let header_bytes = (limits.max_request_headers_bytes as usize)
        .max(ListenerLimits::MIN_REQUEST_HEADERS_BYTES as usize);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);

    let first_request_due = opts.accepted_at + limits.header_read_timeout;
    let expiry = async {
        match opts.close_at {
            Some(at) => {
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(left).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let check_every = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut tick = tokio::time::interval(check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let label = |reason: &'static str| {
        metrics::counter!("meshward_connections_timed_out_total",
            "dataplane" => opts.owner.to_string(), "listener" => opts.kind.as_str(), "reason" => reason)
        .increment(1);
    };
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(owner = %opts.owner, peer = %opts.remote, "connection ended: {e}");
                }
                return;
            }
            _ = tick.tick() => {
                if !activity.seen_request.load(Ordering::Acquire) && Instant::now() >= first_request_due {
                    tracing::debug!(owner = %opts.owner, peer = %opts.remote,
                        "no complete request within {:?}; closing", limits.header_read_timeout);
                    label("header_read");
                    return;
                }
                if activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout) {
                    tracing::debug!(owner = %opts.owner, peer = %opts.remote,
                        "idle for {:?}; closing", limits.idle_timeout);
                    label("idle");
                    break;
                }
            }
            _ = &mut expiry => {
                tracing::info!(owner = %opts.owner, peer = %opts.remote,
                    "peer certificate expired; closing its connection");
                break;
            }
            _ = opts.stop.cancelled() => return,
        }
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = tokio::time::timeout(DRAIN, conn) => {}
        _ = opts.stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listener(kind: ListenerKind) -> Listener {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Listener::new(tcp, kind, "test")
    }

    fn limits(max: u32, per_ip: u32, admin: u32) -> ListenerLimits {
        ListenerLimits {
            max_connections: max,
            max_connections_per_client_ip: per_ip,
            admin_max_connections: admin,
            ..ListenerLimits::default()
        }
    }

    #[tokio::test]
    async fn caps_per_listener_and_per_client_ip_release_on_drop() {
        let l = listener(ListenerKind::Outbound).await;
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let lim = limits(3, 2, 1);
        let a1 = l.admit(a, &lim).unwrap();
        let _a2 = l.admit(a, &lim).unwrap();
        assert_eq!(
            l.admit(a, &lim).err(),
            Some("max_connections_per_client_ip")
        );
        assert_eq!(l.open_connections(), 2, "a refused slot is given back");
        let _b1 = l.admit(b, &lim).unwrap();
        assert_eq!(l.admit(b, &lim).err(), Some("max_connections"));
        drop(a1);
        assert_eq!(l.open_connections(), 2);
        assert!(l.admit(a, &lim).is_ok(), "room again after a drop");
        assert!(
            l.per_ip.lock().unwrap().get(&a).copied() <= Some(2),
            "per-IP count stays in step"
        );
    }

    #[tokio::test]
    async fn admin_and_inbound_use_their_own_caps_and_no_per_ip_cap() {
        let admin = listener(ListenerKind::Admin).await;
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let lim = limits(10, 1, 2);
        let _x = admin.admit(ip, &lim).unwrap();
        let _y = admin.admit(ip, &lim).unwrap();
        assert_eq!(admin.admit(ip, &lim).err(), Some("max_connections"));
        let inbound = listener(ListenerKind::Inbound).await;
        let held: Vec<_> = (0..10).map(|_| inbound.admit(ip, &lim).unwrap()).collect();
        assert_eq!(inbound.admit(ip, &lim).err(), Some("max_connections"));
        drop(held);
        assert_eq!(inbound.open_connections(), 0);
        assert!(inbound.per_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn activity_is_idle_only_with_nothing_in_flight() {
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            seen_request: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            start: Instant::now(),
        });
        assert!(activity.idle_for().is_some());
        let first = InFlight::new(activity.clone());
        let second = InFlight::new(activity.clone());
        assert!(activity.seen_request.load(Ordering::Acquire));
        assert_eq!(activity.idle_for(), None);
        drop(first);
        assert_eq!(activity.idle_for(), None, "one request still in flight");
        drop(second);
        let idle = activity.idle_for().expect("idle");
        assert!(
            idle < Duration::from_secs(1),
            "idle since the last request ended"
        );
    }
}
