//! support-system: tickets, in memory, for as long as `meshward up` runs.
//!
//! - `POST /tickets {"customer_id", "subject", "description"?, "priority"?}`
//!   opens one: 201 with the ticket (ids `t-1`, `t-2`, ... in order).
//! - `GET /tickets/<id>` reads one; `GET /tickets?customer_id=` lists.
//! - `PATCH /tickets/<id> {"status": "open"|"pending"|"closed"}` updates one.
//!
//! The store holds at most [`MAX_TICKETS`]; past that, opening one is a 507,
//! so a runaway agent cannot grow the process without bound. Each ticket
//! records `opened_by`, the SPIFFE ID the mesh asserted (`x-agent-id`).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use http::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::request::{DemoRequest, Reply, is_id, optional_str, required_str};

pub const MAX_TICKETS: usize = 1000;
const MAX_SUBJECT_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 4000;
const PRIORITIES: &[&str] = &["low", "normal", "high", "urgent"];
const STATUSES: &[&str] = &["open", "pending", "closed"];

#[derive(Debug, Clone, Serialize)]
pub struct Ticket {
    pub id: String,
    pub customer_id: String,
    pub subject: String,
    pub description: String,
    pub priority: String,
    pub status: String,
    pub opened_by: Option<String>,
}

/// The ticket store: ids are a counter, tickets a map keyed by it.
#[derive(Debug, Default)]
pub struct Tickets {
    inner: Mutex<Store>,
}

#[derive(Debug, Default)]
struct Store {
    next: u64,
    tickets: BTreeMap<u64, Ticket>,
}

impl Tickets {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave a half-written ticket
        // (inserts are one call), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `/tickets` and `/tickets/<id>`; `None` for any other path.
    pub fn handle(&self, req: &DemoRequest) -> Option<Reply> {
        let reply = match (req.method.as_str(), req.segments().as_slice()) {
            ("POST", ["tickets"]) => self.open(req),
            ("GET", ["tickets"]) => self.list(req),
            ("GET", ["tickets", id]) => self.get(id),
            ("PATCH", ["tickets", id]) => self.update(id, req),
            (_, ["tickets"]) => Reply::method_not_allowed(req, "GET, POST"),
            (_, ["tickets", _]) => Reply::method_not_allowed(req, "GET, PATCH"),
            _ => return None,
        };
        Some(reply)
    }

    fn open(&self, req: &DemoRequest) -> Reply {
        match self.try_open(req) {
            Ok(r) | Err(r) => r,
        }
    }

    fn try_open(&self, req: &DemoRequest) -> Result<Reply, Reply> {
        let body = req.json_object()?;
        let customer_id = required_str(&body, "customer_id", 32)?;
        if !is_id(customer_id) {
            return Err(Reply::bad_request(
                "field \"customer_id\" is 1-32 of a-z, 0-9 and '-', like c-1001",
            ));
        }
        let subject = required_str(&body, "subject", MAX_SUBJECT_CHARS)?;
        let description =
            optional_str(&body, "description", MAX_DESCRIPTION_CHARS)?.unwrap_or_default();
        let priority = optional_str(&body, "priority", 16)?.unwrap_or("normal");
        if !PRIORITIES.contains(&priority) {
            return Err(Reply::bad_request(format!(
                "field \"priority\" must be one of {}",
                PRIORITIES.join(", ")
            )));
        }
        let mut store = self.store();
        if store.tickets.len() >= MAX_TICKETS {
            return Err(Reply::error(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("the support system holds at most {MAX_TICKETS} tickets"),
            ));
        }
        store.next += 1;
        let n = store.next;
        let ticket = Ticket {
            id: format!("t-{n}"),
            customer_id: customer_id.to_string(),
            subject: subject.trim().to_string(),
            description: description.to_string(),
            priority: priority.to_string(),
            status: "open".to_string(),
            opened_by: req.agent_id().map(str::to_string),
        };
        store.tickets.insert(n, ticket.clone());
        Ok(Reply::new(StatusCode::CREATED, json!(ticket)))
    }

    fn list(&self, req: &DemoRequest) -> Reply {
        let customer = match req.query_param("customer_id") {
            Ok(c) => c,
            Err(e) => return e,
        };
        let store = self.store();
        let tickets: Vec<&Ticket> = store
            .tickets
            .values()
            .filter(|t| customer.as_deref().is_none_or(|c| t.customer_id == c))
            .collect();
        Reply::ok(json!({"tickets": tickets}))
    }

    fn get(&self, id: &str) -> Reply {
        match parse_id(id) {
            Ok(n) => match self.store().tickets.get(&n) {
                Some(t) => Reply::ok(json!(t)),
                None => Reply::not_found(format!("no ticket {id}")),
            },
            Err(e) => e,
        }
    }

