"""Choosing node batches under the one-third rule: what the rolling upgrade may take down next.

The rule ("Shared numbers" in DESIGN.md): of a group of N nodes at most floor(N/3) may be
unavailable at once, counting every node that is not Ready, cordoned by anyone, or new and not yet
preflighted; a group of fewer than 3 nodes changes only by surging (a new node Ready and
preflighted before an old one leaves). Here that is one inequality over what is really there:

    the nodes serving after the batch  >=  N - floor(N/3)

where "serving" is Ready, schedulable and preflighted, old or new generation alike. A surged node
raises the left side; an operator's cordon lowers it. The view is re-read before every batch.

Each round of an upgrade surges up to `batch_size(N)` new nodes, waits for them to serve, then
cordons and drains at most that many old ones, never more than the inequality allows. Groups are
upgraded one at a time, so two groups' batches are never in flight together and an AZ (one GPU
node group per pool and AZ) loses at most one batch. An in-place round (a driver upgraded where
the node stands, `next_in_place`) surges nothing: it takes at most floor(N/3) old nodes out and
puts them back changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from infra.facts import max_batch

__all__ = [
    "Drain",
    "GroupView",
    "NodeView",
    "Surge",
    "Wait",
    "batch_size",
    "next_in_place",
    "next_step",
    "planned_batches",
]


@dataclass(frozen=True)
class NodeView:
    """One node as the runbook reads it before each batch."""

    name: str
    generation: Literal["old", "new"]
    """old: still on the version being replaced; new: launched from the target version."""
    ready: bool = True
    unschedulable: bool = False
    """Cordoned, by anyone."""
    preflighted: bool = True
    """The startup taint is gone: GPUs, EFA devices and the NVMe array passed the node checks."""

    @property
    def serving(self) -> bool:
        return self.ready and not self.unschedulable and self.preflighted


@dataclass(frozen=True)
class GroupView:
    name: str
    size: int
    """N: the group's node count when the upgrade began (the capacity the rule protects)."""
    nodes: tuple[NodeView, ...] = field(default_factory=tuple)

    @property
    def serving(self) -> int:
        return sum(node.serving for node in self.nodes)

    @property
    def unavailable(self) -> int:
        """How far below N the serving nodes are (negative while surged nodes add to it)."""
        return self.size - self.serving

    @property
    def old(self) -> list[NodeView]:
        return [node for node in self.nodes if node.generation == "old"]

    @property
    def new(self) -> list[NodeView]:
        return [node for node in self.nodes if node.generation == "new"]


@dataclass(frozen=True)
class Surge:
    """Add `count` nodes of the new generation and wait until they serve."""

    count: int


@dataclass(frozen=True)
class Drain:
    """Cordon and drain these old nodes, then remove them one by one."""

    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    """Take nothing down now: `reason` says what must change first (it is printed and journaled)."""

    reason: str


Step = Surge | Drain | Wait | None
"""None: no old node is left; the group is done."""


def batch_size(size: int) -> int:
    """Nodes one round replaces: floor(N/3), and 1 for groups under 3 (which only surge)."""
    return max(1, max_batch(size))


def _may_take_down(group: GroupView) -> int:
    """Old nodes that may leave now without the serving nodes falling below N - floor(N/3)."""
    return max(0, group.serving - (group.size - max_batch(group.size)))


def next_step(group: GroupView) -> Step:
    """What the upgrade does next in `group`, from what is really there now."""
    old_serving = [node for node in group.old if node.serving]
    if not group.old:
        return None
    batch = batch_size(group.size)
    allowed = min(_may_take_down(group), batch, len(old_serving))
    surged_waiting = [node for node in group.new if not node.serving]
    if surged_waiting:
        names = ", ".join(node.name for node in surged_waiting)
        return Wait(f"new nodes not serving yet (Ready, schedulable, preflighted): {names}")
    # New nodes beyond the ones that already replaced removed old nodes.
    spare = len(group.new) - (group.size - len(group.old))
    if spare < min(batch, len(group.old)):
        return Surge(min(batch, len(group.old)) - spare)
    if allowed == 0:
        return _no_room(group, old_serving)
    return Drain(tuple(node.name for node in old_serving[:allowed]))


def next_in_place(group: GroupView) -> Step:
    """What an in-place upgrade (a driver changed where the node stands) does next in `group`.

    Nothing is surged: a batch is old nodes taken out, changed and put back, so the same
    inequality allows floor(N/3) of them at most, counted from what is really there. A group
    under 3 nodes is never changed in place (floor(N/3) is 0): it waits, and `plan` refuses it."""
    if not group.old:
        return None
    old_serving = [node for node in group.old if node.serving]
    allowed = min(_may_take_down(group), batch_size(group.size), len(old_serving))
    if allowed == 0:
        return _no_room(group, old_serving)
    return Drain(tuple(node.name for node in old_serving[:allowed]))


def _no_room(group: GroupView, old_serving: Sequence[NodeView]) -> Wait:
    if not old_serving:
        # Every old node left is cordoned or down: someone else's doing (ours are removed or put
        # back after their batch). Taking them would take nothing down, but it is not ours to do.
        names = ", ".join(node.name for node in group.old)
        return Wait(f"the old nodes left are not serving and not ours to drain: {names}")
    need = group.size - max_batch(group.size)
    return Wait(
        f"{group.serving} nodes serving (Ready, schedulable, preflighted; surged ones included) for a group "
        f"of {group.size}: taking one more down would leave fewer than {need}"
        + (" (a group under 3 nodes changes only by surging)" if group.size < 3 else "")
    )


def planned_batches(size: int, old_nodes: Sequence[str]) -> list[tuple[int, tuple[str, ...]]]:
    """The rounds `plan` shows before anything changes: (nodes surged, old nodes drained) per round,
    assuming every node stays healthy. The run re-decides each round from what is really there."""
    rounds = []
    remaining = list(old_nodes)
    batch = batch_size(size)
    while remaining:
        taken, remaining = tuple(remaining[:batch]), remaining[batch:]
        rounds.append((len(taken), taken))
    return rounds
