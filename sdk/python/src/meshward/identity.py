"""`Identity`: who the mesh says this agent is.

The outbound sidecar answers `GET /.meshward/identity` from the agent
registry the control plane pushed to it, for the SPIFFE ID of its own SVID:
the same facts policy and limits judge the agent's calls by, not anything
the agent claims. `Agent.identity()` fetches it; this module parses it.

Parsing is strict about what it reads: every documented field must be there
with its type, and a SPIFFE ID must be one (`spiffe://<trust domain>/...`,
agreeing with `trust_domain`). Anything else raises `IdentityFormatError`
rather than handing the agent a half-understood identity to make decisions
with. Fields a newer sidecar adds are ignored.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from .errors import MeshwardError

#: The sidecar's identity endpoint (the outbound listener reserves `/.meshward/`).
IDENTITY_PATH = "/.meshward/identity"


class IdentityFormatError(MeshwardError, ValueError):
    """The sidecar's identity answer is not what this SDK understands."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed identity from the Meshward sidecar: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """The agent's own egress limit, as its outbound sidecar applies it.

    `0` means "no limit" in that dimension, as in `mesh.yaml`.
    """

    #: Sustained requests per second (`0.0`: no rate limit).
    requests_per_second: float
    #: Requests allowed at once above the rate (`0` when there is no rate).
    burst: int
    #: Requests in flight at once (`0`: no cap).
    max_concurrent: int


@dataclass(frozen=True)
class Identity:
    """The agent as the mesh's registry knows it."""

    #: `spiffe://<trust domain>/...`: what services see as `x-agent-id`.
    spiffe_id: str
    trust_domain: str
    #: The agent's name in `mesh.yaml`.
    name: str
    #: Registry attributes (team, type, environment, ...), sent to services
    #: as `x-agent-<key>` and to policy as `input.meshward`.
    attributes: Dict[str, str]
    permissions: List[str]
    #: `None` when the agent has neither a rate nor a concurrency limit.
    limits: Optional[Limits]

    @property
    def team(self) -> Optional[str]:
        """The `team` attribute, if the registry has one."""
        return self.attributes.get("team")


def parse_identity(document: Any) -> Identity:
    """An `Identity` from the decoded JSON answer; raises `IdentityFormatError`."""
    if not isinstance(document, dict):
        raise IdentityFormatError(f"expected a JSON object, got {_type(document)}")
    spiffe_id = _string(document, "spiffe_id")
    trust_domain = _string(document, "trust_domain")
    name = _string(document, "name")
    if any(c in trust_domain for c in "/:@?# ") or trust_domain != trust_domain.lower():
        raise IdentityFormatError(f"trust_domain {trust_domain!r} is not a trust domain")
    prefix = f"spiffe://{trust_domain}"
    rest = spiffe_id[len(prefix) :] if spiffe_id.startswith(prefix) else None
    if rest is None or not (rest == "" or rest.startswith("/")):
        raise IdentityFormatError(
            f"spiffe_id {spiffe_id!r} is not in trust domain {trust_domain!r}"
        )

    attributes = _field(document, "attributes")
    if not isinstance(attributes, dict):
        raise IdentityFormatError(f"attributes: expected an object, got {_type(attributes)}")
    for key, value in attributes.items():
        if not isinstance(value, str):
            raise IdentityFormatError(f"attributes.{key}: expected a string, got {_type(value)}")

    permissions = _field(document, "permissions")
    if not isinstance(permissions, list):
        raise IdentityFormatError(
            f"permissions: expected an array, got {_type(permissions)}"
        )
    for i, permission in enumerate(permissions):
        if not isinstance(permission, str):
            raise IdentityFormatError(
                f"permissions[{i}]: expected a string, got {_type(permission)}"
            )

    return Identity(
        spiffe_id=spiffe_id,
        trust_domain=trust_domain,
        name=name,
        attributes=dict(attributes),
        permissions=list(permissions),
        limits=_limits(_field(document, "limits")),
    )


def _limits(value: Any) -> Optional[Limits]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise IdentityFormatError(f"limits: expected an object or null, got {_type(value)}")
    rate = _field(value, "requests_per_second", "limits.")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise IdentityFormatError(
            f"limits.requests_per_second: expected a number, got {_type(rate)}"
        )
    if not math.isfinite(rate) or rate < 0:
        raise IdentityFormatError(
            f"limits.requests_per_second: {rate} is not a finite, non-negative number"
        )
    return Limits(
        requests_per_second=float(rate),
        burst=_count(value, "burst"),
        max_concurrent=_count(value, "max_concurrent"),
    )


def _field(document: Mapping[str, Any], key: str, where: str = "") -> Any:
    if key not in document:
        raise IdentityFormatError(f"missing {where}{key}")
    return document[key]


def _string(document: Mapping[str, Any], key: str) -> str:
    value = _field(document, key)
    if not isinstance(value, str) or not value:
        raise IdentityFormatError(f"{key}: expected a non-empty string, got {_type(value)}")
    return value


def _count(document: Mapping[str, Any], key: str) -> int:
    value = _field(document, key, "limits.")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IdentityFormatError(
            f"limits.{key}: expected a non-negative integer, got {value!r}"
        )
    return value


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"string {value!r}" if len(value) <= 40 else "a long string"
    return type(value).__name__
