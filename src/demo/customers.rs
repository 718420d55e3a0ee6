//! customer-lookup: a read-only fixture of five customers.
//! `GET /customers/<id>` answers one (404 when unknown);
//! `GET /customers?email=<address>` searches by e-mail (case-insensitive);
//! `GET /customers` lists them all.

use http::Method;
use serde::Serialize;
use serde_json::json;

use super::request::{DemoRequest, Reply, is_id};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Customer {
    pub id: &'static str,
    pub name: &'static str,
    pub email: &'static str,
    pub plan: &'static str,
    pub preferred_language: &'static str,
}

/// The fixture. Ids match billing-system's invoices.
pub const CUSTOMERS: &[Customer] = &[
    Customer {
        id: "c-1001",
        name: "Ada Lovelace",
        email: "ada@example.com",
        plan: "enterprise",
        preferred_language: "en",
    },
    Customer {
        id: "c-1002",
        name: "Grace Hopper",
        email: "grace@example.com",
        plan: "pro",
        preferred_language: "en",
    },
    Customer {
        id: "c-1003",
        name: "Alan Turing",
        email: "alan@example.com",
        plan: "free",
        preferred_language: "en",
    },
    Customer {
        id: "c-1004",
        name: "Hedy Lamarr",
        email: "hedy@example.com",
        plan: "pro",
        preferred_language: "de",
    },
    Customer {
        id: "c-1005",
        name: "Katherine Johnson",
        email: "katherine@example.com",
        plan: "enterprise",
        preferred_language: "en",
    },
];

/// Longest e-mail address searched for (RFC 5321's path limit).
const MAX_EMAIL_BYTES: usize = 254;

pub fn find(id: &str) -> Option<&'static Customer> {
    CUSTOMERS.iter().find(|c| c.id == id)
}

/// Serves `/customers` and `/customers/<id>`; `None` for any other path.
pub fn handle(req: &DemoRequest) -> Option<Reply> {
    let reply = match req.segments().as_slice() {
        ["customers"] if req.method == Method::GET => search(req),
        ["customers", id] if req.method == Method::GET => lookup(id),
        ["customers"] | ["customers", _] => Reply::method_not_allowed(req, "GET"),
        _ => return None,
    };
    Some(reply)
}

fn lookup(id: &str) -> Reply {
    if !is_id(id) {
        return Reply::bad_request("a customer id is 1-32 of a-z, 0-9 and '-', like c-1001");
    }
    match find(id) {
        Some(c) => Reply::ok(json!(c)),
        None => Reply::not_found(format!("no customer {id}")),
    }
}

fn search(req: &DemoRequest) -> Reply {
    let email = match req.query_param("email") {
        Ok(e) => e,
        Err(e) => return e,
    };
    let found: Vec<&Customer> = match &email {
        Some(e) if e.len() > MAX_EMAIL_BYTES => {
            return Reply::bad_request(format!("email is longer than {MAX_EMAIL_BYTES} bytes"));
        }
        Some(e) => CUSTOMERS
            .iter()
            .filter(|c| c.email.eq_ignore_ascii_case(e.trim()))
            .collect(),
        None => CUSTOMERS.iter().collect(),
    };
    Reply::ok(json!({"customers": found}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> Reply {
        handle(&DemoRequest::new(Method::GET, target, "")).expect("served")
    }

    #[test]
    fn looks_up_by_id() {
        let r = get("/customers/c-1001");
        assert_eq!(r.status, 200);
        assert_eq!(r.body["name"], "Ada Lovelace");
        assert_eq!(r.body["email"], "ada@example.com");
        let r = get("/customers/c-9999");
        assert_eq!(r.status, 404);
        assert_eq!(r.body["error"], "not_found");
        assert_eq!(r.body["message"], "no customer c-9999");
        assert_eq!(get("/customers/DROP%20TABLE").status, 400);
    }

    #[test]
    fn searches_by_email() {
        let r = get("/customers?email=GRACE%40example.com");
        assert_eq!(r.status, 200);
        let found = r.body["customers"].as_array().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0]["id"], "c-1002");
        let r = get("/customers?email=nobody@example.com");
        assert_eq!(r.body["customers"].as_array().unwrap().len(), 0);
        let r = get("/customers");
        assert_eq!(
            r.body["customers"].as_array().unwrap().len(),
            CUSTOMERS.len()
        );
        let long = format!("/customers?email={}", "a".repeat(300));
        assert_eq!(get(&long).status, 400);
        assert_eq!(get("/customers?email=%zz").status, 400);
    }

    #[test]
    fn other_methods_and_paths() {
        let r = handle(&DemoRequest::new(Method::POST, "/customers", "{}")).unwrap();
        assert_eq!(r.status, 405);
        assert!(handle(&DemoRequest::new(Method::GET, "/customers/a/b", "")).is_none());
        assert!(handle(&DemoRequest::new(Method::GET, "/status/500", "")).is_none());
    }
}
