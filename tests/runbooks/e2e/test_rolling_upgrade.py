"""rolling-upgrade end to end: the real `peakguard runbook run rolling-upgrade` against AWS in moto and
the local Kubernetes API, with EKS's node groups played (`lab/node_groups.py`: instances
become Nodes that register with the startup taint and lose it after preflight), real model-service
processes as pods, and steady traffic through the local load balancer.

The dev stack declares the upgrade (`gpuPools.full.next`), so beside each serving (blue) node
group an empty green one exists. Each blue group starts with one node of two GPUs holding two of
the four replicas: draining a node moves two pods, one at a time under the budget, and each must
find room on the new generation.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import httpx
import pytest

from infra.offline import OfflineRun, run_offline
from infra.targets import NodeGroupTarget, TargetsDocument, hold_parameter_name
from lab.lab import Lab, LabSettings, ServePod
from lab.node_groups import NODE_GROUP_LABEL, NodeGroupDelays, NodeGroups
from runbooks.ports.cluster import CORDON_MARK
from tests.infra.conftest import PROJECT_DIR, stack_values
from tests.runbooks.e2e.conftest import DELAYS, NAMESPACE, PEAKGUARD, _wait

NEW_RELEASE = "1.33.4-20251010"
REPLICAS = 4
GPUS_PER_NODE = 2
NODE_DELAYS = NodeGroupDelays(scaling=1.0, join=1.5, preflight=1.0, tick=0.2)
"""Seconds, not EKS's minutes: long enough that launching, joining and preflight are waited for."""
RUN_ARGS = ("--window", "1", "--to", NEW_RELEASE, "--drain-timeout", "25", "--node-timeout", "60",
            "--gate-timeout", "15", "--poll", "0.5")  # fmt: skip


@dataclass
class Traffic:
    """Every request the load generator sent through the local load balancer: (wall time, outcome)."""

    outcomes: list[tuple[float, str]] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)
    """(wall time, Ready model-service endpoints), sampled alongside."""
    holds: list[tuple[float, str | None]] = field(default_factory=list)
    """(wall time, the runbook holding `pulumi up` or None), sampled alongside."""

    def failures(self, since: float = 0.0) -> list[tuple[float, str]]:
        return [(at, outcome) for at, outcome in self.outcomes if at >= since and not outcome.startswith("2")]


