"""agent.identity(): the request it sends, strict parsing, refusals."""

import copy
import json

import httpx
import pytest
from conftest import Recorder, refusal

from meshward import (
    Agent,
    AsyncAgent,
    Identity,
    IdentityFormatError,
    Limits,
    SidecarError,
    UnknownService,
    Unavailable,
    parse_identity,
)

# What the dataplane answers for support-triage (dataplane/src/pipeline/whoami.rs).
DOCUMENT = {
    "spiffe_id": "spiffe://example.org/agent/support-triage",
    "trust_domain": "example.org",
    "name": "support-triage",
    "attributes": {"team": "customer-success", "type": "support"},
    "permissions": ["skills:invoke", "data:read"],
    "limits": {"requests_per_second": 5.0, "burst": 10, "max_concurrent": 20},
}


def answer(document=DOCUMENT, status=200) -> httpx.Response:
    return httpx.Response(
        status,
        headers={"content-type": "application/json", "cache-control": "no-store"},
        content=json.dumps(document).encode(),
    )


def test_identity_asks_the_sidecar_and_parses_the_registry_entry():
    rec = Recorder(answer())
    with Agent("127.0.0.1:15001", transport=rec.transport()) as agent:
        me = agent.identity()
    (request,) = rec.requests
    assert request.method == "GET"
    assert str(request.url) == "http://127.0.0.1:15001/.meshward/identity"
    assert me == Identity(
        spiffe_id="spiffe://example.org/agent/support-triage",
        trust_domain="example.org",
        name="support-triage",
        attributes={"team": "customer-success", "type": "support"},
        permissions=["skills:invoke", "data:read"],
        limits=Limits(requests_per_second=5.0, burst=10, max_concurrent=20),
    )
    assert me.team == "customer-success"


@pytest.mark.anyio
async def test_async_identity():
    rec = Recorder(answer())
    async with AsyncAgent("127.0.0.1:15001", transport=rec.transport()) as agent:
        me = await agent.identity()
    assert me.name == "support-triage"
    assert rec.requests[0].url.path == "/.meshward/identity"


def test_unregistered_agent_is_unavailable():
    reason = "spiffe://example.org/agent/x is not a registered agent in the mesh config"
    rec = Recorder(refusal(503, "not_ready", reason))
    with Agent("127.0.0.1:15001", transport=rec.transport()) as agent:
        with pytest.raises(Unavailable) as e:
            agent.identity()
    assert e.value.kind == "not_ready" and e.value.reason == reason
    assert e.value.request_id == "rid-1"


def test_an_older_sidecar_routing_the_path_is_unknown_service():
    rec = Recorder(refusal(404, "not_found", 'unknown service "127"'))
    with Agent("127.0.0.1:15001", transport=rec.transport()) as agent:
        with pytest.raises(UnknownService):
            agent.identity()


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>"),
        httpx.Response(500, content=b"oops"),
        answer(["not", "an", "object"]),
    ],
)
def test_answers_that_are_not_an_identity(response):
    rec = Recorder(response)
    with Agent("127.0.0.1:15001", transport=rec.transport()) as agent:
        with pytest.raises(IdentityFormatError):
            agent.identity()


def test_no_sidecar_is_a_sidecar_error():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    with Agent("127.0.0.1:15001", transport=httpx.MockTransport(refuse)) as agent:
        with pytest.raises(SidecarError):
            agent.identity()


def test_no_limits_is_none_and_extra_fields_are_ignored():
    doc = dict(DOCUMENT, limits=None, added_later={"x": 1})
    me = parse_identity(doc)
    assert me.limits is None
    doc = dict(DOCUMENT, limits={"requests_per_second": 0, "burst": 0, "max_concurrent": 3})
    assert parse_identity(doc).limits == Limits(0.0, 0, 3)
    assert parse_identity(dict(DOCUMENT, attributes={})).team is None


def _broken(path, value):
    doc = copy.deepcopy(DOCUMENT)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    "path,value,message",
    [
        (("spiffe_id",), KeyError, "missing spiffe_id"),
        (("spiffe_id",), 7, "spiffe_id: expected a non-empty string"),
        (("spiffe_id",), "", "spiffe_id: expected a non-empty string"),
        (("spiffe_id",), "spiffe://other.org/agent/a", "not in trust domain"),
        (("spiffe_id",), "spiffe://example.org.evil/a", "not in trust domain"),
        (("spiffe_id",), "https://example.org/agent/a", "not in trust domain"),
        (("trust_domain",), "example.org/agent", "not a trust domain"),
        (("trust_domain",), "Example.org", "not a trust domain"),
        (("name",), None, "name: expected a non-empty string, got null"),
        (("attributes",), ["team"], "attributes: expected an object"),
        (("attributes", "team"), 1, "attributes.team: expected a string"),
        (("permissions",), "skills:invoke", "permissions: expected an array"),
        (("permissions", 1), None, "permissions[1]: expected a string"),
        (("limits",), KeyError, "missing limits"),
        (("limits",), 5, "limits: expected an object or null"),
        (("limits", "requests_per_second"), "5", "expected a number"),
        (("limits", "requests_per_second"), True, "expected a number"),
        (("limits", "requests_per_second"), -1, "not a finite, non-negative number"),
        (("limits", "burst"), KeyError, "missing limits.burst"),
        (("limits", "burst"), 1.5, "limits.burst: expected a non-negative integer"),
        (("limits", "max_concurrent"), -1, "limits.max_concurrent"),
        (("limits", "max_concurrent"), False, "limits.max_concurrent"),
    ],
)
def test_strict_parsing_names_the_field(path, value, message):
    with pytest.raises(IdentityFormatError) as e:
        parse_identity(_broken(path, value))
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_nan_rate_is_refused():
    doc = _broken(("limits", "requests_per_second"), float("nan"))
    with pytest.raises(IdentityFormatError):
        parse_identity(doc)
