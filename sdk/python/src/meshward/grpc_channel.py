"""gRPC through the sidecar: a channel to a service, and its refusals.

The outbound sidecar routes gRPC by `:authority` (`dataplane/src/route.rs`:
`service`, `service:port` or `service.<anything>` name the service), so a
channel to a service is a plaintext HTTP/2 channel to the sidecar whose
default authority is the service's name. The agent holds no credential:
the sidecar proves who it is with its SVID and speaks mTLS onwards.

When the mesh refuses a gRPC call it answers trailers-only: the gRPC status
(PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE, NOT_FOUND,
INVALID_ARGUMENT), `grpc-message` with the reason, and the same
`x-meshward-refusal`, `x-request-id` and `retry-after` metadata an HTTP
refusal carries; inbound sidecars strip `x-meshward-*` from a service's
headers and trailers, so a service cannot pose as the mesh. `grpc_refusal`
turns such an error into the SDK's exception.

grpcio is optional (`pip install 'meshward[grpc]'`): it is imported when a
channel is made, never when `meshward` is imported. `grpc_refusal` needs no
grpcio at all.
"""

from types import ModuleType
from typing import Any, List, Optional, Sequence, Tuple

from ._target import SERVICE_NAME, Sidecar
from .errors import (
    DECISION_ID_HEADER,
    REFUSAL_HEADER,
    REQUEST_ID_HEADER,
    RETRY_AFTER_HEADER,
    InvalidURL,
    MeshRefusal,
    MeshwardError,
    refusal_class,
    parse_retry_after,
)

#: The gRPC channel option that sets `:authority`; the SDK sets it.
AUTHORITY_OPTION = "grpc.default_authority"

ChannelOptions = Sequence[Tuple[str, Any]]

#: The HTTP status a refusal of each kind has over HTTP (`MeshRefusal.status`
#: of a gRPC refusal; the gRPC code is `grpc_code`).
_HTTP_STATUS = {
    "forbidden": 403,
    "rate_limited": 429,
    "circuit_open": 503,
    "unavailable": 503,
    "not_ready": 503,
    "not_found": 404,
    "bad_request": 400,
}


class GrpcNotInstalled(MeshwardError, ImportError):
    """A gRPC channel was asked for without grpcio installed."""

    def __init__(self, cause: ImportError) -> None:
        super().__init__(
            "gRPC channels need grpcio: pip install 'meshward[grpc]' "
            f"(importing it failed: {cause})"
        )


def _import(module: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise GrpcNotInstalled(e) from e


def channel_target(
    sidecar: Sidecar, service: str, options: Optional[ChannelOptions] = None
) -> Tuple[str, List[Tuple[str, Any]]]:
    """The channel target (the sidecar) and options (`:authority` = the
    service, no HTTP proxy) for a gRPC channel to `service`."""
    if not isinstance(service, str) or not SERVICE_NAME.match(service):
        raise InvalidURL(
            repr(service) if not isinstance(service, str) else service,
            "a gRPC service name must be a DNS label: 1-63 lowercase letters, "
            "digits and '-' (the mesh's service name, no port or domain)",
        )
    if sidecar.scheme != "http":
        raise InvalidURL(
            sidecar.base_url,
            "gRPC channels go to a plaintext (http://) sidecar on loopback",
        )
    merged: List[Tuple[str, Any]] = []
    for name, value in options or ():
        if name == AUTHORITY_OPTION:
            raise ValueError(
                f"{AUTHORITY_OPTION} is the service name; it is set by grpc_channel"
            )
        merged.append((name, value))
    # An HTTP proxy from the environment must not capture the loopback
    # sidecar (as `trust_env=False` does for HTTP calls).
    if not any(name == "grpc.enable_http_proxy" for name, _ in merged):
        merged.append(("grpc.enable_http_proxy", 0))
    merged.append((AUTHORITY_OPTION, service))
    host = f"[{sidecar.host}]" if ":" in sidecar.host else sidecar.host
    return f"{host}:{sidecar.port}", merged


def insecure_channel(
    sidecar: Sidecar, service: str, options: Optional[ChannelOptions] = None
) -> Any:
    """A `grpc.Channel` to `service` through `sidecar` (see `channel_target`)."""
    target, merged = channel_target(sidecar, service, options)
    grpc = _import("grpc")
    return grpc.insecure_channel(target, options=merged)


def aio_insecure_channel(
    sidecar: Sidecar, service: str, options: Optional[ChannelOptions] = None
) -> Any:
    """A `grpc.aio.Channel` to `service` through `sidecar`."""
    target, merged = channel_target(sidecar, service, options)
    aio = _import("grpc.aio")
    return aio.insecure_channel(target, options=merged)


def grpc_refusal(error: BaseException) -> Optional[MeshRefusal]:
    """The mesh refusal a `grpc.RpcError` carries, or `None` when the
    service itself (or the transport) failed the call.

        try:
            stub.Echo(request)
        except grpc.RpcError as e:
            raise grpc_refusal(e) or e

    Works for sync and `grpc.aio` errors. The class is picked by the
    `x-meshward-refusal` metadata, as for HTTP; `status` is the HTTP status
    the same refusal has over HTTP, `grpc_code` the gRPC status code (an
    `int`), `reason` the status details.
    """
    metadata = _metadata(error)
    kind = _get(metadata, REFUSAL_HEADER)
    if kind is None:
        return None
    kind = kind.strip().lower()
    code = _call(error, "code")
    details = _call(error, "details")
    reason = details if isinstance(details, str) and details else kind
    grpc_code = _code_number(code)
    cls = refusal_class(kind)
    refusal = cls(
        status=_HTTP_STATUS.get(kind, 0),
        kind=kind,
        reason=reason,
        request_id=_get(metadata, REQUEST_ID_HEADER),
        decision_id=_get(metadata, DECISION_ID_HEADER),
        retry_after=parse_retry_after(_get(metadata, RETRY_AFTER_HEADER)),
    )
    refusal.grpc_code = grpc_code
    return refusal


def _call(error: BaseException, method: str) -> Any:
    fn = getattr(error, method, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except Exception:  # an aio error without a finished call, say
        return None


def _metadata(error: BaseException) -> List[Tuple[str, Any]]:
    """Trailing then initial metadata: a trailers-only refusal's headers
    arrive as trailing metadata."""
    items: List[Tuple[str, Any]] = []
    for method in ("trailing_metadata", "initial_metadata"):
        md = _call(error, method)
        if md is None:
            continue
        try:
            for entry in md:
                key, value = entry[0], entry[1]
                if isinstance(key, str):
                    items.append((key.lower(), value))
        except (TypeError, IndexError, KeyError):
            continue
    return items


def _get(metadata: List[Tuple[str, Any]], key: str) -> Optional[str]:
    for k, v in metadata:
        if k == key:
            if isinstance(v, bytes):
                return v.decode("utf-8", "replace")
            return str(v)
    return None


def _code_number(code: Any) -> Optional[int]:
    """The numeric gRPC code of a `grpc.StatusCode` (its value is `(n, name)`)."""
    value = getattr(code, "value", None)
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return value[0]
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return None
