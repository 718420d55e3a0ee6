"""AsyncAgent: the same requests, refusals and retries as Agent."""

import httpx
import pytest
from conftest import Recorder, refusal

from meshward import (
    AsyncAgent,
    BadRequest,
    Forbidden,
    InvalidURL,
    MeshRefusal,
    RateLimited,
    RetryPolicy,
    SidecarError,
    Unavailable,
    UnknownService,
    UpstreamError,
)

pytestmark = pytest.mark.anyio


def agent_for(rec, **kw):
    return AsyncAgent("127.0.0.1:15001", transport=rec.transport(), **kw)


async def test_call_sends_the_mcp_prefix():
    rec = Recorder(httpx.Response(200, json={"hello": "world"}))
    async with agent_for(rec) as agent:
        r = await agent.call("mcp://hello-skill/say-hello", json={"name": "x"})
    assert r.json() == {"hello": "world"}
    assert rec.requests[0].method == "POST"
    assert rec.requests[0].url.raw_path == b"/mcp://hello-skill/say-hello"


@pytest.mark.parametrize(
    "response, cls",
    [
        (refusal(403, "forbidden", "no"), Forbidden),
        (refusal(429, "rate_limited", "slow", retry_after="1"), RateLimited),
        (refusal(503, "circuit_open", "open"), Unavailable),
        (refusal(404, "not_found", "nope"), UnknownService),
        (refusal(400, "bad_request", "bad"), BadRequest),
    ],
)
async def test_refusals_raise_the_same_classes(response, cls):
    async with agent_for(Recorder(response)) as agent:
        with pytest.raises(cls) as e:
            await agent.call("mcp://s/x")
    assert isinstance(e.value, MeshRefusal)
    assert e.value.request_id == "rid-1"
    assert e.value.reason == response.json()["reason"]


async def test_upstream_error_is_a_response():
    async with agent_for(Recorder(httpx.Response(503, text="down"))) as agent:
        r = await agent.call("mcp://s/x")
    with pytest.raises(UpstreamError):
        r.raise_for_status()


async def test_retries_use_the_injected_async_sleep():
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    rec = Recorder(
        refusal(429, "rate_limited", "slow", retry_after="1"), httpx.Response(200, text="ok")
    )
    async with agent_for(rec, retries=RetryPolicy(max_attempts=2, jitter=0.5), sleep=sleep) as agent:
        r = await agent.call("mcp://s/x")
    assert r.text == "ok"
    assert len(waits) == 1 and 1.0 <= waits[0] <= 1.5


async def test_bounded_attempts():
    rec = Recorder(*[refusal(429, "rate_limited", "slow", retry_after="1") for _ in range(2)])

    async def sleep(seconds):
        pass

    async with agent_for(rec, retries=RetryPolicy(max_attempts=2), sleep=sleep) as agent:
        with pytest.raises(RateLimited):
            await agent.call("mcp://s/x")
    assert len(rec.requests) == 2


async def test_invalid_url_and_no_sidecar():
    async def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    agent = AsyncAgent("127.0.0.1:9", transport=httpx.MockTransport(refuse))
    with pytest.raises(InvalidURL):
        await agent.call("mcp://../x")
    with pytest.raises(SidecarError):
        await agent.call("mcp://s/x")
    await agent.aclose()
