"""One GPU node group upgraded blue/green, batch by batch, with a gate after each batch.

The loop the `rolling-upgrade` runbook runs per group, over a `Fleet` (the cluster and cloud
ports in production, an in-memory fleet in the property test): re-read the group, ask
`node_batches.next_step` what may happen, do it, gate. A failed gate, a drain that cannot finish
or a node that never serves stops the group and rolls the round back: the round's old nodes are
uncordoned (they were not removed yet: removal waits for the gate) and its surged nodes drained
and removed.

Nodes are cordoned with a mark naming the run. Only marked nodes are ours: an operator's cordon is
never lifted, and a node an operator uncordoned mid-run is reported, left as they set it, and
stops the round (the decision is theirs now).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runbooks.errors import RunbookError
from runbooks.nodes.node_batches import Drain, GroupView, Surge, Wait, next_step

__all__ = ["Fleet", "GroupUpgradeStoppedError", "RoundLog", "SurgeIncompleteError", "take_out", "upgrade_group"]


class Fleet(Protocol):
    """What the upgrade reads and changes. Every method says what it observes or changes."""

    def view(self, group: str) -> GroupView:
        """The group's nodes as they are now (both generations)."""

    def surge(self, group: str, count: int) -> list[str]:
        """Launch `count` nodes of the new generation and wait until they joined; handles `remove`
        takes: the node name of each that joined (a rollback drains it by that name), the instance id
        of one that did not. Raises SurgeIncompleteError naming what did launch."""

    def cordon(self, node: str) -> None:
        """Mark the node unschedulable, with this run's mark."""

    def marked(self, node: str) -> bool:
        """Whether the node still carries this run's cordon (False once anyone uncordoned it)."""

    def uncordon(self, node: str) -> None:
        """Make a node this run cordoned schedulable again and drop the mark."""

    def drain(self, node: str) -> None:
        """Evict the node's pods through the Eviction API; raises RunbookError when it cannot."""

    def remove(self, node: str) -> None:
        """Terminate this node alone (the group's desired size goes down by one)."""

    def healthy(self) -> str | None:
        """The service gate: None if p99 and error rate are within bounds, else what is wrong."""

    def pause(self, reason: str) -> bool:
        """Wait one poll interval for `reason` to clear; False once the step's deadline passed."""


class GroupUpgradeStoppedError(RunbookError):
    """The group's upgrade stopped and its round was rolled back; the message says why and where."""

    def __init__(self, message: str, *, failed_at: float) -> None:
        super().__init__(message)
        self.failed_at = failed_at


class SurgeIncompleteError(RunbookError):
    """A surge that did not finish; `launched` are the handles of what it did start (to remove)."""

    def __init__(self, message: str, *, launched: list[str]) -> None:
        super().__init__(message)
        self.launched = launched


@dataclass
class RoundLog:
    """What one group's upgrade did, for the journal and the summary."""

    rounds: int = 0
    surged: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    """In place: nodes changed and serving again."""
    events: list[str] = field(default_factory=list)


class _Draining(Protocol):
    def cordon(self, node: str) -> None: ...
    def marked(self, node: str) -> bool: ...
    def drain(self, node: str) -> None: ...


def take_out(fleet: _Draining, nodes: Sequence[str], cordoned: list[str]) -> str | None:
    """Cordon `nodes` (each added to `cordoned` once it is), then drain them; what stopped it, or None."""
    for node in nodes:
        fleet.cordon(node)
        cordoned.append(node)
    for node in nodes:
        if not fleet.marked(node):
            return f"{node} was uncordoned by someone else mid-drain; not re-cordoning it"
        try:
            fleet.drain(node)
        except RunbookError as exc:
            return f"drain failed: {exc}"
    return None