    fn update(&self, id: &str, req: &DemoRequest) -> Reply {
        let n = match parse_id(id) {
            Ok(n) => n,
            Err(e) => return e,
        };
        let status = match req
            .json_object()
            .and_then(|body| required_str(&body, "status", 16).map(str::to_string))
        {
            Ok(s) => s,
            Err(e) => return e,
        };
        if !STATUSES.contains(&status.as_str()) {
            return Reply::bad_request(format!(
                "field \"status\" must be one of {}",
                STATUSES.join(", ")
            ));
        }
        let mut store = self.store();
        match store.tickets.get_mut(&n) {
            Some(t) => {
                t.status = status;
                Reply::ok(json!(t))
            }
            None => Reply::not_found(format!("no ticket {id}")),
        }
    }
}

/// `t-<n>` to `n`.
fn parse_id(id: &str) -> Result<u64, Reply> {
    id.strip_prefix("t-")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| Reply::bad_request(format!("{id:?} is not a ticket id (t-<number>)")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn call(t: &Tickets, method: Method, target: &str, body: &str) -> Reply {
        t.handle(&DemoRequest::new(method, target, body.to_string()))
            .expect("served")
    }

    #[test]
    fn open_read_update() {
        let t = Tickets::default();
        let mut req = DemoRequest::new(
            Method::POST,
            "/tickets",
            r#"{"customer_id": "c-1001", "subject": "App crashes", "priority": "high"}"#,
        );
        req.headers.insert(
            "x-agent-id",
            "spiffe://example.org/agent/support-triage".parse().unwrap(),
        );
        let r = t.handle(&req).unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["id"], "t-1");
        assert_eq!(r.body["status"], "open");
        assert_eq!(r.body["priority"], "high");
        assert_eq!(
            r.body["opened_by"],
            "spiffe://example.org/agent/support-triage"
        );

        let r = call(&t, Method::GET, "/tickets/t-1", "");
        assert_eq!(r.body["subject"], "App crashes");
        let r = call(&t, Method::PATCH, "/tickets/t-1", r#"{"status": "closed"}"#);
        assert_eq!(r.status, 200);
        assert_eq!(r.body["status"], "closed");
        assert_eq!(
            call(&t, Method::GET, "/tickets/t-1", "").body["status"],
            "closed"
        );

        let r = call(
            &t,
            Method::POST,
            "/tickets",
            r#"{"customer_id": "c-1002", "subject": "Hi"}"#,
        );
        assert_eq!(r.body["id"], "t-2");
        assert_eq!(r.body["priority"], "normal");
        let r = call(&t, Method::GET, "/tickets?customer_id=c-1002", "");
        let list = r.body["tickets"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["id"], "t-2");
        assert_eq!(
            call(&t, Method::GET, "/tickets", "").body["tickets"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn bad_input_is_400_and_unknown_is_404() {
        let t = Tickets::default();
        for body in [
            "",
            "nope",
            r#"{"subject": "x"}"#,
            r#"{"customer_id": "c-1001"}"#,
            r#"{"customer_id": 1001, "subject": "x"}"#,
            r#"{"customer_id": "C 1001", "subject": "x"}"#,
            r#"{"customer_id": "c-1001", "subject": "x", "priority": "asap"}"#,
            r#"{"customer_id": "c-1001", "subject": ""}"#,
        ] {
            let r = call(&t, Method::POST, "/tickets", body);
            assert_eq!(r.status, 400, "{body}: {}", r.body);
        }
        let long = json!({"customer_id": "c-1", "subject": "s".repeat(201)}).to_string();
        assert_eq!(call(&t, Method::POST, "/tickets", &long).status, 400);
        assert_eq!(call(&t, Method::GET, "/tickets/t-9", "").status, 404);
        assert_eq!(call(&t, Method::GET, "/tickets/9", "").status, 400);
        assert_eq!(
            call(&t, Method::GET, "/tickets/t-99999999999999999999999", "").status,
            400
        );
        assert_eq!(
            call(&t, Method::PATCH, "/tickets/t-9", r#"{"status": "open"}"#).status,
            404
        );
        let r = call(
            &t,
            Method::POST,
            "/tickets",
            r#"{"customer_id": "c-1", "subject": "s"}"#,
        );
        assert_eq!(r.status, 201);
        for body in ["", r#"{"status": "done"}"#, r#"{"status": 1}"#] {
            assert_eq!(
                call(&t, Method::PATCH, "/tickets/t-1", body).status,
                400,
                "{body}"
            );
        }
        assert_eq!(call(&t, Method::DELETE, "/tickets/t-1", "").status, 405);
        assert_eq!(call(&t, Method::PUT, "/tickets", "").status, 405);
        assert!(t.handle(&DemoRequest::new(Method::GET, "/x", "")).is_none());
    }

    #[test]
    fn the_store_is_bounded() {
        let t = Tickets::default();
        let body = r#"{"customer_id": "c-1001", "subject": "again"}"#;
        for _ in 0..MAX_TICKETS {
            assert_eq!(call(&t, Method::POST, "/tickets", body).status, 201);
        }
        let r = call(&t, Method::POST, "/tickets", body);
        assert_eq!(r.status, 507);
        assert_eq!(r.body["error"], "insufficient_storage");
        assert!(r.body["message"].as_str().unwrap().contains("1000"));
    }
}
