//! A check's outcome as a `CheckResponse`, with opa-envoy-plugin's mapping.
//!
//! - `status` is always set (Envoy treats an unset status as OK): `OK` for
//!   an allow, `PERMISSION_DENIED` for a policy denial, and for the mesh's
//!   own refusals their gRPC code (`RESOURCE_EXHAUSTED` over a limit,
//!   `UNAVAILABLE` for an open breaker or a dataplane that is not ready,
//!   `INVALID_ARGUMENT` for a request the mesh cannot describe).
//! - An allow maps the decision's `headers`, `request_headers_to_remove`,
//!   `response_headers_to_add`, `query_parameters_to_set` and
//!   `query_parameters_to_remove` onto `OkHttpResponse`.
//! - A policy denial maps `http_status` (default 403), `body` and `headers`
//!   onto `DeniedHttpResponse`, as the plugin does; the mesh adds only
//!   `x-meshward-refusal`. The mesh's own refusals carry what the sidecar
//!   would answer (status, `retry-after`, a JSON body naming the reason),
//!   except a request the plugin could not parse (a malformed query or
//!   body, or a malformed escape in the path), whose 400 is the plugin's:
//!   `PERMISSION_DENIED` with its text as the body.
//! - `dynamic_metadata` holds the decision's `dynamic_metadata` plus
//!   `decision_id`, so Envoy's access log can name the decision.

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::Value;

use crate::canonical::PathError;
use crate::pipeline::refusal::{BadRequest, Refusal};
use crate::policy::{Decision, InputError};

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

/// The `CheckResponse` for an outcome.
pub fn render(
    outcome: Result<Decision, Refusal>,
    request_id: &str,
    decision_id: &str,
) -> CheckResponse {
    match outcome {
        Ok(decision) => CheckResponse {
            status: Some(RpcStatus {
                code: OK,
                ..Default::default()
            }),
            dynamic_metadata: Some(metadata(&decision.dynamic_metadata, decision_id)),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: options(&decision.headers),
                headers_to_remove: decision.request_headers_to_remove,
                response_headers_to_add: options(&decision.response_headers_to_add),
                query_parameters_to_set: decision
                    .query_parameters_to_set
                    .into_iter()
                    .map(|(key, value)| QueryParameter { key, value })
                    .collect(),
                query_parameters_to_remove: decision.query_parameters_to_remove,
                ..Default::default()
            })),
        },
        Err(refusal) => denied(&refusal, request_id, decision_id),
    }
}

fn denied(refusal: &Refusal, request_id: &str, decision_id: &str) -> CheckResponse {
    let rendered = refusal.render(request_id);
    let unparsable = unparsable(refusal);
    let (headers, body, dynamic) = match refusal {
        Refusal::Forbidden(denial) => {
            let mut headers = denial.headers.clone();
            headers.push(("x-meshward-refusal".into(), refusal.kind().into()));
            (
                headers,
                denial.body.clone().unwrap_or_default(),
                Value::Null,
            )
        }
        _ if unparsable.is_some() => (
            vec![("x-meshward-refusal".into(), refusal.kind().into())],
            unparsable
                .as_ref()
                .map(InputError::body)
                .unwrap_or_default(),
            Value::Null,
        ),
        _ => {
            let mut headers = rendered.headers.clone();
            headers.push(("content-type".into(), "application/json".into()));
            (headers, rendered.body.clone(), Value::Null)
        }
    };
    // The caller can quote the decision that refused it, as in sidecar mode.
    let mut headers = headers;
    headers.push((
        crate::pipeline::headers::DECISION_ID.into(),
        decision_id.into(),
    ));
    // The plugin denies an unparsable request with PERMISSION_DENIED too.
    let code = match unparsable {
        Some(_) => PERMISSION_DENIED,
        None => i32::from(rendered.grpc_status),
    };
    CheckResponse {
        status: Some(RpcStatus {
            code,
            message: refusal.to_string(),
            ..Default::default()
        }),
        dynamic_metadata: Some(metadata(&dynamic, decision_id)),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(rendered.status.as_u16()),
            }),
            headers: options(&headers),
            body,
        })),
    }
}

/// Why the plugin could not have parsed the request, if that is why it is
/// refused: Meshward's canonicalizer meets a malformed escape in the path
/// before the input builder does, and the plugin (`url.PathUnescape` of the
/// path before `?`) reports the same one.
fn unparsable(refusal: &Refusal) -> Option<InputError> {
    match refusal {
        Refusal::BadRequest(BadRequest::Input(e)) => Some(e.clone()),
        Refusal::BadRequest(BadRequest::Path {
            path,
            error: PathError::BadEscape { at },
        }) => {
            let path = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
            Some(InputError::escape_at(path.as_bytes(), *at))
        }
        _ => None,
    }
}

/// Headers as Envoy's `HeaderValueOption`s, `append` left unset: in an
/// ext_authz response that means "replace", as the plugin sends them.
fn options(headers: &[(String, String)]) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// The decision's `dynamic_metadata` (an object or null) plus `decision_id`.
fn metadata(decision: &Value, decision_id: &str) -> Struct {
    let mut fields = match decision {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
        _ => std::collections::BTreeMap::new(),
    };
    fields.insert(
        "decision_id".to_string(),
        PbValue {
            kind: Some(Kind::StringValue(decision_id.to_string())),
        },
    );
    Struct {
        fields: fields.into_iter().collect(),
    }
}

