use serde_json::json;

use super::*;

fn declaration(inputs: &[&str]) -> Value {
    json!({"meshward": {"decision_cache": {"inputs": inputs}}})
}

fn cache(inputs: &[&str], rego: &str) -> Result<Option<Vec<Part>>, CacheError> {
    super::declared(&declaration(inputs), &[("p.rego", rego)])
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
    let none = super::declared(&json!({"other": 1}), &[("p.rego", "package p")]);
    assert!(matches!(none, Ok(None)));
}

#[test]
fn covered_references_are_accepted() {
    let parts = cache(
        &["attributes.request.http.method", "meshward.caller"],
        READS_METHOD_AND_CALLER,
    )
    .unwrap()
    .unwrap();
    assert_eq!(parts, vec![Part::Method, Part::Caller]);
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
            remedy: "declare it or remove the declaration",
        }
    );
    assert!(e.to_string().contains("p.rego:5"), "{e}");
    // A field no cache can key on says so.
    let body = "package p\nallow if input.parsed_body.action == \"x\"\n";
    let e = cache(&["meshward.caller"], body).unwrap_err();
    assert!(
        e.to_string()
            .contains("reads input.parsed_body.action, which data.meshward.decision_cache.inputs does not cover; it cannot be declared"),
        "{e}"
    );
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
        super::declared(
            &json!({"meshward": {"decision_cache": {"inputs": "meshward.caller"}}}),
            &[]
        )
        .unwrap_err(),
        CacheError::NotAList
    );
}

#[test]
fn constant_parts_are_dropped_and_the_rest_sorted_once() {
    let parts = cache(
        &[
            "meshward.service.name",
            "attributes.source.principal",
            "parsed_path",
            "attributes.request.http.path",
            "meshward.direction",
            "version",
            "meshward.service",
        ],
        "package p\nallow := true\n",
    )
    .unwrap()
    .unwrap();
    assert_eq!(parts, vec![Part::Path, Part::Service]);
}
