"""`peakguard lab up` as a user runs it: up, reachable, and gone without a trace on SIGTERM and on
Ctrl-C; a port asked for that is taken is refused before anything starts."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.infra.conftest import PROJECT_DIR
from tests.model_service.conftest import write_tiny_artifacts


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    write_tiny_artifacts(root)
    return root


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "peakguard", "lab", "up", *args], cwd=PROJECT_DIR, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _read_until(process: subprocess.Popen[str], marker: str, *, seconds: float) -> str:
    """What the lab printed up to `marker`, or a failure with its stderr; never an endless wait.
    Read from the descriptor itself: a buffered reader would hold lines select() cannot see."""
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while marker.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(timeout=left):
                process.kill()
                _, err = process.communicate(timeout=30)
                pytest.fail(f"no {marker!r} within {seconds:.0f} s; printed {seen!r}; stderr {err[-3000:]}")
            chunk = os.read(descriptor, 65536)
            if not chunk:
                _, err = process.communicate(timeout=30)
                pytest.fail(f"the lab exited ({process.returncode}) before {marker!r}: {seen!r}{err[-3000:]}")
            seen += chunk
    return seen.decode()


def _children(parent: int) -> list[int]:
    """Pids of the processes `parent` started (the pods' serving processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}") / "status").read_text()
    except OSError:
        return "zombie"


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_lab_up_serves_then_leaves_no_process_or_port_behind(artifacts: Path, stop: signal.Signals) -> None:
    lab = _start("--artifacts", str(artifacts))
    printed = _read_until(lab, "Ctrl-C takes it down.", seconds=150)

    urls = dict(re.findall(r"^\s+(AWS \(moto\)|Kubernetes API|load balancer):\s+(\S+)", printed, re.MULTILINE))
    answer = httpx.post(urls["load balancer"], json={"text": "I lost my card"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert httpx.get(f"{urls['Kubernetes API']}/api/v1/namespaces/peakguard/pods", timeout=10).status_code == 200
    assert "peakguard runbook plan emergency-stop --env dev --kube-url" in printed
    ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in urls.values()]
    pods = _children(lab.pid)
    assert pods, "a serving process per pod"

    lab.send_signal(stop)
    _, err = lab.communicate(timeout=60)

    assert lab.returncode == 0, err
    assert "lab down" in err
    assert "Traceback" not in err
    assert "POST /moto-api" not in err, "moto's request log is not the user's business"
    assert _alive(pods) == [], "every pod's process is gone"
    assert all(_port_free(port) for port in ports), f"ports left open: {ports}"


def test_a_taken_port_is_refused_naming_it_and_the_flag(artifacts: Path, taken_port: int) -> None:
    refused = _start("--artifacts", str(artifacts), "--kube-port", str(taken_port))
    _, err = refused.communicate(timeout=120)

    assert refused.returncode == 2
    assert f"port {taken_port} on 127.0.0.1 is taken" in err
    assert "pass --kube-port with another port" in err
