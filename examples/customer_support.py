#!/usr/bin/env python3
"""The seed's customer-support workflow, run as the support-triage agent.

support-triage (team customer-success, type support) handles a customer's
message through its Meshward sidecar:

1. customer-lookup     GET  /customers/<id>       who wrote (allowed)
2. sentiment-analysis  POST /analyze              how upset they are (allowed)
3. support-system      POST /tickets              open a ticket, priority from the mood (allowed)
4. billing-system      POST /invoices/<id>/refund refund them directly: the mesh refuses,
                                                  customer-success agents may not reach
                                                  billing-system (Forbidden)

The agent holds no credential: its sidecar proves who it is. The sidecar is
$MESHWARD_OUTBOUND (the SDK's default), e.g. for `meshward up`:

    export MESHWARD_OUTBOUND=$(jq -r '.agents[] | select(.name=="support-triage") | .outbound' .meshward/up.json)
    python3 examples/customer_support.py

Exit status: 0 when steps 1-3 succeeded and step 4 was refused by the mesh;
1 when an allowed step failed; 2 when the step meant to be denied was not.
"""

import argparse
import sys
from typing import Any, Dict

from meshward import Agent, Forbidden, MeshRefusal, MeshwardError, RetryPolicy, UpstreamError

DEFAULT_MESSAGE = (
    "The app has been broken since the last update and I was overcharged "
    "on my invoice. This is unacceptable, please refund me."
)


def step(n: int, service: str, call: str, outcome: str) -> None:
    print(f"{n}. {service:<19} {call:<32} -> {outcome}")


def run(agent: Agent, customer_id: str, message: str, invoice_id: str) -> int:
    print(f"support-triage, through its sidecar at {agent.sidecar.base_url}")
    print(f"message from {customer_id}: {message!r}\n")
    try:
        customer: Dict[str, Any] = agent.call(f"mcp://customer-lookup/customers/{customer_id}").raise_for_status().json()
        step(1, "customer-lookup", f"GET /customers/{customer_id}",
             f"{customer['name']} <{customer['email']}>, plan {customer['plan']}")

        mood = agent.call("mcp://sentiment-analysis/analyze", json={"text": message}).raise_for_status().json()
        words = ", ".join(mood["words"]) or "none"
        step(2, "sentiment-analysis", "POST /analyze",
             f"{mood['label']} (score {mood['score']}; words: {words})")

        priority = "high" if mood["label"] == "negative" else "normal"
        ticket = agent.call(
            "mcp://support-system/tickets",
            json={
                "customer_id": customer["id"],
                "subject": f"Message from {customer['name']}",
                "description": message,
                "priority": priority,
            },
        ).raise_for_status().json()
        step(3, "support-system", "POST /tickets",
             f"opened {ticket['id']} (priority {ticket['priority']}, status {ticket['status']})")
    except MeshwardError as e:
        print(f"\nan allowed step failed: {describe(e)}", file=sys.stderr)
        return 1

    refund = f"POST /invoices/{invoice_id}/refund"
    try:
        r = agent.call(f"mcp://billing-system/invoices/{invoice_id}/refund", json={"amount": 10.0})
    except Forbidden as denied:
        step(4, "billing-system", refund, "denied by the mesh, as the policy says")
        print(f"   reason:     {denied.reason}")
        print(f"   request id: {denied.request_id}")
    except MeshwardError as e:
        print(f"\nthe refund was meant to be denied by policy, but: {describe(e)}", file=sys.stderr)
        return 2
    else:
        print(f"\nthe refund was meant to be denied by policy, but billing-system answered {r.status_code}",
              file=sys.stderr)
        return 2

    print("\nworkflow done: 3 allowed steps succeeded, 1 step denied by the mesh")
    return 0


def describe(e: Exception) -> str:
    if isinstance(e, MeshRefusal):
        return f"the mesh refused ({e.kind}, {e.status}): {e.reason} [request id {e.request_id}]"
    if isinstance(e, UpstreamError):
        return f"{e.service} answered {e.status}: {e.response.text}"
    return str(e)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customer", default="c-1001", help="customer id (default c-1001)")
    parser.add_argument("--message", default=DEFAULT_MESSAGE, help="the customer's message")
    parser.add_argument("--invoice", default="inv-2001", help="invoice the agent tries to refund")
    args = parser.parse_args()
    # A previous burst may have used up support-triage's 5 requests/s: wait
    # out a 429's retry-after instead of failing the workflow.
    retries = RetryPolicy(max_attempts=4, max_delay=5.0)
    with Agent(timeout=10, retries=retries) as agent:
        return run(agent, args.customer, args.message, args.invoice)


if __name__ == "__main__":
    sys.exit(main())
