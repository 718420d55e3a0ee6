"""Meshward for agents: call mesh services through the local sidecar.

    from meshward import Agent, Forbidden

    with Agent() as agent:
        try:
            r = agent.call("mcp://sentiment-analysis/analyze", json={"text": "thanks!"})
        except Forbidden as denied:
            print(denied.reason, denied.request_id)

See README.md for the API, the exceptions and the environment.
"""

from ._target import DEFAULT_OUTBOUND, OUTBOUND_ENV, Target, parse_target
from .agent import DEFAULT, DEFAULT_TIMEOUT, Agent, AsyncAgent, __version__
from .errors import (
    BadRequest,
    CallTimeout,
    Forbidden,
    InvalidURL,
    MeshRefusal,
    MeshwardError,
    RateLimited,
    SidecarError,
    Unavailable,
    UnknownService,
    UpstreamError,
)
from .mcp_client import mcp_refusal, mcp_url
from .grpc_channel import GrpcNotInstalled, grpc_refusal
from .identity import Identity, IdentityFormatError, Limits, parse_identity
from .response import Response
from .retry import RetryPolicy

__all__ = [
    "Agent",
    "AsyncAgent",
    "BadRequest",
    "CallTimeout",
    "DEFAULT",
    "DEFAULT_OUTBOUND",
    "DEFAULT_TIMEOUT",
    "Forbidden",
    "GrpcNotInstalled",
    "Identity",
    "IdentityFormatError",
    "InvalidURL",
    "Limits",
    "MeshRefusal",
    "MeshwardError",
    "OUTBOUND_ENV",
    "RateLimited",
    "Response",
    "RetryPolicy",
    "SidecarError",
    "Target",
    "Unavailable",
    "UnknownService",
    "UpstreamError",
    "__version__",
    "mcp_refusal",
    "mcp_url",
    "grpc_refusal",
    "parse_identity",
    "parse_target",
]
