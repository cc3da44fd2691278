"""The one-third rule as a property: for any group of 1..60 nodes, any nodes already unavailable,
any interference by others and any failure point, the upgrade never takes a node down while
floor(N/3) or more are unavailable (groups under 3 only surge), and a stopped upgrade leaves
every node it cordoned schedulable and every operator's cordon in place.

The fleet here is in memory: the seam is the Fleet protocol, which the runbook's cluster and
cloud ports implement; the decisions under test are the real ones (node_batches, node_upgrade).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.facts import max_batch
from runbooks.errors import RunbookError
from runbooks.nodes.node_batches import Drain, GroupView, NodeView, Surge, Wait, next_step, planned_batches
from runbooks.nodes.node_upgrade import GroupUpgradeStoppedError, RoundLog, upgrade_group


@dataclass
class _Node:
    name: str
    generation: Literal["old", "new"]
    ready: bool = True
    cordoned_by: Literal["run", "operator"] | None = None
    preflighted: bool = True

    @property
    def serving(self) -> bool:
        return self.ready and self.cordoned_by is None and self.preflighted


class MemoryFleet:
    """A node group whose surprises hypothesis draws: outside cordons, nodes going NotReady,
    an operator lifting our cordon, nodes failing preflight, drains and gates failing."""

    def __init__(self, size: int, data: st.DataObject) -> None:
        self.size, self.data = size, data
        self.nodes = {f"old-{i}": _Node(f"old-{i}", "old") for i in range(size)}
        self.launched = 0
        self.pauses = 0
        self.deadline = data.draw(st.integers(1, 30), label="pauses before the deadline")
        for node in self.nodes.values():
            trouble = data.draw(st.sampled_from(["none"] * 6 + ["not-ready", "operator-cordon"]), label="initially")
            node.ready = trouble != "not-ready"
            node.cordoned_by = "operator" if trouble == "operator-cordon" else None
        self.checked_takedowns = 0
        self.drained: set[str] = set()

    def _interfere(self) -> None:
        event = self.data.draw(st.sampled_from(["none"] * 12 + ["cordon", "not-ready", "heal", "override"]))
        names = sorted(self.nodes)
        if event == "none" or not names:
            return
        node = self.nodes[self.data.draw(st.sampled_from(names), label=f"{event} on")]
        if event == "cordon" and node.cordoned_by is None:
            node.cordoned_by = "operator"
        elif event == "not-ready":
            node.ready = False
        elif event == "heal":
            node.ready = True
            if node.cordoned_by == "operator":
                node.cordoned_by = None
        elif event == "override" and node.cordoned_by == "run":
            node.cordoned_by = None  # an operator uncordoned a node of ours

    def view(self, group: str) -> GroupView:
        self._interfere()
        return GroupView(group, self.size, tuple(
            NodeView(n.name, n.generation, n.ready, n.cordoned_by is not None, n.preflighted)
            for n in sorted(self.nodes.values(), key=lambda n: n.name)
        ))  # fmt: skip

    def surge(self, group: str, count: int) -> list[str]:
        names = []
        for _ in range(count):
            name = f"new-{self.launched}"
            self.launched += 1
            passes = self.data.draw(st.sampled_from([True] * 8 + [False]), label=f"{name} passes preflight")
            self.nodes[name] = _Node(name, "new", preflighted=passes)
            names.append(name)
        return names

    def cordon(self, node: str) -> None:
        target = self.nodes[node]
        if target.generation == "new":
            # Only a rollback takes a surged node out again, to drain it before it goes.
            target.cordoned_by = "run"
            return
        assert target.generation == "old" and target.serving, f"{node} taken down while not serving"
        serving = sum(n.serving for n in self.nodes.values())
        # The rule: after this node goes, the serving nodes are still >= N - floor(N/3).
        assert serving - 1 >= self.size - max_batch(self.size), (
            f"took {node} down with {self.size - serving} of {self.size} unavailable"
        )
        target.cordoned_by = "run"
        self.checked_takedowns += 1

    def marked(self, node: str) -> bool:
        return node in self.nodes and self.nodes[node].cordoned_by == "run"

    def uncordon(self, node: str) -> None:
        assert self.nodes[node].cordoned_by == "run", f"lifted someone else's cordon on {node}"
        self.nodes[node].cordoned_by = None

    def drain(self, node: str) -> None:
        self._interfere()
        if self.data.draw(st.sampled_from([False] * 15 + [True]), label=f"drain of {node} fails"):
            raise RunbookError(f"eviction of a pod on {node} blocked by PodDisruptionBudget model-service-full")
        self.drained.add(node)

    def remove(self, node: str) -> None:
        # Pods leave a node through the Eviction API, never with its instance: only a surged node
        # that never passed preflight (tainted, so it ran nothing) may go undrained.
        target = self.nodes[node]
        assert node in self.drained or (target.generation == "new" and not target.preflighted), (
            f"{node} removed without a drain"
        )
        del self.nodes[node]

    def healthy(self) -> str | None:
        failing = self.data.draw(st.sampled_from([False] * 10 + [True]), label="gate fails")
        return "p99 1840 ms > 1000 ms" if failing else None

    def pause(self, reason: str) -> bool:
        self.pauses += 1
        return self.pauses <= self.deadline


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, 60), data=st.data())
def test_never_more_than_a_third_down_and_a_stop_leaves_our_nodes_schedulable(size: int, data: st.DataObject) -> None:
    fleet = MemoryFleet(size, data)
    log = RoundLog()
    try:
        upgrade_group("gpu-full-us-west-2a", fleet, log)
    except GroupUpgradeStoppedError:
        assert not [n.name for n in fleet.nodes.values() if n.cordoned_by == "run"], "a cordon of ours left behind"
        # A node that never passed preflight belongs to the round that stopped: rollback removed it.
        assert not [n.name for n in fleet.nodes.values() if not n.preflighted], "a failed surge node left behind"
        # ...and only that round's: every old node removed in a finished round keeps its replacement.
        assert sum(n.generation == "new" for n in fleet.nodes.values()) >= len(log.removed), "capacity lost"
        return
    assert all(n.generation == "new" for n in fleet.nodes.values()), "done with old nodes left"
    assert not [n.name for n in fleet.nodes.values() if n.cordoned_by == "run"]
    assert sorted(log.removed) == sorted(f"old-{i}" for i in range(size))


def test_a_group_under_three_nodes_only_surges() -> None:
    group = GroupView("g", 2, (NodeView("old-0", "old"), NodeView("old-1", "old")))
    assert next_step(group) == Surge(1)
    surged = GroupView("g", 2, (*group.nodes, NodeView("new-0", "new", preflighted=False)))
    assert isinstance(next_step(surged), Wait)
    serving = GroupView("g", 2, (*group.nodes, NodeView("new-0", "new")))
    assert next_step(serving) == Drain(("old-0",))


def test_an_operators_cordon_counts_as_unavailable() -> None:
    nodes = tuple(NodeView(f"old-{i}", "old", unschedulable=i < 3) for i in range(9))
    surged = (*nodes, NodeView("new-0", "new"), NodeView("new-1", "new"), NodeView("new-2", "new"))
    assert next_step(GroupView("g", 9, surged)) == Drain(("old-3", "old-4", "old-5"))
    four_cordoned = tuple(NodeView(f"old-{i}", "old", unschedulable=i < 4) for i in range(9))
    waiting = next_step(GroupView("g", 9, (*four_cordoned, *surged[9:])))
    assert waiting == Drain(("old-4", "old-5")), "one fewer: the fourth cordon ate into the batch"
    many = tuple(NodeView(f"old-{i}", "old", ready=i >= 6) for i in range(9))
    step = next_step(GroupView("g", 9, (*many, *surged[9:])))
    assert isinstance(step, Wait) and "6 nodes serving" in step.reason and "fewer than 6" in step.reason


def test_plan_shows_the_batches_before_anything_changes() -> None:
    assert planned_batches(7, [f"n{i}" for i in range(7)]) == [
        (2, ("n0", "n1")), (2, ("n2", "n3")), (2, ("n4", "n5")), (1, ("n6",))
    ]  # fmt: skip
    assert planned_batches(2, ["a", "b"]) == [(1, ("a",)), (1, ("b",))]


@pytest.mark.parametrize("size", [3, 10, 60])
def test_a_healthy_fleet_is_upgraded_in_batches_of_a_third(size: int) -> None:
    class Calm(MemoryFleet):
        def _interfere(self) -> None:
            pass

        def surge(self, group: str, count: int) -> list[str]:
            names = [f"new-{self.launched + i}" for i in range(count)]
            self.launched += count
            self.nodes.update({name: _Node(name, "new") for name in names})
            return names

        def drain(self, node: str) -> None:
            self.drained.add(node)

        def healthy(self) -> str | None:
            return None

    fleet = Calm.__new__(Calm)
    fleet.size, fleet.launched, fleet.pauses, fleet.deadline, fleet.checked_takedowns = size, 0, 0, 0, 0
    fleet.drained = set()
    fleet.nodes = {f"old-{i}": _Node(f"old-{i}", "old") for i in range(size)}
    log = upgrade_group("g", fleet)
    assert log.rounds == -(-size // max_batch(size))
    assert len(log.removed) == size and len(fleet.nodes) == size
