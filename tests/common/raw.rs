//! Clients that send exactly the bytes a test gives, for requests a
//! well-behaved client library would refuse or rewrite (`--path-as-is`
//! paths, duplicate `Host`, broken chunking), and mTLS h2 straight to an
//! inbound listener with a chosen SVID.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status of the first response, if one arrived.
    pub status: Option<u16>,
    /// Everything read, lossily decoded.
    pub text: String,
}

impl RawAnswer {
    /// The body after the head, de-chunked when the answer was chunked.
    pub fn body(&self) -> String {
        let Some((head, body)) = self.text.split_once("\r\n\r\n") else {
            return String::new();
        };
        if !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return body.to_string();
        }
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
        }
        out
    }

    /// The JSON body.
    pub fn json(&self) -> serde_json::Value {
        let body = self.body();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"))
    }
}

/// Writes `request` on a new connection and reads until the server closes
/// it (requests should say `Connection: close`), at most 10 s.
pub async fn http1(addr: &str, request: &str) -> RawAnswer {
    try_http1(addr, request)
        .await
        .unwrap_or_else(|| panic!("cannot connect to {addr}"))
}

/// [`http1`], or `None` when nothing listens at `addr` (yet).
pub async fn try_http1(addr: &str, request: &str) -> Option<RawAnswer> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Some(RawAnswer { status, text })
}

/// A `GET` of `target` (sent as is) with `Host: host` and `Connection: close`.
pub async fn get(addr: &str, target: &str, extra_headers: &str) -> RawAnswer {
    http1(
        addr,
        &format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n"
        ),
    )
    .await
}

/// One h2 request over mTLS with `config`'s client certificate; the status
/// and body, or why no answer came back.
pub async fn mtls_h2(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(u16, Bytes), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("meshward.invalid").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Waits until the server closes `tcp` (EOF or reset), at most `within`.
/// Returns how long that took, or `None` if it stayed open.
pub async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .ok()
        .map(|_| start.elapsed())
}
