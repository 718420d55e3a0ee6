"""Parity corpus: Meshward's ext_authz v3 server against opa-envoy-plugin.

Generates a deterministic corpus of envoy.service.auth.v3 CheckRequests
(seeded PRNG: callers, hosts, methods, canonical and non-canonical paths,
query strings, headers, JSON / form / raw bodies, truncation), sends each to
both servers over plain gRPC on loopback and compares the answers. Driven by
tests/ext_authz_parity.rs, which starts both servers with the same policy.

Usage: ext_authz_corpus.py CONFIG.json, where CONFIG holds

    mode          "probe" (the policy echoes its input: compare the input
                  documents) or "decision" (compare the responses)
    meshward      host:port of Meshward's ext_authz server
    plugin        host:port of opa-envoy-plugin's gRPC server
    registry      {"trust_domain", "agents": {spiffe_id: {...}},
                   "services": {name: {...}}}, as the test wrote it for OPA
    seed, count   the corpus

Every request falls in exactly one class, each checked in its own way:

    refused_identity     no principal, or not a SPIFFE ID of the trust
                         domain: Meshward denies with 403 before any policy
                         (x-meshward-refusal: forbidden, empty body).
    refused_path         a path Meshward refuses (encoded '/', '\\' or NUL,
                         ';' parameters, '..' above the root, '\\', '#',
                         controls, not origin-form): 400 bad_request.
    identical            canonical path: both servers get the same request.
    canonicalized        non-canonical path: Meshward judges the canonical
                         path, so the plugin gets the request with the
                         canonical path the corpus expects (Meshward's echo
                         must show that path, and the raw one in
                         input.meshward.raw_path).
    parse_error          the plugin refuses with 400 request_parse_error:
                         Meshward must refuse with the same status, gRPC
                         code and body text.
    parse_error_json     the same for a malformed JSON body; the texts are
                         Go's and serde_json's, so only status and code are
                         compared.
    parse_error_json     (also malformed multipart bodies: Go's mime/multipart
                         and Meshward word their errors differently.)

A request in identical/canonicalized whose answers differ (beyond the
exclusions in the test's module docs) is a mismatch. Prints one JSON summary
on stdout; exits 1 when any request is unexplained.
"""

import json
import random
import sys
import time

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as ac
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import any_pb2, json_format, struct_pb2, timestamp_pb2

TIMEOUT = 10
MAX_REPORTED = 10
# The plugin's Go (PathUnescape / ParseQuery / content-length) and Meshward
# write these texts identically.
PARSE_ERROR = "request_parse_error: "

# --- the corpus ------------------------------------------------------------

# Canonical path segments (RFC 3986 unreserved characters literal, other
# escapes upper-case), so a path built from them is its own canonical form.
SEGMENTS = [
    "say-hello", "v1", "api", "items", "people", "admin", "health", "reports",
    "customers", "write-notes", "update-ticket", "delete-all", "42", "a.b",
    "x_y", "~user", "caf%C3%A9", "a%20b", "c+d", "%E2%82%AC", "q%3Fmark",
    "%25", "%40home", "e=mc2", "it's", "(x)", "a,b", "%FF", "%E2%82", "%22q%22",
    "%7Bid%7D", "..a", "a..", ".hidden",
]
TEMPLATES = [
    "/", "/say-hello", "/people", "/people/", "/api/v1/items", "/admin/users",
    "/write-notes/1", "/update-ticket", "/health", "/v1/customers/42", "/productpage",
    "/api/v1/products",
]
# Raw characters the canonical form escapes, and their escapes.
RAW_ESCAPED = {'"': "%22", "<": "%3C", ">": "%3E", "{": "%7B", "}": "%7D",
               "|": "%7C", "^": "%5E", "`": "%60", "[": "%5B", "]": "%5D",
               "é": "%C3%A9"}
UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

QUERY_KEYS = ["a", "b", "q", "tag", "lang", "id", "limit", "x+y", "k%20", "caf%C3%A9", ""]
QUERY_VALUES = ["1", "2", "en", "x+y", "x%2By", "%26", "a%3Db", "", "%C3%A9", "caf%c3%a9",
                "%FF", "%E2%82", "b=c", "?x", "100%25", "%7E", "a/b", "~"]
QUERY_BAD = ["%zz", "%4", "%", "%G1", "a%2"]

JSON_CT = ["application/json", "application/json; charset=utf-8",
           "application/json-patch+json"]
FORM_CT = ["application/x-www-form-urlencoded",
           "application/x-www-form-urlencoded; charset=utf-8"]
OTHER_CT = ["text/plain", "application/vnd.api+json", "Application/JSON",
            "application/xml", "application/grpc", "application/octet-stream"]

JSON_BAD = ['{"a":', "  ", "{} {}", "{} true", '{} "x"', "[1,2", '{"a":1,}', "nul",
            "{'a':1}", '{"a" 1}', "01", '{"a":1}}']
