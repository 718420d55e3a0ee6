"""Responses shaped like the dataplane's (`dataplane/src/pipeline/refusal.rs`)."""

import json
from typing import Dict, List, Optional

import httpx
import pytest


def refusal(
    status: int,
    kind: str,
    reason: str,
    request_id: str = "rid-1",
    retry_after: Optional[str] = None,
    decision_id: Optional[str] = None,
    body: Optional[str] = None,
) -> httpx.Response:
    """A refusal as the sidecar renders it: the JSON body, `retry-after`,
    `x-request-id`, `x-meshward-refusal` (and the decision id when logged)."""
    headers: Dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    headers["x-request-id"] = request_id
    headers["x-meshward-refusal"] = kind
    if decision_id is not None:
        headers["x-meshward-decision-id"] = decision_id
    headers["content-type"] = "application/json"
    if body is None:
        body = json.dumps({"error": kind, "reason": reason, "request_id": request_id})
    return httpx.Response(status, headers=headers, content=body.encode())


class Recorder:
    """A mock sidecar answering from a script, recording what it was sent."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: List[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.responses:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        return self.responses.pop(0)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


@pytest.fixture
def anyio_backend():
    return "asyncio"
