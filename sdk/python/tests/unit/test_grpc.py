"""grpc_channel(): where it points and with which authority; grpc_refusal()."""

import subprocess
import sys
from concurrent import futures

import pytest

import meshward.grpc_channel as mgrpc
from meshward import (
    Agent,
    AsyncAgent,
    BadRequest,
    Forbidden,
    GrpcNotInstalled,
    InvalidURL,
    MeshRefusal,
    RateLimited,
    Unavailable,
    UnknownService,
    grpc_refusal,
)
from meshward._target import resolve_sidecar


class FakeGrpc:
    """Stands in for the grpc module: records the channel it was asked for."""

    def __init__(self):
        self.calls = []

    def insecure_channel(self, target, options=None):
        self.calls.append((target, options))
        return ("channel", target)


@pytest.fixture
def fake_grpc(monkeypatch):
    fake = FakeGrpc()
    monkeypatch.setattr(mgrpc, "_import", lambda name: fake)
    return fake


def test_channel_goes_to_the_sidecar_with_the_service_as_authority(fake_grpc):
    with Agent("127.0.0.1:15001") as agent:
        assert agent.grpc_channel("hello-skill") == ("channel", "127.0.0.1:15001")
    ((target, options),) = fake_grpc.calls
    assert target == "127.0.0.1:15001"
    assert ("grpc.default_authority", "hello-skill") in options
    assert ("grpc.enable_http_proxy", 0) in options


def test_aio_channel_too(fake_grpc):
    agent = AsyncAgent("http://[::1]:15001")
    assert agent.grpc_channel("sentiment-analysis") == ("channel", "[::1]:15001")
    ((_, options),) = fake_grpc.calls
    assert options[-1] == ("grpc.default_authority", "sentiment-analysis")


def test_caller_options_are_kept_but_not_the_authority(fake_grpc):
    sidecar = resolve_sidecar("127.0.0.1:15001")
    mgrpc.insecure_channel(
        sidecar, "hello-skill", options=[("grpc.max_receive_message_length", 1024)]
    )
    ((_, options),) = fake_grpc.calls
    assert options[0] == ("grpc.max_receive_message_length", 1024)
    with pytest.raises(ValueError, match="default_authority"):
        mgrpc.insecure_channel(
            sidecar, "hello-skill", options=[("grpc.default_authority", "billing-system")]
        )
    # An explicit proxy choice is the caller's.
    fake_grpc.calls.clear()
    mgrpc.insecure_channel(sidecar, "hello-skill", options=[("grpc.enable_http_proxy", 1)])
    ((_, options),) = fake_grpc.calls
    assert [v for k, v in options if k == "grpc.enable_http_proxy"] == [1]


@pytest.mark.parametrize(
    "service",
    ["", "Hello", "hello-skill:80", "hello-skill.mesh.local", "billing@x", "-a", "a" * 64, 5],
)
def test_service_must_be_a_mesh_service_name(fake_grpc, service):
    with Agent("127.0.0.1:15001") as agent:
        with pytest.raises(InvalidURL):
            agent.grpc_channel(service)
    assert fake_grpc.calls == []


def test_https_sidecar_is_refused(fake_grpc):
    with Agent("https://127.0.0.1:15001") as agent:
        with pytest.raises(InvalidURL, match="plaintext"):
            agent.grpc_channel("hello-skill")


def test_without_grpcio_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)
    with Agent("127.0.0.1:15001") as agent:
        with pytest.raises(GrpcNotInstalled, match=r"meshward\[grpc\]") as e:
            agent.grpc_channel("hello-skill")
    assert isinstance(e.value, ImportError)


def test_importing_meshward_does_not_import_grpc():
    code = "import sys, meshward; assert 'grpc' not in sys.modules, 'grpc imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_grpcio_channel():
    grpc = pytest.importorskip("grpc")
    with Agent("127.0.0.1:15001") as agent:
        channel = agent.grpc_channel("hello-skill")
    assert isinstance(channel, grpc.Channel)
    channel.close()


class FakeRpcError(Exception):
    """What grpcio raises: code(), details() and the metadata."""

    def __init__(self, code, details, trailing=(), initial=()):
        super().__init__(details)
        self._code, self._details = code, details
        self._trailing, self._initial = trailing, initial

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing

    def initial_metadata(self):
        return self._initial


