"""One GPU node group changed in place (its NVIDIA driver), batch by batch, with a gate after each.

The in-place twin of `node_upgrade.upgrade_group`, for a change that needs no new node: re-read
the group, ask `node_batches.next_in_place` which old nodes the one-third rule lets go, then per
batch:

1. cordon them (with this run's mark) and drain them through the Eviction API;
2. change them (`InPlaceFleet.upgrade`: the startup taint back on, the playbook, its reboot);
3. wait until each serves again (Ready, preflighted, GPUs allocatable, at the target), uncordon;
4. the service gate.

What a stop leaves differs from blue/green, because a changed node cannot be changed back in
seconds: a drain that fails puts the batch back as it was (nothing was changed yet). A node whose
change failed, or that never passed its checks again, is held out of service: its cordon is
re-marked `<run> held: why`, which no rollback lifts, and the stop names it. A gate that fails
after a batch was put back stops the run with the batch serving; going back is a run to the
previous version (`--to driver-<previous>`), which treats exactly those nodes as the old ones.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from runbooks.errors import RunbookError
from runbooks.nodes.node_batches import Drain, GroupView, Wait, next_in_place
from runbooks.nodes.node_upgrade import GroupUpgradeStoppedError, RoundLog, take_out

__all__ = ["InPlaceFleet", "upgrade_in_place"]


class InPlaceFleet(Protocol):
    """What the in-place upgrade reads and changes. Every method says what it observes or changes."""

    def view(self, group: str) -> GroupView:
        """The group's nodes as they are now; `old`: not at the target yet, `new`: at it."""

    def cordon(self, node: str) -> None:
        """Mark the node unschedulable, with this run's mark."""

    def marked(self, node: str) -> bool:
        """Whether the node still carries this run's cordon (False once anyone uncordoned it)."""

    def uncordon(self, node: str) -> None:
        """Make a node this run cordoned schedulable again and drop the mark."""

    def hold(self, node: str, reason: str) -> None:
        """Keep the node cordoned past this run: its mark becomes `<run> held: reason`."""

    def drain(self, node: str) -> None:
        """Evict the node's pods through the Eviction API; raises RunbookError when it cannot."""

    def upgrade(self, nodes: Sequence[str]) -> dict[str, str]:
        """Change these drained nodes; what failed, by node (empty: every one was changed)."""

    def until_serving(self, nodes: Sequence[str]) -> dict[str, str]:
        """Wait until each node serves again at the target but for our cordon; those that did
        not within the deadline, with what they lack."""

    def healthy(self) -> str | None:
        """The service gate: None if p99 and error rate are within bounds, else what is wrong."""

    def pause(self, reason: str) -> bool:
        """Wait one poll interval for `reason` to clear; False once the step's deadline passed."""


def upgrade_in_place(
    group: str,
    fleet: InPlaceFleet,
    log: RoundLog | None = None,
    *,
    max_rounds: int = 1000,
    clock: Callable[[], float] = time.monotonic,
) -> RoundLog:
    """Change every old node of `group`, a batch at a time; raises GroupUpgradeStoppedError when a
    batch fails, after putting back what was not changed and holding what failed."""
    log = log or RoundLog()
    cordoned: list[str] = []

    def stop(reason: str, *, failed_at: float | None = None) -> GroupUpgradeStoppedError:
        failed_at = clock() if failed_at is None else failed_at
        log.events.append(f"stopped: {reason}")
        problems = []
        for node in cordoned:
            if not fleet.marked(node):
                log.events.append(f"{node}: left as an operator set it (no longer carries this run's cordon)")
                continue
            try:
                fleet.uncordon(node)
            except RunbookError as exc:
                problems.append(f"uncordon {node}: {exc}")
        cordoned.clear()
        then = f"then rollback incomplete: {'; '.join(problems)}" if problems else "the batch's other nodes serve again"
        return GroupUpgradeStoppedError(f"{group}: {reason}; {then}", failed_at=failed_at)

    def held(failed: Mapping[str, str]) -> str:
        # Out of `cordoned` first: whatever happens to a hold, no stop may put these nodes back.
        for node in failed:
            if node in cordoned:
                cordoned.remove(node)
        problems = []
        for node, why in failed.items():
            try:
                fleet.hold(node, why)
                log.events.append(f"{node}: held out of service: {why}")
            except RunbookError as exc:
                problems.append(f"{node}: could not hold it ({exc})")
                log.events.append(f"{node}: could not hold it out of service ({exc}); it still carries the cordon")
        return "; ".join([f"{node}: {why}" for node, why in failed.items()] + problems)

    rounds = 0
    try:
        while True:
            step = next_in_place(fleet.view(group))
            if step is None:
                return log
            if isinstance(step, Wait):
                if not fleet.pause(step.reason):
                    raise stop(f"gave up waiting: {step.reason}")
                continue
            assert isinstance(step, Drain)
            rounds += 1
            if rounds > max_rounds:
                raise stop(f"no end after {max_rounds} batches")
            log.rounds += 1
            taken_out = take_out(fleet, step.nodes, cordoned)
            if taken_out is not None:
                raise stop(taken_out)
            log.drained += step.nodes
            # From here a node may be half-changed: whatever cannot be confirmed is held, not put back,
            # an interrupt (Ctrl-C, SIGTERM) included.
            try:
                failed = fleet.upgrade(step.nodes)
            except RunbookError as exc:
                failed = dict.fromkeys(step.nodes, f"the change did not report: {exc}")
            except BaseException:
                held(dict.fromkeys(step.nodes, "interrupted during its change; its state is unknown"))
                raise
            failed_at = clock() if failed else None
            changed = [node for node in step.nodes if node not in failed]
            try:
                failed |= fleet.until_serving(changed)
            except RunbookError as exc:
                failed |= dict.fromkeys(changed, f"could not tell whether it serves again: {exc}")
            except BaseException:
                held({**failed, **dict.fromkeys(changed, "interrupted before it served again")})
                raise
            if failed and failed_at is None:
                failed_at = clock()
            problem = held(failed)
            for node in [n for n in step.nodes if n not in failed]:
                if fleet.marked(node):
                    fleet.uncordon(node)
                else:
                    log.events.append(f"{node}: uncordoned by someone else during its change; left so")
                cordoned.remove(node)
                log.changed.append(node)
            if failed:
                raise stop(f"{len(failed)} of {len(step.nodes)} node(s) failed their change: {problem}",
                           failed_at=failed_at)  # fmt: skip
            unhealthy = fleet.healthy()
            if unhealthy is not None:
                raise stop(
                    f"health gate failed after changing {', '.join(step.nodes)} (they serve again, changed): "
                    f"{unhealthy}. Going back is a run to the previous version"
                )
    except GroupUpgradeStoppedError:
        raise
    except RunbookError as exc:
        raise stop(str(exc)) from exc
    except BaseException:
        # Interrupted outside a change (a drain, a wait, the gate): put back what is ours, then go.
        with contextlib.suppress(Exception):
            stop("interrupted")
        raise
