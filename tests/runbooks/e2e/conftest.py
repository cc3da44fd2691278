"""Runbooks end to end: the real `peakguard runbook` command against the lab (`lab.lab.Lab`, the
same one the drill stands up): AWS in moto, the local Kubernetes API seeded with the objects the
Pulumi program declares for dev, the played controllers turning HPA bounds into pods, each pod a
real model-service process on its own loopback address, and traffic through the local
least-outstanding-requests load balancer to the Ready pods.

Played rather than real: the controllers; the full pool's node groups are moto's and get no
instances (the rolling-upgrade tests play them with `nodes="node-groups"`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from infra.offline import OfflineRun, run_offline
from infra.targets import TargetsDocument, hold_parameter_name
from lab.lab import DELAYS, NAMESPACE, Lab, LabSettings, ServePod
from tests.infra.conftest import PROJECT_DIR
from tests.model_service.conftest import write_tiny_artifacts

__all__ = ["DELAYS", "NAMESPACE", "PEAKGUARD", "PROJECT_DIR", "World"]

PEAKGUARD = [sys.executable, "-m", "peakguard"]


@dataclass
class World:
    """One test's lab, with what the tests read and the traffic they control."""

    lab: Lab
    crash: dict[str, bool]
    journal_dir: Path
    quiet: threading.Event = field(default_factory=threading.Event)
    """Set: the steady traffic stops (the surge is over); cleared: it flows again."""

    @property
    def aws_env(self) -> dict[str, str]:
        return self.lab.aws_env

    @property
    def targets(self) -> TargetsDocument:
        return self.lab.targets

    @property
    def token(self) -> str:
        return self.lab.token

    @property
    def pods(self) -> list[ServePod]:
        return self.lab.pods

    @property
    def proxy_url(self) -> str:
        return self.lab.proxy_url

    @property
    def kube_url(self) -> str:
        return self.lab.kube_url

    def ready_backends(self) -> list[tuple[str, str]]:
        """(pod, base URL) of the Ready pods, from the EndpointSlice the controllers keep."""
        return self.lab.ready_backends()

    def ready_pods(self) -> list[str]:
        return [url for _, url in self.ready_backends()]

    @property
    def store(self) -> Any:
        return self.lab.store

    def eks(self) -> Any:
        return boto3.client("eks", **self.lab.client_args())

    def ssm(self) -> Any:
        return boto3.client("ssm", **self.lab.client_args())

    def peakguard(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.aws_env, "PEAKGUARD_JOURNAL_DIR": str(self.journal_dir)}
        return subprocess.run(
            [*PEAKGUARD, *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def runbook(self, action: str, *args: str, env: str = "dev") -> subprocess.CompletedProcess[str]:
        return self.peakguard("runbook", action, "emergency-stop", "--env", env, "--kube-url", self.kube_url,
                              "--window", "1", *args)  # fmt: skip

    def start_runbook(self, action: str, *args: str) -> subprocess.Popen[str]:
        """`runbook` in the background, its output to a file beside the journals."""
        return self.start("runbook", action, "emergency-stop", "--env", "dev", "--kube-url", self.kube_url,
                          "--window", "1", *args)  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        """`peakguard ARGS` in the background, its output to a file beside the journals."""
        env = {**os.environ, **self.aws_env, "PEAKGUARD_JOURNAL_DIR": str(self.journal_dir)}
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        with (self.journal_dir / f"runner-{uuid.uuid4().hex[:6]}.out").open("w") as log:
            return subprocess.Popen(
                [*PEAKGUARD, *args], cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, text=True,
            )  # fmt: skip

    def hpa(self) -> dict[str, int]:
        spec = self.store.get("horizontalpodautoscalers", NAMESPACE, "model-service-full")["spec"]
        return {"min": spec["minReplicas"], "max": spec["maxReplicas"]}

    def sizes(self) -> dict[str, dict[str, int]]:
        eks = self.eks()
        found = {}
        for group in self.targets.node_groups_of("full"):
            scaling = eks.describe_nodegroup(clusterName=self.targets.cluster.name, nodegroupName=group.name)
            config = scaling["nodegroup"]["scalingConfig"]
            found[group.name] = {"min": config["minSize"], "desired": config["desiredSize"], "max": config["maxSize"]}
        return found

    def mode(self) -> dict[str, Any]:
        data = self.store.get("configmaps", NAMESPACE, "model-service-full-mode")["data"]
        document: dict[str, Any] = json.loads(data["mode.json"])
        return document

    def pod_modes(self) -> list[dict[str, Any]]:
        modes = []
        for url in self.ready_pods():
            status = httpx.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {self.token}"}).json()
            modes.append(status["mode"])
        return modes

    def hold(self) -> dict[str, Any] | None:
        try:
            value = self.ssm().get_parameter(Name=hold_parameter_name("dev"))["Parameter"]["Value"]
        except self.ssm().exceptions.ParameterNotFound:
            return None
        document: dict[str, Any] = json.loads(value)
        return document


@pytest.fixture(scope="module")
def dev_program() -> OfflineRun:
    return run_offline("dev", project_dir=PROJECT_DIR)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    write_tiny_artifacts(root)
    return root


@pytest.fixture
def world(request: pytest.FixtureRequest, dev_program: OfflineRun, artifacts: Path, tmp_path: Path) -> Iterator[World]:
    """The lab for dev with one Ready replica and traffic flowing; `indirect` parametrization passes
    model-service settings for every pod."""
    settings = LabSettings(artifacts=artifacts, workdir=tmp_path, program=dev_program, delays=DELAYS,
                           pod_settings=getattr(request, "param", {}))  # fmt: skip
    crash: dict[str, bool] = {"new pods": False}

    def maybe_crash(pod: ServePod) -> None:
        if crash["new pods"]:
            # A replica that really breaks: its process dies after starting, before it is Ready.
            os.kill(pod.process.pid or 0, signal.SIGKILL)

    with Lab(settings) as lab:
        lab.on_pod_started.append(maybe_crash)
        world = World(lab, crash, tmp_path / "journal")
        with _traffic(world):
            yield world


@contextlib.contextmanager
def _traffic(world: World) -> Iterator[None]:
    """About 40 requests a second through the lab's load balancer (least outstanding requests, to
    the pods the EndpointSlice marks Ready), as the ALB would send them: enough that a gate's
    window of a few seconds holds the 100 answers a p99 needs."""
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=world.proxy_url, timeout=5) as client:
            while not stop.is_set():
                if not world.quiet.is_set():
                    with contextlib.suppress(httpx.HTTPError):
                        client.post("/v1/intent", json={"text": "I lost my card, block it"})
                stop.wait(0.02)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _wait(condition: Callable[[], bool], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout} s")


def _records(world: World) -> list[dict[str, Any]]:
    journal = next(world.journal_dir.glob("*.jsonl"))
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
