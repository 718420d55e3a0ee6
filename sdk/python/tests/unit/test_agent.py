"""Agent: requests it sends, refusals it raises, upstream errors it does not."""

import json

import httpx
import pytest
from conftest import Recorder, refusal

from meshward import (
    Agent,
    BadRequest,
    CallTimeout,
    Forbidden,
    InvalidURL,
    MeshRefusal,
    RateLimited,
    SidecarError,
    Unavailable,
    UnknownService,
    UpstreamError,
)


def agent_for(rec: Recorder, **kw) -> Agent:
    return Agent("127.0.0.1:15001", transport=rec.transport(), **kw)


def test_call_sends_the_mcp_prefix_to_the_sidecar():
    rec = Recorder(httpx.Response(200, json={"score": 0.9}, headers={"x-request-id": "r9"}))
    with agent_for(rec) as agent:
        r = agent.call(
            "mcp://sentiment-analysis/analyze",
            json={"text": "great"},
            headers={"x-trace": "t"},
            params={"lang": "en"},
        )
    assert r.status_code == 200 and r.ok
    assert r.json() == {"score": 0.9}
    assert r.request_id == "r9"
    assert r.service == "sentiment-analysis"
    (req,) = rec.requests
    assert req.method == "POST"
    assert req.url.host == "127.0.0.1" and req.url.port == 15001
    assert req.url.raw_path == b"/mcp://sentiment-analysis/analyze?lang=en"
    assert json.loads(req.content) == {"text": "great"}
    assert req.headers["x-trace"] == "t"
    assert req.headers["user-agent"].startswith("meshward-python/")


def test_method_defaults_to_get_without_a_body_and_can_be_set():
    rec = Recorder(httpx.Response(200), httpx.Response(204), httpx.Response(200))
    with agent_for(rec) as agent:
        agent.call("mcp://hello-skill/say-hello")
        agent.call("mcp://support-system/tickets/1", method="delete")
        agent.call("mcp://support-system/tickets", content=b"raw", method="PUT")
    assert [r.method for r in rec.requests] == ["GET", "DELETE", "PUT"]
    assert rec.requests[2].content == b"raw"


def test_invalid_url_never_reaches_the_sidecar():
    rec = Recorder()
    with agent_for(rec) as agent, pytest.raises(InvalidURL):
        agent.call("mcp://hello-skill@billing-system/invoices")
    assert rec.requests == []


def test_json_and_content_together_are_refused():
    with agent_for(Recorder()) as agent, pytest.raises(ValueError):
        agent.call("mcp://a/b", json={}, content=b"x")


@pytest.mark.parametrize(
    "response, cls, kind",
    [
        (refusal(403, "forbidden", "customer-success agents may not reach billing-system"), Forbidden, "forbidden"),
        (refusal(429, "rate_limited", "rate limited: a -> s: rate exceeded", retry_after="2"), RateLimited, "rate_limited"),
        (refusal(503, "circuit_open", "circuit open for hello-skill", retry_after="10"), Unavailable, "circuit_open"),
        (refusal(503, "unavailable", "upstream s unavailable: it has no endpoints"), Unavailable, "unavailable"),
        (refusal(503, "not_ready", "dataplane not ready: no config"), Unavailable, "not_ready"),
        (refusal(504, "upstream_timeout", "upstream s timed out: no response headers within 30s"), Unavailable, "upstream_timeout"),
        (refusal(404, "not_found", 'unknown service "nope"'), UnknownService, "not_found"),
        (refusal(400, "bad_request", "bad request: path"), BadRequest, "bad_request"),
    ],
)
def test_each_refusal_kind_raises_its_class(response, cls, kind):
    with agent_for(Recorder(response)) as agent, pytest.raises(cls) as e:
        agent.call("mcp://s/x")
    err = e.value
    assert isinstance(err, MeshRefusal)
    assert err.status == response.status_code
    assert err.kind == kind
    assert err.reason == response.json()["reason"]
    assert err.request_id == "rid-1"
    assert err.response is not None and err.response.status_code == response.status_code
    assert "rid-1" in str(err)


