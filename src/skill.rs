//! The demo skills `meshward up` runs behind each inbound dataplane.
//!
//! A skill answers every HTTP request with JSON echoing the method, path,
//! headers and body it received, and serves the `meshward.demo.v1.Echo` gRPC
//! service, so a user (or a test) can see exactly what the mesh delivered.
//! `/status/<code>` answers with that status, to show breakers opening.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshward_contract::pb::demo::echo_server::{Echo, EchoServer};
use meshward_contract::pb::demo::{EchoReply, EchoRequest};
use meshward_dataplane::listener::{Listener, ListenerKind, ListenerLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

type SkillBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Serves the echo skill named `name` until `stop` is cancelled.
pub async fn serve(name: String, listener: TcpListener, stop: CancellationToken) {
    let grpc = tonic::service::Routes::new(EchoServer::new(EchoService { name: name.clone() }));
    // The listener's accept backs off on errors (descriptor exhaustion)
    // instead of spinning; a demo skill takes the default limits.
    let listener = Listener::new(listener, ListenerKind::Inbound, format!("skill/{name}"));
    let limits = ListenerLimits::default();
    while let Some(accepted) = listener.accept(&stop, || limits).await {
        let tcp = accepted.tcp;
        let slot = accepted.slot;
        let name = name.clone();
        let grpc = grpc.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
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
                        Ok(echo_http(&name, req).await)
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

fn full(b: impl Into<Bytes>) -> SkillBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

async fn echo_http(name: &str, req: Request<Incoming>) -> Response<SkillBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let status = parts
        .uri
        .path()
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let json = serde_json::json!({
        "service": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "protocol": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = Response::new(full(json.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

struct EchoService {
    name: String,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let msg = request.into_inner();
        if msg.fail_with_code != 0 {
            return Err(tonic::Status::new(
                tonic::Code::from(msg.fail_with_code),
                format!("{} failed on request", self.name),
            ));
        }
        Ok(tonic::Response::new(EchoReply {
            message: msg.message,
            service: self.name.clone(),
            path: "/meshward.demo.v1.Echo/Echo".into(),
            headers,
        }))
    }
}

/// Binds a loopback port for a skill.
pub async fn bind_loopback() -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
