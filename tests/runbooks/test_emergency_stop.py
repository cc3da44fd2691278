"""emergency-stop end to end: the real `peakguard runbook` command against AWS (moto on 127.0.0.1),
the local Kubernetes API seeded with the objects the Pulumi program declares for dev, and a real
model-service process behind the Service's EndpointSlice, with traffic flowing.

What is played rather than real is named here: no controller turns the HPA bounds into pods (the
drill adds that); the EndpointSlice is written by the test; node groups are moto's.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from infra.manifests import manifests
from infra.offline import run_offline
from infra.targets import TargetsDocument, hold_parameter_name, parameter_name
from model_service.service_process import ServiceProcess
from runbooks.lease_lock import LEASE_NAME
from runbooks.local.kube_api import RESOURCES, LocalKubernetes
from tests.infra.conftest import PROJECT_DIR
from tests.model_service.conftest import write_tiny_artifacts

PEAKGUARD = [sys.executable, "-m", "peakguard"]
NAMESPACE = "peakguard"
POD = "model-service-full-7f9c4-x2k8p"
_PLURAL = {kind.kind: plural for plural, kind in RESOURCES.items()}


@dataclass
class World:
    """One environment: AWS in moto, the Kubernetes API, a serving pod."""

    aws_env: dict[str, str]
    kubernetes: LocalKubernetes
    targets: TargetsDocument
    service: ServiceProcess
    journal_dir: Path
    initial_sizes: dict[str, dict[str, int]]

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

    def pod_mode(self) -> dict[str, Any]:
        status = httpx.get(f"{self.service.url}/admin/status",
                           headers={"Authorization": f"Bearer {self.service.admin_token}"}).json()  # fmt: skip
        mode: dict[str, Any] = status["mode"]
        return mode

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
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
    finally:
        server.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    write_tiny_artifacts(artifacts)
    with ServiceProcess({"artifacts": str(artifacts), "max_wait": 0.002}, ready_timeout=120) as process:
        yield process


@pytest.fixture(scope="module")
def traffic(service: ServiceProcess) -> Iterator[None]:
    """About 20 requests a second for the whole module: gates fail closed without traffic."""
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=service.url, timeout=5) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    client.post("/v1/intent", json={"text": "I lost my card, please block it"})
                stop.wait(0.05)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


@pytest.fixture
def world(
    aws: dict[str, str], dev_program: Any, service: ServiceProcess, traffic: None, tmp_path: Path
) -> Iterator[World]:
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
    # The pod back in the configured mode.
    httpx.put(f"{service.url}/admin/mode", json={"model": "full", "precision": "fp32", "shedding": False},
              headers={"Authorization": f"Bearer {service.admin_token}"}).raise_for_status()  # fmt: skip

    with LocalKubernetes() as kubernetes:
        store = kubernetes.store
        for manifest in manifests(dev_program):
            plural = _PLURAL.get(manifest.kind)
            if plural is not None:
                store.create(plural, manifest.namespace, dict(manifest.body))
        token = {"stringData": None, "data": {"token": _b64(service.admin_token)}}
        store.patch("secrets", NAMESPACE, "model-service-admin", token, content_type="application/merge-patch+json")
        # The EndpointSlice the control plane keeps for the Service: one ready pod, really serving.
        store.create("endpointslices", NAMESPACE, {
            "metadata": {"name": "model-service-abc12", "labels": {"kubernetes.io/service-name": "model-service"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": service.port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": POD, "namespace": NAMESPACE}}],
        })  # fmt: skip
        yield World(aws, kubernetes, targets, service, tmp_path / "journal", initial)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


# --- Cases ------------------------------------------------------------------------------------


def test_plan_shows_every_change_and_changes_nothing(world: World) -> None:
    hpa, sizes, mode = world.hpa(), world.sizes(), world.mode()

    planned = world.runbook("plan", "--qps", "60", "--replica-rps", "5")

    assert planned.returncode == 0, planned.stderr
    # 60 qps / 5 per replica = 12, with 30% headroom 16; the pool holds 2 groups x 2 nodes x 4 GPUs = 16.
    assert '{"max": 6, "min": 1} -> {"max": 16, "min": 16}' in planned.stdout
    assert '"desired": 2' in planned.stdout
    assert "mode" in planned.stdout
    assert "plan " in planned.stdout
    assert (world.hpa(), world.sizes(), world.mode(), world.hold()) == (hpa, sizes, mode, None)
    assert not list((world.journal_dir).glob("*.jsonl")), "a plan writes no run journal"


def test_run_raises_capacity_and_holds_pulumi_up(world: World) -> None:
    # Capacity only: the mode stays as it is, so nothing is degraded and no trigger re-check is due.
    done = world.runbook("run", "--qps", "60", "--replica-rps", "5", "--model", "full", "--precision", "fp32",
                         "--shedding", "off")  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert world.hpa() == {"min": 16, "max": 16}
    assert all(size["desired"] == 2 for size in world.sizes().values())
    hold = world.hold()
    assert hold is not None
    assert hold["runbook"] == "emergency-stop"
    journal = next(world.journal_dir.glob("*.jsonl"))
    assert hold["runId"] == journal.stem
    events = [json.loads(line)["event"] for line in journal.read_text().splitlines()]
    assert events[0] == "run_started"
    assert events[-2:] == ["run_finished", "lock_released"]
    assert "step_skipped" in events  # the mode step: already as planned
    assert "succeeded" in done.stdout
    # The Pulumi program now refuses to deploy over it, naming the run.
    with pytest.raises(Exception, match=journal.stem):
        run_offline("dev", project_dir=PROJECT_DIR, ssm_parameters={hold_parameter_name("dev"): json.dumps(hold)})


def test_when_the_incident_is_over_it_stops_before_degrading_and_puts_everything_back(world: World) -> None:
    # The service is healthy (p99 far under its 1 s SLO): switching to the light model is not justified.
    before = (world.hpa(), world.sizes(), world.mode(), world.pod_mode())

    stopped = world.runbook("run", "--qps", "60", "--replica-rps", "5")

    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "trigger no longer holds before mode" in stopped.stdout
    assert (world.hpa(), world.sizes(), world.mode(), world.pod_mode()) == before
    assert world.hold() is None
    journal = next(world.journal_dir.glob("*.jsonl"))
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    (finished,) = [r for r in records if r["event"] == "run_finished"]
    assert finished["status"] == "stopped"
    assert finished["rollback_seconds"] < 30
    restored = [r["step"] for r in records if r["event"] == "rollback_step_done"]
    assert restored == ["gpu-node-groups", "hpa-bounds", "incident-hold"]
    print(f"\nemergency-stop stopped and rolled back in {finished['rollback_seconds']:.2f} s")


def test_a_second_runner_is_refused_while_the_lease_is_held(world: World) -> None:
    world.store.create("leases", NAMESPACE, {"metadata": {"name": LEASE_NAME}, "spec": {
        "holderIdentity": "carol@laptop", "leaseDurationSeconds": 300,
        "acquireTime": _now(), "renewTime": _now()}})  # fmt: skip

    refused = world.runbook("run", "--qps", "60", "--replica-rps", "5", "--model", "full", "--precision", "fp32",
                            "--shedding", "off")  # fmt: skip

    assert refused.returncode == 2
    assert "held by carol@laptop" in refused.stderr
    assert world.hpa() == {"min": 1, "max": 6}


def test_a_change_freeze_blocks_it_unless_overridden_with_a_reason(world: World) -> None:
    world.ssm().put_parameter(Name="/peakguard/dev/change-freeze", Value="release week", Type="String")
    args = ("--qps", "60", "--replica-rps", "5", "--model", "full", "--precision", "fp32", "--shedding", "off")

    refused = world.runbook("run", *args)
    assert refused.returncode == 2
    assert "change freeze (release week" in refused.stderr
    assert world.hpa() == {"min": 1, "max": 6}

    done = world.runbook("run", *args, "--override-freeze", "Singles' Day surge, approved by the IC")
    assert done.returncode == 0, done.stdout + done.stderr
    (journal,) = [p for p in world.journal_dir.glob("*.jsonl") if "freeze_overridden" in p.read_text()]
    assert "Singles' Day surge, approved by the IC" in journal.read_text()


def test_prod_without_yes_refuses_when_no_one_can_confirm(world: World) -> None:
    prod = TargetsDocument.from_dict({**world.targets.to_dict(), "env": "prod"})
    world.ssm().put_parameter(Name=parameter_name("prod"), Value=prod.to_json(), Type="String", Overwrite=True)

    refused = world.runbook("run", "--qps", "60", "--replica-rps", "5", env="prod")

    assert refused.returncode == 2
    assert "prod needs approval" in refused.stderr
    assert "--yes" in refused.stderr
    assert world.hpa() == {"min": 1, "max": 6}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


CAPACITY_ONLY = ("--qps", "60", "--replica-rps", "5", "--model", "full", "--precision", "fp32", "--shedding", "off")


def _records(world: World) -> list[dict[str, Any]]:
    journal = next(world.journal_dir.glob("*.jsonl"))
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


def test_a_forbidden_api_call_is_reported_clearly_and_what_was_done_is_rolled_back(world: World) -> None:
    from runbooks.local.kube_api import ApiStatus

    world.store.faults[("PATCH", "horizontalpodautoscalers")] = ApiStatus(
        403, "Forbidden", 'horizontalpodautoscalers.autoscaling "model-service-full" is forbidden: User "runner" '
        'cannot patch resource "horizontalpodautoscalers"'
    )  # fmt: skip

    failed = world.runbook("run", *CAPACITY_ONLY)

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "forbidden (403)" in failed.stdout
    skipped = [r for r in _records(world) if r["event"] == "rollback_step_done" and r.get("skipped")]
    assert [r["step"] for r in skipped] == ["hpa-bounds"], "the refused patch changed nothing to restore"
    assert "lacks RBAC" in failed.stdout
    assert world.hold() is None, "the hold set by the first step was rolled back"
    assert world.hpa() == {"min": 1, "max": 6}


def test_when_rollback_itself_fails_the_journal_says_what_to_undo_by_hand(world: World) -> None:
    from runbooks.local.kube_api import ApiStatus

    eks = world.eks()
    doomed = world.targets.node_groups_of("full")[1].name

    # Once the HPA is raised, the API starts refusing HPA patches and a node group disappears: the
    # next step fails, and so does restoring the HPA.
    def break_after_hpa(event: str, plural: str, obj: dict[str, Any]) -> None:
        if plural == "horizontalpodautoscalers" and event == "MODIFIED" and obj["spec"]["minReplicas"] == 16:
            world.store.faults[("PATCH", "horizontalpodautoscalers")] = ApiStatus(403, "Forbidden", "RBAC changed")
            eks.delete_nodegroup(clusterName=world.targets.cluster.name, nodegroupName=doomed)

    world.store.listeners.append(break_after_hpa)
    failed = world.runbook("run", *CAPACITY_ONLY)

    assert failed.returncode == 3, failed.stdout + failed.stderr
    undo = {r["step"]: r["undo"] for r in _records(world) if r["event"] == "rollback_step_failed"}
    assert undo["hpa-bounds"] == 'set it back by hand to {"max":6,"min":1}'
    assert "rollback incomplete" in failed.stdout
    assert world.hold() is None, "the other steps were still restored"
    assert world.hpa() == {"min": 16, "max": 16}, "as the journal says: left for a person to undo"


def test_a_runner_killed_mid_run_is_resumed_without_redoing_finished_steps(world: World) -> None:
    env = {**os.environ, **world.aws_env, "PEAKGUARD_JOURNAL_DIR": str(world.journal_dir)}
    runner = subprocess.Popen(
        [*PEAKGUARD, "runbook", "run", "emergency-stop", "--env", "dev", "--kube-url", world.kubernetes.url,
         "--window", "3", *CAPACITY_ONLY],
        cwd=PROJECT_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Kill it (no chance to clean up) once every step is done and it is verifying recovery.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        journals = list(world.journal_dir.glob("*.jsonl"))
        if journals and any(r["event"] == "step_skipped" and r["step"] == "mode" for r in _records(world)):
            break
        time.sleep(0.05)
    runner.kill()
    runner.wait(timeout=30)
    killed = _records(world)
    assert not [r for r in killed if r["event"] == "run_finished"], "killed before it finished"
    run_id = next(world.journal_dir.glob("*.jsonl")).stem
    # Its lease is still there until it expires; the resuming operator takes it over.
    resumed = world.peakguard("runbook", "resume", run_id, "--env", "dev", "--kube-url", world.kubernetes.url,
                              "--window", "1", "--break-lock")  # fmt: skip

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    records = _records(world)
    started = [r["step"] for r in records if r["event"] == "step_started"]
    assert started == ["incident-hold", "hpa-bounds", "gpu-node-groups"], "no finished step was redone"
    assert records[-2]["event"] == "run_finished"
    assert records[-2]["status"] == "succeeded"
    assert world.hpa() == {"min": 16, "max": 16}
