"""Retries of 429s: opt-in, bounded, jittered, never earlier than retry-after."""

import random

import httpx
import pytest
from conftest import Recorder, refusal

from meshward import Agent, Forbidden, RateLimited, RetryPolicy, Unavailable


class Sleeps:
    """An injected sleep that records instead of sleeping."""

    def __init__(self):
        self.waits = []

    def __call__(self, seconds):
        self.waits.append(seconds)


def limited(retry_after="1"):
    return refusal(429, "rate_limited", "rate limited", retry_after=retry_after)


def test_retries_are_off_by_default():
    rec = Recorder(limited())
    sleeps = Sleeps()
    agent = Agent("127.0.0.1:15001", transport=rec.transport(), sleep=sleeps)
    with pytest.raises(RateLimited):
        agent.call("mcp://s/x")
    assert len(rec.requests) == 1 and sleeps.waits == []


def test_retry_succeeds_after_waiting_at_least_retry_after():
    rec = Recorder(limited("2"), limited("1"), httpx.Response(200, text="ok"))
    sleeps = Sleeps()
    agent = Agent(
        "127.0.0.1:15001",
        transport=rec.transport(),
        retries=RetryPolicy(max_attempts=3, max_delay=10, jitter=0.5),
        sleep=sleeps,
    )
    r = agent.call("mcp://s/x", json={"a": 1})
    assert r.text == "ok"
    assert len(rec.requests) == 3
    # The body is resent each time.
    assert all(req.content == b'{"a":1}' or req.content == b'{"a": 1}' for req in rec.requests)
    assert 2.0 <= sleeps.waits[0] <= 3.0
    assert 1.0 <= sleeps.waits[1] <= 1.5


def test_attempts_are_bounded_and_the_last_refusal_is_raised():
    rec = Recorder(*[limited() for _ in range(3)])
    sleeps = Sleeps()
    agent = Agent(
        "127.0.0.1:15001",
        transport=rec.transport(),
        retries=RetryPolicy(max_attempts=3),
        sleep=sleeps,
    )
    with pytest.raises(RateLimited):
        agent.call("mcp://s/x")
    assert len(rec.requests) == 3
    assert len(sleeps.waits) == 2


def test_retry_after_beyond_max_delay_is_raised_at_once():
    rec = Recorder(limited("30"))
    sleeps = Sleeps()
    agent = Agent(
        "127.0.0.1:15001",
        transport=rec.transport(),
        retries=RetryPolicy(max_attempts=5, max_delay=5),
        sleep=sleeps,
    )
    with pytest.raises(RateLimited) as e:
        agent.call("mcp://s/x")
    assert e.value.retry_after == 30
    assert len(rec.requests) == 1 and sleeps.waits == []


@pytest.mark.parametrize(
    "response",
    [
        refusal(403, "forbidden", "no"),
        refusal(503, "circuit_open", "open", retry_after="1"),
        httpx.Response(429, headers={"retry-after": "1"}),  # the upstream's own 429
    ],
)
def test_only_mesh_rate_limits_are_retried(response):
    rec = Recorder(response)
    sleeps = Sleeps()
    agent = Agent(
        "127.0.0.1:15001",
        transport=rec.transport(),
        retries=RetryPolicy(max_attempts=3),
        sleep=sleeps,
    )
    if response.headers.get("x-meshward-refusal"):
        with pytest.raises((Forbidden, Unavailable)):
            agent.call("mcp://s/x")
    else:
        assert agent.call("mcp://s/x").status_code == 429
    assert len(rec.requests) == 1 and sleeps.waits == []


def test_jitter_stays_within_bounds():
    policy = RetryPolicy(max_attempts=10, max_delay=100, jitter=0.25, rng=random.Random(7))
    waits = [policy.delay(1, 4.0) for _ in range(2000)]
    assert all(4.0 <= w <= 5.0 for w in waits)
    # Actually jittered, not a constant.
    assert max(waits) - min(waits) > 0.5


def test_without_retry_after_backoff_doubles_and_is_capped():
    policy = RetryPolicy(max_attempts=10, base_delay=0.5, max_delay=3, jitter=0.0)
    assert [policy.delay(n, None) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(10, None) is None


def test_jitter_never_exceeds_max_delay():
    policy = RetryPolicy(max_attempts=3, max_delay=2.0, jitter=1.0, rng=random.Random(1))
    assert all(policy.delay(1, 2.0) == 2.0 for _ in range(100))


def test_unreadable_retry_after_falls_back_to_backoff():
    rec = Recorder(limited("Wed, 21 Oct 2015 07:28:00 GMT"), httpx.Response(200))
    sleeps = Sleeps()
    agent = Agent(
        "127.0.0.1:15001",
        transport=rec.transport(),
        retries=RetryPolicy(max_attempts=2, base_delay=0.5, jitter=0.0),
        sleep=sleeps,
    )
    assert agent.call("mcp://s/x").status_code == 200
    assert sleeps.waits == [0.5]


@pytest.mark.parametrize("kw", [{"max_attempts": 0}, {"max_delay": -1}, {"jitter": -0.1}])
def test_nonsense_policies_are_refused(kw):
    with pytest.raises(ValueError):
        RetryPolicy(**kw)
