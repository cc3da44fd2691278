"""The one-third rule for in-place changes, as a property: for any group of 1..60 nodes, any nodes
already unavailable, any interference by others and any failure point (a drain, a node's change,
its preflight afterwards, the gate), the upgrade never takes a node down while floor(N/3) or more
are unavailable (a group under 3 never loses one), a stop leaves no plain cordon of ours, and a
node is held out of service exactly when its change failed or was never confirmed.

The fleet is in memory: the seam is the InPlaceFleet protocol, which `runbooks/nodes/driver_fleet.py`
implements over the cluster port and the playbooks (tests/runbooks/test_driver_fleet.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.facts import max_batch
from runbooks.errors import RunbookError
from runbooks.nodes.in_place_upgrade import upgrade_in_place
from runbooks.nodes.node_batches import Drain, GroupView, NodeView, Wait, next_in_place
from runbooks.nodes.node_upgrade import GroupUpgradeStoppedError, RoundLog


@dataclass
class _Node:
    name: str
    changed: bool = False
    ready: bool = True
    cordoned_by: Literal["run", "operator", "held"] | None = None
    preflighted: bool = True

    @property
    def serving(self) -> bool:
        return self.ready and self.cordoned_by is None and self.preflighted


class MemoryFleet:
    """A node group whose surprises hypothesis draws."""

    def __init__(self, size: int, data: st.DataObject) -> None:
        self.size, self.data = size, data
        self.nodes = {f"n-{i:02d}": _Node(f"n-{i:02d}") for i in range(size)}
        self.pauses = 0
        self.deadline = data.draw(st.integers(1, 30), label="pauses before the deadline")
        self.failed_changes: set[str] = set()
        for node in self.nodes.values():
            trouble = data.draw(st.sampled_from(["none"] * 6 + ["not-ready", "operator-cordon"]), label="initially")
            node.ready = trouble != "not-ready"
            node.cordoned_by = "operator" if trouble == "operator-cordon" else None

    def _interfere(self) -> None:
        event = self.data.draw(st.sampled_from(["none"] * 12 + ["cordon", "not-ready", "heal", "override"]))
        node = self.nodes[self.data.draw(st.sampled_from(sorted(self.nodes)), label=f"{event} on")]
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
            NodeView(n.name, "new" if n.changed else "old", n.ready, n.cordoned_by is not None, n.preflighted)
            for n in self.nodes.values()
        ))  # fmt: skip

    def cordon(self, node: str) -> None:
        target = self.nodes[node]
        assert not target.changed and target.serving, f"{node} taken down while not serving"
        serving = sum(n.serving for n in self.nodes.values())
        assert serving - 1 >= self.size - max_batch(self.size), (
            f"took {node} down with {self.size - serving} of {self.size} unavailable"
        )
        target.cordoned_by = "run"

    def marked(self, node: str) -> bool:
        return self.nodes[node].cordoned_by == "run"

    def uncordon(self, node: str) -> None:
        assert self.nodes[node].cordoned_by == "run", f"lifted someone else's cordon on {node}"
        self.nodes[node].cordoned_by = None

    def hold(self, node: str, reason: str) -> None:
        assert node in self.failed_changes, f"held {node}, whose change did not fail: {reason}"
        self.nodes[node].cordoned_by = "held"

    def drain(self, node: str) -> None:
        self._interfere()
        if self.data.draw(st.sampled_from([False] * 15 + [True]), label=f"drain of {node} fails"):
            raise RunbookError(f"eviction of a pod on {node} blocked by PodDisruptionBudget model-service-full")

    def upgrade(self, nodes: Sequence[str]) -> dict[str, str]:
        if self.data.draw(st.sampled_from([False] * 20 + [True]), label="the playbook run breaks"):
            self.failed_changes |= set(nodes)
            raise RunbookError("ansible-runner: timeout")
        failed = {}
        for node in nodes:
            self.nodes[node].preflighted = False  # the startup taint is back
            if self.data.draw(st.sampled_from([False] * 8 + [True]), label=f"change of {node} fails"):
                failed[node] = "driver 550.144.03 after the upgrade"
                self.failed_changes.add(node)
            else:
                self.nodes[node].changed = True
        return failed

    def until_serving(self, nodes: Sequence[str]) -> dict[str, str]:
        lacking = {}
        for node in nodes:
            if self.data.draw(st.sampled_from([True] * 10 + [False]), label=f"{node} passes preflight again"):
                self.nodes[node].preflighted = True
            else:
                lacking[node] = "still tainted peakguard.io/preflight"
                self.failed_changes.add(node)
        return lacking

    def healthy(self) -> str | None:
        failing = self.data.draw(st.sampled_from([False] * 10 + [True]), label="gate fails")
        return "p99 1840 ms > 1000 ms" if failing else None

    def pause(self, reason: str) -> bool:
        self.pauses += 1
        return self.pauses <= self.deadline


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, 60), data=st.data())
def test_never_more_than_a_third_down_and_only_failed_changes_are_held(size: int, data: st.DataObject) -> None:
    fleet = MemoryFleet(size, data)
    log = RoundLog()
    try:
        upgrade_in_place("gpu-full-us-west-2a-blue", fleet, log)
    except GroupUpgradeStoppedError:
        assert not [n.name for n in fleet.nodes.values() if n.cordoned_by == "run"], "a cordon of ours left behind"
    else:
        assert all(n.changed for n in fleet.nodes.values()), "done with old nodes left"
    held = {n.name for n in fleet.nodes.values() if n.cordoned_by == "held"}
    assert held == fleet.failed_changes, "held exactly the nodes whose change failed or was not confirmed"
    assert all(fleet.nodes[n].changed and fleet.nodes[n].preflighted for n in log.changed)
    if size < 3:
        assert log.rounds == 0, "a group under 3 nodes is never changed in place"


def test_a_batch_is_a_third_of_the_group_counted_from_what_serves() -> None:
    nodes = tuple(NodeView(f"n{i}", "old") for i in range(9))
    assert next_in_place(GroupView("g", 9, nodes)) == Drain(("n0", "n1", "n2"))
    one_cordoned = (NodeView("n0", "old", unschedulable=True), *nodes[1:])
    assert next_in_place(GroupView("g", 9, one_cordoned)) == Drain(("n1", "n2"))
    changed = tuple(NodeView(f"n{i}", "new") for i in range(3)) + nodes[3:]
    assert next_in_place(GroupView("g", 9, changed)) == Drain(("n3", "n4", "n5"))
    assert next_in_place(GroupView("g", 9, tuple(NodeView(f"n{i}", "new") for i in range(9)))) is None
    two = GroupView("g", 2, (NodeView("a", "old"), NodeView("b", "old")))
    step = next_in_place(two)
    assert isinstance(step, Wait) and "under 3 nodes" in step.reason


class _Interrupted(MemoryFleet):
    """Three calm nodes; Ctrl-C (or the engine's SIGTERM) arrives during `when`."""

    def __init__(self, when: Literal["drain", "upgrade"]) -> None:
        self.size, self.when, self.pauses, self.deadline = 6, when, 0, 0
        self.nodes = {f"n-{i:02d}": _Node(f"n-{i:02d}") for i in range(6)}
        self.failed_changes = set()

    def _interfere(self) -> None:
        pass

    def drain(self, node: str) -> None:
        if self.when == "drain":
            raise KeyboardInterrupt

    def upgrade(self, nodes: Sequence[str]) -> dict[str, str]:
        self.failed_changes |= set(nodes)  # what an interrupt leaves unknown
        raise KeyboardInterrupt


@pytest.mark.parametrize("when", ["drain", "upgrade"])
def test_an_interrupt_puts_back_what_was_not_changed_and_holds_what_was_being_changed(
    when: Literal["drain", "upgrade"],
) -> None:
    fleet = _Interrupted(when)
    with pytest.raises(KeyboardInterrupt):
        upgrade_in_place("g", fleet)
    states = {n.name: n.cordoned_by for n in fleet.nodes.values()}
    if when == "drain":
        assert set(states.values()) == {None}, "a batch interrupted in its drain is put back"
    else:
        assert states == {"n-00": "held", "n-01": "held", "n-02": None, "n-03": None, "n-04": None, "n-05": None}
