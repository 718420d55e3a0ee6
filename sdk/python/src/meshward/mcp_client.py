"""MCP through the sidecar: the official MCP Python SDK's Streamable HTTP
client, pointed at a `protocol: mcp` service through the agent's outbound
sidecar, with the mesh's refusals as the SDK's exceptions.

The sidecar judges every JSON-RPC message (tool by tool) and answers a
refused request with a JSON-RPC error carrying Meshward's code and, in
`data`, the refusal kind and request id; the MCP SDK raises it as
`mcp.shared.exceptions.MCPError`, and `mcp_refusal` turns it into
`Forbidden`, `RateLimited`, ... like `Agent.call` does.

Needs the `mcp` extra: `pip install './sdk/python[mcp]'` (Python >= 3.10).
"""

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping, Optional

from ._target import parse_target
from .errors import _BY_KIND, MeshRefusal

#: The JSON-RPC error codes the mesh answers with (JSON-RPC leaves
#: -32000..-32099 to server implementations).
FORBIDDEN = -32090
RATE_LIMITED = -32091
UNAVAILABLE = -32092
MESH_CODES = (FORBIDDEN, RATE_LIMITED, UNAVAILABLE)

_STATUS = {"forbidden": 403, "rate_limited": 429, "not_found": 404, "bad_request": 400}


def mcp_url(sidecar: str, service: str, path: str = "/mcp") -> str:
    """The URL of `service`'s MCP endpoint `path` through the sidecar at
    `sidecar` (`http://host:port`)."""
    if not path.startswith("/"):
        raise ValueError(f"MCP endpoint path must start with '/': {path!r}")
    return sidecar.rstrip("/") + parse_target(f"mcp://{service}{path}").sidecar_path


def mcp_refusal(error: BaseException) -> Optional[MeshRefusal]:
    """The mesh refusal an MCP client error carries, or `None` when the MCP
    server itself answered with an error."""
    code = getattr(error, "code", None)
    data = getattr(error, "data", None)
    if code not in MESH_CODES or not isinstance(data, dict):
        return None
    kind = data.get("refusal")
    if not isinstance(kind, str):
        return None
    request_id = data.get("request_id")
    cls = _BY_KIND.get(kind, MeshRefusal)
    return cls(
        status=_STATUS.get(kind, 503),
        kind=kind,
        reason=str(getattr(error, "message", error)),
        request_id=request_id if isinstance(request_id, str) else None,
    )


@asynccontextmanager
async def open_session(
    url: str,
    *,
    headers: Optional[Mapping[str, str]] = None,
    timeout: float = 30.0,
    read_timeout: float = 300.0,
) -> AsyncIterator[Any]:
    """An initialized `mcp.ClientSession` on the Streamable HTTP endpoint
    `url`. The HTTP client ignores proxy environment variables: the sidecar
    is the only hop."""
    try:
        import httpx2
        from mcp.client.session import ClientSession
        from mcp.client.streamable_http import streamable_http_client
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "MCP sessions need the official MCP SDK: pip install 'meshward[mcp]'"
        ) from e
    http = httpx2.AsyncClient(
        trust_env=False,
        headers=dict(headers or {}),
        timeout=httpx2.Timeout(timeout, read=read_timeout),
    )
    async with http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session
