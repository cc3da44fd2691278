"""The drill's faults: what each one breaks in the lab, when, and how it is taken back.

`--fault NAME` picks one. Each is what went wrong, or could have, in the seed's incident:

- `replica`: at the surge's peak, one Ready pod's serving process is killed (SIGKILL): its
  requests in flight fail, and it leaves the load balancer once its readiness goes;
- `node`: at the peak, the node of a Ready pod stops reporting (NotReady): its pods go unready and
  leave the EndpointSlices; it comes back when the surge ends;
- `zone`: at the peak, every node of that pod's zone goes NotReady at once (an AZ outage); the
  zone comes back when the surge ends. The report says what the remaining zones held;
- `slow-layer`: at the peak, one layer of every model in one Ready pod sleeps an SLO's worth before
  it runs (`PUT /admin/chaos`; the drill's pods have the `chaos` setting on): a replica that is
  slow but alive, as a throttled GPU is. The load balancer should send it little; it ends when
  the surge ends;
- `cold`: as the surge begins, the warm spare processes are stopped, so every replica the
  runbooks add loads its models on the cores the serving pods need (the seed's cold nodes);
- `bad-step`: as rebuild starts (after the surge), its first ConfigMap patch is refused (403, as a
  missing RBAC verb is): the step fails, the run rolls back to the degraded fleet, and rollback's
  health gate verifies that fleet; the autopilot then runs rebuild again, as the on-call would
  once the cause is fixed. (Needs the autopilot.)

Faults act through the lab's own seams (the controllers' node status, the Kubernetes API's played
faults, the pods' processes), never through the runbooks: peakguard meets them as it would on a
cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from lab.kube_api import ApiStatus
from lab.lab import Lab

__all__ = ["FAULTS", "WHEN", "inject"]

Note = Callable[[str], None]
Undo = Callable[[], None]

WHEN = {
    "replica": "peak",
    "node": "peak",
    "zone": "peak",
    "slow-layer": "peak",
    "cold": "surge-start",
    "bad-step": "before-rebuild",
}
"""When each fault strikes: the surge's peak (its middle), its start (before the page, since it changes
what the runbooks meet), or just before the autopilot runs rebuild."""

_ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclass(frozen=True)
class Strike:
    """What a fault acts on and reports to."""

    lab: Lab
    note: Note
    slo_seconds: float
    detail: dict[str, Any]


def _kill_replica(strike: Strike) -> Undo | None:
    lab, note = strike.lab, strike.note
    ready = [pod for pod, _ in lab.ready_backends()]  # the first, as slow-layer picks it
    victim = next((pod for pod in lab.pods if ready and pod.pod == ready[0] and pod.process.pid), None)
    if victim is None:
        note("fault replica: no Ready pod to kill")
        return None
    os.kill(victim.process.pid or 0, signal.SIGKILL)
    note(f"fault replica: killed {victim.pod}'s serving process")
    return None


def _node_of_a_ready_pod(lab: Lab) -> str | None:
    ready = {pod for pod, _ in lab.ready_backends()}
    for pod in lab.store.list("pods", "peakguard"):
        if pod["metadata"]["name"] in ready and pod.get("spec", {}).get("nodeName"):
            return str(pod["spec"]["nodeName"])
    return None


def _nodes_not_ready(lab: Lab, nodes: list[str], note: Note, what: str) -> Undo:
    for node in nodes:
        lab.controllers.set_node_ready(node, False)
    note(f"{what}: {', '.join(nodes)} NotReady")

    def undo() -> None:
        for node in nodes:
            lab.controllers.set_node_ready(node, True)
        note(f"{what} over: {', '.join(nodes)} Ready again")

    return undo


def _lose_node(strike: Strike) -> Undo | None:
    return _lose_nodes(strike, zone=False)


def _lose_zone(strike: Strike) -> Undo | None:
    return _lose_nodes(strike, zone=True)


def _lose_nodes(strike: Strike, *, zone: bool) -> Undo | None:
    """The node of a Ready pod NotReady, or with `zone` every node of its zone."""
    lab, note = strike.lab, strike.note
    fault = "zone" if zone else "node"
    node = _node_of_a_ready_pod(lab)
    if node is None:
        note(f"fault {fault}: no Ready pod's node found")
        return None
    if not zone:
        return _nodes_not_ready(lab, [node], note, "fault node")
    nodes = {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in lab.store.list("nodes")}
    name = nodes[node].get(_ZONE_LABEL)
    if name is None:
        return _nodes_not_ready(lab, [node], note, "fault zone (nodes without zones: one node)")
    lost = sorted(n for n, labels in nodes.items() if labels.get(_ZONE_LABEL) == name)
    kept = sorted({labels.get(_ZONE_LABEL, "") for labels in nodes.values()} - {name})
    note(f"fault zone: {name} goes away; {', '.join(kept) or 'no zone'} remain")
    return _nodes_not_ready(lab, lost, note, f"fault zone {name}")


def _slow_a_layer(strike: Strike) -> Undo | None:
    lab, note = strike.lab, strike.note
    # An SLO's worth a batch: this replica alone could never answer within it (the service takes <= 10 s).
    seconds = min(strike.slo_seconds, 10.0)
    ready = lab.ready_backends()
    if not ready:
        note("fault slow-layer: no Ready pod to slow")
        return None
    pod, url = ready[0]
    auth = {"authorization": f"Bearer {lab.token}"}
    layer = "block0"
    try:
        answer = httpx.put(
            f"{url}/admin/chaos", json={"slow_layer": {"layer": layer, "seconds": seconds}}, headers=auth, timeout=10
        )
    except httpx.HTTPError as error:
        note(f"fault slow-layer: {pod} did not take it ({type(error).__name__}: {error})")
        return None
    if answer.status_code != 200:
        note(f"fault slow-layer: {pod} refused it ({answer.status_code}: {answer.text})")
        return None
    strike.detail["pod"] = pod
    note(f"fault slow-layer: {pod}'s {layer} sleeps {seconds * 1000:.0f} ms before every batch")

    def undo() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.put(f"{url}/admin/chaos", json={"slow_layer": None}, headers=auth, timeout=10)
        note(f"fault slow-layer over: {pod} at full speed again")

    return undo


def _start_cold(strike: Strike) -> Undo | None:
    lab, note = strike.lab, strike.note
    stopped = lab.drop_spares()
    note(f"fault cold: {stopped} warm spare process(es) stopped; replicas added from now on start cold")
    return None


def _break_a_step(strike: Strike) -> Undo | None:
    lab, note = strike.lab, strike.note
    refusal = ApiStatus(
        403,
        "Forbidden",
        'configmaps is forbidden: User "drill-autopilot" cannot patch resource "configmaps" in API group "" '
        'in the namespace "peakguard" (played by the drill: --fault bad-step)',
    )
    lab.store.faults[("PATCH", "configmaps")] = [refusal]
    note("fault bad-step: the next ConfigMap patch will be refused (403)")

    def undo() -> None:
        lab.store.faults.pop(("PATCH", "configmaps"), None)

    return undo


FAULTS: dict[str, Callable[[Strike], Undo | None]] = {
    "replica": _kill_replica,
    "node": _lose_node,
    "zone": _lose_zone,
    "slow-layer": _slow_a_layer,
    "cold": _start_cold,
    "bad-step": _break_a_step,
}


def inject(name: str, lab: Lab, note: Note, *, slo_seconds: float, detail: dict[str, Any] | None = None) -> Undo | None:
    """Break `name` in `lab` now; what takes it back, if anything does. A slow layer sleeps `slo_seconds`;
    `detail` gets what the fault picked (the slowed pod)."""
    return FAULTS[name](Strike(lab, note, slo_seconds, {} if detail is None else detail))
