"""The rolling upgrade's fleet over the real ports, one pool in one AZ: AWS in moto with EKS's node
groups played (`lab/node_groups.py`), the local Kubernetes API through the real client.

What the property test's in-memory fleet cannot show: removed nodes linger as Node objects, EKS
applies scaling updates asynchronously, a serving group has a minimum, and a run that stopped is
run again."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest

from lab.aws import CREDENTIALS
from runbooks.engine.spec import Context
from runbooks.errors import RunbookError
from runbooks.library.rolling_upgrade import RUNBOOK
from runbooks.nodes.fleet import SCALE_DOWN_DISABLED, PortsFleet, generation_pairs
from runbooks.nodes.node_upgrade import GroupUpgradeStoppedError, RoundLog, upgrade_group
from runbooks.ports import Ports
from runbooks.ports.cloud import AwsCloud
from runbooks.ports.cluster import KubernetesCluster
from runbooks.ports.service import ModelServiceClient
from tests.lab.test_node_groups import REGION, Fleet, _wait, aws, fleet  # noqa: F401 (fixtures)

GROUP = "full/us-west-2a"


def _ports(world: Fleet, monkeypatch: pytest.MonkeyPatch) -> Ports:
    monkeypatch.setenv("AWS_ENDPOINT_URL", world.aws["endpoint_url"])
    # An env of its own: moto keeps one account per process, so a hold or freeze another test left
    # for "dev" in this worker would stop this test's runbook.
    cloud = AwsCloud(boto3.Session(region_name=REGION, **CREDENTIALS), env=f"t{uuid.uuid4().hex[:8]}")
    return Ports(world.targets, KubernetesCluster.from_url(world.kubernetes.url), cloud, ModelServiceClient(token=""))


def _fleet(world: Fleet, ports: Ports, *, run_id: str, gate: Any = lambda: None) -> tuple[PortsFleet, list[str]]:
    """The fleet, and the notes it journals."""
    notes: list[str] = []
    fleet_ = PortsFleet(ports, generation_pairs(world.targets), run_id=run_id, gate=gate, drain_seconds=10,
                        wait_seconds=20, poll_seconds=0.1, note=notes.append)  # fmt: skip
    return fleet_, notes


@pytest.fixture
def three_blue(fleet: Fleet) -> Fleet:  # noqa: F811 (the fixture above)
    """Three serving nodes, a minimum of one as prod has, GPUs registered; a removed node's Node
    lingers for a while, as it does while EKS drains and shuts the instance down."""
    fleet.player.delays = dataclasses.replace(fleet.player.delays, shutdown=3.0)
    fleet.resize(fleet.blue, 1, 3)
    _wait(lambda: len(fleet.nodes(fleet.blue)) == 3 and all(_preflighted(n) for n in fleet.nodes(fleet.blue)))
    return fleet


def _preflighted(node: Any) -> bool:
    return all(t.key != "peakguard.io/preflight" for t in node.spec.taints or [])


def test_a_group_of_three_moves_one_node_a_round_each_new_node_surged_first(
    three_blue: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = three_blue
    fleet_, notes = _fleet(world, _ports(world, monkeypatch), run_id="run-1")

    fleet_.begin(GROUP)
    log = upgrade_group(GROUP, fleet_, RoundLog())

    # Each round surges before it drains: a removed node that still lingers as a Node object is
    # not counted as old capacity again.
    actions = [note.split()[0] if " surge " not in note else "surge" for note in notes]
    assert [a for a in actions if a in ("surge", "cordoned", "removed")] == ["surge", "cordoned", "removed"] * 3
    assert (log.rounds, len(log.surged), len(log.removed)) == (3, 3, 3)
    assert world.size(world.blue)["minSize"] == 0, "the serving group's minimum was lowered before any removal"
    _wait(lambda: world.nodes(world.blue) == [] and len(world.nodes(world.green)) == 3)
    assert world.player.violations == [], "nothing real Auto Scaling or EKS would refuse"
    protected = [n for n in world.nodes(world.green) if (n.metadata.annotations or {}).get(SCALE_DOWN_DISABLED)]
    assert len(protected) == 3, "the autoscaler may not take back a new node before its batch moved onto it"


def test_a_run_again_after_a_stop_keeps_the_groups_size(three_blue: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    world = three_blue
    ports = _ports(world, monkeypatch)
    gates = iter([None, "p99 3.2 s > 1 s"])
    first, _ = _fleet(world, ports, run_id="run-1", gate=lambda: next(gates))
    first.begin(GROUP)

    with pytest.raises(GroupUpgradeStoppedError, match="health gate failed"):
        upgrade_group(GROUP, first, RoundLog())
    # The first round kept its new node; the second round's surged node went with the rollback.
    _wait(lambda: len(world.nodes(world.green)) == 1 and len(world.nodes(world.blue)) == 2)
    assert all(not n.spec.unschedulable for n in world.nodes(world.blue))

    again, _ = _fleet(world, ports, run_id="run-2")
    again.begin(GROUP)
    upgrade_group(GROUP, again, RoundLog())

    _wait(lambda: world.nodes(world.blue) == [] and len(world.nodes(world.green)) == 3)
    assert world.player.violations == []


def test_a_surge_beyond_the_incoming_groups_maximum_is_refused_naming_the_key(
    three_blue: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = three_blue
    fleet_, _ = _fleet(world, _ports(world, monkeypatch), run_id="run-1")

    with pytest.raises(RunbookError, match=r"above its maxSize 4; raise peakguard:gpuPools.full.scalingPerAz.maxSize"):
        fleet_.surge(GROUP, 5)


def _context(world: Fleet, ports: Ports) -> Context:
    params = RUNBOOK.parse_params({"to": "1.33.4-20251010"})
    return Context(env="dev", params=params, ports=ports, run_id="run-1")


def test_the_stack_config_change_is_printed_only_once_no_old_node_is_left(
    three_blue: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = three_blue
    context = _context(world, _ports(world, monkeypatch))
    pending = RUNBOOK.epilogue(context) if RUNBOOK.epilogue else ""

    # Committing now would have `pulumi up` delete the blue group with its three nodes.
    assert "Pool full is not done: old nodes remain in gpu-full-us-west-2a-blue" in pending
    assert "generation: green" not in pending

    world.resize(world.green, 0, 3)
    world.resize(world.blue, 0, 0)
    _wait(lambda: world.nodes(world.blue) == [] and len(world.nodes(world.green)) == 3)
    done = RUNBOOK.epilogue(context) if RUNBOOK.epilogue else ""

    assert (
        "    full:\n      generation: green\n      releaseVersion: 1.33.4-20251010\n      # and remove `next`" in done
    )
