"""Draining a node through the Eviction API: bounded, explained, never forced.

What `kubectl drain` does, with what it leaves out: every eviction has a deadline; a refusal by a
PodDisruptionBudget is told apart from API throttling (the budget is named; throttling waits for
Retry-After and is not the budget's fault); each evicted pod is waited for through its own grace
period. At the deadline the drain stops with `DrainBlockedError`, naming the pods and budgets still in
the way: the caller rolls the batch back or asks for an explicit, journaled override. Nothing is
ever deleted around a budget.

DaemonSet pods stay (their controller would put them straight back, and they tolerate the
cordon); mirror pods stay (the kubelet owns them); finished pods are nothing to move.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from runbooks.errors import RunbookError
from runbooks.ports.cluster import EvictionRefusedError, NodePod

__all__ = ["DrainBlockedError", "DrainReport", "NodePods", "drain_node"]


class NodePods(Protocol):
    """The part of the cluster port a drain uses."""

    def pods_on(self, node: str) -> list[NodePod]: ...

    def evict(self, namespace: str, name: str) -> None: ...

    def pod_exists(self, namespace: str, name: str) -> bool: ...


class DrainBlockedError(RunbookError):
    """The drain reached its deadline; `blocked` maps each pod still there to why."""

    def __init__(self, message: str, blocked: dict[str, str]) -> None:
        super().__init__(message)
        self.blocked = blocked


@dataclass
class DrainReport:
    node: str
    evicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """DaemonSet, mirror and finished pods, with the reason."""
    budget_refusals: int = 0
    throttled: int = 0
    seconds: float = 0.0


def _stays(pod: NodePod) -> str | None:
    if pod.owner_kind == "DaemonSet":
        return "DaemonSet pod"
    if pod.mirror:
        return "mirror pod (static, owned by the kubelet)"
    if pod.phase in ("Succeeded", "Failed"):
        return f"{pod.phase} pod"
    return None


def drain_node(
    cluster: NodePods,
    node: str,
    *,
    deadline_seconds: float,
    poll_seconds: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_event: Callable[[str], None] = lambda _: None,
) -> DrainReport:
    """Evict every movable pod from `node` (already cordoned) and wait until they are gone.

    Raises DrainBlockedError at `deadline_seconds`, naming each pod still there and what holds it.
    """
    started = clock()
    deadline = started + deadline_seconds
    report = DrainReport(node)
    pending: dict[tuple[str, str], NodePod] = {}
    for pod in cluster.pods_on(node):
        reason = _stays(pod)
        if reason is None:
            pending[(pod.namespace, pod.name)] = pod
        else:
            report.skipped.append(f"{pod.namespace}/{pod.name}: {reason}")
    blocked: dict[str, str] = {}
    leaving: dict[tuple[str, str], float] = {}
    """Pods whose eviction was accepted, with when they must be gone by (their grace period)."""

    while pending or leaving:
        for key, pod in list(pending.items()):
            name = f"{pod.namespace}/{pod.name}"
            try:
                cluster.evict(pod.namespace, pod.name)
            except EvictionRefusedError as refusal:
                if refusal.budget is not None:
                    report.budget_refusals += 1
                    blocked[name] = f"PodDisruptionBudget {refusal.budget}: {refusal}"
                else:
                    report.throttled += 1
                    blocked[name] = "API server throttling (429, no disruption budget involved)"
                    sleep(min(refusal.retry_after or poll_seconds, max(0.0, deadline - clock())))
                continue
            del pending[key]
            blocked.pop(name, None)
            leaving[key] = clock() + pod.grace_seconds + poll_seconds
            report.evicted.append(name)
            on_event(f"evicted {name} from {node}")
        for key in list(leaving):
            if not cluster.pod_exists(*key):
                del leaving[key]
            elif clock() > leaving[key]:
                blocked[f"{key[0]}/{key[1]}"] = "evicted but still terminating past its grace period"
        if not pending and not leaving:
            break
        if clock() >= deadline:
            still = dict(blocked) or {f"{ns}/{name}": "still terminating" for ns, name in [*pending, *leaving]}
            budgets = sorted({why.split(":")[0] for why in still.values() if why.startswith("PodDisruptionBudget")})
            cause = f"blocked by {', '.join(budgets)}" if budgets else "pods did not leave"
            raise DrainBlockedError(
                f"drain of {node} stopped at its {deadline_seconds:g} s deadline: {cause}; "
                + "; ".join(f"{name}: {why}" for name, why in sorted(still.items()))
                + ". Nothing was forced: roll the batch back, or wait for the budget's pods to be Ready "
                "and run again with a longer drain deadline (journaled)",
                still,
            )
        sleep(poll_seconds)
    report.seconds = clock() - started
    return report
