use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::policy::Direction;

fn declared(inputs: &[&str]) -> Value {
    json!({"meshward": {"decision_cache": {"inputs": inputs}}})
}

fn cache(inputs: &[&str], rego: &str) -> Result<Option<DecisionCache>, CacheError> {
    DecisionCache::for_bundle(&declared(inputs), &[("p.rego", rego)])
}

const READS_METHOD_AND_CALLER: &str = r#"package p
import rego.v1
# input.attributes.request.http.body in a comment is not a reference
allow if {
	input.attributes.request.http.method == "GET"
	input.meshward.caller.attributes["team"] == "ops"
	x := {"input": "a string, not a reference"}
}
"#;

#[test]
fn no_declaration_no_cache() {
    let none = DecisionCache::for_bundle(&json!({"other": 1}), &[("p.rego", "package p")]);
    assert!(matches!(none, Ok(None)));
}

#[test]
fn covered_references_are_accepted() {
    let c = cache(
        &["attributes.request.http.method", "meshward.caller"],
        READS_METHOD_AND_CALLER,
    )
    .unwrap()
    .unwrap();
    assert!(c.is_empty());
}

#[test]
fn an_undeclared_read_refuses_the_bundle_naming_module_line_and_field() {
    let e = cache(&["meshward.caller"], READS_METHOD_AND_CALLER).unwrap_err();
    assert_eq!(
        e,
        CacheError::Undeclared {
            module: "p.rego".into(),
            line: 5,
            read: "input.attributes.request.http.method".into(),
        }
    );
    assert!(e.to_string().contains("p.rego:5"), "{e}");
}

#[test]
fn references_the_scan_cannot_follow_read_everything_below() {
    // A dynamic index stops at `headers`: declaring one header is not enough.
    let dynamic = "package p\nallow if input.attributes.request.http.headers[input.k] == \"x\"\n";
    assert!(matches!(
        cache(&["attributes.request.http.headers.x-team"], dynamic),
        Err(CacheError::Undeclared { ref read, .. }) if read == "input.attributes.request.http.headers"
    ));
    // `input` passed whole (walk, object.get, with) reads the whole document.
    for whole in [
        "package p\nallow if { some x in input; x }\n",
        "package p\nallow if object.get(input, [\"a\"], 1) == 1\n",
        "package p\nallow if { true } \nd := allow with input as {}\n",
    ] {
        assert!(
            matches!(
                cache(&["meshward.caller"], whole),
                Err(CacheError::Undeclared { ref read, .. }) if read == "input"
            ),
            "{whole}"
        );
    }
    // A field named `input` of something else is not the input document.
    assert!(
        cache(
            &["meshward.caller"],
            "package p\nallow if data.x.input == 1\n"
        )
        .is_ok()
    );
    // An escaped string index is not followed.
    let escaped =
        "package p\nallow if input.attributes.request.http.headers[\"x-t\\u0065am\"] == \"x\"\n";
    assert!(cache(&["attributes.request.http.headers.x-team"], escaped).is_err());
    let plain = "package p\nallow if input.attributes.request.http.headers[\"x-team\"] == \"x\"\n";
    assert!(cache(&["attributes.request.http.headers.x-team"], plain).is_ok());
}

#[test]
fn aliases_through_imports_are_checked_at_the_import() {
    let aliased = "package p\nimport input.meshward.caller as who\nallow if who.name == \"a\"\n";
    assert!(cache(&["meshward.caller"], aliased).is_ok());
    assert!(cache(&["meshward.service"], aliased).is_err());
}

#[test]
fn impure_builtins_refuse_the_bundle() {
    for (rego, builtin) in [
        ("package p\nallow if time.now_ns() > 0\n", "time.now_ns"),
        (
            "package p\nallow if http.send({\"method\": \"get\", \"url\": \"x\"}).status_code == 200\n",
            "http.send",
        ),
    ] {
        assert!(
            matches!(
                cache(&["meshward.caller"], rego),
                Err(CacheError::Impure { builtin: b, line: 2, .. }) if b == builtin
            ),
            "{rego}"
        );
    }
}

#[test]
fn per_request_fields_cannot_be_declared() {
    for path in [
        "attributes.request.http.id",
        "attributes.request.http.body",
        "parsed_body",
        "attributes.request.time",
        "attributes.source.address",
        "attributes.request.http.headers.x-request-id",
        "attributes",
        "meshward",
        "",
        "meshward..caller",
    ] {
        assert!(
            matches!(
                cache(&[path], "package p\nallow := true\n"),
                Err(CacheError::Unsupported { .. })
            ),
            "{path}"
        );
    }
    assert_eq!(
        DecisionCache::for_bundle(
            &json!({"meshward": {"decision_cache": {"inputs": "meshward.caller"}}}),
            &[]
        )
        .unwrap_err(),
        CacheError::NotAList
    );
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
    )
    .unwrap()
    .unwrap();
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
    )
    .unwrap()
    .unwrap();
    let decision = Arc::new(Decision::allow());
    for i in 0..MAX_ENTRIES + 10 {
        c.insert(i.to_le_bytes().to_vec(), decision.clone());
    }
    assert!(c.len() <= MAX_ENTRIES, "{}", c.len());
    assert!(c.get(&(MAX_ENTRIES + 9).to_le_bytes()).is_some());
    assert!(c.get(&0usize.to_le_bytes()).is_none());
}
