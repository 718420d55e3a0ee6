"""MCP through the mesh with real MCP peers on both ends: the official MCP
Python SDK's server behind two `protocol: mcp` services, its client (through
`AsyncAgent.mcp_session`) and raw JSON-RPC bodies through the agents'
outbound sidecars.

customer-lookup is a stateful server (sessions, SSE answers) for the SDK
client; billing-system a stateless JSON one, so raw bodies need no session.
Every tool records that it ran (`GET /executed`, asked of the server
directly), so each test checks what the server executed, not only what the
mesh answered.
"""

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest

from conftest import ROOT, local_mesh_text, run_up
from meshward import AsyncAgent, Forbidden, RateLimited, mcp_refusal

pytest.importorskip("mcp", reason="needs the mcp extra: pip install './sdk/python[mcp]'")
from mcp.shared.exceptions import MCPError  # noqa: E402

pytestmark = pytest.mark.integration

PEER = Path(__file__).parent / "peers" / "mcp_server.py"
FORBIDDEN, RATE_LIMITED = -32090, -32091
TRIAGE = "spiffe://example.org/agent/support-triage"


class Peer:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    def executed(self) -> List[str]:
        return httpx.get(f"{self.url}/executed", timeout=5).json()


def _start_peer(tmp: Path, name: str, *args: str) -> Peer:
    port_file = tmp / f"{name}.port"
    log = open(tmp / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(PEER), "--port-file", str(port_file), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"MCP server exited: {(tmp / f'{name}.log').read_text()}", pytrace=False)
        if port_file.exists():
            peer = Peer(proc, int(port_file.read_text()))
            try:
                peer.executed()
                return peer
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail("MCP server not ready in 30s", pytrace=False)


def _mcp_service(text: str, service: str, backend: str, block: str) -> str:
    anchor = f"    spiffe_id: spiffe://example.org/service/{service}\n"
    assert anchor in text, f"{service} not in deploy/local/mesh.yaml"
    return text.replace(anchor, anchor + f"    backend: {backend}\n    protocol: mcp\n{block}")


@pytest.fixture(scope="module")
def mcp_mesh() -> Iterator[Tuple[Any, Peer, Peer]]:
    tmp = Path(tempfile.mkdtemp(prefix="mw-mcp-"))
    peers: List[Peer] = []
    try:
        lookup = _start_peer(tmp, "lookup")
        peers.append(lookup)
        billing = _start_peer(tmp, "billing", "--stateless")
        peers.append(billing)
        # The reference bundle, plus one grant for the streaming tool.
        policies = tmp / "policies"
        shutil.copytree(ROOT / "policies", policies)
        data_file = policies / "meshward" / "config" / "data.json"
        data = json.loads(data_file.read_text())
        data["mcp"]["customer-lookup"]["tools"]["countdown"] = {"callers": [TRIAGE]}
        data_file.write_text(json.dumps(data))
        text = local_mesh_text().replace(f"dir: {ROOT / 'policies'}", f"dir: {policies}")
        # support-triage's demo budget (burst 10) is for showing 429s; an MCP
        # session spends several requests (initialize, stream, close).
        small = "      requests_per_second: 5\n      burst: 10\n"
        assert small in text
        text = text.replace(small, "      requests_per_second: 100\n      burst: 200\n")
        text = _mcp_service(
            text,
            "customer-lookup",
            lookup.url[len("http://") :],
            "    mcp:\n      filter_tools_list: true\n",
        )
        text = _mcp_service(
            text,
            "billing-system",
            billing.url[len("http://") :],
            "    mcp:\n      max_message_bytes: 4096\n      tool_limits:\n"
            "        refund_invoice: { requests_per_second: 0.01, burst: 2 }\n",
        )
        config = tmp / "mesh.yaml"
        config.write_text(text)
        with run_up(tmp, config) as mesh:
            yield mesh, lookup, billing
    finally:
        for p in peers:
            p.proc.terminate()
            p.proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.anyio
