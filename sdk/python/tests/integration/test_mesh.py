"""The SDK against a real mesh: support-triage's calls as the demo policy decides them."""

import time

import pytest

from meshward import (
    Agent,
    AsyncAgent,
    Forbidden,
    RateLimited,
    RetryPolicy,
    UnknownService,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def triage(mesh):
    with Agent(mesh.outbound("support-triage"), timeout=10) as agent:
        yield agent


def test_allowed_call_reaches_the_skill(triage):
    r = triage.call("mcp://hello-skill/say-hello", params={"name": "sdk"})
    assert r.status_code == 200, r.text
    body = r.json()
    # The echo skill saw the path without the /mcp:// prefix.
    assert body["path"] == "/say-hello?name=sdk"


def test_denied_call_is_forbidden_with_the_policy_reason(triage):
    with pytest.raises(Forbidden) as e:
        triage.call("mcp://billing-system/invoices")
    err = e.value
    assert err.status == 403 and err.kind == "forbidden"
    assert "billing-system" in err.reason
    assert err.request_id


def test_unknown_service(triage):
    with pytest.raises(UnknownService) as e:
        triage.call("mcp://nope/x")
    assert e.value.status == 404
    assert "nope" in e.value.reason
    assert e.value.request_id


@pytest.mark.anyio
async def test_async_agent_against_the_mesh(mesh):
    async with AsyncAgent(mesh.outbound("support-triage"), timeout=10) as agent:
        r = await agent.call("mcp://hello-skill/say-hello", json={"n": 1})
        assert r.status_code == 200
        assert r.json()["method"] == "POST"
        with pytest.raises(Forbidden):
            await agent.call("mcp://billing-system/invoices")


def test_burst_over_the_limit_is_rate_limited(triage):
    # support-triage: 5 rps, burst 10.
    refusals = []
    for _ in range(40):
        try:
            triage.call("mcp://hello-skill/say-hello")
        except RateLimited as e:
            refusals.append(e)
    assert refusals, "40 calls at once never exceeded a burst of 10"
    first = refusals[0]
    assert first.status == 429 and first.kind == "rate_limited"
    assert first.retry_after is not None and first.retry_after >= 1
    assert first.request_id


def test_retry_policy_waits_out_the_limit(mesh, triage):
    # Empty the bucket, then keep calling faster than 5 rps: every call
    # succeeds because the policy waits out each 429's retry-after.
    with pytest.raises(RateLimited):
        for _ in range(40):
            triage.call("mcp://hello-skill/say-hello")
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        time.sleep(seconds)

    with Agent(
        mesh.outbound("support-triage"),
        retries=RetryPolicy(max_attempts=4, max_delay=5, jitter=0.2),
        sleep=sleep,
    ) as patient:
        for _ in range(12):
            assert patient.call("mcp://hello-skill/say-hello").status_code == 200
    assert waits, "12 calls right after a 429 never waited"
    assert all(1 <= w <= 5 for w in waits)
