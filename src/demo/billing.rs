//! billing-system: a fixture of invoices and refunds against them.
//!
//! - `GET /invoices?customer_id=c-1001` lists a customer's invoices
//!   (`GET /invoices`: all of them).
//! - `GET /invoices/<id>` reads one, with what was refunded so far.
//! - `POST /invoices/<id>/refund {"amount": 10.5, "reason"?}` refunds part of
//!   it: 400 when the amount is not positive, has more than two decimals, or
//!   exceeds what is still refundable.
//!
//! Amounts are integer cents inside and decimal numbers (EUR) on the wire.
//! Refunds are kept per invoice (a running total, bounded by the fixture),
//! for as long as `meshward up` runs.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use http::Method;
use serde_json::{Value, json};

use super::request::{DemoRequest, Reply, is_id, kind_of, optional_str};

#[derive(Debug, Clone, Copy)]
pub struct Invoice {
    pub id: &'static str,
    pub customer_id: &'static str,
    pub amount_cents: u64,
    pub status: &'static str,
    pub issued: &'static str,
}

/// The fixture. Customer ids match customer-lookup's.
pub const INVOICES: &[Invoice] = &[
    Invoice {
        id: "inv-2001",
        customer_id: "c-1001",
        amount_cents: 12_000,
        status: "paid",
        issued: "2026-10-01",
    },
    Invoice {
        id: "inv-2002",
        customer_id: "c-1001",
        amount_cents: 4_550,
        status: "paid",
        issued: "2026-11-01",
    },
    Invoice {
        id: "inv-2003",
        customer_id: "c-1002",
        amount_cents: 30_000,
        status: "paid",
        issued: "2026-11-01",
    },
    Invoice {
        id: "inv-2004",
        customer_id: "c-1003",
        amount_cents: 1_999,
        status: "open",
        issued: "2026-11-15",
    },
    Invoice {
        id: "inv-2005",
        customer_id: "c-1005",
        amount_cents: 7_500,
        status: "paid",
        issued: "2026-11-20",
    },
];

const CURRENCY: &str = "EUR";
const MAX_REASON_CHARS: usize = 200;

/// Refunds so far, per invoice.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    refunded_cents: BTreeMap<&'static str, u64>,
    refunds: u64,
}

impl Ledger {
    fn state(&self) -> MutexGuard<'_, LedgerState> {
        // Updates are single assignments: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `/invoices`, `/invoices/<id>` and `/invoices/<id>/refund`;
    /// `None` for any other path.
    pub fn handle(&self, req: &DemoRequest) -> Option<Reply> {
        let get = req.method == Method::GET;
        let post = req.method == Method::POST;
        let reply = match req.segments().as_slice() {
            ["invoices"] if get => self.list(req),
            ["invoices", id] if get => self.get(id),
            ["invoices", id, "refund"] if post => self.refund(id, req),
            ["invoices"] | ["invoices", _] => Reply::method_not_allowed(req, "GET"),
            ["invoices", _, "refund"] => Reply::method_not_allowed(req, "POST"),
            _ => return None,
        };
        Some(reply)
    }

    fn list(&self, req: &DemoRequest) -> Reply {
        let customer = match req.query_param("customer_id") {
            Ok(c) => c,
            Err(e) => return e,
        };
        let state = self.state();
        let invoices: Vec<Value> = INVOICES
            .iter()
            .filter(|i| customer.as_deref().is_none_or(|c| i.customer_id == c))
            .map(|i| invoice_json(i, &state))
            .collect();
        Reply::ok(json!({"customer_id": customer, "invoices": invoices}))
    }

    fn get(&self, id: &str) -> Reply {
        match find(id) {
            Ok(i) => Reply::ok(invoice_json(i, &self.state())),
            Err(e) => e,
        }
    }

    fn refund(&self, id: &str, req: &DemoRequest) -> Reply {
        match self.try_refund(id, req) {
            Ok(r) | Err(r) => r,
        }
    }

    fn try_refund(&self, id: &str, req: &DemoRequest) -> Result<Reply, Reply> {
        let invoice = find(id)?;
        let body = req.json_object()?;
        let cents = amount_cents(body.get("amount"))?;
        let reason = optional_str(&body, "reason", MAX_REASON_CHARS)?.unwrap_or("");
        let mut state = self.state();
        let refunded = state.refunded_cents.get(invoice.id).copied().unwrap_or(0);
        let refundable = invoice.amount_cents.saturating_sub(refunded);
        if cents > refundable {
            return Err(Reply::bad_request(format!(
                "a refund of {} exceeds the {} still refundable on {} (amount {})",
                money(cents),
                money(refundable),
                invoice.id,
                money(invoice.amount_cents)
            )));
        }
        state.refunded_cents.insert(invoice.id, refunded + cents);
        state.refunds += 1;
        let refund = json!({
            "id": format!("rf-{}", state.refunds),
            "invoice_id": invoice.id,
            "amount": cents_to_number(cents),
            "currency": CURRENCY,
            "reason": reason,
            "requested_by": req.agent_id(),
        });
        Ok(Reply::ok(
            json!({"refund": refund, "invoice": invoice_json(invoice, &state)}),
        ))
    }
}

fn find(id: &str) -> Result<&'static Invoice, Reply> {
    if !is_id(id) {
        return Err(Reply::bad_request(
            "an invoice id is 1-32 of a-z, 0-9 and '-', like inv-2001",
        ));
    }
    INVOICES
        .iter()
        .find(|i| i.id == id)
        .ok_or_else(|| Reply::not_found(format!("no invoice {id}")))
}

