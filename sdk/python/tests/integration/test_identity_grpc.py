"""identity() and gRPC through a real mesh: support-triage's sidecar.

The Echo stubs are generated from contract/proto/meshward/demo/v1/echo.proto
with grpcio-tools at test time, under a module name of their own: the
proto's package is `meshward.demo.v1`, and a generated `meshward/` package
would shadow this SDK.
"""

import importlib
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from meshward import Agent, AsyncAgent, Forbidden, grpc_refusal

pytestmark = pytest.mark.integration

# Asked for with -m integration, these must run: a missing extra is a
# broken setup to report, not a reason to skip (scripts/test-sdk.sh installs
# both).
try:
    import grpc
    from grpc_tools import protoc
except ImportError as e:  # pragma: no cover
    pytest.fail(
        f"the gRPC integration tests need meshward[grpc] and grpcio-tools: {e}",
        pytrace=False,
    )

TRIAGE = "spiffe://example.org/agent/support-triage"
ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="module")
def echo_pb(tmp_path_factory):
    """(messages, stubs) modules for meshward.demo.v1.Echo."""
    out = tmp_path_factory.mktemp("echo_stubs")
    shutil.copy(ROOT / "contract" / "proto" / "meshward" / "demo" / "v1" / "echo.proto",
                out / "mw_demo_echo.proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{out}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(out / "mw_demo_echo.proto"),
        ]
    )
    assert rc == 0, "protoc failed on echo.proto"
    sys.path.insert(0, str(out))
    try:
        yield (
            importlib.import_module("mw_demo_echo_pb2"),
            importlib.import_module("mw_demo_echo_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


@pytest.fixture
def triage(mesh):
    with Agent(mesh.outbound("support-triage"), timeout=10) as agent:
        yield agent


def test_identity_is_the_registry_entry_of_this_sidecars_agent(triage):
    me = triage.identity()
    assert me.spiffe_id == TRIAGE
    assert me.trust_domain == "example.org"
    assert me.name == "support-triage"
    assert me.team == "customer-success"
    assert me.attributes == {
        "team": "customer-success",
        "type": "support",
        "environment": "production",
    }
    assert me.permissions == ["skills:invoke", "data:read"]
    assert me.limits is not None
    assert (me.limits.requests_per_second, me.limits.burst, me.limits.max_concurrent) == (
        5.0,
        10,
        20,
    )


def test_each_sidecar_answers_for_its_own_agent(mesh):
    with Agent(mesh.outbound("billing-bot"), timeout=10) as bot:
        me = bot.identity()
    assert me.name == "billing-bot" and me.team == "finance"


@pytest.mark.anyio
async def test_async_identity(mesh):
    async with AsyncAgent(mesh.outbound("support-triage"), timeout=10) as agent:
        assert (await agent.identity()).spiffe_id == TRIAGE


def test_identity_endpoint_over_http(mesh):
    """What the SDK does not send: other methods, a query, HEAD, a claimed Host."""
    base = f"http://{mesh.outbound('support-triage')}"
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.get(f"{base}/.meshward/identity", headers={"host": "billing-system"})
        assert r.status_code == 200 and r.json()["spiffe_id"] == TRIAGE
        assert r.headers["cache-control"] == "no-store"
        head = http.head(f"{base}/.meshward/identity")
        assert head.status_code == 200 and head.content == b""
        post = http.post(f"{base}/.meshward/identity")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        assert http.get(f"{base}/.meshward/identity?x=1").status_code == 400
        other = http.get(f"{base}/.meshward/other", headers={"host": "hello-skill"})
        assert other.status_code == 404
        assert other.headers["x-meshward-refusal"] == "not_found"


def test_grpc_echo_through_the_sidecar(triage, echo_pb):
    pb, stubs = echo_pb
    with triage.grpc_channel("hello-skill") as channel:
        reply = stubs.EchoStub(channel).Echo(pb.EchoRequest(message="hi"), timeout=10)
    assert reply.message == "hi"
    assert reply.service == "hello-skill"
    # The skill saw the mesh's assertion of who called, not the agent's.
    assert reply.headers["x-agent-id"] == TRIAGE
    assert reply.headers["x-agent-team"] == "customer-success"


def test_a_services_own_grpc_error_is_not_a_refusal(triage, echo_pb):
    pb, stubs = echo_pb
    with triage.grpc_channel("hello-skill") as channel:
        with pytest.raises(grpc.RpcError) as e:
            stubs.EchoStub(channel).Echo(
                pb.EchoRequest(message="x", fail_with_code=grpc.StatusCode.NOT_FOUND.value[0]),
                timeout=10,
            )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert grpc_refusal(e.value) is None


def test_denied_grpc_call_is_forbidden(triage, echo_pb):
    pb, stubs = echo_pb
    with triage.grpc_channel("billing-system") as channel:
        with pytest.raises(grpc.RpcError) as e:
            stubs.EchoStub(channel).Echo(pb.EchoRequest(message="hi"), timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    refusal = grpc_refusal(e.value)
    assert isinstance(refusal, Forbidden)
    assert refusal.grpc_code == 7 and refusal.status == 403
    assert "billing-system" in refusal.reason
    assert refusal.request_id


@pytest.mark.anyio
async def test_aio_grpc_echo(mesh, echo_pb):
    pb, stubs = echo_pb
    async with AsyncAgent(mesh.outbound("support-triage"), timeout=10) as agent:
        async with agent.grpc_channel("hello-skill") as channel:
            reply = await stubs.EchoStub(channel).Echo(pb.EchoRequest(message="aio"), timeout=10)
    assert reply.message == "aio"
