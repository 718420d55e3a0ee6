"""An MCP server built with the official MCP Python SDK (`MCPServer`,
Streamable HTTP on uvicorn), the peer behind Meshward in the MCP tests.

Its tools record that they ran (`GET /executed`, straight to the server,
not through the mesh), so a test can tell what the server executed from
what the mesh answered. `countdown` reports progress, then waits for
`POST /release`: a client that sees the progress before the release proves
the SSE stream is not buffered on the way.

    python mcp_server.py --port-file PATH [--stateless]

`--stateless` serves stateless JSON responses (no session, no SSE), so raw
JSON-RPC bodies can be POSTed without an `initialize` first.
"""

import argparse
import asyncio
import socket
from pathlib import Path
from typing import Any, Dict, List

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

CUSTOMERS = {
    "c-1001": {"id": "c-1001", "name": "Ada Lovelace", "email": "ada@example.com"},
    "c-1002": {"id": "c-1002", "name": "Grace Hopper", "email": "grace@example.com"},
}

executed: List[str] = []
released = asyncio.Event()
server = MCPServer("meshward-test-tools")


@server.tool()
def get_customer(id: str) -> Dict[str, Any]:
    """A customer by id."""
    executed.append("get_customer")
    return CUSTOMERS.get(id, {"error": f"no customer {id}"})


@server.tool()
def search_customers(email: str) -> List[Dict[str, Any]]:
    """Customers with this email."""
    executed.append("search_customers")
    return [c for c in CUSTOMERS.values() if c["email"] == email]


@server.tool()
def delete_customer(id: str) -> str:
    """Deletes a customer (no agent should be allowed this)."""
    executed.append("delete_customer")
    CUSTOMERS.pop(id, None)
    return f"deleted {id}"


@server.tool()
def list_invoices(customer_id: str) -> List[Dict[str, Any]]:
    """A customer's invoices."""
    executed.append("list_invoices")
    return [{"id": "i-1", "customer_id": customer_id, "amount": 120.0}]


@server.tool()
def refund_invoice(invoice_id: str, amount: float) -> Dict[str, Any]:
    """Refunds part of an invoice."""
    executed.append("refund_invoice")
    return {"invoice_id": invoice_id, "refunded": amount}


@server.tool()
async def countdown(n: int, ctx: Context) -> str:
    """Reports progress, then waits for POST /release."""
    executed.append("countdown")
    await ctx.report_progress(1, n, "started")
    await asyncio.wait_for(released.wait(), timeout=30)
    return "done"


@server.custom_route("/executed", methods=["GET"])
async def executed_tools(_: Request) -> Response:
    return JSONResponse(executed)


@server.custom_route("/release", methods=["POST"])
async def release(_: Request) -> Response:
    released.set()
    return JSONResponse({"released": True})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--stateless", action="store_true")
    args = parser.parse_args()
    app = server.streamable_http_app(
        json_response=args.stateless,
        stateless_http=args.stateless,
        # The inbound sidecar forwards the service's name as Host.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    # Listening already: connections wait in the backlog until uvicorn runs.
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(sock.getsockname()[1]))
    tmp.rename(args.port_file)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