# Parsed by both, numbers compared by value (see the test's module docs).
JSON_EDGE = ['{"a":1,"a":2}', '{"n":1.50,"m":-0.0,"e":1e3,"f":1E-7}',
             '{"big":12345678901234567890}', '{"s":"\\u00e9\\n\\"\\\\/"}', '"top"', "42",
             "[1,[2,[3]]]", "true", "null", '{"a":1} null', '{"deep":{"a":{"b":{"c":[{}]}}}}',
             '{"u":"\\ud83d\\ude00"}', '  {"ws" : [ 1 , 2 ] }  ', '{"s":"\\ud800"}',
             '{"s":"a\\udc00b\\ud800\\u0041\\ud800\\ud800"}', '["\\\\ud800"]', '{} null x']
# raw_body only: Go's JSON decoder and json.Marshal turn each invalid byte
# into U+FFFD.
INVALID_UTF8_JSON = [b'{"s":"a\xffb"}', b'{"s":"\xe2\x82"}', b'["\xc3", "\xf0\x9f\x98"]',
                     b'{"k\xfe":1}']
INVALID_UTF8_FORM = [b"a=x\xffy&b=\xe2\x82", b"n\xff=1", b"c=%FF%E2%82&d=\xc3"]
DOCS_BODIES = ['{"firstname":"Charlie","lastname":"Opa"}',
               '{"firstname":"Charlie","lastname":"Opa","age":3}',
               '{"firstname":"charlie","lastname":"Opa"}',
               '{"lastname":"Opa","firstname":"Charlie"}']

TIME = timestamp_pb2.Timestamp(seconds=1700000000, nanos=123000000)


