//! `CheckRequest` as opa-envoy-plugin hands it to a policy.
//!
//! The plugin (v1.15, `envoyauth/protomap.go`) does not use protojson: it
//! walks the message by reflection and keeps Go's native values, which OPA
//! then turns into Rego values. So, unlike its documentation's protojson:
//!
//! - names are the fields' JSON names (lowerCamelCase);
//! - only populated fields appear (proto3: not at their zero value; a
//!   `oneof` member or a message field that is set appears even when empty);
//! - every integer, 64-bit or not, and every enum is a JSON *number*;
//! - bytes are standard base64 with padding (Go's JSON for `[]byte`);
//! - `Timestamp` is a message like any other: `{"seconds": …, "nanos": …}`;
//! - `Struct` is the JSON object it stands for; `Any` is
//!   `{"typeUrl": …, "value": <base64>}`.
//!
//! Hand-written rather than by reflection: `envoy-types` carries no
//! descriptors, and `AttributeContext` is a small, stable message. A field
//! this module does not know (Envoy adding one) is absent from the input, as
//! it is in a plugin built against an older API.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envoy_types::pb::envoy::config::core::v3::{
    Address, Metadata, address, envoy_internal_address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
use envoy_types::pb::google::protobuf::{self as pbuf, value::Kind};
use serde_json::{Map, Number, Value};

/// `CheckRequest.attributes` in the plugin's shape.
pub fn attributes(a: &AttributeContext) -> Value {
    let mut out = Map::new();
    if let Some(p) = &a.source {
        out.insert("source".into(), peer(p));
    }
    if let Some(p) = &a.destination {
        out.insert("destination".into(), peer(p));
    }
    if let Some(r) = &a.request {
        out.insert("request".into(), request(r));
    }
    put_map(&mut out, "contextExtensions", &a.context_extensions);
    if let Some(m) = &a.metadata_context {
        out.insert("metadataContext".into(), metadata(m));
    }
    if let Some(m) = &a.route_metadata_context {
        out.insert("routeMetadataContext".into(), metadata(m));
    }
    if let Some(t) = &a.tls_session {
        let mut tls = Map::new();
        put_str(&mut tls, "sni", &t.sni);
        out.insert("tlsSession".into(), Value::Object(tls));
    }
    Value::Object(out)
}

fn peer(p: &attribute_context::Peer) -> Value {
    let mut out = Map::new();
    if let Some(a) = &p.address {
        out.insert("address".into(), address(a));
    }
    put_str(&mut out, "service", &p.service);
    put_map(&mut out, "labels", &p.labels);
    put_str(&mut out, "principal", &p.principal);
    put_str(&mut out, "certificate", &p.certificate);
    Value::Object(out)
}

fn address(a: &Address) -> Value {
    let mut out = Map::new();
    match &a.address {
        Some(address::Address::SocketAddress(s)) => {
            let mut sa = Map::new();
            put_num(&mut sa, "protocol", i64::from(s.protocol));
            put_str(&mut sa, "address", &s.address);
            // Oneof members are present even at their zero value.
            match &s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(port)) => {
                    sa.insert("portValue".into(), Value::Number((*port).into()));
                }
                Some(socket_address::PortSpecifier::NamedPort(name)) => {
                    sa.insert("namedPort".into(), Value::String(name.clone()));
                }
                None => {}
            }
            put_str(&mut sa, "resolverName", &s.resolver_name);
            if s.ipv4_compat {
                sa.insert("ipv4Compat".into(), Value::Bool(true));
            }
            put_str(
                &mut sa,
                "networkNamespaceFilepath",
                &s.network_namespace_filepath,
            );
            out.insert("socketAddress".into(), Value::Object(sa));
        }
        Some(address::Address::Pipe(p)) => {
            let mut pipe = Map::new();
            put_str(&mut pipe, "path", &p.path);
            put_num(&mut pipe, "mode", i64::from(p.mode));
            out.insert("pipe".into(), Value::Object(pipe));
        }
        Some(address::Address::EnvoyInternalAddress(e)) => {
            let mut internal = Map::new();
            if let Some(envoy_internal_address::AddressNameSpecifier::ServerListenerName(n)) =
                &e.address_name_specifier
            {
                internal.insert("serverListenerName".into(), Value::String(n.clone()));
            }
            put_str(&mut internal, "endpointId", &e.endpoint_id);
            out.insert("envoyInternalAddress".into(), Value::Object(internal));
        }
        None => {}
    }
    Value::Object(out)
}

fn request(r: &attribute_context::Request) -> Value {
    let mut out = Map::new();
    if let Some(t) = &r.time {
        let mut time = Map::new();
        put_num(&mut time, "seconds", t.seconds);
        put_num(&mut time, "nanos", i64::from(t.nanos));
        out.insert("time".into(), Value::Object(time));
    }
    if let Some(h) = &r.http {
        out.insert("http".into(), http(h));
    }
    Value::Object(out)
}

fn http(h: &attribute_context::HttpRequest) -> Value {
    let mut out = Map::new();
    put_str(&mut out, "id", &h.id);
    put_str(&mut out, "method", &h.method);
    put_map(&mut out, "headers", &h.headers);
    if let Some(map) = &h.header_map {
        let mut m = Map::new();
        if !map.headers.is_empty() {
            let headers = map
                .headers
                .iter()
                .map(|hv| {
                    let mut o = Map::new();
                    put_str(&mut o, "key", &hv.key);
                    put_str(&mut o, "value", &hv.value);
                    put_bytes(&mut o, "rawValue", &hv.raw_value);
                    Value::Object(o)
                })
                .collect();
            m.insert("headers".into(), Value::Array(headers));
        }
        out.insert("headerMap".into(), Value::Object(m));
    }
    put_str(&mut out, "path", &h.path);
    put_str(&mut out, "host", &h.host);
    put_str(&mut out, "scheme", &h.scheme);
    put_str(&mut out, "query", &h.query);
    put_str(&mut out, "fragment", &h.fragment);
    put_num(&mut out, "size", h.size);
    put_str(&mut out, "protocol", &h.protocol);
    put_str(&mut out, "body", &h.body);
    put_bytes(&mut out, "rawBody", &h.raw_body);
    Value::Object(out)
}

