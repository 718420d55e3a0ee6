//! The demo services `meshward up` runs behind each inbound dataplane (for
//! every service of the mesh file without a `backend`), and `meshward skill`
//! runs alone.
//!
//! The five services of the seed's customer-support demo each have their own
//! small, deterministic JSON API, one module each:
//!
//! | service | module | serves |
//! |---|---|---|
//! | hello-skill | [`hello`] | `GET/POST /say-hello` |
//! | sentiment-analysis | [`sentiment`] | `POST /analyze` |
//! | customer-lookup | [`customers`] | `GET /customers/<id>`, `GET /customers?email=` |
//! | support-system | [`support`] | `POST /tickets`, `GET/PATCH /tickets/<id>` |
//! | billing-system | [`billing`] | `GET /invoices?customer_id=`, `GET /invoices/<id>`, `POST /invoices/<id>/refund` |
//!
//! Every other path, on every service (and every path of a service with
//! another name), falls back to the [`echo`]: JSON echoing what the mesh
//! delivered, with `/status/<code>` answering that status. gRPC requests go
//! to the `meshward.demo.v1.Echo` service. Tests and the walkthrough lean on
//! the echo to show identity headers, canonical paths and breakers.
//!
//! Handlers are plain functions from a [`DemoRequest`] (body already read,
//! at most [`MAX_BODY_BYTES`]) to a [`Reply`]; only [`serve`] touches sockets.
//! Bad input is always a JSON error (`{"error", "message"}`), never a panic.

