"""`Agent` and `AsyncAgent`: calls to mesh services through the local sidecar.

The agent never holds a credential: its outbound sidecar proves who it is
with its SVID, so a call is plain HTTP to the sidecar with the service named
in the `/mcp://<service>/<path>` prefix. Both classes share everything but
the I/O (`_Calls`), so the sync and async APIs cannot drift apart.
"""

import asyncio
import json as jsonlib
import time
from typing import Any, AsyncContextManager, Awaitable, Callable, Mapping, Optional, Union

import httpx

from . import grpc_channel as _grpc
from ._target import Sidecar, Target, parse_target, resolve_sidecar
from .errors import CallTimeout, RateLimited, SidecarError, _snippet, refusal_from
from .identity import IDENTITY_PATH, Identity, IdentityFormatError, parse_identity
from .response import Response
from .retry import RetryPolicy

__version__ = "0.1.0"

#: Default per-call timeout in seconds (connect, read, write and pool each).
DEFAULT_TIMEOUT = 30.0


class _Default:
    """Marks "use the agent's default" where `None` means "no timeout"."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()

#: `Response.service` of the sidecar's own answers (`identity()`).
SIDECAR_SERVICE = "(sidecar)"

TimeoutArg = Union[float, httpx.Timeout, None]


class _Calls:
    """What sync and async calls share: building requests, reading outcomes."""

    def __init__(
        self,
        outbound: Optional[str],
        timeout: TimeoutArg,
        retries: Optional[RetryPolicy],
        headers: Optional[Mapping[str, str]],
    ) -> None:
        self.sidecar: Sidecar = resolve_sidecar(outbound)
        self.retries = retries
        self._timeout = timeout
        self._headers = {"user-agent": f"meshward-python/{__version__}"}
        self._headers.update(headers or {})

    def _client_args(self) -> "dict[str, Any]":
        # trust_env=False: an HTTP(S)_PROXY meant for the internet must not
        # capture calls to the loopback sidecar.
        return {"timeout": self._timeout, "trust_env": False, "follow_redirects": False}

    def _build(
        self,
        client: Union[httpx.Client, httpx.AsyncClient],
        url: str,
        method: Optional[str],
        json: Any,
        content: Optional[Union[str, bytes]],
        params: Any,
        headers: Optional[Mapping[str, str]],
        timeout: Any,
    ) -> "tuple[Target, httpx.Request]":
        target = parse_target(url)
        if json is not None and content is not None:
            raise ValueError("pass json= or content=, not both")
        if method is None:
            method = "GET" if json is None and content is None else "POST"
        merged = dict(self._headers)
        merged.update(headers or {})
        request = client.build_request(
            method.upper(),
            httpx.URL(self.sidecar.base_url + target.sidecar_path),
            json=json,
            content=content,
            params=params,
            headers=merged,
            timeout=self._timeout if timeout is DEFAULT else timeout,
        )
        return target, request

    def _outcome(self, http: httpx.Response, target: Target, attempt: int) -> Union[Response, float]:
        """The response, or how long to wait before the next attempt; raises refusals."""
        response = Response(http, target.service)
        refusal = refusal_from(response)
        if refusal is None:
            return response
        if isinstance(refusal, RateLimited) and self.retries is not None:
            wait = self.retries.delay(attempt, refusal.retry_after)
            if wait is not None:
                return wait
        raise refusal

    def _identity_request(
        self, client: Union[httpx.Client, httpx.AsyncClient], timeout: Any
    ) -> httpx.Request:
        return client.build_request(
            "GET",
            httpx.URL(self.sidecar.base_url + IDENTITY_PATH),
            headers=self._headers,
            timeout=self._timeout if timeout is DEFAULT else timeout,
        )

    def _identity_outcome(self, http: httpx.Response) -> Identity:
        """The identity the sidecar answered; raises its refusal or
        `IdentityFormatError`."""
        refusal = refusal_from(Response(http, SIDECAR_SERVICE))
        if refusal is not None:
            raise refusal
        if http.status_code != 200:
            raise IdentityFormatError(
                f"status {http.status_code} without a mesh refusal: {_snippet(http.text)!r}"
            )
        try:
            document = jsonlib.loads(http.content)
        except (ValueError, UnicodeDecodeError) as e:
            raise IdentityFormatError(f"not JSON: {e}") from e
        return parse_identity(document)

    def _transport_error(self, e: httpx.TransportError) -> SidecarError:
        where = self.sidecar.base_url
        return CallTimeout(where, e) if isinstance(e, httpx.TimeoutException) else SidecarError(where, e)


class Agent(_Calls):
    """Calls mesh services through the agent's outbound sidecar.

    >>> agent = Agent()  # MESHWARD_OUTBOUND, else 127.0.0.1:15001
    >>> agent.call("mcp://sentiment-analysis/analyze", json={"text": "great"}).json()

    `call` returns the service's `Response` whatever its status, and raises a
    `MeshRefusal` subclass when the mesh refused. Use as a context manager,
    or `close()`, to release connections.
    """

    def __init__(
        self,
        outbound: Optional[str] = None,
        *,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        retries: Optional[RetryPolicy] = None,
        headers: Optional[Mapping[str, str]] = None,
        transport: Optional[httpx.BaseTransport] = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(outbound, timeout, retries, headers)
        self._sleep = sleep
        self._client = httpx.Client(transport=transport, **self._client_args())

    def call(
        self,
        url: str,
        *,
        method: Optional[str] = None,
        json: Any = None,
        content: Optional[Union[str, bytes]] = None,
        params: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Any = DEFAULT,
    ) -> Response:
        """Calls `mcp://<service>/<path>`.

        `method` defaults to POST when a body (`json` or `content`) is
        given, else GET. `timeout` overrides the agent's for this call
        (`None`: no timeout).
        """
        attempt = 0
        while True:
            attempt += 1
            target, request = self._build(
                self._client, url, method, json, content, params, headers, timeout
            )
            try:
                http = self._client.send(request)
            except httpx.TransportError as e:
                raise self._transport_error(e) from e
            outcome = self._outcome(http, target, attempt)
            if isinstance(outcome, Response):
                return outcome
            self._sleep(outcome)

    def identity(self, *, timeout: Any = DEFAULT) -> Identity:
        """Who the mesh says this agent is, from the sidecar's verified
        registry (`GET /.meshward/identity`).

        Raises the sidecar's refusal like `call` does (`Unavailable` when
        the agent is not registered or the sidecar is not ready),
        `IdentityFormatError` for an answer it cannot read.
        """
        request = self._identity_request(self._client, timeout)
        try:
            http = self._client.send(request)
        except httpx.TransportError as e:
            raise self._transport_error(e) from e
        return self._identity_outcome(http)

    def grpc_channel(self, service: str, *, options: Optional[_grpc.ChannelOptions] = None) -> Any:
        """A `grpc.Channel` to `service` through the sidecar (`:authority`
        is the service's name). Needs grpcio (`meshward[grpc]`); close it
        when done. Turn its errors into refusals with `grpc_refusal`.
        """
        return _grpc.insecure_channel(self.sidecar, service, options)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAgent(_Calls):
    """`Agent` for asyncio: the same arguments, `await agent.call(...)`."""

    def __init__(
        self,
        outbound: Optional[str] = None,
        *,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        retries: Optional[RetryPolicy] = None,
        headers: Optional[Mapping[str, str]] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(outbound, timeout, retries, headers)
        self._sleep = sleep
        self._client = httpx.AsyncClient(transport=transport, **self._client_args())

    async def call(
        self,
        url: str,
        *,
        method: Optional[str] = None,
        json: Any = None,
        content: Optional[Union[str, bytes]] = None,
        params: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Any = DEFAULT,
    ) -> Response:
        """See `Agent.call`."""
        attempt = 0
        while True:
            attempt += 1
            target, request = self._build(
                self._client, url, method, json, content, params, headers, timeout
            )
            try:
                http = await self._client.send(request)
            except httpx.TransportError as e:
                raise self._transport_error(e) from e
            outcome = self._outcome(http, target, attempt)
            if isinstance(outcome, Response):
                return outcome
            await self._sleep(outcome)

    def mcp_session(
        self, service: str, path: str = "/mcp", *, headers: Optional[Mapping[str, str]] = None
    ) -> "AsyncContextManager[Any]":
        """An initialized MCP `ClientSession` with `service`'s MCP endpoint
        (`path`) through the sidecar, on the official MCP SDK (the `mcp`
        extra). Refused requests raise `mcp.shared.exceptions.MCPError`;
        `meshward.mcp_refusal(e)` gives the mesh's refusal, if it was one.

        >>> async with agent.mcp_session("customer-lookup") as mcp:
        ...     await mcp.call_tool("get_customer", {"id": "c-1001"})
        """
        from .mcp_client import mcp_url, open_session

        merged = dict(self._headers)
        merged.update(headers or {})
        return open_session(mcp_url(self.sidecar.base_url, service, path), headers=merged)

    async def identity(self, *, timeout: Any = DEFAULT) -> Identity:
        """See `Agent.identity`."""
        request = self._identity_request(self._client, timeout)
        try:
            http = await self._client.send(request)
        except httpx.TransportError as e:
            raise self._transport_error(e) from e
        return self._identity_outcome(http)

    def grpc_channel(self, service: str, *, options: Optional[_grpc.ChannelOptions] = None) -> Any:
        """A `grpc.aio.Channel` to `service` through the sidecar; see
        `Agent.grpc_channel`."""
        return _grpc.aio_insecure_channel(self.sidecar, service, options)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> "AsyncAgent":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