fn invoice_json(i: &Invoice, state: &LedgerState) -> Value {
    let refunded = state.refunded_cents.get(i.id).copied().unwrap_or(0);
    json!({
        "id": i.id,
        "customer_id": i.customer_id,
        "amount": cents_to_number(i.amount_cents),
        "currency": CURRENCY,
        "status": i.status,
        "issued": i.issued,
        "refunded": cents_to_number(refunded),
        "refundable": cents_to_number(i.amount_cents.saturating_sub(refunded)),
    })
}

/// A refund amount: a positive JSON number with at most two decimals.
fn amount_cents(v: Option<&Value>) -> Result<u64, Reply> {
    let amount = match v {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        None | Some(Value::Null) => return Err(Reply::bad_request("field \"amount\" is required")),
        Some(other) => {
            return Err(Reply::bad_request(format!(
                "field \"amount\" must be a number, not {}",
                kind_of(other)
            )));
        }
    };
    // Far above any invoice, and well inside f64's exact integers.
    const MAX_AMOUNT: f64 = 1e9;
    if !amount.is_finite() || amount <= 0.0 || amount > MAX_AMOUNT {
        return Err(Reply::bad_request(
            "field \"amount\" must be a positive number of EUR",
        ));
    }
    let cents = (amount * 100.0).round();
    if (amount * 100.0 - cents).abs() > 1e-6 {
        return Err(Reply::bad_request(
            "field \"amount\" has more than two decimals",
        ));
    }
    // In range by the checks above.
    Ok(cents as u64)
}

fn cents_to_number(cents: u64) -> Value {
    json!(cents as f64 / 100.0)
}

fn money(cents: u64) -> String {
    format!("{}.{:02} {CURRENCY}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(l: &Ledger, method: Method, target: &str, body: &str) -> Reply {
        l.handle(&DemoRequest::new(method, target, body.to_string()))
            .expect("served")
    }

    #[test]
    fn lists_and_reads_invoices() {
        let l = Ledger::default();
        let r = call(&l, Method::GET, "/invoices?customer_id=c-1001", "");
        assert_eq!(r.status, 200);
        let ids: Vec<&str> = r.body["invoices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["inv-2001", "inv-2002"]);
        assert_eq!(r.body["invoices"][1]["amount"], 45.5);
        let r = call(&l, Method::GET, "/invoices", "");
        assert_eq!(r.body["invoices"].as_array().unwrap().len(), INVOICES.len());
        let r = call(&l, Method::GET, "/invoices?customer_id=c-4242", "");
        assert!(r.body["invoices"].as_array().unwrap().is_empty());
        let r = call(&l, Method::GET, "/invoices/inv-2003", "");
        assert_eq!(r.body["amount"], 300.0);
        assert_eq!(r.body["refundable"], 300.0);
        assert_eq!(call(&l, Method::GET, "/invoices/inv-1", "").status, 404);
        assert_eq!(call(&l, Method::GET, "/invoices/INV", "").status, 400);
    }

    #[test]
    fn refunds_are_bounded_by_the_invoice() {
        let l = Ledger::default();
        let r = call(
            &l,
            Method::POST,
            "/invoices/inv-2001/refund",
            r#"{"amount": 100.25}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["refund"]["id"], "rf-1");
        assert_eq!(r.body["refund"]["amount"], 100.25);
        assert_eq!(r.body["invoice"]["refundable"], 19.75);
        let r = call(
            &l,
            Method::POST,
            "/invoices/inv-2001/refund",
            r#"{"amount": 20}"#,
        );
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body["message"],
            "a refund of 20.00 EUR exceeds the 19.75 EUR still refundable on inv-2001 (amount 120.00 EUR)"
        );
        let r = call(
            &l,
            Method::POST,
            "/invoices/inv-2001/refund",
            r#"{"amount": 19.75}"#,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body["invoice"]["refundable"], 0.0);
        assert_eq!(
            call(&l, Method::GET, "/invoices/inv-2001", "").body["refunded"],
            120.0
        );
    }

    #[test]
    fn bad_refunds_are_400_or_404() {
        let l = Ledger::default();
        for body in [
            "",
            "{}",
            "12",
            r#"{"amount": "10"}"#,
            r#"{"amount": 0}"#,
            r#"{"amount": -5}"#,
            r#"{"amount": 1.001}"#,
            r#"{"amount": 1e300}"#,
            r#"{"amount": 5, "reason": 3}"#,
            "{\"amount\": 10",
        ] {
            let r = call(&l, Method::POST, "/invoices/inv-2003/refund", body);
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            assert_eq!(r.body["error"], "bad_request");
        }
        let r = call(
            &l,
            Method::POST,
            "/invoices/inv-9/refund",
            r#"{"amount": 1}"#,
        );
        assert_eq!(r.status, 404);
        assert_eq!(
            call(&l, Method::GET, "/invoices/inv-2003/refund", "").status,
            405
        );
        assert_eq!(
            call(&l, Method::DELETE, "/invoices/inv-2003", "").status,
            405
        );
        assert!(
            l.handle(&DemoRequest::new(Method::GET, "/status/503", ""))
                .is_none()
        );
        // Nothing was refunded by the refused calls.
        assert_eq!(
            call(&l, Method::GET, "/invoices/inv-2003", "").body["refunded"],
            0.0
        );
    }
}