pub mod billing;
pub mod customers;
pub mod echo;
pub mod hello;
mod request;
pub mod sentiment;
pub mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshward_contract::pb::demo::echo_server::EchoServer;
use meshward_dataplane::listener::{Listener, ListenerKind, ListenerLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use request::{DemoRequest, Reply};

/// Largest request body a demo service reads; larger is a 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

type SkillBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// One demo service: its name and, for the five demo services, its API and
/// state.
#[derive(Debug)]
pub struct Demo {
    name: String,
    api: Api,
}

#[derive(Debug)]
enum Api {
    Hello,
    Sentiment,
    Customers,
    Support(support::Tickets),
    Billing(billing::Ledger),
    /// A service name the demo does not know: the echo only.
    EchoOnly,
}

impl Demo {
    /// The demo service for `name`; names other than the five demo
    /// services get the echo alone.
    pub fn new(name: &str) -> Self {
        let api = match name {
            "hello-skill" => Api::Hello,
            "sentiment-analysis" => Api::Sentiment,
            "customer-lookup" => Api::Customers,
            "support-system" => Api::Support(support::Tickets::default()),
            "billing-system" => Api::Billing(billing::Ledger::default()),
            _ => Api::EchoOnly,
        };
        Self {
            name: name.to_string(),
            api,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Answers an HTTP request: the service's API, else the echo.
    pub fn handle(&self, req: &DemoRequest) -> Reply {
        let served = match &self.api {
            Api::Hello => hello::handle(&self.name, req),
            Api::Sentiment => sentiment::handle(req),
            Api::Customers => customers::handle(req),
            Api::Support(tickets) => tickets.handle(req),
            Api::Billing(ledger) => ledger.handle(req),
            Api::EchoOnly => None,
        };
        served.unwrap_or_else(|| echo::reply(&self.name, req))
    }
}

/// Serves the demo service named `name` until `stop` is cancelled.
pub async fn serve(name: String, listener: TcpListener, stop: CancellationToken) {
    let demo = Arc::new(Demo::new(&name));
    let grpc =
        tonic::service::Routes::new(EchoServer::new(echo::EchoService { name: name.clone() }));
    // The listener's accept backs off on errors (descriptor exhaustion)
    // instead of spinning; a demo service takes the default limits.
    let listener = Listener::new(listener, ListenerKind::Inbound, format!("skill/{name}"));
    let limits = ListenerLimits::default();
    while let Some(accepted) = listener.accept(&stop, || limits).await {
        let tcp = accepted.tcp;
        let slot = accepted.slot;
        let demo = demo.clone();
        let grpc = grpc.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let demo = demo.clone();
                let grpc = grpc.clone();
                async move {
                    let is_grpc = req
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("application/grpc"));
                    if is_grpc {
                        let resp = match grpc.oneshot(req).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        };
                        let (parts, body) = resp.into_parts();
                        Ok::<_, Infallible>(Response::from_parts(
                            parts,
                            body.map_err(|e| {
                                Box::new(e) as Box<dyn std::error::Error + Send + Sync>
                            })
                            .boxed_unsync(),
                        ))
                    } else {
                        Ok(answer_http(&demo, req).await)
                    }
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

async fn answer_http(demo: &Demo, req: Request<Incoming>) -> Response<SkillBody> {
    let (parts, body) = req.into_parts();
    // A declared length over the bound is refused before reading a byte;
    // Limited catches chunked bodies that grow past it.
    let declared = hyper::body::Body::size_hint(&body).lower();
    let collected = if declared > MAX_BODY_BYTES as u64 {
        None
    } else {
        Some(Limited::new(body, MAX_BODY_BYTES).collect().await)
    };
    let reply = match collected {
        None => too_large(demo),
        Some(Ok(collected)) => {
            let req = DemoRequest {
                method: parts.method,
                path: parts.uri.path().to_string(),
                query: parts.uri.query().map(str::to_string),
                headers: parts.headers,
                version: parts.version,
                body: collected.to_bytes(),
            };
            let reply = demo.handle(&req);
            if reply.status.is_server_error() || reply.status.is_client_error() {
                tracing::debug!(
                    service = demo.name(),
                    method = %req.method,
                    path = %req.path,
                    status = reply.status.as_u16(),
                    "demo service answered an error"
                );
            }
            reply
        }
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => too_large(demo),
        Some(Err(e)) => Reply::bad_request(format!("reading the request body: {e}")),
    };
    to_response(reply)
}

fn too_large(demo: &Demo) -> Reply {
    Reply::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "{} takes request bodies of at most {MAX_BODY_BYTES} bytes",
            demo.name()
        ),
    )
}

fn to_response(reply: Reply) -> Response<SkillBody> {
    let body = Full::new(Bytes::from(reply.body.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(allow) = reply.allow {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

/// Binds a loopback port for a demo service.
pub async fn bind_loopback() -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn call(demo: &Demo, method: Method, target: &str, body: &str) -> Reply {
        demo.handle(&DemoRequest::new(method, target, body.to_string()))
    }

    #[test]
    fn each_service_has_its_api_and_the_echo_behind_it() {
        let cases = [
            (
                "hello-skill",
                Method::GET,
                "/say-hello?name=Ada",
                "",
                "message",
            ),
            (
                "sentiment-analysis",
                Method::POST,
                "/analyze",
                r#"{"text":"great"}"#,
                "label",
            ),
            (
                "customer-lookup",
                Method::GET,
                "/customers/c-1001",
                "",
                "email",
            ),
            (
                "support-system",
                Method::POST,
                "/tickets",
                r#"{"customer_id":"c-1001","subject":"s"}"#,
                "id",
            ),
            (
                "billing-system",
                Method::GET,
                "/invoices?customer_id=c-1001",
                "",
                "invoices",
            ),
        ];
        for (name, method, target, body, field) in cases {
            let demo = Demo::new(name);
            let r = call(&demo, method, target, body);
            assert!(r.status.is_success(), "{name} {target}: {}", r.body);
            assert!(r.body.get(field).is_some(), "{name} {target}: {}", r.body);
            // Unknown paths echo; /status/<code> answers that status.
            let r = call(&demo, Method::POST, "/anything?x=1", "raw");
            assert_eq!(r.status, 200);
            assert_eq!(r.body["service"], name);
            assert_eq!(r.body["path"], "/anything?x=1");
            assert_eq!(r.body["body"], "raw");
            assert_eq!(call(&demo, Method::GET, "/status/503", "").status, 503);
        }
    }

    #[test]
    fn other_names_only_echo() {
        let demo = Demo::new("svc");
        let r = call(&demo, Method::GET, "/say-hello", "");
        assert_eq!(r.body["service"], "svc");
        assert!(r.body.get("message").is_none());
        assert_eq!(call(&demo, Method::GET, "/status/429", "").status, 429);
    }

    #[test]
    fn the_billing_bot_path_of_the_walkthrough_answers_200() {
        // README and tests: billing-bot's GET /invoices (no query) is 200.
        let r = call(&Demo::new("billing-system"), Method::GET, "/invoices", "");
        assert_eq!(r.status, 200);
    }

    #[tokio::test]
    async fn serves_http_with_bounded_bodies() {
        let (listener, addr) = bind_loopback().await.unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve("billing-system".into(), listener, stop.clone()));
        let ok = raw_http(
            addr,
            "GET /invoices/inv-2001 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("application/json") && ok.contains("\"inv-2001\""),
            "{ok}"
        );
        let big = format!(
            "POST /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let refused = raw_http(addr, &big).await;
        assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
        assert!(refused.contains("payload_too_large"), "{refused}");
        let wrong = raw_http(
            addr,
            "DELETE /invoices HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(wrong.starts_with("HTTP/1.1 405"), "{wrong}");
        assert!(wrong.to_ascii_lowercase().contains("allow: get"), "{wrong}");
        stop.cancel();
        let _ = task.await;
    }

    async fn raw_http(addr: SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}