async def test_allowed_tool_call_reaches_the_server(mcp_mesh):
    mesh, lookup, _ = mcp_mesh
    async with AsyncAgent(mesh.outbound("support-triage")) as agent:
        async with agent.mcp_session("customer-lookup") as session:
            result = await session.call_tool("get_customer", {"id": "c-1001"})
    assert "Ada Lovelace" in _text(result)
    assert "get_customer" in lookup.executed()


@pytest.mark.anyio
async def test_denied_tool_call_is_a_json_rpc_error_the_client_raises(mcp_mesh):
    mesh, lookup, _ = mcp_mesh
    async with AsyncAgent(mesh.outbound("support-triage")) as agent:
        async with agent.mcp_session("customer-lookup") as session:
            with pytest.raises(MCPError) as raised:
                await session.call_tool("delete_customer", {"id": "c-1001"})
    error = raised.value
    assert error.code == FORBIDDEN
    assert "may not call tool delete_customer" in error.message
    refusal = mcp_refusal(error)
    assert isinstance(refusal, Forbidden)
    assert refusal.request_id
    assert "delete_customer" not in lookup.executed()


@pytest.mark.anyio
async def test_tools_list_shows_only_the_tools_the_caller_may_call(mcp_mesh):
    mesh, _, _ = mcp_mesh
    async with AsyncAgent(mesh.outbound("support-triage")) as agent:
        async with agent.mcp_session("customer-lookup") as session:
            listed = await session.list_tools()
    names = sorted(t.name for t in listed.tools)
    assert names == ["countdown", "get_customer", "search_customers"]


@pytest.mark.anyio
async def test_sse_progress_arrives_before_the_tool_returns(mcp_mesh):
    mesh, lookup, _ = mcp_mesh
    progressed = asyncio.Event()

    async def on_progress(progress: float, total: Any, message: Any) -> None:
        progressed.set()

    async with AsyncAgent(mesh.outbound("support-triage")) as agent:
        async with agent.mcp_session("customer-lookup") as session:
            call = asyncio.create_task(
                session.call_tool("countdown", {"n": 3}, progress_callback=on_progress)
            )
            # The tool is blocked until /release: the progress event can only
            # arrive here if the mesh streams the SSE answer as it is written.
            await asyncio.wait_for(progressed.wait(), timeout=20)
            assert not call.done()
            async with httpx.AsyncClient() as direct:
                r = await direct.post(f"{lookup.url}/release")
                assert r.status_code == 200
            result = await asyncio.wait_for(call, timeout=20)
    assert _text(result) == "done"


def _post(mesh: Any, body: bytes, **headers: str) -> httpx.Response:
    sent = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        **headers,
    }
    url = f"http://{mesh.outbound('billing-bot')}/mcp://billing-system/mcp"
    return httpx.post(url, content=body, headers=sent, timeout=10, trust_env=False)


def _call(name: str, arguments: Dict[str, Any], id: int = 1) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    ).encode()


DELETE = '{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"delete_customer","arguments":{"id":"c-1002"}}}'