class Code:
    """A grpc.StatusCode look-alike: `.value` is `(number, name)`."""

    def __init__(self, number, name):
        self.value = (number, name)


def mesh_error(kind, code, details="why", **extra):
    md = [("x-request-id", "rid-7"), ("x-meshward-refusal", kind)]
    md += list(extra.items())
    return FakeRpcError(code, details, trailing=tuple(md))


@pytest.mark.parametrize(
    "kind,code,cls,status",
    [
        ("forbidden", 7, Forbidden, 403),
        ("rate_limited", 8, RateLimited, 429),
        ("circuit_open", 14, Unavailable, 503),
        ("unavailable", 14, Unavailable, 503),
        ("not_ready", 14, Unavailable, 503),
        ("not_found", 5, UnknownService, 404),
        ("bad_request", 3, BadRequest, 400),
        ("from_the_future", 2, MeshRefusal, 0),
    ],
)
def test_mesh_refusals_map_by_kind(kind, code, cls, status):
    refusal = grpc_refusal(mesh_error(kind, Code(code, "X"), details="customer-success no"))
    assert type(refusal) is cls
    assert refusal.kind == kind
    assert refusal.status == status
    assert refusal.grpc_code == code
    assert refusal.reason == "customer-success no"
    assert refusal.request_id == "rid-7"


def test_retry_after_and_decision_id_are_read():
    err = mesh_error(
        "rate_limited",
        Code(8, "RESOURCE_EXHAUSTED"),
        **{"retry-after": "2", "x-meshward-decision-id": "d-1"},
    )
    refusal = grpc_refusal(err)
    assert refusal.retry_after == 2.0 and refusal.decision_id == "d-1"


def test_an_apps_own_error_is_not_a_refusal():
    err = FakeRpcError(Code(7, "PERMISSION_DENIED"), "app says no", trailing=(("x-other", "1"),))
    assert grpc_refusal(err) is None
    # Not an RpcError at all, or one that cannot answer.
    assert grpc_refusal(ValueError("x")) is None


def test_refusal_in_initial_metadata_bytes_values_and_no_details():
    err = FakeRpcError(
        None,
        "",
        trailing=None,
        initial=(("X-Meshward-Refusal", b"forbidden"), ("x-request-id", b"r")),
    )
    refusal = grpc_refusal(err)
    assert isinstance(refusal, Forbidden)
    assert refusal.reason == "forbidden" and refusal.request_id == "r"
    assert refusal.grpc_code is None


@pytest.fixture
def refusing_server():
    """A real gRPC server answering every call as the mesh refuses one."""
    grpc = pytest.importorskip("grpc")

    def refuse(request, context):
        context.set_trailing_metadata(
            (("x-meshward-refusal", "forbidden"), ("x-request-id", "rid-9"))
        )
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "customer-success may not")

    handler = grpc.method_handlers_generic_handler(
        "meshward.demo.v1.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(refuse)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def test_real_rpc_error_from_a_real_channel(refusing_server):
    grpc = pytest.importorskip("grpc")
    with Agent(f"127.0.0.1:{refusing_server}") as agent:
        with agent.grpc_channel("billing-system") as channel:
            echo = channel.unary_unary("/meshward.demo.v1.Echo/Echo")
            with pytest.raises(grpc.RpcError) as e:
                echo(b"", timeout=10)
    refusal = grpc_refusal(e.value)
    assert isinstance(refusal, Forbidden)
    assert refusal.grpc_code == 7
    assert refusal.reason == "customer-success may not"
    assert refusal.request_id == "rid-9"


@pytest.mark.anyio
async def test_real_aio_rpc_error(refusing_server):
    grpc = pytest.importorskip("grpc")
    agent = AsyncAgent(f"127.0.0.1:{refusing_server}")
    async with agent.grpc_channel("billing-system") as channel:
        echo = channel.unary_unary("/meshward.demo.v1.Echo/Echo")
        with pytest.raises(grpc.RpcError) as e:
            await echo(b"", timeout=10)
    await agent.aclose()
    refusal = grpc_refusal(e.value)
    assert isinstance(refusal, Forbidden) and refusal.grpc_code == 7
