//! The echo every demo service falls back to: any path a service does not
//! serve answers with JSON echoing the method, path, headers and body it
//! received, so a user (or a test) can see exactly what the mesh delivered.
//! `/status/<code>` answers with that status, to show breakers opening. The
//! `meshward.demo.v1.Echo` gRPC service does the same for gRPC.

use std::collections::BTreeMap;

use http::StatusCode;
use meshward_contract::pb::demo::echo_server::Echo;
use meshward_contract::pb::demo::{EchoReply, EchoRequest};
use serde_json::{Map, Value, json};

use super::request::{DemoRequest, Reply};

/// What the mesh delivered: `service`, `method`, `path` (with the query),
/// `protocol`, `headers` and `body` (lossy UTF-8).
pub fn fields(service: &str, req: &DemoRequest) -> Map<String, Value> {
    let headers: BTreeMap<String, String> = req
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let value = json!({
        "service": service,
        "method": req.method.as_str(),
        "path": req.target(),
        "protocol": format!("{:?}", req.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&req.body),
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The echo answer: 200, or the status `/status/<code>` names.
pub fn reply(service: &str, req: &DemoRequest) -> Reply {
    let status = req
        .path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    Reply::new(status, Value::Object(fields(service, req)))
}

/// `meshward.demo.v1.Echo`: the message back, with the metadata received;
/// `fail_with_code` makes it fail with that gRPC code.
pub struct EchoService {
    pub name: String,
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn echoes_what_arrived() {
        let mut req = DemoRequest::new(Method::POST, "/anything?q=1", r#"{"a":1}"#);
        req.headers.insert(
            "x-agent-id",
            "spiffe://example.org/agent/a".parse().unwrap(),
        );
        let r = reply("svc", &req);
        assert_eq!(r.status, 200);
        assert_eq!(r.body["service"], "svc");
        assert_eq!(r.body["method"], "POST");
        assert_eq!(r.body["path"], "/anything?q=1");
        assert_eq!(r.body["protocol"], "HTTP/1.1");
        assert_eq!(r.body["body"], r#"{"a":1}"#);
        assert_eq!(
            r.body["headers"]["x-agent-id"],
            "spiffe://example.org/agent/a"
        );
    }

    #[test]
    fn status_path_sets_the_status() {
        let r = reply("svc", &DemoRequest::new(Method::GET, "/status/503", ""));
        assert_eq!(r.status, 503);
        let r = reply("svc", &DemoRequest::new(Method::GET, "/status/abc", ""));
        assert_eq!(r.status, 200);
        let r = reply("svc", &DemoRequest::new(Method::GET, "/status/99999", ""));
        assert_eq!(r.status, 200);
    }
}