def test_refusal_carries_retry_after_and_decision_id():
    resp = refusal(429, "rate_limited", "slow down", retry_after="3", decision_id="dec-7")
    with agent_for(Recorder(resp)) as agent, pytest.raises(RateLimited) as e:
        agent.call("mcp://s/x")
    assert e.value.retry_after == 3.0
    assert e.value.decision_id == "dec-7"


def test_policy_chosen_status_and_body_are_still_a_forbidden():
    # A policy may deny with its own status and a non-JSON body.
    resp = refusal(401, "forbidden", "", body="log in first")
    with agent_for(Recorder(resp)) as agent, pytest.raises(Forbidden) as e:
        agent.call("mcp://s/x")
    assert e.value.status == 401
    assert e.value.reason == "log in first"


def test_unknown_refusal_kind_is_a_plain_mesh_refusal():
    with agent_for(Recorder(refusal(418, "teapot", "new kind"))) as agent:
        with pytest.raises(MeshRefusal) as e:
            agent.call("mcp://s/x")
    assert type(e.value) is MeshRefusal and e.value.kind == "teapot"


def test_request_id_falls_back_to_the_body():
    resp = httpx.Response(
        403,
        headers={"x-meshward-refusal": "forbidden"},
        json={"error": "forbidden", "reason": "no", "request_id": "from-body"},
    )
    with agent_for(Recorder(resp)) as agent, pytest.raises(Forbidden) as e:
        agent.call("mcp://s/x")
    assert e.value.request_id == "from-body"


@pytest.mark.parametrize("status", [400, 403, 404, 429, 500, 503])
def test_upstream_errors_are_responses_not_refusals(status):
    # The same statuses and even a refusal-shaped body, but no
    # x-meshward-refusal: the service answered, not the mesh.
    resp = httpx.Response(
        status,
        headers={"x-request-id": "up-1", "retry-after": "1"},
        json={"error": "forbidden", "reason": "the service's own"},
    )
    rec = Recorder(resp)
    with agent_for(rec, retries=None) as agent:
        r = agent.call("mcp://customer-lookup/customers/1")
    assert r.status_code == status and not r.ok
    with pytest.raises(UpstreamError) as e:
        r.raise_for_status()
    assert not isinstance(e.value, MeshRefusal)
    assert e.value.status == status
    assert e.value.request_id == "up-1"
    assert e.value.service == "customer-lookup"


def test_raise_for_status_returns_the_response_when_ok():
    with agent_for(Recorder(httpx.Response(201, text="made"))) as agent:
        r = agent.call("mcp://s/x", json={})
    assert r.raise_for_status() is r
    assert r.text == "made"


def test_no_sidecar_is_a_sidecar_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    agent = Agent("127.0.0.1:9", transport=httpx.MockTransport(refuse))
    with pytest.raises(SidecarError, match="127.0.0.1:9"):
        agent.call("mcp://s/x")


def test_timeout_is_a_call_timeout_and_per_call_timeout_is_passed():
    seen = []

    def slow(request):
        seen.append(request.extensions["timeout"])
        raise httpx.ReadTimeout("slow", request=request)

    agent = Agent("127.0.0.1:15001", timeout=5.0, transport=httpx.MockTransport(slow))
    with pytest.raises(CallTimeout) as e:
        agent.call("mcp://s/x", timeout=0.25)
    assert isinstance(e.value, TimeoutError)
    with pytest.raises(CallTimeout):
        agent.call("mcp://s/x")
    assert seen[0]["read"] == 0.25
    assert seen[1]["read"] == 5.0


def test_environment_proxy_is_ignored(monkeypatch):
    """HTTP_PROXY meant for the internet must not capture sidecar calls: a
    real loopback server stands in for the sidecar, the proxy is a dead port."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dead = http.server.HTTPServer(("127.0.0.1", 0), Handler)  # bound, never served
    proxy = f"http://127.0.0.1:{dead.server_address[1]}"
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        with Agent(f"127.0.0.1:{server.server_address[1]}", timeout=2) as agent:
            assert agent.call("mcp://s/x").text == "ok"
    finally:
        server.shutdown()
        server.server_close()
        dead.server_close()
