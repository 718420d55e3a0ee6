//! hello-skill: the seed's hello world. `GET /say-hello?name=Ada` or
//! `POST /say-hello {"name": "Ada"}` answers `{"message": "Hello, Ada!"}`.
//!
//! Like the seed's Flask skill, it shows what the mesh told it about the
//! caller: the answer also carries the echo fields (`path`, `headers` with
//! `x-agent-id` and the caller's team and type, ...). Without a name it
//! greets the caller's SPIFFE ID, as the seed does.

use serde_json::{Value, json};

use super::echo;
use super::request::{DemoRequest, Reply, kind_of};

/// Longest name greeted, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Serves `/say-hello`; `None` for any other path.
pub fn handle(service: &str, req: &DemoRequest) -> Option<Reply> {
    if req.path != "/say-hello" {
        return None;
    }
    Some(say_hello(service, req).unwrap_or_else(|e| e))
}

fn say_hello(service: &str, req: &DemoRequest) -> Result<Reply, Reply> {
    let from_body = match req.method.as_str() {
        "GET" => None,
        "POST" => match req.json_object()?.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(Reply::bad_request(format!(
                    "field \"name\" must be a string, not {}",
                    kind_of(other)
                )));
            }
        },
        _ => return Err(Reply::method_not_allowed(req, "GET, POST")),
    };
    let name = match from_body {
        Some(n) => n,
        None => match req.query_param("name")? {
            Some(n) => n,
            None => req.agent_id().unwrap_or("world").to_string(),
        },
    };
    let name = check_name(&name)?;
    let mut body = echo::fields(service, req);
    body.insert("message".into(), json!(format!("Hello, {name}!")));
    Ok(Reply::ok(Value::Object(body)))
}

fn check_name(name: &str) -> Result<&str, Reply> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Reply::bad_request("name is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Reply::bad_request(format!(
            "name is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Reply::bad_request("name contains control characters"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn call(method: Method, target: &str, body: &str) -> Reply {
        handle(
            "hello-skill",
            &DemoRequest::new(method, target, body.to_string()),
        )
        .expect("served")
    }

    #[test]
    fn greets_by_query_or_body() {
        let r = call(Method::GET, "/say-hello?name=Ada", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.body["message"], "Hello, Ada!");
        let r = call(Method::POST, "/say-hello", r#"{"name":"Grace"}"#);
        assert_eq!(r.body["message"], "Hello, Grace!");
        // The echo fields ride along: the skill shows what the mesh delivered.
        assert_eq!(r.body["path"], "/say-hello");
        assert_eq!(r.body["body"], r#"{"name":"Grace"}"#);
        assert_eq!(r.body["service"], "hello-skill");
    }

    #[test]
    fn without_a_name_greets_the_caller() {
        let r = call(Method::POST, "/say-hello", "{}");
        assert_eq!(r.body["message"], "Hello, world!");
        let r = call(Method::POST, "/say-hello", r#"{"other": 1}"#);
        assert_eq!(r.status, 200);
        let mut req = DemoRequest::new(Method::GET, "/say-hello", "");
        req.headers.insert(
            "x-agent-id",
            "spiffe://example.org/agent/support-triage".parse().unwrap(),
        );
        let r = handle("hello-skill", &req).unwrap();
        assert_eq!(
            r.body["message"],
            "Hello, spiffe://example.org/agent/support-triage!"
        );
    }

    #[test]
    fn bad_names_are_400() {
        for (method, target, body) in [
            (Method::GET, "/say-hello?name=", ""),
            (Method::GET, "/say-hello?name=%zz", ""),
            (Method::GET, "/say-hello?name=a%0Ab", ""),
            (Method::POST, "/say-hello", r#"{"name": 7}"#),
            (Method::POST, "/say-hello", r#"{"name": "  "}"#),
            (Method::POST, "/say-hello", "not json"),
            (Method::POST, "/say-hello", "[]"),
        ] {
            let r = call(method, target, body);
            assert_eq!(r.status, 400, "{target} {body}: {}", r.body);
            assert_eq!(r.body["error"], "bad_request");
        }
        let long = format!("/say-hello?name={}", "a".repeat(MAX_NAME_CHARS + 1));
        let r = call(Method::GET, &long, "");
        assert_eq!(r.status, 400);
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains("longer than 64")
        );
        let ok = format!("/say-hello?name={}", "é".repeat(MAX_NAME_CHARS));
        assert_eq!(call(Method::GET, &ok, "").status, 200);
    }

    #[test]
    fn other_methods_and_paths() {
        let r = call(Method::DELETE, "/say-hello", "");
        assert_eq!(r.status, 405);
        assert_eq!(r.allow, Some("GET, POST"));
        assert!(handle("hello-skill", &DemoRequest::new(Method::GET, "/x", "")).is_none());
    }
}
