"""examples/*.py against a real `meshward up`: each script runs as a
subprocess with MESHWARD_OUTBOUND set to its agent's sidecar, as
examples/README.md tells a user to run it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"


def run_example(mesh, script: str, agent: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MESHWARD_OUTBOUND=mesh.outbound(agent))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(done.stdout)
    print(done.stderr, file=sys.stderr)
    return done


def test_customer_support_workflow(mesh):
    done = run_example(mesh, "customer_support.py", "support-triage")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "1. customer-lookup" in out and "Ada Lovelace <ada@example.com>" in out
    assert "2. sentiment-analysis" in out and "negative (score -1.0" in out
    assert "3. support-system" in out and "(priority high, status open)" in out
    # The refund is the mesh's refusal, with the policy's reason and an id.
    assert "4. billing-system" in out and "denied by the mesh" in out
    assert "reason:     customer-success agents may not reach billing-system" in out
    request_id = next(line for line in out.splitlines() if "request id:" in line)
    assert request_id.split("request id:")[1].strip() not in ("", "None")
    assert "workflow done: 3 allowed steps succeeded, 1 step denied by the mesh" in out


def test_billing_bot(mesh):
    done = run_example(mesh, "billing_bot.py", "billing-bot")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "1. billing-system" in out and "2 invoices: inv-2001 120.00 EUR (paid)" in out
    assert "2. billing-system" in out and "of 5.00 EUR" in out
    assert "3. billing-system" in out and "400 from the service (not the mesh)" in out
    assert "still refundable" in out
    assert "4. customer-lookup" in out and "denied by the mesh" in out
    assert "reason:     customer-lookup requires permission data:read, which billing-bot lacks" in out
    assert "billing run done" in out


def test_a_wrong_agent_fails_the_example(mesh):
    # The support workflow run as billing-bot: its first step (customer-lookup)
    # is refused, so the script must fail rather than report success.
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "customer_support.py")],
        env=dict(os.environ, MESHWARD_OUTBOUND=mesh.outbound("billing-bot")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "an allowed step failed: the mesh refused (forbidden, 403)" in done.stderr