fn pb_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
            values: items.iter().map(pb_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::refusal::Denial;
    use crate::policy::InputError;
    use crate::ratelimit::RateLimitError;
    use serde_json::json;
    use std::time::Duration;

    fn header(r: &[HeaderValueOption], name: &str) -> Option<String> {
        r.iter()
            .filter_map(|o| o.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.clone())
    }

    fn denied_of(r: &CheckResponse) -> &DeniedHttpResponse {
        match &r.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d,
            other => panic!("not denied: {other:?}"),
        }
    }

    #[test]
    fn an_allow_carries_every_mutation_and_the_decision_id() {
        let mut d = Decision::allow();
        d.headers = vec![("x-user".into(), "a".into())];
        d.request_headers_to_remove = vec!["x-secret".into()];
        d.response_headers_to_add = vec![("x-resp".into(), "1".into())];
        d.query_parameters_to_set = vec![("q".into(), "v".into())];
        d.query_parameters_to_remove = vec!["drop".into()];
        d.dynamic_metadata = json!({"tier": "gold"});
        let r = render(Ok(d), "req", "dec-1");
        assert_eq!(r.status.as_ref().unwrap().code, 0);
        let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
            panic!("not ok")
        };
        assert_eq!(header(&ok.headers, "x-user").as_deref(), Some("a"));
        assert_eq!(ok.headers_to_remove, ["x-secret"]);
        assert_eq!(
            header(&ok.response_headers_to_add, "x-resp").as_deref(),
            Some("1")
        );
        assert_eq!(ok.query_parameters_to_set[0].key, "q");
        assert_eq!(ok.query_parameters_to_remove, ["drop"]);
        let meta = &r.dynamic_metadata.as_ref().unwrap().fields;
        assert_eq!(
            meta["decision_id"].kind,
            Some(Kind::StringValue("dec-1".into()))
        );
        assert_eq!(meta["tier"].kind, Some(Kind::StringValue("gold".into())));
    }

    #[test]
    fn a_policy_denial_answers_as_the_plugin_would() {
        let r = render(
            Err(Refusal::Forbidden(Denial {
                reason: "nope".into(),
                status: Some(418),
                body: Some("teapot".into()),
                headers: vec![("x-why".into(), "policy".into())],
            })),
            "req",
            "dec",
        );
        assert_eq!(r.status.as_ref().unwrap().code, 7);
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().unwrap().code, 418);
        assert_eq!(d.body, "teapot");
        assert_eq!(header(&d.headers, "x-why").as_deref(), Some("policy"));
        assert_eq!(
            header(&d.headers, "x-meshward-refusal").as_deref(),
            Some("forbidden")
        );
        // A plain deny: 403 and no body, as the plugin sends.
        let r = render(Err(Refusal::Forbidden(Denial::plain("no"))), "req", "dec");
        assert_eq!(denied_of(&r).status.as_ref().unwrap().code, 403);
        assert_eq!(denied_of(&r).body, "");
    }

    #[test]
    fn mesh_refusals_keep_their_status_retry_after_and_reason() {
        let r = render(
            Err(Refusal::RateLimited {
                caller: "spiffe://example.org/agent/a".into(),
                service: "svc".into(),
                error: RateLimitError::RateExceeded {
                    retry_after: Duration::from_millis(1500),
                },
            }),
            "req",
            "dec",
        );
        assert_eq!(r.status.as_ref().unwrap().code, 8);
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().unwrap().code, 429);
        assert_eq!(header(&d.headers, "retry-after").as_deref(), Some("2"));
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"], "rate_limited");

        let r = render(
            Err(Refusal::BadRequest(BadRequest::Input(
                InputError::Semicolon,
            ))),
            "req",
            "dec",
        );
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().unwrap().code, 400);
        assert_eq!(
            d.body,
            "request_parse_error: invalid semicolon separator in query"
        );
    }

    #[test]
    fn a_malformed_escape_in_the_path_is_refused_as_the_plugin_refuses_it() {
        // The canonicalizer meets `%zz` first; the answer is still the
        // plugin's (its url.PathUnescape of the path before `?`): 400,
        // PERMISSION_DENIED and Go's words, the query not quoted.
        let path = |path: &str, at| {
            render(
                Err(Refusal::BadRequest(BadRequest::Path {
                    path: path.into(),
                    error: PathError::BadEscape { at },
                })),
                "req",
                "dec",
            )
        };
        let r = path("/a/%zz?q=1", 3);
        assert_eq!(r.status.as_ref().unwrap().code, PERMISSION_DENIED);
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().unwrap().code, 400);
        assert_eq!(d.body, "request_parse_error: invalid URL escape \"%zz\"");
        assert_eq!(
            header(&d.headers, "x-meshward-refusal").as_deref(),
            Some("bad_request")
        );
        let r = path("/a%4?x=1", 2);
        assert_eq!(
            denied_of(&r).body,
            "request_parse_error: invalid URL escape \"%4\""
        );
        // Other path refusals keep the mesh's own answer.
        let r = render(
            Err(Refusal::BadRequest(BadRequest::Path {
                path: "/a%2Fb".into(),
                error: PathError::EncodedSlash,
            })),
            "req",
            "dec",
        );
        assert_eq!(r.status.as_ref().unwrap().code, 3);
        let body: Value = serde_json::from_str(&denied_of(&r).body).unwrap();
        assert_eq!(body["error"], "bad_request");
    }
}
