//! Loopback networking helpers shared by the harnesses: the one port picker,
//! plain HTTP GETs and POSTs, Prometheus text.

use std::time::Duration;

/// Where [`free_port`] looks: below Linux's ephemeral range (32768–60999),
/// so the port cannot be taken meanwhile by an outgoing connection's local
/// port (the kernel picks those from the ephemeral range, and a busy test
/// makes many), which `bind(:0)` ports would be exposed to.
const PORTS: std::ops::Range<u16> = 20000..32000;

/// A loopback port that was free a moment ago, for a process that binds it
/// itself. Each test process walks its own stretch of [`PORTS`] (offset by
/// its pid) and never hands out a port twice, so parallel tests and test
/// binaries do not race for the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::AcqRel) % span;
        let port = PORTS.start + u16::try_from(offset).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}");
}

/// One HTTP/1.1 GET on loopback; the status code, if any answer came.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1)?.parse().ok()
}

/// One GET over HTTP/1.1 (fresh connection); status and body.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| format!("GET {url}: no answer within 10s"))?
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {url}: body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One POST over HTTP/1.1 (fresh connection) with a `content_type` body;
/// status and body.
pub async fn post(url: &str, content_type: &str, body: String) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| format!("POST {url}: no answer within 10s"))?
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("POST {url}: body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An admin endpoint's `path`: status and body (panics if nothing answers).
pub async fn admin(addr: &str, path: &str) -> (u16, String) {
    get(&format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("admin {addr}{path}: {e}"))
}

/// The sum of the Prometheus series `name` whose labels include every
/// pair of `labels`; 0 when there is none (counters start absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