def _roll_back(fleet: Fleet, group: str, cordoned: list[str], launched: list[str], log: RoundLog) -> None:
    """Undo the round in flight: our cordons lifted, its surged nodes drained and removed. Best
    effort on each node, so one failure does not leave the rest cordoned.

    A surged node that passed preflight may already run pods (those evicted from the round's old
    nodes land there): they leave through the Eviction API and their budgets, as from any node, not
    by the instance's termination. The old nodes are uncordoned first, so they have somewhere to go.
    A surged node whose drain fails is left serving and named: removing it would break a budget.
    A surge names the nodes that joined by node name (`Fleet.surge`), so they are found in the view."""
    problems = []
    for node in cordoned:
        if not fleet.marked(node):
            log.events.append(f"{node}: left as an operator set it (no longer carries this run's cordon)")
            continue
        try:
            fleet.uncordon(node)
        except RunbookError as exc:
            problems.append(f"uncordon {node}: {exc}")
    try:
        may_hold_pods = {node.name for node in fleet.view(group).new if node.preflighted} if launched else set()
    except RunbookError as exc:
        problems.append(f"cannot read {group} to drain its surged nodes ({exc}); left them: {', '.join(launched)}")
        launched = []
    for node in launched:
        try:
            if node in may_hold_pods:
                drained: list[str] = []
                problem = take_out(fleet, [node], drained)
                if problem is not None:
                    if drained and fleet.marked(node):
                        fleet.uncordon(node)
                    problems.append(f"surged {node} left serving: {problem}")
                    continue
            fleet.remove(node)
        except RunbookError as exc:
            problems.append(f"remove {node}: {exc}")
    if problems:
        raise RunbookError("rollback incomplete: " + "; ".join(problems))


def upgrade_group(
    group: str,
    fleet: Fleet,
    log: RoundLog | None = None,
    *,
    max_rounds: int = 1000,
    clock: Callable[[], float] = time.monotonic,
) -> RoundLog:
    """Replace every old node of `group`, a batch at a time; raises GroupUpgradeStoppedError after
    rolling back the round in flight, whatever failed (a drain, the gate, or the cloud or cluster
    refusing a surge, a cordon or a removal)."""
    log = log or RoundLog()
    cordoned: list[str] = []
    launched: list[str] = []

    def stop(reason: str) -> GroupUpgradeStoppedError:
        failed_at = clock()
        log.events.append(f"stopped: {reason}")
        try:
            _roll_back(fleet, group, cordoned, launched, log)
        except RunbookError as problem:
            return GroupUpgradeStoppedError(f"{group}: {reason}; then {problem}", failed_at=failed_at)
        return GroupUpgradeStoppedError(f"{group}: {reason}; the round in flight was rolled back", failed_at=failed_at)

    rounds = 0
    try:
        while True:
            step = next_step(fleet.view(group))
            if step is None:
                return log
            if isinstance(step, Wait):
                # Waits are bounded by the fleet's own deadline, not counted as rounds.
                if not fleet.pause(step.reason):
                    raise stop(f"gave up waiting: {step.reason}")
                continue
            rounds += 1
            if rounds > max_rounds:
                raise stop(f"no end after {max_rounds} surges and batches")
            if isinstance(step, Surge):
                try:
                    names = fleet.surge(group, step.count)
                except SurgeIncompleteError as exc:
                    launched += exc.launched
                    raise stop(str(exc)) from exc
                launched += names
                log.surged += names
                continue
            assert isinstance(step, Drain)
            log.rounds += 1
            problem = take_out(fleet, step.nodes, cordoned)
            if problem is not None:
                raise stop(problem)
            log.drained += step.nodes
            problem = fleet.healthy()
            if problem is not None:
                raise stop(f"health gate failed after draining {', '.join(step.nodes)}: {problem}")
            launched.clear()  # this round's new nodes passed the gate: they are the group now
            for node in step.nodes:
                fleet.remove(node)
                cordoned.remove(node)
                log.removed.append(node)
    except GroupUpgradeStoppedError:
        raise
    except RunbookError as exc:
        raise stop(str(exc)) from exc
