//! Every refused class and every accepted shape of `inspect`, plus property
//! tests: no input panics, and whatever is accepted serde_json reads as the
//! same value.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn parse(body: &str) -> Result<Body, McpError> {
    inspect(body.as_bytes(), &Limits::default())
}

fn single(body: &str) -> Message {
    match parse(body) {
        Ok(Body::Single(message)) => message,
        other => panic!("expected one message from {body}, got {other:?}"),
    }
}

fn syntax(body: &str) -> &'static str {
    match parse(body) {
        Err(McpError::Syntax { reason, .. }) => reason,
        other => panic!("expected a syntax error from {body:?}, got {other:?}"),
    }
}

fn invalid(body: &str) -> String {
    match parse(body) {
        Err(McpError::InvalidMessage(reason)) => reason,
        other => panic!("expected an invalid message from {body:?}, got {other:?}"),
    }
}

/// A request whose `params` is `params` (raw JSON text).
fn call(params: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#)
}

/// A notification whose `params` is `params` (raw JSON text).
fn with_params(params: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","method":"m","params":{params}}}"#)
}

// ---- refused: bytes and size ----

#[test]
fn size_limit_boundary() {
    let limits = Limits {
        max_bytes: 100,
        ..Limits::default()
    };
    let body = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    let exact = format!("{body}{}", " ".repeat(100 - body.len()));
    assert_eq!(exact.len(), 100);
    assert!(inspect(exact.as_bytes(), &limits).is_ok());
    let over = format!("{exact} ");
    assert_eq!(
        inspect(over.as_bytes(), &limits),
        Err(McpError::TooLarge { limit: 100 })
    );
}

#[test]
fn byte_order_marks_are_refused() {
    let body = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    for bom in [
        &b"\xEF\xBB\xBF"[..],
        b"\xFE\xFF",
        b"\xFF\xFE",
        b"\x00\x00\xFE\xFF",
    ] {
        let mut bytes = bom.to_vec();
        bytes.extend_from_slice(body.as_bytes());
        assert_eq!(
            inspect(&bytes, &Limits::default()),
            Err(McpError::Bom),
            "{bom:?}"
        );
    }
}

#[test]
fn utf16_without_bom_is_refused() {
    let body = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    let le: Vec<u8> = body.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = body.encode_utf16().flat_map(u16::to_be_bytes).collect();
    for bytes in [le, be] {
        assert!(matches!(
            inspect(&bytes, &Limits::default()),
            Err(McpError::Syntax { .. } | McpError::TrailingData)
        ));
    }
}

#[test]
fn non_utf8_is_refused() {
    for bad in [
        &b"{\"jsonrpc\":\"2.0\",\"method\":\"\xFF\"}"[..],
        b"{\"jsonrpc\":\"2.0\",\"method\":\"\xC0\xAF\"}", // overlong '/'
        b"{\"jsonrpc\":\"2.0\",\"method\":\"\xED\xA0\x80\"}", // encoded surrogate
        b"{\"jsonrpc\":\"2.0\",\"method\":\"\xE2\x82\"}", // truncated
        b"{\"a\xFF\":1}",
    ] {
        assert_eq!(
            inspect(bad, &Limits::default()),
            Err(McpError::NotUtf8),
            "{bad:?}"
        );
    }
}

// ---- refused: JSON syntax ----

