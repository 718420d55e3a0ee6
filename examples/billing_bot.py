#!/usr/bin/env python3
"""The billing-bot agent: invoices and refunds, and what the mesh keeps from it.

billing-bot (team finance, type analysis) works on one customer's invoices
through its Meshward sidecar:

1. billing-system   GET  /invoices?customer_id=<id>  list the invoices (allowed)
2. billing-system   POST /invoices/<id>/refund       refund 5.00 EUR (allowed)
3. billing-system   POST /invoices/<id>/refund       refund more than is left: the
                                                     *service* says 400 (allowed by
                                                     the mesh, refused by billing)
4. customer-lookup  GET  /customers/<id>             read the customer's record: the
                                                     *mesh* refuses, customer-lookup
                                                     requires data:read (Forbidden)

The sidecar is $MESHWARD_OUTBOUND (the SDK's default), e.g. for `meshward up`:

    export MESHWARD_OUTBOUND=$(jq -r '.agents[] | select(.name=="billing-bot") | .outbound' .meshward/up.json)
    python3 examples/billing_bot.py

Exit status: 0 when steps 1-3 went as described and step 4 was refused by the
mesh; 1 when an allowed step failed; 2 when the step meant to be denied was not.
"""

import argparse
import sys

from meshward import Agent, Forbidden, MeshRefusal, MeshwardError, RetryPolicy, UpstreamError

REFUND = 5.0


def step(n: int, service: str, call: str, outcome: str) -> None:
    print(f"{n}. {service:<16} {call:<38} -> {outcome}")


def eur(amount: float) -> str:
    return f"{amount:.2f} EUR"


def run(agent: Agent, customer_id: str) -> int:
    print(f"billing-bot, through its sidecar at {agent.sidecar.base_url}\n")
    try:
        listing = agent.call(
            "mcp://billing-system/invoices", params={"customer_id": customer_id}
        ).raise_for_status().json()
        invoices = listing["invoices"]
        summary = ", ".join(f"{i['id']} {eur(i['amount'])} ({i['status']})" for i in invoices)
        step(1, "billing-system", f"GET /invoices?customer_id={customer_id}",
             f"{len(invoices)} invoices: {summary or 'none'}")

        # Refunds accumulate while the mesh runs: pick an invoice with room left.
        invoice = next((i for i in invoices if i["refundable"] >= REFUND), None)
        if invoice is None:
            print(f"\nno invoice of {customer_id} has {eur(REFUND)} left to refund", file=sys.stderr)
            return 1
        refund_call = f"POST /invoices/{invoice['id']}/refund"
        done = agent.call(
            f"mcp://billing-system/invoices/{invoice['id']}/refund",
            json={"amount": REFUND, "reason": "service outage credit"},
        ).raise_for_status().json()
        left = done["invoice"]["refundable"]
        step(2, "billing-system", refund_call,
             f"refund {done['refund']['id']} of {eur(done['refund']['amount'])}, {eur(left)} left")

        too_much = round(left + 1, 2)
        r = agent.call(f"mcp://billing-system/invoices/{invoice['id']}/refund", json={"amount": too_much})
        if r.status_code != 400:
            print(f"\na refund of {eur(too_much)} should be refused by billing-system, got {r.status_code}",
                  file=sys.stderr)
            return 1
        step(3, "billing-system", refund_call,
             f"{r.status_code} from the service (not the mesh): {r.json()['message']}")
    except MeshwardError as e:
        print(f"\nan allowed step failed: {describe(e)}", file=sys.stderr)
        return 1

    lookup = f"GET /customers/{customer_id}"
    try:
        r = agent.call(f"mcp://customer-lookup/customers/{customer_id}")
    except Forbidden as denied:
        step(4, "customer-lookup", lookup, "denied by the mesh, as the policy says")
        print(f"   reason:     {denied.reason}")
        print(f"   request id: {denied.request_id}")
    except MeshwardError as e:
        print(f"\nthe lookup was meant to be denied by policy, but: {describe(e)}", file=sys.stderr)
        return 2
    else:
        print(f"\nthe lookup was meant to be denied by policy, but customer-lookup answered {r.status_code}",
              file=sys.stderr)
        return 2

    print("\nbilling run done: 3 steps as expected, 1 step denied by the mesh")
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
    args = parser.parse_args()
    retries = RetryPolicy(max_attempts=4, max_delay=5.0)
    with Agent(timeout=10, retries=retries) as agent:
        return run(agent, args.customer)


if __name__ == "__main__":
    sys.exit(main())
