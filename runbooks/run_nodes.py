"""What an upgrade run does to one node through the Kubernetes API, shared by its fleets.

Cordons carry the run's mark (`CORDON_MARK` = the run id), so only this run's cordons are ever
lifted; a node held past the run carries `<run> held: why` instead, which no rollback lifts and
which tells an operator who cordoned it and why. Drains go through the Eviction API with a
deadline (runbooks/drain.py).
"""

from __future__ import annotations

from collections.abc import Callable

from runbooks.cluster import KubernetesCluster
from runbooks.drain import drain_node

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
    ) -> None:
        self._cluster = cluster
        self._run_id = run_id
        self._drain_seconds = drain_seconds
        self._poll_seconds = poll_seconds
        self._sleep = sleep
        self._note = note

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