fn metadata(m: &Metadata) -> Value {
    let mut out = Map::new();
    if !m.filter_metadata.is_empty() {
        let fm = m
            .filter_metadata
            .iter()
            .map(|(k, s)| (k.clone(), structure(s)))
            .collect();
        out.insert("filterMetadata".into(), Value::Object(fm));
    }
    if !m.typed_filter_metadata.is_empty() {
        let tm = m
            .typed_filter_metadata
            .iter()
            .map(|(k, any)| {
                let mut o = Map::new();
                put_str(&mut o, "typeUrl", &any.type_url);
                put_bytes(&mut o, "value", &any.value);
                (k.clone(), Value::Object(o))
            })
            .collect();
        out.insert("typedFilterMetadata".into(), Value::Object(tm));
    }
    Value::Object(out)
}

/// `google.protobuf.Struct` as the JSON object it stands for (`AsMap`).
pub fn structure(s: &pbuf::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

fn value(v: &pbuf::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => structure(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
    }
}

/// A float as OPA holds it: integral values compare equal to integers.
/// JSON has no NaN or infinity; they become null.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        return Value::Number((n as i64).into());
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

fn put_str(out: &mut Map<String, Value>, key: &str, v: &str) {
    if !v.is_empty() {
        out.insert(key.into(), Value::String(v.to_string()));
    }
}

fn put_num(out: &mut Map<String, Value>, key: &str, v: i64) {
    if v != 0 {
        out.insert(key.into(), Value::Number(v.into()));
    }
}

fn put_bytes(out: &mut Map<String, Value>, key: &str, v: &[u8]) {
    if !v.is_empty() {
        out.insert(key.into(), Value::String(STANDARD.encode(v)));
    }
}

fn put_map(out: &mut Map<String, Value>, key: &str, m: &HashMap<String, String>) {
    if !m.is_empty() {
        let obj = m
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out.insert(key.into(), Value::Object(obj));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, SocketAddress};
    use serde_json::json;

    fn socket(ip: &str, port: u32) -> Option<Address> {
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        })
    }

    #[test]
    fn attributes_take_json_names_native_numbers_and_skip_unset_fields() {
        let a = AttributeContext {
            source: Some(attribute_context::Peer {
                address: socket("10.0.0.1", 0),
                principal: "spiffe://example.org/agent/a".into(),
                ..Default::default()
            }),
            destination: Some(attribute_context::Peer::default()),
            request: Some(attribute_context::Request {
                time: Some(pbuf::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                http: Some(attribute_context::HttpRequest {
                    id: "1".into(),
                    method: "POST".into(),
                    headers: [("content-type".to_string(), "a/b".to_string())].into(),
                    header_map: Some(HeaderMap {
                        headers: vec![HeaderValue {
                            key: "x".into(),
                            raw_value: b"\xff".to_vec(),
                            ..Default::default()
                        }],
                    }),
                    path: "/p?q=1".into(),
                    size: 42,
                    protocol: "HTTP/1.1".into(),
                    raw_body: b"hi".to_vec(),
                    ..Default::default()
                }),
            }),
            context_extensions: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            attributes(&a),
            json!({
                "source": {
                    // A oneof member is present even at its zero value.
                    "address": {"socketAddress": {"address": "10.0.0.1", "portValue": 0}},
                    "principal": "spiffe://example.org/agent/a",
                },
                // A set message is present even when empty.
                "destination": {},
                "request": {
                    "time": {"seconds": 1_700_000_000},
                    "http": {
                        "id": "1",
                        "method": "POST",
                        "headers": {"content-type": "a/b"},
                        "headerMap": {"headers": [{"key": "x", "rawValue": "/w=="}]},
                        "path": "/p?q=1",
                        "size": 42,
                        "protocol": "HTTP/1.1",
                        "rawBody": "aGk=",
                    },
                },
                "contextExtensions": {"k": "v"},
            })
        );
    }

    #[test]
    fn metadata_structs_are_plain_json_and_anys_keep_type_and_bytes() {
        let mut s = pbuf::Struct::default();
        for (k, n) in [("n", 2.0), ("f", 0.5), ("nan", f64::NAN)] {
            s.fields.insert(
                k.into(),
                pbuf::Value {
                    kind: Some(Kind::NumberValue(n)),
                },
            );
        }
        let mut m = Metadata::default();
        m.filter_metadata.insert("ns".into(), s);
        m.typed_filter_metadata.insert(
            "t".into(),
            pbuf::Any {
                type_url: "type.googleapis.com/x.Y".into(),
                value: vec![1, 2],
            },
        );
        let a = AttributeContext {
            metadata_context: Some(m),
            ..Default::default()
        };
        assert_eq!(
            attributes(&a),
            json!({"metadataContext": {
                "filterMetadata": {"ns": {"n": 2, "f": 0.5, "nan": null}},
                "typedFilterMetadata": {"t": {"typeUrl": "type.googleapis.com/x.Y", "value": "AQI="}},
            }})
        );
    }
}