# Each body is one the official server would execute `delete_customer` for
# (or misread), and the mesh must refuse: (id, body, headers).
ATTACKS: List[Tuple[str, bytes, Dict[str, str]]] = [
    (
        "duplicate key, last wins at the server",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_invoices","name":"delete_customer","arguments":{"id":"c-1002"}}}',
        {},
    ),
    (
        "duplicate key through a \\u escape",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_invoices","na\\u006de":"delete_customer","arguments":{"id":"c-1002"}}}',
        {},
    ),
    ("escaped tool name", DELETE.replace("delete_customer", "delete\\u005fcustomer").encode(), {}),
    ("UTF-8 byte order mark", b"\xef\xbb\xbf" + DELETE.encode(), {}),
    ("UTF-16 body", DELETE.encode("utf-16"), {}),
    ("UTF-16LE without a BOM", DELETE.encode("utf-16-le"), {}),
    ("NaN argument", DELETE.replace('"c-1002"', "NaN").encode(), {}),
    ("Infinity argument", DELETE.replace('"c-1002"', "-Infinity").encode(), {}),
    ("huge number", DELETE.replace('"c-1002"', "1e400").encode(), {}),
    ("deep nesting", DELETE.replace('"c-1002"', "[" * 200 + "]" * 200).encode(), {}),
    ("trailing data", (DELETE + DELETE).encode(), {}),
    ("body over the inspection limit", DELETE.replace('"c-1002"', '"' + "x" * 5000 + '"').encode(), {}),
    ("gzip content encoding", DELETE.encode(), {"content-encoding": "gzip"}),
    ("not application/json", DELETE.encode(), {"content-type": "text/plain"}),
    ("lookalike content type", DELETE.encode(), {"content-type": "application/jsonx"}),
    ("old protocol version header", DELETE.encode(), {"mcp-protocol-version": "2024-11-05"}),
    ("a header claiming another tool", DELETE.encode(), {"mcp-name": "list_invoices", "mcp-method": "tools/call"}),
    ("method and result together", DELETE.replace('"params"', '"result":{},"params"').encode(), {}),
    (
        "a batch hiding the call after an allowed one",
        b"[" + _call("list_invoices", {"customer_id": "c-1"}, id=8) + b"," + DELETE.encode() + b"]",
        {},
    ),
]


@pytest.mark.parametrize("case", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_bodies_the_server_would_misread_are_refused(mcp_mesh, case):
    mesh, _, billing = mcp_mesh
    _, body, headers = case
    before = billing.executed()
    r = _post(mesh, body, **headers)
    assert r.headers.get("x-meshward-refusal"), (r.status_code, r.text)
    if r.status_code == 200:
        # Refused the JSON-RPC way: an error for every request, none executed.
        answers = r.json() if isinstance(r.json(), list) else [r.json()]
        assert all(a["error"]["code"] == FORBIDDEN for a in answers), r.text
    else:
        assert r.status_code in (400, 403), (r.status_code, r.text)
        assert r.json()["jsonrpc"] == "2.0" or r.json().get("error"), r.text
    assert billing.executed() == before, "the server executed a refused message"


def test_allowed_calls_run_and_argument_caps_and_tool_rates_hold(mcp_mesh):
    mesh, _, billing = mcp_mesh
    r = _post(mesh, _call("list_invoices", {"customer_id": "c-1001"}))
    assert r.status_code == 200 and "result" in r.json(), r.text
    assert billing.executed()[-1] == "list_invoices"

    r = _post(mesh, _call("refund_invoice", {"invoice_id": "i-1", "amount": 500}))
    assert r.json()["error"]["code"] == FORBIDDEN
    assert "at most 100" in r.json()["error"]["message"]

    # refund_invoice: a burst of 2 per caller, then JSON-RPC rate-limit errors.
    # The capped call above was denied before the tool's bucket was touched.
    answers = [_post(mesh, _call("refund_invoice", {"invoice_id": "i-1", "amount": 10}, id=i)) for i in range(3)]
    assert [("result" in a.json()) for a in answers] == [True, True, False], [a.text for a in answers]
    limited = answers[2]
    assert limited.json()["error"]["code"] == RATE_LIMITED
    assert limited.headers["x-meshward-refusal"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert billing.executed().count("refund_invoice") == 2


def test_rate_limit_refusals_map_to_the_sdk_exception():
    error = MCPError(RATE_LIMITED, "rate limited", {"refusal": "rate_limited", "request_id": "r-1"})
    refusal = mcp_refusal(error)
    assert isinstance(refusal, RateLimited) and refusal.request_id == "r-1"
    assert mcp_refusal(MCPError(-32602, "bad params", None)) is None
