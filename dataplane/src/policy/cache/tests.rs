use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::policy::Direction;

fn cache(inputs: &[&str], rego: &str) -> DecisionCache {
    let data = json!({"meshward": {"decision_cache": {"inputs": inputs}}});
    DecisionCache::for_bundle(&data, &[("p.rego", rego)])
        .expect("a valid declaration")
        .expect("a declaration")
}

#[test]
fn no_declaration_no_cache() {
    let none = DecisionCache::for_bundle(&json!({"other": 1}), &[("p.rego", "package p")]);
    assert!(matches!(none, Ok(None)));
}

struct Owned {
    headers: http::HeaderMap,
    attributes: BTreeMap<String, String>,
    permissions: Vec<String>,
    metadata: BTreeMap<String, String>,
}

fn owned() -> Owned {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-team", "ops".parse().unwrap());
    headers.insert("x-request-id", "r-1".parse().unwrap());
    Owned {
        headers,
        attributes: BTreeMap::from([("team".to_string(), "ops".to_string())]),
        permissions: vec!["skills:invoke".into()],
        metadata: BTreeMap::new(),
    }
}

fn facts(o: &Owned) -> RequestFacts<'_> {
    RequestFacts {
        checkpoint: Direction::Inbound.into(),
        method: "GET",
        path: "/a",
        raw_path: "/a",
        host: "svc",
        scheme: "https",
        protocol: "HTTP/2",
        headers: &o.headers,
        body: None,
        request_id: "r-1",
        source_principal: Some("spiffe://example.org/agent/a"),
        destination_principal: Some("spiffe://example.org/service/s"),
        source_address: None,
        destination_address: None,
        caller: Some(CallerFacts {
            spiffe_id: "spiffe://example.org/agent/a",
            name: "a",
            attributes: &o.attributes,
            permissions: &o.permissions,
        }),
        service: Some(ServiceFacts {
            name: "s",
            spiffe_id: "spiffe://example.org/service/s",
            metadata: &o.metadata,
        }),
    }
}

#[test]
fn keys_hold_the_declared_facts_and_the_identities() {
    let c = cache(
        &[
            "attributes.request.http.method",
            "parsed_path",
            "meshward.caller",
            "attributes.request.http.headers.x-team",
        ],
        "package p\nallow := true\n",
    );
    let o = owned();
    let base = c.key(&facts(&o));

    // The request id is not declared: another id, same key.
    let mut f = facts(&o);
    f.request_id = "r-2";
    assert_eq!(c.key(&f), base);

    // Every declared fact, and the principals and checkpoint, change it.
    let other_permissions = vec!["data:read".to_string()];
    let mut other_headers = o.headers.clone();
    other_headers.insert("x-team", "dev".parse().unwrap());
    let variant = |change: &dyn Fn(&mut RequestFacts<'_>)| {
        let mut f = facts(&o);
        change(&mut f);
        c.key(&f)
    };
    let mut keys = vec![
        variant(&|f| f.method = "POST"),
        variant(&|f| f.path = "/b"),
        variant(&|f| f.path = "/a?x=1"),
        variant(&|f| f.source_principal = Some("spiffe://example.org/agent/b")),
        variant(&|f| f.source_principal = None),
        variant(&|f| f.destination_principal = Some("spiffe://example.org/service/t")),
        variant(&|f| f.checkpoint = Direction::Outbound.into()),
        variant(&|f| f.caller = None),
    ];
    let mut f = facts(&o);
    if let Some(caller) = f.caller.as_mut() {
        caller.permissions = &other_permissions;
    }
    keys.push(c.key(&f));
    let mut f = facts(&o);
    f.headers = &other_headers;
    keys.push(c.key(&f));
    for (i, key) in keys.iter().enumerate() {
        assert_ne!(*key, base, "variant {i}");
    }

    // Length prefixes: moving bytes between fields makes another key.
    let mut a = facts(&o);
    a.method = "GET/";
    a.path = "a";
    assert_ne!(c.key(&a), base);

    // The body is never part of the key (a bundle reading it has no cache).
    let mut f = facts(&o);
    f.body = Some(b"{}");
    assert_eq!(c.key(&f), base);
}

#[test]
fn the_cache_is_bounded() {
    let c = cache(
        &["attributes.request.http.path"],
        "package p\nallow := true\n",
    );
    let decision = Arc::new(Decision::allow());
    for i in 0..MAX_ENTRIES + 10 {
        c.insert(i.to_le_bytes().to_vec(), decision.clone());
    }
    assert!(c.len() <= MAX_ENTRIES, "{}", c.len());
    assert!(c.get(&(MAX_ENTRIES + 9).to_le_bytes()).is_some());
    assert!(c.get(&0usize.to_le_bytes()).is_none());
}
