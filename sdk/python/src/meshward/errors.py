"""Exceptions: the mesh's refusals, an upstream's errors, and local mistakes.

A response is a *mesh refusal* exactly when it carries `x-meshward-refusal`:
the dataplane sets that header on every answer it gives instead of the
upstream, and strips any `x-meshward-*` header an upstream sends, so a
service cannot impersonate the mesh. The header's value is the refusal's
kind (`forbidden`, `rate_limited`, ...) and picks the exception class; the
status code alone could not, because a policy may deny with its own status
(401, 451, ...) and an upstream's own 403 or 503 is not the mesh's.

Refusals are raised by `Agent.call`. An upstream's own 4xx/5xx is returned
as a normal response; `Response.raise_for_status()` turns it into
`UpstreamError`, which is deliberately not a `MeshRefusal`.
"""

import json
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Type

if TYPE_CHECKING:  # pragma: no cover
    from .response import Response

REFUSAL_HEADER = "x-meshward-refusal"
REQUEST_ID_HEADER = "x-request-id"
DECISION_ID_HEADER = "x-meshward-decision-id"
RETRY_AFTER_HEADER = "retry-after"


class MeshwardError(Exception):
    """Base of every exception this SDK raises."""


class InvalidURL(MeshwardError, ValueError):
    """An `mcp://` URL or sidecar address the SDK refuses to send."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url!r}: {reason}")
        self.url = url
        self.reason = reason


class SidecarError(MeshwardError):
    """The call did not get an answer from the outbound sidecar: nothing
    listening (is `MESHWARD_OUTBOUND` right?), connection reset, timeout."""

    def __init__(self, sidecar: str, cause: Exception) -> None:
        super().__init__(
            f"no answer from the Meshward sidecar at {sidecar}: "
            f"{type(cause).__name__}: {cause}"
        )
        self.sidecar = sidecar
        self.cause = cause


class CallTimeout(SidecarError, TimeoutError):
    """No answer within the call's timeout."""


class MeshRefusal(MeshwardError):
    """The mesh answered instead of the service.

    `kind` is the dataplane's name for the outcome (`x-meshward-refusal`),
    `reason` its explanation, `request_id` and `decision_id` what to quote
    when asking why (the decision log is keyed by them).
    """

    #: The kinds this class stands for (used to pick the class).
    kinds: Tuple[str, ...] = ()

    def __init__(
        self,
        *,
        status: int,
        kind: str,
        reason: str,
        request_id: Optional[str] = None,
        decision_id: Optional[str] = None,
        retry_after: Optional[float] = None,
        response: "Optional[Response]" = None,
    ) -> None:
        rid = f" (request {request_id})" if request_id else ""
        super().__init__(f"{status} {kind}: {reason}{rid}")
        self.status = status
        self.kind = kind
        self.reason = reason
        self.request_id = request_id
        self.decision_id = decision_id
        #: Seconds from `retry-after`, when the mesh sent one.
        self.retry_after = retry_after
        self.response = response
        #: The gRPC status code (an `int`) of a refusal from `grpc_refusal`.
        self.grpc_code: Optional[int] = None


class Forbidden(MeshRefusal):
    """Policy denied the call (403, or the status the policy chose)."""

    kinds = ("forbidden",)


class RateLimited(MeshRefusal):
    """A rate or concurrency limit refused the call (429); see `retry_after`."""

    kinds = ("rate_limited",)


class Unavailable(MeshRefusal):
    """The mesh could not deliver (503): circuit open, no endpoints, upstream
    down, dataplane not ready, identity missing (fail closed); or the upstream
    did not answer within the service's `timeouts.response` (504
    `upstream_timeout`)."""

    kinds = ("unavailable", "circuit_open", "not_ready", "upstream_timeout")


class UnknownService(MeshRefusal):
    """No such service in the mesh, or the request named none (404)."""

    kinds = ("not_found",)


class BadRequest(MeshRefusal):
    """The dataplane refused the request as malformed (400): path, Host, body."""

    kinds = ("bad_request",)


class UpstreamError(MeshwardError):
    """The service itself answered 4xx/5xx (raised by `raise_for_status`)."""

    def __init__(self, response: "Response") -> None:
        rid = f" (request {response.request_id})" if response.request_id else ""
        super().__init__(
            f"{response.status_code} from {response.service}{rid}: {_snippet(response.text)}"
        )
        self.status = response.status_code
        self.request_id = response.request_id
        self.service = response.service
        self.response = response


_BY_KIND: Dict[str, Type[MeshRefusal]] = {
    kind: cls
    for cls in (Forbidden, RateLimited, Unavailable, UnknownService, BadRequest)
    for kind in cls.kinds
}


def refusal_class(kind: str) -> Type[MeshRefusal]:
    """The exception class of a refusal kind (`MeshRefusal` for unknown ones)."""
    return _BY_KIND.get(kind, MeshRefusal)


def refusal_from(response: "Response") -> Optional[MeshRefusal]:
    """The refusal a response carries, or `None` when the upstream answered."""
    kind = response.headers.get(REFUSAL_HEADER)
    if kind is None:
        return None
    kind = kind.strip().lower()
    body = _json_object(response.content)
    reason = body.get("reason") if body else None
    if not isinstance(reason, str) or not reason:
        # A policy may answer with its own body; that text is its reason.
        reason = _snippet(response.text) or kind
    request_id = response.headers.get(REQUEST_ID_HEADER)
    if request_id is None and body and isinstance(body.get("request_id"), str):
        request_id = body["request_id"]
    cls = refusal_class(kind)
    return cls(
        status=response.status_code,
        kind=kind,
        reason=reason,
        request_id=request_id,
        decision_id=response.headers.get(DECISION_ID_HEADER),
        retry_after=parse_retry_after(response.headers.get(RETRY_AFTER_HEADER)),
        response=response,
    )


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a `retry-after` header (the mesh sends whole seconds).

    An HTTP date or garbage yields `None`: the retry policy then backs off on
    its own schedule rather than trusting a value it cannot read.
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return None
    return seconds


def _json_object(content: bytes) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _snippet(text: str, limit: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."
