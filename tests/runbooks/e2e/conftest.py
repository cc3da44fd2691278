"""A local environment for runbooks end to end: the real `peakguard runbook` command against AWS
(moto on 127.0.0.1) and the local Kubernetes API seeded with the objects the Pulumi program declares for dev. The
played controllers (`runbooks/local/controllers.py`) turn the HPA's bounds into pods with
realistic delays, and each pod is a real model-service process on its own loopback address, so
capacity really arrives (or really does not), with traffic flowing to the Ready pods.

Played rather than real: the controllers; node groups are moto's and get no instances.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from infra.manifests import manifests
from infra.offline import run_offline
from infra.targets import TargetsDocument, hold_parameter_name, parameter_name
from model_service.service_process import ServiceProcess, free_port
from runbooks.local.controllers import Controllers, Delays
from runbooks.local.kube_api import RESOURCES, LocalKubernetes
from runbooks.local.lor_proxy import LorProxy
from tests.infra.conftest import PROJECT_DIR
from tests.model_service.conftest import write_tiny_artifacts
from tests.moto_server import moto_server

PEAKGUARD = [sys.executable, "-m", "peakguard"]
NAMESPACE = "peakguard"
_PLURAL = {kind.kind: plural for plural, kind in RESOURCES.items()}


@dataclass
class World:
    """One environment: AWS in moto, the Kubernetes API, a serving pod."""

    aws_env: dict[str, str]
    kubernetes: LocalKubernetes
    targets: TargetsDocument
    controllers: Controllers
    pods: list[Any]
    token: str
    crash: dict[str, bool]
    journal_dir: Path
    initial_sizes: dict[str, dict[str, int]]
    quiet: threading.Event = field(default_factory=threading.Event)
    """Set: the steady traffic stops (the surge is over); cleared: it flows again."""
    proxy_url: str = ""
    """The local load balancer in front of the Ready pods (the ALB's part)."""

    def ready_backends(self) -> list[tuple[str, str]]:
        """(pod, base URL) of the Ready pods, from the EndpointSlice the controllers keep."""
        found = []
        for endpoint_slice in self.store.list("endpointslices", NAMESPACE):
            port = endpoint_slice["ports"][0]["port"]
            for endpoint in endpoint_slice["endpoints"]:
                if endpoint["conditions"]["ready"]:
                    found.append((endpoint["targetRef"]["name"], f"http://{endpoint['addresses'][0]}:{port}"))
        return sorted(found)

    def ready_pods(self) -> list[str]:
        return [url for _, url in self.ready_backends()]

    @property
    def store(self) -> Any:
        return self.kubernetes.store

    def eks(self) -> Any:
        return boto3.client("eks", **_client_args(self.aws_env))

    def ssm(self) -> Any:
        return boto3.client("ssm", **_client_args(self.aws_env))

    def peakguard(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.aws_env, "PEAKGUARD_JOURNAL_DIR": str(self.journal_dir)}
        return subprocess.run(
            [*PEAKGUARD, *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def runbook(self, action: str, *args: str, env: str = "dev") -> subprocess.CompletedProcess[str]:
        return self.peakguard("runbook", action, "emergency-stop", "--env", env, "--kube-url", self.kubernetes.url,
                              "--window", "1", *args)  # fmt: skip

    def start_runbook(self, action: str, *args: str) -> subprocess.Popen[str]:
        """`runbook` in the background, its output to a file beside the journals."""
        return self.start("runbook", action, "emergency-stop", "--env", "dev", "--kube-url", self.kubernetes.url,
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


def _client_args(aws_env: dict[str, str]) -> dict[str, Any]:
    return {
        "endpoint_url": aws_env["AWS_ENDPOINT_URL"],
        "region_name": aws_env["AWS_DEFAULT_REGION"],
        "aws_access_key_id": aws_env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws_env["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture(scope="module")
def dev_program() -> Any:
    return run_offline("dev", project_dir=PROJECT_DIR)


@pytest.fixture(scope="module")
def aws() -> Iterator[dict[str, str]]:
    with moto_server() as url:
        yield {
            "AWS_ENDPOINT_URL": url,
            "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    write_tiny_artifacts(root)
    return root


class ServePod:
    """One emulated pod's container: `peakguard serve` on the pod's own loopback address."""

    def __init__(self, pod: str, address: str, *, port: int, artifacts: Path, token: str, folder: Path,
                 settings: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        self.address, self.port, self.pod = address, port, pod
        self.mode_dir = folder / pod
        self.mode_dir.mkdir(parents=True)
        settings = {"artifacts": str(artifacts), "mode_file": str(self.mode_dir), "max_wait": 0.002, **(settings or {})}
        self.process = ServiceProcess(settings, host=address, port=port, admin_token=token, ready_timeout=120)
        self.process.start()

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://{self.address}:{self.port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def write_config(self, config_map: str, data: Mapping[str, str]) -> None:
        for key, text in data.items():
            partial = self.mode_dir / f".{key}.partial"
            partial.write_text(text)
            partial.replace(self.mode_dir / key)

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def world(
    request: pytest.FixtureRequest, aws: dict[str, str], dev_program: Any, artifacts: Path, tmp_path: Path
) -> Iterator[World]:
    """The environment; `indirect` parametrization passes model-service settings for every pod."""
    pod_settings: dict[str, Any] = getattr(request, "param", {})
    targets = TargetsDocument.from_dict(dev_program.outputs["targets"])
    client_args = _client_args(aws)
    eks, ssm = boto3.client("eks", **client_args), boto3.client("ssm", **client_args)
    # AWS as `pulumi up` left it: the cluster, its node groups, the targets document; no hold.
    clusters = eks.list_clusters()["clusters"]
    if targets.cluster.name not in clusters:
        eks.create_cluster(name=targets.cluster.name, roleArn="arn:aws:iam::123456789012:role/eks",
                           resourcesVpcConfig={"subnetIds": ["subnet-1"]})  # fmt: skip
    initial = {}
    existing = set(eks.list_nodegroups(clusterName=targets.cluster.name)["nodegroups"])
    for group in targets.node_groups_of("full"):
        scaling = {"minSize": 0, "desiredSize": 1, "maxSize": 2}
        if group.name in existing:
            eks.update_nodegroup_config(clusterName=targets.cluster.name, nodegroupName=group.name,
                                        scalingConfig=scaling)  # fmt: skip
        else:
            eks.create_nodegroup(clusterName=targets.cluster.name, nodegroupName=group.name, scalingConfig=scaling,
                                 subnets=["subnet-1"], nodeRole="arn:aws:iam::123456789012:role/node")  # fmt: skip
        initial[group.name] = {"min": 0, "desired": 1, "max": 2}
    ssm.put_parameter(Name=parameter_name("dev"), Value=targets.to_json(), Type="String", Overwrite=True)
    for name in (hold_parameter_name("dev"), "/peakguard/dev/change-freeze"):
        with contextlib.suppress(ssm.exceptions.ParameterNotFound):
            ssm.delete_parameter(Name=name)

    token = "local-admin-token-" + uuid.uuid4().hex
    port = free_port()
    pods: list[ServePod] = []
    crash: dict[str, bool] = {"new pods": False}

    def start_pod(pod: str, template: Mapping[str, Any], address: str) -> ServePod:
        started = ServePod(pod, address, port=port, artifacts=artifacts, token=token, folder=tmp_path / "pods",
                           settings=pod_settings)  # fmt: skip
        pods.append(started)
        if crash["new pods"]:
            # A replica that really breaks: its process dies after starting, before it is Ready.
            os.kill(started.process.pid or 0, signal.SIGKILL)
        return started

    pool = {"peakguard.io/pool": "full"}  # the model service's nodeSelector
    with LocalKubernetes() as kubernetes, Controllers(kubernetes.store, backends=start_pod, delays=DELAYS,
                                                      max_pods=4, node_labels=pool) as controllers:  # fmt: skip
        store = kubernetes.store
        for manifest in manifests(dev_program):
            plural = _PLURAL.get(manifest.kind)
            if plural is not None:
                store.create(plural, manifest.namespace, dict(manifest.body))
        secret = {"stringData": None, "data": {"token": _b64(token)}}
        store.patch("secrets", NAMESPACE, "model-service-admin", secret, content_type="application/merge-patch+json")
        world = World(aws, kubernetes, targets, controllers, pods, token, crash, tmp_path / "journal", initial)
        _wait(lambda: len(world.ready_pods()) == 1, timeout=120)
        with _traffic(world):
            yield world


DELAYS = Delays(pod_start=2.0, readiness=0.5, config_sync=10.0, tick=0.2)
"""Shorter than a GPU cluster's minutes, long enough that ordering and waiting matter."""


@contextlib.contextmanager
def _traffic(world: World) -> Iterator[None]:
    """About 40 requests a second through the local load balancer (least outstanding requests,
    registering the pods the EndpointSlice marks Ready), as the ALB would send them: enough that
    a gate's window of a few seconds holds the 100 answers a p99 needs."""
    stop = threading.Event()

    with LorProxy(world.ready_backends, refresh_interval=0.2) as proxy:
        world.proxy_url = proxy.url

        def send() -> None:
            with httpx.Client(base_url=proxy.url, timeout=5) as client:
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


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _records(world: World) -> list[dict[str, Any]]:
    journal = next(world.journal_dir.glob("*.jsonl"))
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
