"""The in-place driver path over the real ports: nodes of an EKS node group played in moto
(`lab/node_groups.py`), the local Kubernetes API through the real client, and the
runbook's plan refusing what cannot be changed in place.

The seam faked here is the PlaybookRunner port: `PlayedDriverUpgrade` stands for what
gpu_driver_upgrade.yml does to a node as the cluster sees it (GPU feature discovery relabels the
node with the new driver after its reboot). The port itself runs the real playbook through
ansible-runner in tests/playbooks/test_node_work_port.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from infra.facts import DRIVER_DEPLOY_LABEL, DRIVER_VERSION_LABEL, PREFLIGHT_TAINT
from runbooks.engine.spec import Context
from runbooks.errors import RunbookError
from runbooks.library.rolling_upgrade import RUNBOOK
from runbooks.nodes.driver_fleet import DriverFleet
from runbooks.nodes.in_place_upgrade import upgrade_in_place
from runbooks.nodes.node_upgrade import GroupUpgradeStoppedError, RoundLog
from runbooks.ports import Ports
from runbooks.ports.cluster import CORDON_MARK
from runbooks.ports.node_work import PlaybookResult
from tests.lab.test_node_groups import REGION, Fleet, _wait, aws, fleet  # noqa: F401 (fixtures)
from tests.runbooks.test_fleet import _ports, _preflighted
from tests.runbooks.test_fleet import three_blue as three_blue  # the fixture

OLD, NEW = "550.144.03", "570.133.20"
_MERGE = "application/merge-patch+json"


def _host_drivers(world: Fleet, *, os_image: str = "Ubuntu 22.04.5 LTS", deploy: str = "pre-installed") -> None:
    """Make the played nodes what the in-place path is for: Ubuntu with the driver on the host."""
    for node in world.nodes(world.blue):
        world.kubernetes.store.patch("nodes", None, node.metadata.name, {
            "metadata": {"labels": {DRIVER_DEPLOY_LABEL: deploy, DRIVER_VERSION_LABEL: OLD}},
            "status": {"nodeInfo": {"osImage": os_image}},
        }, content_type=_MERGE)  # fmt: skip


@dataclass
class Seen:
    """A node as the playbook found it when its run began."""

    host: str
    node: str
    cordoned: bool
    tainted: bool


class PlayedDriverUpgrade:
    """gpu_driver_upgrade.yml as the cluster sees it: a host that passes runs the new driver
    after its reboot (GFD relabels its node); a host in `failing` fails its verification."""

    def __init__(self, world: Fleet, *, failing: Sequence[str] = ()) -> None:
        self.world = world
        self.failing = set(failing)
        self.runs: list[tuple[list[Seen], Mapping[str, Any]]] = []

    def node_of(self, host: str) -> Any:
        return next(n for n in self.world.nodes(self.world.blue) if n.spec.provider_id.endswith(f"/{host}"))

    def run(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any]) -> PlaybookResult:
        assert playbook == "gpu_driver_upgrade.yml"
        seen = []
        for host in hosts:
            node = self.node_of(host)
            taints = {t.key for t in node.spec.taints or []}
            seen.append(Seen(host, node.metadata.name, bool(node.spec.unschedulable), PREFLIGHT_TAINT.key in taints))
        self.runs.append((seen, dict(extravars)))
        failed = {}
        for entry in seen:
            if entry.node in self.failing:
                failed[entry.host] = (
                    "Pass the node only if it runs the new driver: after the upgrade: driver 550.144.03"
                )
                continue
            self.world.kubernetes.store.patch("nodes", None, entry.node, {
                "metadata": {"labels": {DRIVER_VERSION_LABEL: extravars["peakguard_driver_version"]}},
            }, content_type=_MERGE)  # fmt: skip
        passed = tuple(h for h in hosts if h not in failed)
        return PlaybookResult("failed" if failed else "successful", passed, failed)


def _fleet(world: Fleet, ports: Ports, playbooks: PlayedDriverUpgrade) -> tuple[DriverFleet, list[str]]:
    notes: list[str] = []
    fleet_ = DriverFleet(ports, [world.blue], version=NEW, playbooks=playbooks, run_id="run-1", gate=lambda: None,
                         drain_seconds=10, wait_seconds=20, poll_seconds=0.1, note=notes.append)  # fmt: skip
    return fleet_, notes


def test_a_group_of_three_is_changed_one_node_a_batch_each_held_out_until_preflight_passes_again(
    three_blue: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = three_blue
    _host_drivers(world)
    played = PlayedDriverUpgrade(world)
    fleet_, notes = _fleet(world, _ports(world, monkeypatch), played)

    log = upgrade_in_place(world.blue.name, fleet_, RoundLog())

    assert (log.rounds, len(log.changed)) == (3, 3)
    assert [len(seen) for seen, _ in played.runs] == [1, 1, 1], "floor(3/3) = 1 node a batch"
    assert [extravars["peakguard_upgrade_batch"] for _, extravars in played.runs] == [1, 1, 1]
    for seen, extravars in played.runs:
        assert extravars["peakguard_driver_version"] == NEW
        assert all(s.cordoned and s.tainted for s in seen), "changed only cordoned, with the startup taint back"
    nodes = world.nodes(world.blue)
    assert {n.metadata.labels[DRIVER_VERSION_LABEL] for n in nodes} == {NEW}
    assert all(_preflighted(n) and not n.spec.unschedulable for n in nodes), "every node serves again"
    assert not [n for n in nodes if CORDON_MARK in (n.metadata.annotations or {})]
    # Each batch went back only after its node passed preflight again (the player re-checks it).
    order = [note.split()[0] for note in notes if note.split()[0] in ("cordoned", "uncordoned")]
    assert order == ["cordoned", "uncordoned"] * 3


def test_a_node_whose_change_fails_is_held_out_and_named_and_no_rollback_lifts_it(
    three_blue: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = three_blue
    _host_drivers(world)
    first = sorted(n.metadata.name for n in world.nodes(world.blue))[0]
    played = PlayedDriverUpgrade(world, failing=[first])
    ports = _ports(world, monkeypatch)
    fleet_, _ = _fleet(world, ports, played)

    with pytest.raises(GroupUpgradeStoppedError, match=f"{first}: gpu_driver_upgrade.yml: .*driver 550.144.03"):
        upgrade_in_place(world.blue.name, fleet_, RoundLog())

    assert len(played.runs) == 1, "the run stopped at the failed batch"
    held = {n.metadata.name: n for n in world.nodes(world.blue)}
    mark = (held[first].metadata.annotations or {}).get(CORDON_MARK, "")
    assert held[first].spec.unschedulable and mark.startswith("run-1 held: gpu_driver_upgrade.yml")
    assert [n for name, n in held.items() if name != first and n.spec.unschedulable] == []
    # The engine's rollback lifts this run's own cordons only; a held node carries another mark.
    context = Context(env="dev", params=RUNBOOK.parse_params({"to": f"driver-{NEW}"}), ports=ports, run_id="run-1")
    RUNBOOK.steps[1].restore(context, {})  # type: ignore[misc]
    assert {n.metadata.name for n in world.nodes(world.blue) if n.spec.unschedulable} == {first}


def _plan(world: Fleet, monkeypatch: pytest.MonkeyPatch, **params: str) -> Any:
    ports = _ports(world, monkeypatch)
    ports.playbooks = PlayedDriverUpgrade(world)
    context = Context(env="dev", params=RUNBOOK.parse_params({"to": f"driver-{NEW}", **params}), ports=ports,
                      run_id="")  # fmt: skip
    step = RUNBOOK.steps[1]
    before = step.observe(context)
    return before, step.desired(context, before)


def test_plan_shows_in_place_batches_and_says_what_is_skipped(
    three_blue: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host_drivers(three_blue)
    names = sorted(n.metadata.name for n in three_blue.nodes(three_blue.blue))
    before, after = _plan(three_blue, monkeypatch)
    assert before == {"groups": [{"group": three_blue.blue.name, "drivers": dict.fromkeys(names, OLD)}]}
    assert after["groups"] == [{"group": three_blue.blue.name, "nodes": 3, "from": [OLD],
                                "batches": [[name] for name in names]}]  # fmt: skip
    lines = RUNBOOK.explain("upgrade-drivers", after)  # type: ignore[misc]
    assert lines[0] == f"{three_blue.blue.name}: 3 node(s), driver {OLD} -> {NEW}, in place"
    # An AMI --to leaves this step nothing to do, and a driver --to leaves move-nodes nothing.
    ports = _ports(three_blue, monkeypatch)
    ami = Context(env="dev", params=RUNBOOK.parse_params({"to": "1.33.4-20251010"}), ports=ports, run_id="")
    assert RUNBOOK.steps[1].observe(ami) == {"groups": []}
    driver = Context(env="dev", params=RUNBOOK.parse_params({"to": f"driver-{NEW}"}), ports=ports, run_id="")
    assert RUNBOOK.steps[0].desired(driver, RUNBOOK.steps[0].observe(driver)) == {"groups": []}


@pytest.mark.parametrize(
    ("setup", "refusal"),
    [
        ({"os_image": "Amazon Linux 2023.7.20250512"}, "ships its driver baked in; move the group to a newer AMI"),
        ({"deploy": "true"}, "driver comes from the GPU operator's driver container"),
    ],
)
def test_plan_refuses_nodes_whose_driver_is_not_the_hosts(
    three_blue: Fleet, monkeypatch: pytest.MonkeyPatch, setup: dict[str, str], refusal: str
) -> None:
    _host_drivers(three_blue, **setup)
    with pytest.raises(RunbookError, match=refusal):
        _plan(three_blue, monkeypatch)
    with pytest.raises(RunbookError, match=f"{three_blue.blue.name} cannot be changed in place"):
        _plan(three_blue, monkeypatch, nodegroup="full")


def test_plan_refuses_a_group_under_three_nodes(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    fleet.resize(fleet.blue, 0, 2)
    _wait(lambda: len(fleet.nodes(fleet.blue)) == 2 and all(_preflighted(n) for n in fleet.nodes(fleet.blue)))
    _host_drivers(fleet)
    with pytest.raises(RunbookError, match=r"has 2 node.*changes only by surging.*--to ami-"):
        _plan(fleet, monkeypatch)
    latest = Context(env="dev", params=RUNBOOK.parse_params({"to": "driver-latest"}), ports=_ports(fleet, monkeypatch),
                     run_id="")  # fmt: skip
    with pytest.raises(RunbookError, match=r"write a driver as driver-<major\.minor\.patch>"):
        RUNBOOK.steps[1].observe(latest)


def test_the_step_changes_every_planned_node_and_holds_pulumi_only_while_nodes_change(
    three_blue: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole upgrade-drivers step as the engine runs it (observe, desired, apply), over the real
    # ports; the batch gate's service verdict is the seam (the e2e tests judge a live service).
    from runbooks.library import rolling_upgrade

    world = three_blue
    _host_drivers(world)
    ports = _ports(world, monkeypatch)
    ports.playbooks = played = PlayedDriverUpgrade(world)
    holds_at_gates: list[Any] = []

    def gate(context: Context, pools: set[str]) -> Any:
        return lambda: holds_at_gates.append(ports.cloud.switches.hold())

    monkeypatch.setattr(rolling_upgrade, "_gate", gate)
    notes: list[str] = []
    # Generous timeouts: this test is about what the step changes, not how fast, and CI runs it beside the lab.
    params = {"to": f"driver-{NEW}", "poll": "0.1", "drain-timeout": "60", "node-timeout": "120"}
    context = Context(env="dev", params=RUNBOOK.parse_params(params), ports=ports, run_id="run-1", note=notes.append)
    step = RUNBOOK.steps[1]
    before = step.observe(context)
    target = step.desired(context, before)

    step.apply(context, target)

    assert len(played.runs) == 3 and len(holds_at_gates) == 3, "one batch a node, each gated"
    assert all(hold is not None and hold["runId"] == "run-1" for hold in holds_at_gates), holds_at_gates
    assert ports.cloud.switches.hold() is None, "the hold is lifted once the nodes are done"
    after = step.observe(context)
    assert after == {"groups": [{"group": world.blue.name, "drivers": dict.fromkeys(before["groups"][0]["drivers"],
                                                                                      NEW)}]}  # fmt: skip
    assert step.desired(context, after) == after, "a second run has nothing left to do"
    assert f"{world.blue.name}: done in 3 batch(es): 3 node(s) at driver {NEW}" in notes
