"""What a call returns when the service answered (whatever its status)."""

from typing import Any, Optional

import httpx

from .errors import REQUEST_ID_HEADER, UpstreamError


class Response:
    """The service's answer, read in full.

    Thin on purpose: the status, headers and body, the mesh's request id
    for quoting, and `raise_for_status()` raising `UpstreamError` (never a
    `MeshRefusal`: the mesh's refusals are raised by `call` itself). The
    underlying `httpx.Response` is `.http`.
    """

    def __init__(self, http: httpx.Response, service: str) -> None:
        self.http = http
        #: The service the call named.
        self.service = service

    @property
    def status_code(self) -> int:
        return self.http.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self.http.headers

    @property
    def content(self) -> bytes:
        return self.http.content

    @property
    def text(self) -> str:
        return self.http.text

    def json(self, **kwargs: Any) -> Any:
        return self.http.json(**kwargs)

    @property
    def request_id(self) -> Optional[str]:
        """The mesh's `x-request-id` for this call."""
        value: Optional[str] = self.http.headers.get(REQUEST_ID_HEADER)
        return value

    @property
    def ok(self) -> bool:
        return self.http.status_code < 400

    def raise_for_status(self) -> "Response":
        """Raises `UpstreamError` if the service answered 4xx/5xx; else returns self."""
        if not self.ok:
            raise UpstreamError(self)
        return self

    def __repr__(self) -> str:
        return f"<Response {self.status_code} from {self.service}>"