def json_value(rng, depth=0):
    kind = rng.choice(["str", "int", "float", "bool", "null", "list", "obj"] if depth < 3
                      else ["str", "int", "bool", "null"])
    if kind == "str":
        return rng.choice(["", "x", "hello world", "é", "日本", "a\"b", "tab\t", "\u2028", "100%"])
    if kind == "int":
        return rng.choice([0, 1, -1, 7, 255, 65536, -40000, 2**31, 2**40])
    if kind == "float":
        return rng.choice([0.5, -2.25, 3.75, 1024.125])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["a", "b", "name", "action", "id", "firstname", "n", "ü", ""]
    return {rng.choice(keys): json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def segments_of(path):
    """Path segments after the leading '/' (a trailing '' marks a trailing '/')."""
    return path[1:].split("/")


def join(segments):
    return "/" + "/".join(segments)


def noisy(rng, canonical):
    """A non-canonical spelling of `canonical` (whose canonical form it is)."""
    segs = segments_of(canonical)
    ops = rng.sample(["dot", "dotdot", "empty", "encode", "lower", "raw"], rng.randint(1, 3))
    applied = []
    for op in ops:
        # Insertions go before the last segment, so a trailing '/' (or its
        # absence) is what the canonical path says.
        i = rng.randint(0, len(segs) - 1)
        if op == "dot":
            segs.insert(i, ".")
        elif op == "dotdot":
            segs[i:i] = [rng.choice(["zz", "a.b", "x"]), ".."]
        elif op == "empty":
            segs.insert(i, "")
        elif op == "encode":
            choices = [(j, k) for j, s in enumerate(segs) for k, c in enumerate(s)
                       if c in UNRESERVED and not in_escape(s, k)]
            if not choices:
                continue
            j, k = rng.choice(choices)
            c = segs[j][k]
            esc = "%{:02X}".format(ord(c))
            if rng.random() < 0.5:
                esc = esc.lower()
            segs[j] = segs[j][:k] + esc + segs[j][k + 1:]
        elif op == "lower":
            choices = [j for j, s in enumerate(segs) if any(c in "ABCDEF" for c in escapes(s))]
            if not choices:
                continue
            j = rng.choice(choices)
            segs[j] = lower_escapes(segs[j])
        elif op == "raw":
            choices = [(j, raw) for j, s in enumerate(segs) for raw, esc in RAW_ESCAPED.items()
                       if esc in s]
            if not choices:
                segs.insert(i, rng.choice(['"q"', "{id}", "é", "a|b"]))
                # Inserted raw: the canonical form escapes it, so it is part
                # of the expected path too.
                canonical = None
                continue
            j, raw = rng.choice(choices)
            segs[j] = segs[j].replace(RAW_ESCAPED[raw], raw, 1)
        applied.append(op)
    return join(segs), applied, canonical


def in_escape(s, k):
    return (k >= 1 and s[k - 1] == "%") or (k >= 2 and s[k - 2] == "%")


def escapes(s):
    return "".join(s[k + 1:k + 3] for k, c in enumerate(s) if c == "%")


def lower_escapes(s):
    out, k = [], 0
    while k < len(s):
        if s[k] == "%":
            out.append(s[k:k + 3].lower())
            k += 3
        else:
            out.append(s[k])
            k += 1
    return "".join(out)


def canonical_of(raw):
    """The canonical form of a path built by `noisy` (no refusals in it):
    RFC 3986 normalization as Meshward's canonical.rs does it. Used only for
    the noise that inserts raw characters; every other case knows its
    canonical path by construction."""
    out = []
    for seg in segments_of(raw):
        cur, k = [], 0
        while k < len(seg):
            c = seg[k]
            if c == "%":
                b = int(seg[k + 1:k + 3], 16)
                ch = chr(b)
                cur.append(ch if ch in UNRESERVED else "%{:02X}".format(b))
                k += 3
                continue
            if c in RAW_ESCAPED or ord(c) >= 0x80:
                cur.append("".join("%{:02X}".format(b) for b in c.encode()))
            else:
                cur.append(c)
            k += 1
        out.append("".join(cur))
    segs, trailing = [], False
    for seg in out:
        if seg in ("", "."):
            trailing = True
        elif seg == "..":
            segs.pop()
            trailing = True
        else:
            segs.append(seg)
            trailing = False
    path = "/" + "/".join(segs)
    if trailing and segs:
        path += "/"
    return path


REFUSALS = {
    "encoded_slash": lambda rng, p: insert_text(rng, p, rng.choice(["%2F", "%2f"])),
    "encoded_backslash": lambda rng, p: insert_text(rng, p, rng.choice(["%5C", "%5c"])),
    "encoded_nul": lambda rng, p: insert_text(rng, p, "%00"),
    "path_parameter": lambda rng, p: insert_text(rng, p, rng.choice([";x=1", ";", ";jsessionid=a"])),
    "climbs_above_root": lambda rng, p: "/.." + p if rng.random() < 0.5 else "/a/../.." + p,
    "backslash": lambda rng, p: insert_text(rng, p, "\\"),
    "fragment": lambda rng, p: p + "#frag",
    "control": lambda rng, p: insert_text(rng, p, rng.choice([" ", "\t", "\x7f"])),
    "not_origin_form": lambda rng, p: rng.choice(["", "*", "say-hello", "http://hello-skill/x"]),
}


def insert_text(rng, path, text):
    """`path` with `text` inserted after the leading '/', never inside an
    escape (which would make a malformed one first)."""
    spots = [k for k in range(1, len(path) + 1) if not in_escape(path, k)] or [len(path)]
    k = rng.choice(spots)
    return path[:k] + text + path[k:]


def bad_escape_path(rng, path):
    """A path whose first malformed escape both servers report."""
    bad = rng.choice(["%zz", "%4", "%G1", "%%", "%é", "%aé", "%\x7f"])
    if bad == "%4" or rng.random() < 0.3:
        return path.rstrip("/") + "/x" + bad  # at the end: Go reports fewer than 3 bytes
    return insert_text(rng, path, bad)


def gen_path(rng):
    """(raw path, canonical path or None, path class, detail)."""
    if rng.random() < 0.35:
        canonical = rng.choice(TEMPLATES)
    else:
        segs = [rng.choice(SEGMENTS) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.15:
            segs.append("")
        canonical = join(segs)
    r = rng.random()
    if r < 0.14:
        kind = rng.choice(sorted(REFUSALS))
        return REFUSALS[kind](rng, canonical), None, "refused_path", kind
    if r < 0.19:
        return bad_escape_path(rng, canonical), None, "bad_escape", "path"
    if r < 0.50:
        raw, ops, expected = noisy(rng, canonical)
        if expected is None:
            expected = canonical_of(raw)
        if raw != expected:
            return raw, expected, "canonicalized", "+".join(ops)
    return canonical, canonical, "identical", ""


def gen_query(rng, docs_hit):
    """(query string without '?', or None; query problem or '')."""
    if docs_hit:
        return rng.choice(["lang=en&id=1&id=2", "id=1&lang=en&id=2", "lang=%65n&id=1&id=2",
                           "lang=en&id=2&id=1", "lang=en&id=1&id=2&x=", "lang=en+&id=1&id=2",
                           "lang=en&id=1&id=2;", "lang=en&&id=1&id=2"]), ""
    if rng.random() < 0.45:
        return None, ""
    pairs = []
    for _ in range(rng.randint(0, 5)):
        r = rng.random()
        if r < 0.6:
            pairs.append(rng.choice(QUERY_KEYS) + "=" + rng.choice(QUERY_VALUES))
        elif r < 0.7:
            pairs.append(rng.choice(["flag", "x", "=v"]))
        elif r < 0.8:
            pairs.append("")
        else:
            key = rng.choice(["tag", "id"])
            pairs.extend(key + "=" + v for v in rng.sample(["a", "b", "c", "a"], 2))
    problem = ""
    r = rng.random()
    if r < 0.07:
        pairs.insert(rng.randint(0, len(pairs)), rng.choice(["a", "k"]) + "=" + rng.choice(QUERY_BAD))
        problem = "escape"
    elif r < 0.12:
        pairs.insert(rng.randint(0, len(pairs)), rng.choice(["a=1;b=2", ";", "x;y"]))
        problem = "semicolon"
    query = "&".join(pairs)
    if rng.random() < 0.05:
        query += "#frag"
    return query, problem


def gen_body(rng, docs_hit):
    """(headers to add, body, raw_body, body class)."""
    headers = {}
    r = rng.random()
    if docs_hit:
        text = rng.choice(DOCS_BODIES)
        headers["content-type"] = rng.choice(JSON_CT)
        if rng.random() < 0.3:
            return headers, "", text.encode(), "json_raw"
        return headers, text, b"", "json"
    if r < 0.35:
        if rng.random() < 0.2:
            headers["content-type"] = rng.choice(JSON_CT + FORM_CT)
        return headers, "", b"", "none"
    if r < 0.55:
        headers["content-type"] = rng.choice(JSON_CT)
        value = json_value(rng) if rng.random() < 0.8 else rng.choice([{}, [], "", 0])
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5,
                          separators=rng.choice([(",", ":"), (", ", ": ")]))
        kind = "json"
    elif r < 0.62:
        headers["content-type"] = rng.choice(JSON_CT)
        text, kind = rng.choice(JSON_EDGE), "json_edge"
    elif r < 0.67:
        headers["content-type"] = rng.choice(JSON_CT)
        text, kind = rng.choice(JSON_BAD), "json_invalid"
    elif r < 0.79:
        headers["content-type"] = rng.choice(FORM_CT)
        pairs = [rng.choice(["a", "b", "name", "x+y", "caf%C3%A9", ""]) + "=" + rng.choice(QUERY_VALUES)
                 for _ in range(rng.randint(0, 4))]
        if rng.random() < 0.2:
            pairs.append(rng.choice(["flag", "", "a=1;b=2", "k=%zz"]))
        text, kind = "&".join(pairs), "form"
    elif r < 0.88:
        headers["content-type"] = rng.choice(OTHER_CT)
        text, kind = rng.choice(['{"a":1}', "a=1", "hello", ""]), "other"
    elif r < 0.91:
        headers["content-type"] = "multipart/form-data; boundary=XX"
        text = ('--XX\r\nContent-Disposition: form-data; name="f"\r\n\r\nhello\r\n--XX--\r\n'
                if rng.random() < 0.7 else "hello")
        kind = "multipart"
    else:
        headers["content-type"] = rng.choice(JSON_CT + FORM_CT)
        text, kind = rng.choice(['{"a":1}', "a=1&b=2"]), "raw_mixed"
    body, raw = text, b""
    r = rng.random()
    if r < 0.15:
        body, raw = "", text.encode()
    elif r < 0.2:
        # Both present: body wins.
        raw = rng.choice([b'{"other":true}', b"z=9"])
    elif r < 0.25 and kind in ("json", "json_edge", "form"):
        # Bytes that are not UTF-8 (only raw_body can carry them).
        form = kind == "form"
        body, raw = "", rng.choice(INVALID_UTF8_FORM if form else INVALID_UTF8_JSON)
        kind = ("form" if form else "json") + "_invalid_utf8"
    r = rng.random()
    size = len(body.encode()) if body else len(raw)
    if r < 0.12:
        headers["content-length"] = str(size)
    elif r < 0.17:
        headers["content-length"] = str(size + rng.randint(1, 100))
    elif r < 0.2:
        headers["content-length"] = str(max(size - 1, 0))
    elif r < 0.22:
        headers["content-length"] = rng.choice(["abc", "+3", "-1", "", " 5", "0x10", "1e3"])
    return headers, body, raw, kind


def struct_of(d):
    s = struct_pb2.Struct()
    s.update(d)
    return s


def gen_request(rng, registry, index, force=None):
    """One case. `force` overrides parts of the random draw (which still
    happens, so later cases do not depend on it): "who", "path" (raw,
    canonical, class, detail), "query" (query, problem), "body" (headers,
    body, raw_body, kind), "partial" (the partial-body header's value)."""
    force = force or {}
    td = registry["trust_domain"]
    agents = sorted(registry["agents"])
    services = sorted(registry["services"])
    r = rng.random()
    if r < 0.32:
        principal, who = agents[0], "agent"
    elif r < 0.64:
        principal, who = agents[-1], "agent"
    elif r < 0.76:
        principal, who = f"spiffe://{td}/agent/stranger", "unregistered"
    elif r < 0.83:
        principal, who = "spiffe://other.org/agent/support-triage", "foreign"
    elif r < 0.89:
        principal, who = "", "empty"
    elif r < 0.93:
        principal, who = rng.choice(["CN=agent", f"spiffe://{td}", "spiffe://EXAMPLE.org/a",
                                     f"https://{td}/agent/x"]), "not_spiffe"
    else:
        principal, who = None, "no_source"
    if "who" in force:
        principal, who = force["who"]

    r = rng.random()
    if r < 0.85:
        svc = rng.choice(services)
        host = rng.choice([svc, f"{svc}:8080", f"{svc}.mesh.local", f"{svc}.ns.svc.cluster.local:443"])
    else:
        host = rng.choice(["nosuch-svc", "nosuch-svc:80", "10.0.0.5:8080", "", "[::1]:8080"])

    docs_query_hit = rng.random() < 0.04
    docs_body_hit = rng.random() < 0.04
    docs_rbac_hit = not docs_query_hit and rng.random() < 0.08
    if docs_rbac_hit:
        raw_path, canonical, path_class, path_detail = rng.choice(
            [("/productpage", "/productpage", "identical", ""),
             ("/api/v1/products", "/api/v1/products", "identical", ""),
             ("/health", "/health", "identical", ""),
             ("/api/./v1/products", "/api/v1/products", "canonicalized", "dot")])
    elif docs_query_hit:
        raw_path, canonical, path_class, path_detail = rng.choice(
            [("/people", "/people", "identical", ""), ("/./people", "/people", "canonicalized", "dot"),
             ("//people", "/people", "canonicalized", "empty"),
             ("/x/../peop%6ce", "/people", "canonicalized", "dotdot+encode")])
    else:
        raw_path, canonical, path_class, path_detail = gen_path(rng)
    query, query_problem = gen_query(rng, docs_query_hit)
    if docs_rbac_hit:
        query, query_problem = None, ""
    if "path" in force:
        raw_path, canonical, path_class, path_detail = force["path"]
    if "query" in force:
        query, query_problem = force["query"]
    suffix = "" if query is None else "?" + query

    method = rng.choice(["GET", "GET", "POST", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get"])
    if docs_rbac_hit and rng.random() < 0.8:
        method = "GET"
    body_headers, body, raw_body, body_kind = gen_body(rng, docs_body_hit)
    if "body" in force:
        body_headers, body, raw_body, body_kind = force["body"]

    headers = {":authority": host, ":method": method, ":path": raw_path + suffix,
               ":scheme": "http", "x-request-id": f"req-{index}", "user-agent": "parity/1"}
    if rng.random() < 0.3:
        headers["accept"] = rng.choice(["*/*", "application/json", "text/html;q=0.9, */*"])
    if docs_rbac_hit or rng.random() < 0.3:
        # Basic alice:password / bob:password (with and without padding),
        # and ones the documented RBAC example cannot read.
        headers["authorization"] = rng.choice([
            "Basic YWxpY2U6cGFzc3dvcmQ=", "Basic YWxpY2U6cGFzc3dvcmQ", "Basic Ym9iOnBhc3N3b3Jk",
            "Basic Ym9i", "Bearer abc.def.ghi", "Basic"])
    if rng.random() < 0.06:
        headers[rng.choice(["x-agent-id", "x-agent-team", "x-meshward-hop"])] = "forged"
    for _ in range(rng.randint(0, 3)):
        headers[f"x-custom-{rng.randint(0, 9)}"] = rng.choice(["1", "", "a b", "é", "v=1; w=2"])
    headers.update(body_headers)
    r = rng.random()
    if r < 0.04:
        headers["x-envoy-auth-partial-body"] = "true"
    elif r < 0.06:
        headers["x-envoy-auth-partial-body"] = rng.choice(["false", "TRUE", "1"])
    if "partial" in force:
        headers["x-envoy-auth-partial-body"] = force["partial"]

    http = ac.AttributeContext.HttpRequest(
        id=str(10_000_000 + index), method=method, headers=headers, path=raw_path + suffix,
        host=host, protocol=rng.choice(["HTTP/1.1", "HTTP/2", ""]), body=body, raw_body=raw_body)
    if rng.random() < 0.7:
        http.scheme = "http"
    if rng.random() < 0.6:
        http.size = rng.choice([len(body.encode()) or len(raw_body), 0, -1, 17, 2**40])
    if rng.random() < 0.05:
        http.query = "ignored=1"
        http.fragment = "frag"
    if rng.random() < 0.1:
        http.header_map.headers.add(key="x-bin", raw_value=b"\xff\x00bin")
        http.header_map.headers.add(key="x-text", value="plain")
    elif rng.random() < 0.03:
        http.header_map.SetInParent()

    attrs = ac.AttributeContext(request=ac.AttributeContext.Request(time=TIME, http=http))
    if principal is not None:
        src = attrs.source
        src.principal = principal
        if rng.random() < 0.8:
            src.address.socket_address.address = "10.0.0.1"
            src.address.socket_address.port_value = rng.choice([51000, 0, 65535])
            if rng.random() < 0.1:
                src.address.socket_address.protocol = address_pb2.SocketAddress.UDP
        if rng.random() < 0.2:
            src.labels["app"] = "caller"
        if rng.random() < 0.1:
            src.service = "caller-svc"
        if rng.random() < 0.1:
            src.certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    r = rng.random()
    if r < 0.6:
        attrs.destination.address.socket_address.address = "10.0.0.2"
        attrs.destination.address.socket_address.port_value = 8080
        if rng.random() < 0.1:
            attrs.destination.principal = "spiffe://example.org/gateway/front"
    elif r < 0.65:
        attrs.destination.address.pipe.path = "/run/envoy.sock"
        attrs.destination.address.pipe.mode = rng.choice([0, 0o600])
    elif r < 0.7:
        attrs.destination.SetInParent()
    if rng.random() < 0.15:
        attrs.context_extensions["virtual_host"] = "vh"
    if rng.random() < 0.1:
        attrs.context_extensions["meshward_service"] = rng.choice(services + ["nosuch-svc"])
    if rng.random() < 0.15:
        md = attrs.metadata_context
        md.filter_metadata["envoy.filters.http.jwt_authn"].CopyFrom(struct_of(
            {"verified_jwt": {"sub": "alice", "exp": 1569026124, "scope": ["a", "b"], "ratio": 0.5,
                              "ok": True, "none": None}}))
        if rng.random() < 0.5:
            md.typed_filter_metadata["typed"].CopyFrom(any_pb2.Any(
                type_url="type.googleapis.com/google.protobuf.StringValue", value=b"\n\x05hello"))
    elif rng.random() < 0.1:
        attrs.metadata_context.SetInParent()
    if rng.random() < 0.05:
        attrs.route_metadata_context.filter_metadata["route"].CopyFrom(struct_of({"tier": "gold"}))
    if rng.random() < 0.2:
        attrs.tls_session.sni = rng.choice(["hello-skill.example.org", ""])

    request = external_auth_pb2.CheckRequest(attributes=attrs)

    identity_ok = who in ("agent", "unregistered")
    if not identity_ok:
        klass = "refused_identity"
    elif path_class == "refused_path":
        klass = "refused_path"
    else:
        klass = path_class  # identical / canonicalized / bad_escape (parse error)
    label = {"index": index, "caller": who, "path": path_class, "path_detail": path_detail,
             "query": query_problem, "body": body_kind, "method": method, "host": host,
             "raw_path": raw_path + suffix}
    plugin_request = None
    if canonical is not None:
        plugin_request = external_auth_pb2.CheckRequest()
        plugin_request.CopyFrom(request)
        plugin_request.attributes.request.http.path = canonical + suffix
    return {"class": klass, "label": label, "request": request, "plugin_request": plugin_request,
            "canonical": None if canonical is None else canonical + suffix, "principal": principal,
            "multipart": body_kind.startswith("multipart")}


# --- answers ---------------------------------------------------------------

MESH_HEADERS = ("x-agent-", "x-meshward-")


def mesh_header(name):
    return name.lower().startswith(MESH_HEADERS)


def header_options(options):
    out = []
    for o in options:
        if mesh_header(o.header.key):
            continue
        out.append([o.header.key, o.header.value, o.HasField("append") and o.append.value,
                    o.append_action, o.keep_empty_value])
    return sorted(out)


def normalize(resp):
    """What Envoy does with a response, minus the documented exclusions:
    x-agent-*/x-meshward-* headers, decision_id, status.message."""
    code = resp.status.code
    which = resp.WhichOneof("http_response")
    out = {"code": code, "allowed": code == 0}
    if code == 0:
        ok = resp.ok_response if which == "ok_response" else None
        out["headers"] = header_options(ok.headers) if ok else []
        out["headers_to_remove"] = sorted(h for h in (ok.headers_to_remove if ok else [])
                                          if not mesh_header(h))
        out["response_headers_to_add"] = header_options(ok.response_headers_to_add) if ok else []
        out["query_parameters_to_set"] = sorted(
            [q.key, q.value] for q in (ok.query_parameters_to_set if ok else []))
        out["query_parameters_to_remove"] = sorted(ok.query_parameters_to_remove if ok else [])
    else:
        denied = resp.denied_response if which == "denied_response" else None
        # Envoy answers a denial without a status with 403.
        out["http_status"] = (denied.status.code if denied and denied.status.code else 403)
        out["body"] = denied.body if denied else ""
        out["headers"] = header_options(denied.headers) if denied else []
    metadata = json_format.MessageToDict(resp.dynamic_metadata)
    metadata.pop("decision_id", None)
    out["dynamic_metadata"] = metadata
    return out


def refusal_of(resp):
    for o in resp.denied_response.headers:
        if o.header.key == "x-meshward-refusal":
            return o.header.value
    return None


SECONDS = {"meshward": 0.0, "plugin": 0.0}


def call(stub, request, who):
    start = time.monotonic()
    try:
        return stub.Check(request, timeout=TIMEOUT), None
    except grpc.RpcError as e:
        return None, f"{e.code().name}: {e.details()}"
    finally:
        SECONDS[who] += time.monotonic() - start


def brief(resp, err):
    if err:
        return {"grpc_error": err}
    d = normalize(resp)
    if "body" in d and len(d["body"]) > 1500:
        d["body"] = d["body"][:1500] + "..."
    return d


def echo_of(resp):
    """The probe's echo: (input, meshward facts), or None."""
    if resp is None or resp.status.code != 7 or resp.denied_response.status.code != 403:
        return None
    try:
        doc = json.loads(resp.denied_response.body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "input" not in doc:
        return None
    return doc["input"], doc.get("meshward")


def expected_facts(case, registry):
    """input.meshward as Meshward must compute it for this request."""
    attrs = case["request"].attributes
    http = attrs.request.http
    ext = attrs.context_extensions
    if "meshward_service" in ext:
        name = ext["meshward_service"]
    else:
        host = http.host
        if not host.startswith("[") and ":" in host:
            host = host.rsplit(":", 1)[0]
        name = host.split(".")[0]
    service = registry["services"].get(name)
    caller = registry["agents"].get(case["principal"])
    return {"direction": "ext_authz", "raw_path": http.path, "caller": caller, "service": service}


def diff(a, b, path="", out=None, limit=8):
    """Paths where two JSON values differ (numbers by value)."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: {'missing' if k not in a else repr(a[k])[:200]} vs "
                           f"{'missing' if k not in b else repr(b[k])[:200]}")
            else:
                diff(a[k], b[k], f"{path}/{k}", out, limit)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}/{i}", out, limit)
    elif not same(a, b):
        out.append(f"{path}: {repr(a)[:200]} vs {repr(b)[:200]}")
    return out


def same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# --- checks ----------------------------------------------------------------

class Run:
    def __init__(self, cfg):
        self.cfg = cfg
        self.mode = cfg["mode"]
        self.registry = cfg["registry"]
        self.counts = {}
        self.plugin_outcomes = {}
        self.mismatches = []
        self.compared = 0
        self.bodies = {}
        self.mesh = external_auth_pb2_grpc.AuthorizationStub(grpc.insecure_channel(cfg["meshward"]))
        self.plugin = external_auth_pb2_grpc.AuthorizationStub(grpc.insecure_channel(cfg["plugin"]))

    def count(self, klass):
        self.counts[klass] = self.counts.get(klass, 0) + 1

    def mismatch(self, case, why, meshward=None, plugin=None):
        self.count("mismatch")
        if len(self.mismatches) < MAX_REPORTED:
            self.mismatches.append({"why": why, "case": case["label"], "meshward": meshward,
                                    "plugin": plugin})

    def run(self, case):
        m, m_err = call(self.mesh, case["request"], "meshward")
        if m_err:
            return self.mismatch(case, "Meshward answered with a gRPC error", m_err)
        klass = case["class"]
        if klass == "refused_identity":
            return self.refused_identity(case, m)
        if klass == "refused_path":
            return self.refused_path(case, m)
        if klass == "bad_escape":
            # No canonical path exists; the plugin sees the same path.
            p, p_err = call(self.plugin, case["request"], "plugin")
        else:
            p, p_err = call(self.plugin, case["plugin_request"], "plugin")
        if p_err:
            return self.mismatch(case, "the plugin answered with a gRPC error", brief(m, None), p_err)
        self.compared += 1
        body = case["label"]["body"]
        self.bodies[body] = self.bodies.get(body, 0) + 1
        outcome = "parse_error" if self.parse_error(p) else ("allowed" if p.status.code == 0 else "denied")
        self.plugin_outcomes[outcome] = self.plugin_outcomes.get(outcome, 0) + 1
        if outcome == "parse_error":
            return self.parse_errors(case, m, p)
        if klass == "bad_escape":
            return self.mismatch(case, "the plugin accepted a path the corpus made malformed",
                                 brief(m, None), brief(p, None))
        if self.mode == "probe":
            return self.compare_inputs(case, m, p)
        return self.compare_decisions(case, m, p)

    @staticmethod
    def parse_error(resp):
        return (resp.status.code == 7 and resp.denied_response.status.code == 400
                and resp.denied_response.body.startswith(PARSE_ERROR))

    def refused_identity(self, case, m):
        ok = (m.status.code == 7 and m.denied_response.status.code == 403
              and refusal_of(m) == "forbidden" and m.denied_response.body == "")
        if not ok:
            return self.mismatch(case, "an unverifiable caller was not refused with 403 before policy",
                                 brief(m, None))
        self.count("refused_identity")

    def refused_path(self, case, m):
        ok = (m.denied_response.status.code == 400 and refusal_of(m) == "bad_request"
              and m.status.code == 3)
        if not ok:
            return self.mismatch(case, f"path with {case['label']['path_detail']} was not refused with 400",
                                 brief(m, None))
        self.count("refused_path")

    def parse_errors(self, case, m, p):
        mn, pn = normalize(m), normalize(p)
        json_error = case["label"]["body"].startswith(("json", "raw_mixed", "multipart")) and not any(
            t in pn["body"] for t in ("URL escape", "semicolon", "strconv.ParseInt", "query parameters"))
        if json_error:
            mn.pop("body", None)
            pn.pop("body", None)
        if mn != pn:
            return self.mismatch(case, "parse errors differ", mn, pn)
        self.count("parse_error_json" if json_error else "parse_error")

    def compare_inputs(self, case, m, p):
        mine, theirs = echo_of(m), echo_of(p)
        if mine is None or theirs is None:
            return self.mismatch(case, "no input echoed", brief(m, None), brief(p, None))
        m_input, facts = mine
        p_input, p_facts = theirs
        if p_facts is not None:
            return self.mismatch(case, "the plugin has input.meshward", None, p_facts)
        expected = expected_facts(case, self.registry)
        if not same(facts, expected):
            return self.mismatch(case, "input.meshward: " + "; ".join(diff(facts, expected)),
                                 facts, expected)
        m_path = m_input.get("attributes", {}).get("request", {}).get("http", {}).get("path")
        if m_path != case["canonical"]:
            return self.mismatch(case, f"Meshward judged {m_path!r}, not the canonical {case['canonical']!r}")
        if not same(m_input, p_input):
            return self.mismatch(case, "inputs differ: " + "; ".join(diff(m_input, p_input)))
        self.count(case["class"])

    def compare_decisions(self, case, m, p):
        mn, pn = normalize(m), normalize(p)
        if mn != pn:
            return self.mismatch(case, "responses differ", mn, pn)
        self.count(case["class"])
        self.count("allowed" if pn["allowed"] else "denied")


def fixed(registry):
    """Hand-picked overrides, each sent once ahead of the random cases so
    every edge below is in every run: each JSON edge and error, bytes that
    are not UTF-8, content-length spellings, partial bodies, each refused
    path, each malformed escape, query errors, other body types, and each
    kind of unusable caller."""
    agent = (sorted(registry["agents"])[0], "agent")
    td = registry["trust_domain"]
    json_ct = {"content-type": "application/json"}
    form_ct = {"content-type": "application/x-www-form-urlencoded"}
    out = []
    for text in JSON_EDGE:
        out.append({"body": (json_ct, text, b"", "json_edge")})
    for text in JSON_BAD:
        out.append({"body": (json_ct, text, b"", "json_invalid")})
    for raw in INVALID_UTF8_JSON:
        out.append({"body": (json_ct, "", raw, "json_invalid_utf8")})
    for raw in INVALID_UTF8_FORM:
        out.append({"body": (form_ct, "", raw, "form_invalid_utf8")})
    for length in ["7", "3", "100", "abc", "+3", "+100", "-1", "", " 5", "0x10", "1e3"]:
        headers = dict(json_ct, **{"content-length": length})
        out.append({"body": (headers, '{"a":1}', b"", "json")})
        out.append({"body": (dict(form_ct, **{"content-length": length}), "a=1&b", b"", "form")})
    for value, ct in [("true", json_ct), ("true", {"content-type": "text/plain"}), ("TRUE", json_ct),
                      ("false", json_ct)]:
        out.append({"body": (ct, '{"a":1}', b"", "json"), "partial": value})
    for text in ["a=1;b=2", "k=%zz&j=1", "a=%", "=&&=", "x+y=%2B%20+&x+y=2"]:
        out.append({"body": (form_ct, text, b"", "form")})
    for ct, body, raw in [("application/grpc", "", b"\x00\x00\x00\x00\x02\x08\x01"),
                          ("multipart/form-data; boundary=XX", "hello", b""),
                          ("multipart/form-data", "x", b""),
                          ("text/plain", '{"a":1}', b"")]:
        kind = "multipart" if ct.startswith("multipart") else "other"
        out.append({"body": ({"content-type": ct}, body, raw, kind)})
    rng = random.Random(0)
    for kind in sorted(REFUSALS):
        out.append({"path": (REFUSALS[kind](rng, "/say-hello"), None, "refused_path", kind)})
    for bad in ["%zz", "%4", "%G1", "%%", "%é", "%aé", "%\x7f", "%"]:
        out.append({"path": ("/say-hello/x" + bad, None, "bad_escape", "path")})
        out.append({"path": ("/say" + bad + "-hello", None, "bad_escape", "path")})
    for q in ["a=%zz&b=1", "a=1;b=2", "a=%zz;b", "%4=1", "k=%", "a=1&b=%E2%82&c=%FF", "a=b=c&&=&x"]:
        problem = "semicolon" if ";" in q else ("escape" if "%z" in q or q.startswith("%4") or q.endswith("%") else "")
        out.append({"query": (q, problem)})
    for who in [("", "empty"), ("spiffe://other.org/agent/support-triage", "foreign"),
                ("CN=agent", "not_spiffe"), (f"spiffe://{td}", "not_spiffe"), (None, "no_source"),
                (f"spiffe://{td}/agent/stranger", "unregistered")]:
        out.append({"who": who})
    for case in out:
        case.setdefault("who", agent)
        case.setdefault("path", ("/say-hello", "/say-hello", "identical", ""))
        case.setdefault("query", (None, ""))
    return out


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    rng = random.Random(cfg["seed"])
    run = Run(cfg)
    forced = fixed(run.registry)
    for i in range(cfg["count"]):
        force = forced[i] if i < len(forced) else None
        run.run(gen_request(rng, run.registry, i, force))
    explained = sum(v for k, v in run.counts.items() if k not in ("mismatch", "allowed", "denied"))
    summary = {
        "mode": cfg["mode"],
        "sent": cfg["count"],
        "compared": run.compared,
        "explained": explained,
        "classes": dict(sorted(run.counts.items())),
        "plugin_outcomes": dict(sorted(run.plugin_outcomes.items())),
        "compared_by_body": dict(sorted(run.bodies.items())),
        "seconds": {k: round(v, 2) for k, v in SECONDS.items()},
        "mismatches": run.counts.get("mismatch", 0),
        "first_mismatches": run.mismatches,
    }
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    sys.exit(1 if summary["mismatches"] or explained != cfg["count"] else 0)


if __name__ == "__main__":
    main()