#[test]
fn nan_and_infinity_are_refused() {
    for token in ["NaN", "Infinity", "-Infinity", "-NaN", "nan", "inf"] {
        let body = with_params(&format!(r#"{{"x":{token}}}"#));
        assert!(
            matches!(parse(&body), Err(McpError::Syntax { .. })),
            "{token}"
        );
    }
    assert_eq!(
        syntax(&with_params("[NaN]")),
        "NaN and Infinity are not JSON"
    );
    assert_eq!(
        syntax(&with_params("[-Infinity]")),
        "NaN and Infinity are not JSON"
    );
}

#[test]
fn numbers_out_of_range_are_refused() {
    for number in [
        "1e400",
        "-1e400",
        "1.5e309",
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "18446744073709551616",
        "-9223372036854775809",
    ] {
        assert_eq!(
            parse(&with_params(&format!("[{number}]"))),
            Err(McpError::NumberOutOfRange),
            "{number}"
        );
    }
}

#[test]
fn numbers_in_range_are_exact() {
    let message = single(&with_params(
        "[18446744073709551615,-9223372036854775808,-0,0.1,1e-400,2.5E+3,-0.0]",
    ));
    let params = message.params().and_then(Value::as_array).cloned();
    let params = params.unwrap_or_default();
    assert_eq!(params.first().and_then(Value::as_u64), Some(u64::MAX));
    assert_eq!(params.get(1).and_then(Value::as_i64), Some(i64::MIN));
    // -0 is the integer 0, as Python reads it.
    assert_eq!(params.get(2).and_then(Value::as_u64), Some(0));
    assert_eq!(params.get(3).and_then(Value::as_f64), Some(0.1));
    assert_eq!(params.get(4).and_then(Value::as_f64), Some(0.0));
    assert_eq!(params.get(5).and_then(Value::as_f64), Some(2500.0));
    assert!(
        params
            .get(6)
            .and_then(Value::as_f64)
            .is_some_and(|f| f == 0.0 && f.is_sign_negative())
    );
}

#[test]
fn malformed_numbers_are_refused() {
    for number in [
        "01", "+1", ".5", "1.", "1e", "1e+", "0x10", "-", "1.e5", "--1",
    ] {
        assert!(
            matches!(
                parse(&with_params(&format!("[{number}]"))),
                Err(McpError::Syntax { .. })
            ),
            "{number}"
        );
    }
}

#[test]
fn depth_limit_boundary() {
    // The body object is level 1, `params` level 2, each '[' one more.
    let nested = |depth: usize| {
        let inner = depth - 1;
        with_params(&format!("{}{}", "[".repeat(inner), "]".repeat(inner)))
    };
    let limits = Limits::default();
    assert!(inspect(nested(64).as_bytes(), &limits).is_ok());
    assert_eq!(
        inspect(nested(65).as_bytes(), &limits),
        Err(McpError::TooDeep { limit: 64 })
    );
    let small = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    assert!(inspect(with_params(r#"{"a":[]}"#).as_bytes(), &small).is_ok());
    assert_eq!(
        inspect(with_params(r#"{"a":[{}]}"#).as_bytes(), &small),
        Err(McpError::TooDeep { limit: 3 })
    );
}

#[test]
fn depth_is_capped_whatever_the_limit() {
    let limits = Limits {
        max_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_batch: usize::MAX,
    };
    let deep = "[".repeat(1_000_000);
    assert_eq!(
        inspect(deep.as_bytes(), &limits),
        Err(McpError::TooDeep {
            limit: DEPTH_CEILING
        })
    );
    let objects = r#"{"a":"#.repeat(100_000);
    assert_eq!(
        inspect(objects.as_bytes(), &limits),
        Err(McpError::TooDeep {
            limit: DEPTH_CEILING
        })
    );
}

#[test]
fn serde_json_reads_the_deepest_accepted_value() {
    let limits = Limits {
        max_depth: usize::MAX,
        ..Limits::default()
    };
    let depth = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
    let deepest = depth(DEPTH_CEILING);
    // Parsed (then refused as a batch whose element is not a message).
    assert!(matches!(
        inspect(deepest.as_bytes(), &limits),
        Err(McpError::InvalidMessage(_))
    ));
    assert!(serde_json::from_str::<Value>(&deepest).is_ok());
    assert_eq!(
        inspect(depth(DEPTH_CEILING + 1).as_bytes(), &limits),
        Err(McpError::TooDeep {
            limit: DEPTH_CEILING
        })
    );
}

#[test]
fn trailing_data_is_refused() {
    let body = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    for trailer in [
        "{}",
        "x",
        " 1",
        " // comment",
        "\u{0}",
        "\u{a0}",
        "\u{c}",
        "]",
        ",",
    ] {
        assert_eq!(
            parse(&format!("{body}{trailer}")),
            Err(McpError::TrailingData),
            "{trailer:?}"
        );
    }
    assert_eq!(parse("{}{}"), Err(McpError::TrailingData));
    assert_eq!(parse("[1] [2]"), Err(McpError::TrailingData));
}

#[test]
fn lone_surrogates_are_refused() {
    for escape in [
        r"\ud800",
        r"\uDBFF",
        r"\udc00",
        r"\uDFFF",
        r"\ud800\u0041",
        r"\ud800x",
        r"\ud800\ud800",
        r"\ude00\ud83d",
    ] {
        assert_eq!(
            syntax(&with_params(&format!(r#"["{escape}"]"#))),
            "lone surrogate in a \\u escape",
            "{escape}"
        );
    }
}

#[test]
fn control_characters_in_strings_are_refused() {
    for c in ['\u{0}', '\t', '\n', '\r', '\u{1f}'] {
        let body = with_params(&format!(r#"["a{c}b"]"#));
        assert_eq!(syntax(&body), "control character in a string", "{c:?}");
    }
    // DEL and C1 controls are not control characters to JSON.
    assert!(parse(&with_params("[\"a\u{7f}\u{85}b\"]")).is_ok());
}

#[test]
fn other_syntax_errors_are_refused() {
    for body in [
        "",
        "   ",
        "{",
        "[",
        r#"{"jsonrpc":"2.0","method":"m""#,
        r#"{"jsonrpc":"2.0","method":"m",}"#,
        r#"{"jsonrpc":"2.0","method":"m","params":[1,]}"#,
        r#"{'jsonrpc':'2.0'}"#,
        r#"{jsonrpc:"2.0"}"#,
        r#"{"jsonrpc":"2.0" "method":"m"}"#,
        r#"/* c */ {"jsonrpc":"2.0","method":"m"}"#,
        r#"{"jsonrpc":"2.0","method":"\x41"}"#,
        r#"{"jsonrpc":"2.0","method":"\u12G4"}"#,
        r#"{"jsonrpc":"2.0","method":"\u12"}"#,
        r#"{"jsonrpc":"2.0","method":"m\"#,
        r#"{"jsonrpc":"2.0","method":"m","params":[tru]}"#,
        r#"{"jsonrpc":"2.0","method":"m","params":[True]}"#,
        r#"{"jsonrpc":"2.0","method":"m","params":[undefined]}"#,
        "\u{a0}{\"jsonrpc\":\"2.0\",\"method\":\"m\"}",
        "\u{c}{\"jsonrpc\":\"2.0\",\"method\":\"m\"}",
    ] {
        assert!(
            matches!(parse(body), Err(McpError::Syntax { .. })),
            "{body:?}: {:?}",
            parse(body)
        );
    }
}

#[test]
fn syntax_errors_name_the_byte() {
    assert_eq!(
        parse(r#"{"a":x}"#),
        Err(McpError::Syntax {
            at: 5,
            reason: "expected a JSON value"
        })
    );
}

// ---- refused: duplicate keys ----

#[test]
fn duplicate_keys_are_refused() {
    let dup = |body: &str| match parse(body) {
        Err(McpError::DuplicateKey { key }) => key,
        other => panic!("expected a duplicate key in {body}, got {other:?}"),
    };
    assert_eq!(
        dup(&call(r#"{"name":"read","name":"delete"}"#)),
        r#""name""#
    );
    // The same key through a \u escape: Python keeps the last one.
    assert_eq!(
        dup(&call(r#"{"name":"read","na\u006de":"delete"}"#)),
        r#""name""#
    );
    assert_eq!(
        dup(&call(r#"{"\u006eame":"read","name":"x"}"#)),
        r#""name""#
    );
    assert_eq!(dup(&call(r#"{"n\/a":1,"n/a":2}"#)), r#""n/a""#);
    // A surrogate pair and the raw character are the same key.
    assert_eq!(dup(&with_params(r#"{"😀":1,"\ud83d\ude00":2}"#)), r#""😀""#);
    assert_eq!(
        dup(r#"{"jsonrpc":"2.0","method":"tools/list","method":"tools/call"}"#),
        r#""method""#
    );
    assert_eq!(dup(&with_params(r#"[{"a":{"b":1,"b":2}}]"#)), r#""b""#);
    // Different keys that only look alike are not duplicates.
    assert!(parse(&with_params(r#"{"name":1,"Name":2,"name ":3}"#)).is_ok());
}

#[test]
fn duplicate_key_message_is_bounded() {
    let key = "k".repeat(10_000);
    let body = with_params(&format!(r#"{{"{key}":1,"{key}":2}}"#));
    let error = parse(&body).err();
    let Some(McpError::DuplicateKey { key: shown }) = &error else {
        panic!("expected a duplicate key, got {error:?}");
    };
    assert!(shown.chars().count() <= ECHO_LIMIT + 3, "{shown}");
    let response = error.map(|e| e.to_response()).unwrap_or_default();
    assert!(response.len() < 300, "{response}");
    // Control characters are escaped, not echoed.
    let body = with_params(r#"{"a\u001b[31m":1,"a\u001b[31m":2}"#);
    let shown = parse(&body)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
}

// ---- refused: JSON-RPC shape ----

#[test]
fn top_level_must_be_object_or_array() {
    for body in [r#""x""#, "1", "null", "true"] {
        assert_eq!(
            invalid(body),
            "the body must be a JSON object or array",
            "{body}"
        );
    }
}

#[test]
fn empty_batch_is_refused() {
    assert_eq!(parse("[]"), Err(McpError::EmptyBatch));
    assert_eq!(parse(" [ \n ] "), Err(McpError::EmptyBatch));
}

#[test]
fn batch_size_boundary() {
    let limits = Limits {
        max_batch: 3,
        ..Limits::default()
    };
    let batch = |n: usize| {
        let one = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        format!("[{}]", vec![one; n].join(","))
    };
    assert!(matches!(
        inspect(batch(3).as_bytes(), &limits),
        Ok(Body::Batch(m)) if m.len() == 3
    ));
    assert_eq!(
        inspect(batch(4).as_bytes(), &limits),
        Err(McpError::BatchTooLarge { limit: 3 })
    );
}

#[test]
fn batch_elements_must_be_messages() {
    let reason = invalid(r#"[{"jsonrpc":"2.0","method":"m"},1]"#);
    assert_eq!(reason, "batch element 1: a message must be a JSON object");
    let reason = invalid(r#"[[{"jsonrpc":"2.0","method":"m"}]]"#);
    assert!(reason.starts_with("batch element 0:"), "{reason}");
}

#[test]
fn tools_call_needs_a_string_name() {
    for params in [
        r#"{}"#,
        r#"{"name":null}"#,
        r#"{"name":1}"#,
        r#"{"name":["delete"]}"#,
        r#"{"Name":"delete"}"#,
        r#"["delete"]"#,
    ] {
        let reason = invalid(&call(params));
        assert_eq!(
            reason, r#""tools/call" needs a string "params.name""#,
            "{params}"
        );
    }
    let reason = invalid(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
    assert_eq!(reason, r#""tools/call" needs a string "params.name""#);
}

#[test]
fn tools_call_arguments_must_be_an_object() {
    for arguments in ["null", "[]", r#""x""#, "1"] {
        let reason = invalid(&call(&format!(r#"{{"name":"t","arguments":{arguments}}}"#)));
        assert_eq!(
            reason,
            r#""tools/call" "params.arguments" must be an object"#
        );
    }
}

#[test]
fn other_targets_need_strings() {
    invalid(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}"#);
    invalid(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":7}}"#);
    invalid(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":null}}"#);
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","arguments":[]}}"#,
    );
}

#[test]
fn bad_ids_are_refused() {
    for id in ["null", "1.5", "1.0", "1e2", "true", "[]", "{}"] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        assert!(
            matches!(parse(&body), Err(McpError::InvalidMessage(_))),
            "{id}"
        );
    }
    let body = r#"{"jsonrpc":"2.0","id":9223372036854775808,"method":"ping"}"#;
    assert!(matches!(parse(body), Err(McpError::Unsupported(_))));
    let body = r#"{"jsonrpc":"2.0","id":null,"result":{}}"#;
    assert_eq!(invalid(body), r#""id" must not be null"#);
}

#[test]
fn method_must_be_a_string() {
    for method in ["1", "null", r#"["tools/call"]"#, r#"{"a":1}"#, "true"] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":{method}}}"#);
        assert_eq!(invalid(&body), r#""method" must be a string"#, "{method}");
    }
}

#[test]
fn jsonrpc_must_be_2_0() {
    for version in ["\"1.0\"", "2.0", "\"2.0 \"", "null", "\"2\""] {
        let body = format!(r#"{{"jsonrpc":{version},"id":1,"method":"ping"}}"#);
        assert_eq!(invalid(&body), r#""jsonrpc" must be "2.0""#, "{version}");
    }
    assert_eq!(
        invalid(r#"{"id":1,"method":"ping"}"#),
        r#""jsonrpc" must be "2.0""#
    );
    assert_eq!(
        invalid(r#"{"id":1,"result":{}}"#),
        r#""jsonrpc" must be "2.0""#
    );
}

#[test]
fn params_must_be_object_or_array() {
    for params in ["null", "1", r#""x""#, "true"] {
        assert_eq!(
            invalid(&with_params(params)),
            r#""params" must be an object or an array"#
        );
    }
}

#[test]
fn method_with_result_or_error_is_refused() {
    invalid(r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#);
    invalid(r#"{"jsonrpc":"2.0","id":1,"method":"ping","error":{"code":1,"message":"x"}}"#);
}

#[test]
fn malformed_responses_are_refused() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","result":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"error":"boom"}"#,
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":1}}"#,
    ] {
        invalid(body);
    }
}

// ---- accepted ----

#[test]
fn escaped_tool_name_is_the_tool_the_server_runs() {
    let message = single(&call(
        r#"{"name":"delete\u005fcustomer","arguments":{"id":7}}"#,
    ));
    assert_eq!(message.tool(), Some("delete_customer"));
    assert_eq!(
        message.to_input(),
        json!({
            "kind": "request",
            "method": "tools/call",
            "id": 1,
            "params": {"name": "delete_customer", "arguments": {"id": 7}},
            "tool": "delete_customer",
            "arguments": {"id": 7},
        })
    );
    // An escaped method is the method, too.
    let message =
        single(r#"{"jsonrpc":"2.0","id":"a","method":"tools\/call","params":{"\u006eame":"x"}}"#);
    assert_eq!(message.method(), Some("tools/call"));
    assert_eq!(message.tool(), Some("x"));
    assert_eq!(message.id(), Some(&Id::String("a".into())));
}

#[test]
fn tools_call_without_arguments_gets_empty_arguments() {
    let message = single(&call(r#"{"name":"list_files"}"#));
    assert_eq!(message.to_input()["arguments"], json!({}));
    assert_eq!(message.to_input()["params"], json!({"name": "list_files"}));
}

#[test]
fn request_fields() {
    let message = single(r#"{"jsonrpc":"2.0","id":-42,"method":"tools/list","_meta":{"x":1}}"#);
    assert_eq!(message.kind(), Kind::Request);
    assert!(!message.is_notification());
    assert_eq!(message.id(), Some(&Id::Number(-42)));
    assert_eq!(message.tool(), None);
    assert_eq!(
        message.to_input(),
        json!({"kind": "request", "method": "tools/list", "id": -42, "params": null})
    );
    assert_eq!(message.value()["_meta"], json!({"x": 1}));
}

#[test]
fn notification() {
    let body = parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    let Ok(body) = body else {
        panic!("{body:?}");
    };
    assert!(!body.expects_response());
    let [message] = body.messages() else {
        panic!("one message expected");
    };
    assert!(message.is_notification());
    assert_eq!(message.id(), None);
    assert_eq!(
        message.to_input(),
        json!({"kind": "notification", "method": "notifications/initialized", "id": null, "params": null})
    );
}

#[test]
fn responses() {
    let message = single(r#"{"jsonrpc":"2.0","id":"s-1","result":{"roots":[]}}"#);
    assert_eq!(message.kind(), Kind::Response);
    assert_eq!(message.method(), None);
    assert_eq!(message.id(), Some(&Id::String("s-1".into())));
    assert_eq!(
        message.to_input(),
        json!({"kind": "response", "method": null, "id": "s-1", "params": null})
    );
    let message = single(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}"#);
    assert_eq!(message.kind(), Kind::Response);
    assert!(
        !parse(r#"{"jsonrpc":"2.0","id":3,"result":null}"#)
            .map(|b| b.expects_response())
            .unwrap_or(true)
    );
}

#[test]
fn batch_mix() {
    let body = r#" [
        {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}},
        {"jsonrpc":"2.0","id":"r1","result":{}},
        {"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a"}},
        {"jsonrpc":"2.0","id":8,"method":"resources/read","params":{"uri":"file:///etc/passwd"}},
        {"jsonrpc":"2.0","id":9,"method":"prompts/get","params":{"name":"p","arguments":{"k":"v"}}}
    ] "#;
    let Ok(body) = parse(body) else {
        panic!("batch refused");
    };
    assert!(body.expects_response());
    let kinds: Vec<Kind> = body.messages().iter().map(Message::kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Notification,
            Kind::Response,
            Kind::Request,
            Kind::Request,
            Kind::Request
        ]
    );
    let tools: Vec<Option<&str>> = body.messages().iter().map(Message::tool).collect();
    assert_eq!(tools, [None, None, Some("a"), None, None]);
    let inputs: Vec<Value> = body.messages().iter().map(Message::to_input).collect();
    assert_eq!(inputs[3]["resource"], json!("file:///etc/passwd"));
    assert_eq!(inputs[4]["prompt"], json!("p"));
    assert_eq!(inputs[4]["arguments"], json!({"k": "v"}));
    assert_eq!(body.messages()[3].resource(), Some("file:///etc/passwd"));
    assert_eq!(body.messages()[4].prompt(), Some("p"));
    // A batch of one is still a batch.
    assert!(matches!(
        parse(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
        Ok(Body::Batch(m)) if m.len() == 1
    ));
}

#[test]
fn whitespace_around_the_value() {
    let message =
        single(" \t\r\n{ \"jsonrpc\" : \"2.0\" ,\n \"id\" : 1 , \"method\" : \"ping\" } \n\r\t ");
    assert_eq!(message.method(), Some("ping"));
}

#[test]
fn unicode() {
    let message = single(&call(
        r#"{"name":"envoyer_📧","arguments":{"clé":"\ud83d\ude00 \u00e9\u4e2d"}}"#,
    ));
    assert_eq!(message.tool(), Some("envoyer_📧"));
    assert_eq!(message.to_input()["arguments"], json!({"clé": "😀 é中"}));
    let message = single(&call(r#"{"name":"a\u0000b"}"#));
    assert_eq!(message.tool(), Some("a\u{0}b"));
    let message = single(&call(r#"{"name":"\"\\\/\b\f\n\r\t"}"#));
    assert_eq!(message.tool(), Some("\"\\/\u{8}\u{c}\n\r\t"));
}

// ---- errors as responses ----

#[test]
fn error_codes() {
    let parse_errors = [
        McpError::NotUtf8,
        McpError::Bom,
        McpError::Syntax { at: 0, reason: "x" },
        McpError::DuplicateKey { key: "k".into() },
        McpError::TooDeep { limit: 1 },
        McpError::NumberOutOfRange,
        McpError::TrailingData,
    ];
    for error in parse_errors {
        assert_eq!(error.code(), PARSE_ERROR, "{error:?}");
    }
    let invalid_requests = [
        McpError::TooLarge { limit: 1 },
        McpError::InvalidMessage("x".into()),
        McpError::Unsupported("x".into()),
        McpError::EmptyBatch,
        McpError::BatchTooLarge { limit: 1 },
    ];
    for error in invalid_requests {
        assert_eq!(error.code(), INVALID_REQUEST, "{error:?}");
    }
}

#[test]
fn error_to_response() {
    let response = McpError::TrailingData.to_response();
    let value: Value = serde_json::from_str(&response).unwrap_or_default();
    assert_eq!(
        value,
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "data after the JSON value"}})
    );
    let response = McpError::EmptyBatch.to_response();
    let value: Value = serde_json::from_str(&response).unwrap_or_default();
    assert_eq!(value["error"]["code"], json!(-32600));
}

#[test]
fn rejection_responses() {
    let rejection = Rejection {
        code: FORBIDDEN,
        message: "denied by policy".into(),
        data: Some(json!({"reason": "tool delete_customer not allowed"})),
    };
    let response = rejection_response(Some(&Id::Number(7)), &rejection);
    let value: Value = serde_json::from_str(&response).unwrap_or_default();
    assert_eq!(
        value,
        json!({"jsonrpc": "2.0", "id": 7, "error": {
            "code": -32090, "message": "denied by policy",
            "data": {"reason": "tool delete_customer not allowed"}}})
    );
    let response = error_response(Some(&Id::String("x\"y".into())), RATE_LIMITED, "slow down");
    let value: Value = serde_json::from_str(&response).unwrap_or_default();
    assert_eq!(
        value,
        json!({"jsonrpc": "2.0", "id": "x\"y", "error": {"code": -32091, "message": "slow down"}})
    );
    let response = error_response(None, UNAVAILABLE, "no endpoint");
    let value: Value = serde_json::from_str(&response).unwrap_or_default();
    assert_eq!(value["id"], Value::Null);
    assert_eq!(value["error"]["code"], json!(-32092));
}

// ---- properties ----

/// Equal as JSON, floats within the rounding error (a last-bit difference,
/// seen on subnormals) of serde_json's default float parser, which is not
/// correctly rounded; ours is.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => x == y || ulps_apart(x, y) <= 2,
                    _ => false,
                }
            } else {
                x == y
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Runs `inspect`; when it accepts, serde_json must accept the same bytes
/// and read the same messages.
fn check_against_serde(bytes: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    let Ok(body) = inspect(bytes, limits) else {
        return Ok(());
    };
    let theirs: Value = serde_json::from_slice(bytes).map_err(|e| {
        TestCaseError::fail(format!("serde_json refused what inspect accepted: {e}"))
    })?;
    let ours = match &body {
        Body::Single(message) => message.value().clone(),
        Body::Batch(messages) => Value::Array(messages.iter().map(|m| m.value().clone()).collect()),
    };
    prop_assert!(same(&ours, &theirs), "ours {ours} theirs {theirs}");
    for message in body.messages() {
        let input = message.to_input();
        prop_assert!(input.is_object());
        if message.method() == Some("tools/call") {
            prop_assert!(input["tool"].is_string());
        }
    }
    Ok(())
}

const SEEDS: &[&str] = &[
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete\u005fcustomer","arguments":{"id":7,"x":[1.5,-2e3,true,null]}}}"#,
    r#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"a","result":{}}]"#,
    r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///\ud83d\ude00"}}"#,
    r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"m\n"}}"#,
    r#" {"jsonrpc" : "2.0", "method":"prompts/get", "params":{"name":"p","arguments":{"a":"b"}}} "#,
];

fn mutate(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for &(at, op, byte) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % (bytes.len() + 1)
        };
        match op % 4 {
            0 => bytes.insert(at, byte),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            2 if at < bytes.len() => bytes[at] = byte,
            // Insert a JSON-significant byte: the mutations that matter.
            _ => {
                let special = b"{}[]\",:\\u0123456789.eE+-ntfNI \t\n";
                bytes.insert(at, special[usize::from(byte) % special.len()]);
            }
        }
    }
    bytes
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_bodies_never_panic_and_agree_with_serde(
        seed in 0..SEEDS.len(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
    ) {
        let bytes = mutate(SEEDS[seed].as_bytes(), &edits);
        check_against_serde(&bytes, &Limits::default())?;
        check_against_serde(&bytes, &Limits { max_bytes: 64, max_depth: 2, max_batch: 1 })?;
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_against_serde(&bytes, &Limits::default())?;
    }

    #[test]
    fn any_json_value_reads_back_as_itself(params in arbitrary_json(), pretty in any::<bool>()) {
        let message = json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": [params]});
        let text = if pretty {
            serde_json::to_string_pretty(&message)
        } else {
            serde_json::to_string(&message)
        };
        let text = text.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let body = inspect(text.as_bytes(), &Limits { max_bytes: usize::MAX, ..Limits::default() });
        let Ok(Body::Single(parsed)) = body else {
            return Err(TestCaseError::fail(format!("refused {text}: {body:?}")));
        };
        // Our floats are correctly rounded, so serde_json's shortest output
        // reads back exactly.
        prop_assert_eq!(parsed.value(), &message);
        check_against_serde(text.as_bytes(), &Limits { max_bytes: usize::MAX, ..Limits::default() })?;
    }
}

/// How many representable doubles lie between `x` and `y` (same sign).
fn ulps_apart(x: f64, y: f64) -> u64 {
    if x.is_sign_negative() != y.is_sign_negative() {
        return u64::MAX;
    }
    x.to_bits().abs_diff(y.to_bits())
}