@dataclass
class Upgrade:
    """The world of one test: the lab with EKS's node groups played, pods, traffic."""

    lab: Lab
    crash: dict[str, bool]
    journal_dir: Path
    traffic: Traffic

    @property
    def targets(self) -> TargetsDocument:
        return self.lab.targets

    @property
    def node_groups(self) -> NodeGroups:
        assert self.lab.node_groups is not None
        return self.lab.node_groups

    @property
    def store(self) -> Any:
        return self.lab.store

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.lab.aws_env, "PEAKGUARD_JOURNAL_DIR": str(self.journal_dir)}
        return subprocess.run(
            [*PEAKGUARD, "runbook", "run", "rolling-upgrade", "--env", "dev", "--kube-url", self.lab.kube_url,
             *RUN_ARGS, *args],
            cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def groups(self, generation: str) -> list[NodeGroupTarget]:
        return [g for g in self.targets.node_groups if g.generation == generation]

    def sizes(self, generation: str) -> dict[str, int]:
        eks = boto3.client("eks", **self.lab.client_args())
        return {
            group.name: eks.describe_nodegroup(clusterName=self.targets.cluster.name, nodegroupName=group.name)[
                "nodegroup"
            ]["scalingConfig"]["desiredSize"]
            for group in self.groups(generation)
        }

    def nodes(self, generation: str) -> list[dict[str, Any]]:
        return self.store.list("nodes", labels=f"peakguard.io/generation={generation}")

    def pod_generations(self) -> list[str]:
        """The generation of the node of each model-service pod that is not terminating."""
        found = []
        for pod in self.store.list("pods", NAMESPACE, labels="peakguard.io/variant=full"):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            found.append(_generation_of(self.store, pod["spec"].get("nodeName", "")) or "pending")
        return sorted(found)

    def records(self) -> list[dict[str, Any]]:
        (journal,) = self.journal_dir.glob("*.jsonl")
        return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


def _generation_of(store: Any, node: str) -> str:
    if not node:
        return ""
    with contextlib.suppress(Exception):
        return str(store.get("nodes", None, node)["metadata"]["labels"].get("peakguard.io/generation", ""))
    return ""


@pytest.fixture(scope="module")
def upgrade_program() -> OfflineRun:
    """The dev stack with a new AMI release declared for the full pool: empty green groups beside blue."""
    values = stack_values("dev")
    values["peakguard:gpuPools"]["full"]["next"] = {"releaseVersion": NEW_RELEASE}
    return run_offline("dev", project_dir=PROJECT_DIR, overrides=values)


@pytest.fixture
def upgrade(upgrade_program: OfflineRun, artifacts: Path, tmp_path: Path) -> Iterator[Upgrade]:
    """The lab as `pulumi up` left it: blue serving one node of two GPUs per AZ, green declared
    empty at the new release; four replicas Ready; traffic flowing."""
    settings = LabSettings(
        artifacts=artifacts, workdir=tmp_path, program=upgrade_program, delays=DELAYS, max_pods=2 * REPLICAS,
        replicas=REPLICAS, nodes="node-groups", node_group_delays=NODE_DELAYS, gpus_per_node=GPUS_PER_NODE,
        incoming_image={"releaseVersion": NEW_RELEASE},
    )  # fmt: skip
    crash = {"green": False}
    with Lab(settings) as lab:

        def crash_on_green(pod: ServePod) -> None:
            node = lab.store.get("pods", NAMESPACE, pod.pod)["spec"].get("nodeName", "")
            if crash["green"] and _generation_of(lab.store, node) == "green":
                # The new image really breaks the model service: its process dies before it is Ready.
                os.kill(pod.process.pid or 0, signal.SIGKILL)

        lab.on_pod_started.append(crash_on_green)
        traffic = Traffic()
        with _traffic(lab, traffic):
            yield Upgrade(lab, crash, tmp_path / "journal", traffic)


@contextlib.contextmanager
def _traffic(lab: Lab, traffic: Traffic) -> Iterator[None]:
    """About 40 requests a second through the lab's load balancer (enough for a gate's window to hold
    the 100 answers a p99 needs within a few seconds), each outcome recorded: the status code, or the
    exception for a request that got no answer (the proxy's own 502/503/504 included)."""
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=lab.proxy_url, timeout=5) as client:
            while not stop.is_set():
                try:
                    outcome = str(client.post("/v1/intent", json={"text": "I lost my card, block it"}).status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                traffic.outcomes.append((time.time(), outcome))
                stop.wait(0.02)

    def sample() -> None:
        ssm = boto3.client("ssm", **lab.client_args())
        while not stop.is_set():
            traffic.ready.append((time.time(), len(lab.ready_backends())))
            try:
                hold = json.loads(ssm.get_parameter(Name=hold_parameter_name("dev"))["Parameter"]["Value"])
                traffic.holds.append((time.time(), str(hold.get("runbook"))))
            except ssm.exceptions.ParameterNotFound:
                traffic.holds.append((time.time(), None))
            stop.wait(0.2)

    threads = [threading.Thread(target=send, daemon=True), threading.Thread(target=sample, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


def _at(record: Mapping[str, Any]) -> float:
    return datetime.datetime.fromisoformat(str(record["at"]).replace("Z", "+00:00")).timestamp()


# --- Cases ------------------------------------------------------------------------------------


def test_every_node_moves_to_the_new_generation_and_no_request_fails(upgrade: Upgrade) -> None:
    assert upgrade.pod_generations() == ["blue"] * REPLICAS
    started = time.time()

    done = upgrade.run()

    seconds = time.time() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert "batch 1: surge 1, then drain and remove ip-" in done.stdout, "the plan shows each group's batches"
    assert upgrade.node_groups.violations == []
    surges = [r["text"] for r in upgrade.records() if r["event"] == "step_note" and ": surge " in r["text"]]
    assert len(surges) == len(upgrade.groups("green")), f"one surge of one node per group: {surges}"
    assert upgrade.sizes("blue") == {g.name: 0 for g in upgrade.groups("blue")}
    assert upgrade.sizes("green") == {g.name: 1 for g in upgrade.groups("green")}
    _wait(lambda: upgrade.nodes("blue") == [], timeout=10)
    assert {n["metadata"]["labels"][NODE_GROUP_LABEL] for n in upgrade.nodes("green")} == {
        g.name for g in upgrade.groups("green")
    }
    _wait(lambda: upgrade.pod_generations() == ["green"] * REPLICAS, timeout=30)
    _wait(lambda: len(upgrade.lab.ready_backends()) == REPLICAS, timeout=60)
    sent = upgrade.traffic.outcomes
    failed = upgrade.traffic.failures()
    assert len(sent) > 5 * seconds, "the load generator kept sending throughout"
    assert failed == [], f"{len(failed)} of {len(sent)} requests failed: {failed[:10]}"
    assert f"releaseVersion: {NEW_RELEASE}" in done.stdout, "the stack-config change to commit is printed"
    # `pulumi up` was refused for as long as nodes moved, and free again after.
    notes = [r for r in upgrade.records() if r["event"] == "step_note"]
    set_at = _at(next(r for r in notes if r["text"].startswith("incident hold set")))
    lifted_at = _at(next(r for r in notes if r["text"] == "incident hold lifted"))
    first_surge = _at(next(r for r in notes if ": surge " in r["text"]))
    last_removal = _at([r for r in notes if r["text"].startswith("removed ")][-1])
    assert set_at <= first_surge and last_removal <= lifted_at
    during = [runbook for at, runbook in upgrade.traffic.holds if set_at + 0.5 < at < lifted_at - 0.5]
    assert during and set(during) == {"rolling-upgrade"}, "the hold stood throughout the move"
    _wait(lambda: upgrade.traffic.holds[-1][1] is None, timeout=5)
    print(f"\nrolling-upgrade: {len(sent)} requests, {len(failed)} failed, run took {seconds:.1f} s")


def test_a_batch_whose_new_replicas_crash_is_rolled_back_and_the_service_recovers_within_30_s(
    upgrade: Upgrade,
) -> None:
    upgrade.crash["green"] = True  # every model-service process started on a green node dies

    failed = upgrade.run()

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert upgrade.node_groups.violations == []
    records = upgrade.records()
    (finished,) = [r for r in records if r["event"] == "run_finished"]
    assert finished["status"] == "rolled-back", finished
    assert "PodDisruptionBudget model-service-full" in finished["reason"], "the crashing replicas held the drain"
    # The round in flight was undone by the group's own loop: our cordon lifted, the surged node removed.
    notes = [r for r in records if r["event"] == "step_note"]
    # The group's loop rolls its round back before it reports the stop (the step's own restore after
    # that only finds cordons on a node on its way out).
    stopped = next(i for i, r in enumerate(notes) if ": stopped: " in r["text"])
    undone = [r for r in notes[:stopped] if r["text"].startswith(("uncordoned", "removed"))]
    assert [r["text"].split()[0] for r in undone] == ["uncordoned", "removed"], [r["text"] for r in notes]
    failure_at = _at(undone[0])
    # The surged node may already hold pods evicted from the old one: drained, then removed.
    texts = [r["text"] for r in notes]
    removal = next(t for t in texts if t.startswith("removed "))
    surged = removal.split()[1]
    drained = next(i for i, t in enumerate(texts) if t.startswith(f"drained {surged} "))
    assert texts.index(f"cordoned {surged}") < drained < texts.index(removal), texts
    assert upgrade.traffic.holds[-1][1] is None, "the hold went with the rollback"
    _wait(lambda: upgrade.sizes("green") == {g.name: 0 for g in upgrade.groups("green")}, timeout=10)
    _wait(lambda: upgrade.nodes("green") == [], timeout=10)
    blue = upgrade.nodes("blue")
    assert len(blue) == len(upgrade.groups("blue"))
    assert all(not n["spec"].get("unschedulable") for n in blue), "our cordon was lifted"
    assert all(CORDON_MARK not in (n["metadata"].get("annotations") or {}) for n in blue)
    assert upgrade.sizes("blue") == {g.name: 1 for g in upgrade.groups("blue")}
    # Healthy again: the engine's gate after rollback, and from the client side every replica Ready
    # and every request answered 2xx; each measured from the moment the round's rollback began.
    (rolled_back,) = [r for r in records if r["event"] == "rollback_done"]
    gate_seconds = _at(rolled_back) - failure_at
    assert rolled_back["gate"]["verdict"] == "pass" and finished["rollback_seconds"] < 30
    samples = upgrade.traffic.ready
    _wait(lambda: samples[-1][1] == REPLICAS, timeout=30)
    assert min(ready for at, ready in samples if at < failure_at) < REPLICAS, "a replica was lost to the bad batch"
    short = [at for at, ready in samples if at >= failure_at and ready < REPLICAS]
    restored_at = next(at for at, ready in samples if at > max(short, default=failure_at) and ready == REPLICAS)
    capacity_seconds = max(0.0, restored_at - failure_at)
    failures = upgrade.traffic.failures(since=failure_at)
    traffic_seconds = max((at for at, _ in failures), default=failure_at) - failure_at
    assert gate_seconds < 30 and capacity_seconds < 30 and traffic_seconds < 30
    print(
        f"\nrolling-upgrade bad batch: engine rollback_seconds {finished['rollback_seconds']:.2f}; from the round's "
        f"rollback: gate passing {gate_seconds:.2f} s, {REPLICAS} Ready replicas {capacity_seconds:.2f} s, "
        f"all-2xx traffic {traffic_seconds:.2f} s; "
        f"{len(upgrade.traffic.failures())} of {len(upgrade.traffic.outcomes)} requests failed overall"
    )
