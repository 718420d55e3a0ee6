"""A real `meshward up` for the integration tests.

The binary is `$MESHWARD_BIN`, else `target/debug/meshward` under the repo
root; a missing binary fails the run (these tests are opt-in with
`-m integration`, so asking for them without a binary is a mistake to
report, not to skip). The mesh file is `deploy/local/mesh.yaml`, copied into
a temporary directory with its policy directory made absolute.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[4]
READY_DEADLINE = 90.0


def _binary() -> Path:
    configured = os.environ.get("MESHWARD_BIN")
    path = Path(configured) if configured else ROOT / "target" / "debug" / "meshward"
    if not path.is_absolute():
        path = ROOT / path
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"no meshward binary at {path}: build it or set MESHWARD_BIN",
            pytrace=False,
        )
    return path


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Mesh:
    def __init__(self, info: Dict[str, Any], log: Path) -> None:
        self.info = info
        self.log = log

    def outbound(self, agent: str) -> str:
        for a in self.info["agents"]:
            if a["name"] == agent:
                return a["outbound"]
        raise KeyError(f"agent {agent} not in up.json")


def _wait_ready(proc: subprocess.Popen, state: Path, log: Path) -> Dict[str, Any]:
    """Polls up.json (written once every dataplane is ready), then each
    dataplane's admin /ready, until a deadline."""
    deadline = time.monotonic() + READY_DEADLINE
    up_json = state / "up.json"
    info = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"meshward up exited with {proc.returncode}:\n{_tail(log)}", pytrace=False)
        if info is None and up_json.exists():
            try:
                info = json.loads(up_json.read_text())
            except ValueError:
                info = None  # mid-write; the file is renamed into place, but be safe
        if info is not None:
            admins = [a["admin"] for a in info["agents"]]
            admins += [s["admin"] for s in info["services"] if s["admin"]]
            try:
                if all(httpx.get(f"http://{a}/ready", timeout=1).status_code == 200 for a in admins):
                    return info
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    pytest.fail(f"meshward up not ready in {READY_DEADLINE}s:\n{_tail(log)}", pytrace=False)


@contextmanager
def run_up(tmp: Path, config: Path) -> Iterator[Mesh]:
    """`meshward up` on `config` (state and log under `tmp`), ready, and
    stopped (SIGTERM) on exit."""
    state = tmp / "state"
    log = tmp / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(_binary()),
                "up",
                "--config",
                str(config),
                "--state-dir",
                str(state),
                "--no-ext-authz",
                "--no-rate-limit",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    try:
        info = _wait_ready(proc, state, log)
        yield Mesh(info, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def local_mesh_text() -> str:
    """deploy/local/mesh.yaml with its policy directory made absolute."""
    source = ROOT / "deploy" / "local" / "mesh.yaml"
    text = source.read_text()
    relative = "dir: ../../policies"
    if relative not in text:
        pytest.fail(f"{source}: expected '{relative}' to rewrite", pytrace=False)
    return text.replace(relative, f"dir: {ROOT / 'policies'}")


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    # Short path: Workload API sockets live under the state dir.
    tmp = Path(tempfile.mkdtemp(prefix="mw-sdk-"))
    try:
        config = tmp / "mesh.yaml"
        config.write_text(local_mesh_text())
        with run_up(tmp, config) as m:
            yield m
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def anyio_backend():
    return "asyncio"
