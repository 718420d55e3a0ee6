"""Where a call goes: the sidecar's address and the `mcp://` target.

The sidecar routes on the `/mcp://<service>/<path>` prefix, so the SDK is
where an agent's URL becomes a request line. It refuses anything whose
meaning could differ between the agent, the sidecar and the service instead
of "fixing" it: a service name that is not a DNS label (so no userinfo,
port, dot or percent tricks can smuggle another service in), dot segments,
encoded `/`, `\\`, `.` or NUL, `;` parameters, fragments, control
characters. The dataplane canonicalizes and refuses the same things; the SDK
refusing first gives the agent's developer a local, precise error.
"""

import os
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from .errors import InvalidURL

#: The agent-facing outbound port (DESIGN.md).
DEFAULT_OUTBOUND = "127.0.0.1:15001"
OUTBOUND_ENV = "MESHWARD_OUTBOUND"

# RFC 1123 label, as the mesh file requires of service names.
SERVICE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# Printable ASCII without space, '#', '\\'.
_PATH_CHARS = re.compile(r"[!$%&'()*+,\-./0-9:=@A-Z_a-z~]*\Z")
_QUERY_CHARS = re.compile(r"[!$%&'()*+,\-./0-9:;=?@A-Z_a-z~]*\Z")
_ESCAPE = re.compile(r"%(.{0,2})")
# Escapes whose decoded form would change the path's structure.
_FORBIDDEN_ESCAPES = {"2F": "'/'", "5C": "'\\'", "00": "NUL", "2E": "'.'"}


@dataclass(frozen=True)
class Target:
    """A validated `mcp://<service>/<path>?<query>`."""

    service: str
    #: Starts with '/'; already percent-encoded.
    path: str
    #: Without the '?'; empty when there is none.
    query: str = ""

    @property
    def sidecar_path(self) -> str:
        """The request target the sidecar routes: `/mcp://<service>/<path>`."""
        q = f"?{self.query}" if self.query else ""
        return f"/mcp://{self.service}{self.path}{q}"

    def __str__(self) -> str:
        q = f"?{self.query}" if self.query else ""
        return f"mcp://{self.service}{self.path}{q}"


def parse_target(url: str) -> Target:
    """Validates an `mcp://service/path` URL; raises `InvalidURL` with the reason."""
    if not isinstance(url, str):
        raise InvalidURL(repr(url), "must be a str")
    if not url.startswith("mcp://"):
        raise InvalidURL(url, "must start with 'mcp://' (lower case)")
    rest = url[len("mcp://") :]
    if "#" in rest:
        raise InvalidURL(url, "a fragment ('#') is never sent to a service")
    authority, sep, tail = _split_authority(rest)
    if not SERVICE_NAME.match(authority):
        raise InvalidURL(
            url,
            f"service {authority!r} must be a DNS label: 1-63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit "
            "(no user info, port or domain)",
        )
    if sep == "/":
        path, _, query = tail.partition("?")
    else:
        path, query = "/", tail
    _check_path(url, path)
    _check_query(url, query)
    return Target(service=authority, path=path, query=query)


def _split_authority(rest: str) -> Tuple[str, str, str]:
    """`svc/x?y` -> (`svc`, `/`, `/x?y`); `svc?y` -> (`svc`, `?`, `y`)."""
    for i, c in enumerate(rest):
        if c == "/":
            return rest[:i], "/", rest[i:]
        if c == "?":
            return rest[:i], "?", rest[i + 1 :]
    return rest, "", ""


def _check_path(url: str, path: str) -> None:
    if not _PATH_CHARS.match(path):
        bad = next(c for c in path if not _PATH_CHARS.match(c))
        if bad == "\\":
            raise InvalidURL(url, "'\\' in path")
        raise InvalidURL(
            url,
            f"character {bad!r} in path: percent-encode non-ASCII, space and "
            "control characters",
        )
    _check_escapes(url, path, "path")
    for escape, name in _FORBIDDEN_ESCAPES.items():
        if f"%{escape}" in path.upper():
            raise InvalidURL(url, f"encoded {name} (%{escape}) in path")
    if ";" in path:
        raise InvalidURL(url, "path parameter (';') in path")
    if "//" in path:
        raise InvalidURL(url, "empty path segment ('//')")
    for segment in path.split("/"):
        if segment in (".", ".."):
            raise InvalidURL(url, f"dot segment {segment!r} in path")


def _check_query(url: str, query: str) -> None:
    if not _QUERY_CHARS.match(query):
        bad = next(c for c in query if not _QUERY_CHARS.match(c))
        raise InvalidURL(url, f"character {bad!r} in query: percent-encode it")
    _check_escapes(url, query, "query")


def _check_escapes(url: str, part: str, where: str) -> None:
    for m in _ESCAPE.finditer(part):
        hexdigits = m.group(1)
        if len(hexdigits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in hexdigits):
            raise InvalidURL(url, f"malformed percent-encoding in {where} at {m.start()}")


@dataclass(frozen=True)
class Sidecar:
    """The outbound dataplane's address."""

    scheme: str
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def resolve_sidecar(outbound: Optional[str] = None) -> Sidecar:
    """`outbound`, else `$MESHWARD_OUTBOUND`, else DESIGN.md's 127.0.0.1:15001.

    Accepts `host:port`, `[v6]:port` or `http://host:port[/]`.
    """
    source = "outbound" if outbound is not None else OUTBOUND_ENV
    if outbound is None:
        outbound = os.environ.get(OUTBOUND_ENV) or DEFAULT_OUTBOUND
    value = outbound.strip()
    scheme = "http"
    if "://" in value:
        scheme, _, value = value.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidURL(outbound, f"{source}: scheme must be http or https")
        if value.endswith("/"):
            value = value[:-1]
    if any(c in value for c in "/?#@ ") or not value:
        raise InvalidURL(outbound, f"{source}: must be host:port or http://host:port")
    if value.startswith("["):
        host, close, port = value[1:].partition("]")
        if not close or not port.startswith(":"):
            raise InvalidURL(outbound, f"{source}: IPv6 needs [addr]:port")
        port = port[1:]
    else:
        host, colon, port = value.rpartition(":")
        if not colon or not host or ":" in host:
            raise InvalidURL(outbound, f"{source}: must include a port (host:port)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidURL(outbound, f"{source}: port {port!r} is not 1-65535")
    return Sidecar(scheme=scheme, host=host, port=int(port))
