"""What an upgrade run does to one node through the Kubernetes API, shared by its fleets.

Cordons carry the run's mark (`CORDON_MARK` = the run id), so only this run's cordons are ever
lifted; a node held past the run carries `<run> held: why` instead, which no rollback lifts and
which tells an operator who cordoned it and why. Drains go through the Eviction API with a
deadline (runbooks/nodes/drain.py). The service gate and the bounded wait are the run's too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from runbooks.nodes.drain import drain_node
from runbooks.ports.cluster import KubernetesCluster

__all__ = ["RunNodes"]


class RunNodes:
    def __init__(
        self,
        cluster: KubernetesCluster,
        *,
        run_id: str,
        drain_seconds: float,
        poll_seconds: float,
        sleep: Callable[[float], None],
        note: Callable[[str], None],
        gate: Callable[[], str | None],
        wait_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cluster = cluster
        self._run_id = run_id
        self._drain_seconds = drain_seconds
        self._poll_seconds = poll_seconds
        self._sleep = sleep
        self._note = note
        self._gate = gate
        self._wait_seconds = wait_seconds
        self._clock = clock
        self._waiting_since: float | None = None
        """When the current wait began; None while nothing is waited for (a change resets it)."""

    def healthy(self) -> str | None:
        return self._gate()

    def pause(self, reason: str) -> bool:
        now = self._clock()
        if self._waiting_since is None:
            self._waiting_since = now
            self._note(f"waiting: {reason}")
        if now - self._waiting_since > self._wait_seconds:
            return False
        self._sleep(self._poll_seconds)
        return True

    def cordon(self, node: str) -> None:
        self._cluster.cordon(node, self._run_id)
        self._note(f"cordoned {node}")

    def marked(self, node: str) -> bool:
        unschedulable, mark = self._cluster.cordon_mark(node)
        return unschedulable and mark == self._run_id

    def uncordon(self, node: str) -> None:
        self._cluster.uncordon(node, self._run_id)
        self._note(f"uncordoned {node}")

    def hold(self, node: str, reason: str) -> None:
        self._cluster.cordon(node, f"{self._run_id} held: {reason}"[:1000])
        self._note(f"held {node} out of service: {reason}")

    def drain(self, node: str) -> None:
        report = drain_node(
            self._cluster,
            node,
            deadline_seconds=self._drain_seconds,
            poll_seconds=min(2.0, self._poll_seconds),
            sleep=self._sleep,
            on_event=self._note,
        )
        self._note(f"drained {node} in {report.seconds:.1f} s ({len(report.evicted)} pod(s) evicted)")
