"""emergency-stop: the seed's phase one (0-30 min), in about a minute, with a rollback.

1. set the incident hold, so `pulumi up` cannot undo what follows;
2. raise the pool's node groups so the replicas below have GPUs;
3. raise the full model's HPA bounds to what the measured traffic needs: ceil(1.3 x QPS /
   per-replica throughput), both measured from the pods themselves, capped by what the pool's
   node groups can hold (not the seed's `min(50, load // 10)` guess), and wait until that many
   replicas are Ready (`--capacity-timeout`): capacity that never arrives is a failure;
4. where the env has a MIG pool: raise the light variant's minimum and the MIG node groups
   (MIG layouts are set at launch: new nodes come up sliced, nothing is relabelled);
5. switch the operating mode (light model and/or INT8, shedding of simple queries on): written
   to the mode ConfigMap, pushed to every ready pod's admin API and confirmed per pod.

Then the service must recover: p99 under the SLO and errors under 1%, or everything rolls back.
Step 5 degrades answers, so it re-checks first that the incident is still on.
"""

from __future__ import annotations

import math
from typing import Any

from infra import facts
from infra.targets import NodeGroupTarget
from runbooks.engine.spec import Context, Gate, Param, Reading, Runbook, Step
from runbooks.errors import RunbookError
from runbooks.library import undo
from runbooks.library.pool_scaling import (
    apply_groups,
    apply_hpa,
    groups_as_planned,
    nodes_for,
    observe_groups,
    observe_hpa,
    spread,
)
from runbooks.library.service_gates import REFUSAL_BUDGET, ports_of, signals, within_slo
from runbooks.ports.cluster import Bounds

__all__ = ["RUNBOOK", "estimate"]

LIGHT_SHARE = 0.3
"""Share of the needed replicas the light variant is asked to carry: the headroom, on MIG slices."""


_ports = ports_of


# --- The capacity estimate --------------------------------------------------------------


def estimate(context: Context) -> dict[str, Any]:
    """The plan's basis: replicas the full model needs for the traffic now, what the pool can hold,
    and what served before the run (for the trigger's re-check).

    Figures given (`--qps`, `--replica-rps`) are used as they are, not measured: in a total outage
    there are no ready pods to measure, and planning from the figures is what is left."""
    ports = _ports(context)
    service = ports.model_service
    full = ports.endpoints("full")
    qps = context.params.get("qps")
    if qps is None:
        qps = ports.traffic().rps
    per_replica = context.params.get("replica-rps")
    if per_replica is None:
        measured = []
        for endpoint in full:
            throughput = ports.service.status(endpoint.url).get("admission", {}).get("throughput_rps")
            if isinstance(throughput, (int, float)) and throughput > 0:
                measured.append(float(throughput))
        if not measured:
            raise RunbookError(
                "no ready full-model pod reports its throughput yet (admission.throughput_rps in "
                "/admin/status); pass --replica-rps with the figure `peakguard bench model` measured"
            )
        per_replica = sorted(measured)[len(measured) // 2]
    needed = max(1, facts.capacity_with_headroom(math.ceil(qps / per_replica)))
    groups = ports.targets.node_groups_of(service.pools["full"])
    if not groups:
        raise RunbookError(f"the targets document lists no node groups of pool {service.pools['full']!r}")
    gpus_per_node = facts.INSTANCE_TYPES[groups[0].instance_type].gpus
    sizes = {g.name: ports.cloud.node_group_size(ports.targets.cluster.name, g.name) for g in groups}
    capacity = sum(size.max for size in sizes.values()) * (gpus_per_node // service.gpus_per_replica)
    return {
        "qps": round(qps, 2),
        "replicaRps": round(per_replica, 2),
        "needed": needed,
        "capacity": capacity,
        "replicas": min(needed, capacity),
        "cappedByNodes": needed > capacity,
        "gpusPerNode": gpus_per_node,
        "readyBefore": len(full),
    }


# --- Is the incident still on? ------------------------------------------------------------

OVER_WINDOWS = 3
"""Windows in a row that must all look calm before a degrading step is skipped: one quiet window
between bursts is not the end of a surge."""
OVER_BELOW = 0.7
"""Hysteresis: the alerts start the incident at 1.0 of a limit; it counts as over only once every
signal stays under 0.7 of its limit for OVER_WINDOWS windows."""
_CEILING = 1000.0
"""A demand reading's ceiling (a fleet that had no ready replica has infinite demand per replica)."""


def _incident_on(context: Context) -> Reading:
    """How far the surge that justified the run is from over, counting the run's own mitigation.

    Demand is judged against the capacity that served before the run (ready replicas then x each
    one's throughput): the replicas this run added lower p99, not the traffic, so a mitigation that
    works is not read as the incident ending. The service's own breaker serving the light model is
    the incident too. And it is over only when every signal stays under OVER_BELOW for
    OVER_WINDOWS windows (it returns at the first window that says it is not)."""
    ports = _ports(context)
    basis = context.basis
    slo = ports.model_service.slo_p99_ms / 1000
    before_rps = float(basis.get("readyBefore", 0)) * float(basis.get("replicaRps", 0.0))
    seen: list[dict[str, Any]] = []
    score = 0.0
    for _ in range(OVER_WINDOWS):
        window = ports.traffic(fresh=True)
        demand = min(_CEILING, window.rps / before_rps) if before_rps > 0 else _CEILING
        health = signals(window, slo_seconds=slo, refusal_budget=REFUSAL_BUDGET["normal"]) or {}
        breaker = [e.pod for e in ports.endpoints("full") if ports.service.status(e.url).get("breaker", {}).get("open")]
        parts = {"demand": demand, **health, "breakerOpen": 1.0 if breaker else 0.0}
        score = max(parts.values())
        seen.append({**{k: round(v, 3) for k, v in parts.items()}, **window.summary(), "breakerOpenOn": breaker})
        if score >= OVER_BELOW:
            break
    raw = {"windows": seen, "capacityBeforeRps": round(before_rps, 2)}
    query = (f"max(rps / capacity before the run, p99/SLO, server errors/1%, refusals/1%, breaker open) "
             f"in any of {OVER_WINDOWS} windows")  # fmt: skip
    return Reading(score, raw=raw, query=query)


# --- Steps ------------------------------------------------------------------------------


def _observe_hold(context: Context) -> Any:
    return _ports(context).cloud.switches.hold_owner()


def _apply_hold(context: Context, target: Any) -> None:
    switches = _ports(context).cloud.switches
    if target is None:
        switches.clear_hold(run_id=context.run_id)
    else:
        reason = f"mode {context.params['model']}/{context.params['precision']}, shedding {context.params['shedding']}"
        switches.set_hold(run_id=context.run_id, runbook="emergency-stop", reason=reason)


def _hold_is_ours(context: Context) -> Reading:
    hold = _ports(context).cloud.switches.hold()
    return Reading(1.0 if hold is not None and hold.get("runId") == context.run_id else 0.0, raw=hold,
                   query="SSM incident-hold runId")  # fmt: skip


def _desired_hpa(context: Context, before: Any) -> Any:
    replicas = context.basis["replicas"]
    low = max(before["min"], replicas)
    return {"min": low, "max": max(before["max"], low)}


def _capacity_arrived(context: Context) -> Reading:
    """Ready full-model replicas over the planned minimum: the new capacity is really serving."""
    ports = _ports(context)
    service = ports.model_service
    bounds = ports.cluster.hpa_bounds(ports.namespace, service.hpa).to_dict()
    target = context.planned.get("hpa-bounds") or bounds
    if bounds != target:
        return Reading(0.0, raw={"live": bounds, "planned": target}, query=f"HPA {service.hpa} bounds == planned")
    ready = ports.cluster.ready_replicas(ports.namespace, service.deployments["full"])
    return Reading(ready / target["min"], raw={"ready": ready, "planned min": target["min"]},
                   query=f"Deployment {service.deployments['full']} readyReplicas / planned HPA min")  # fmt: skip


def _desired_full_groups(context: Context, before: Any) -> Any:
    if not before:
        return before
    plan = context.basis
    return spread(before, nodes_for(context, plan["replicas"], plan["gpusPerNode"]))


def _observe_light(context: Context) -> Any:
    ports = _ports(context)
    name = ports.model_service.scaled_objects.get("light")
    return None if name is None else ports.cluster.scaled_object_bounds(ports.namespace, name).to_dict()


def _desired_light(context: Context, before: Any) -> Any:
    if before is None:
        return None
    wanted = math.ceil(context.basis["replicas"] * LIGHT_SHARE)
    return {"min": min(before["max"], max(before["min"], wanted)), "max": before["max"]}


def _apply_light(context: Context, target: Any) -> None:
    if target is None:
        return
    ports = _ports(context)
    ports.cluster.set_scaled_object_bounds(
        ports.namespace, ports.model_service.scaled_objects["light"], Bounds(**target)
    )


def _desired_mig_groups(context: Context, before: Any) -> Any:
    if not before:
        return before
    ports = _ports(context)
    light = _desired_light(context, _observe_light(context))
    if light is None:
        return before
    groups = ports.targets.node_groups_of(ports.model_service.pools["light"])
    return spread(before, math.ceil(light["min"] / _light_replicas_per_node(groups[0])))


def _light_replicas_per_node(group: NodeGroupTarget) -> int:
    """Light replicas (one MIG instance each) a node of the light pool holds: its GPUs times the
    instances its layout cuts each into, which the GPU's memory decides (7 of 1g.10gb on an 80 GB
    A100 or H100, 4 on a 40 GB A100)."""
    if group.mig_config is None:
        raise RunbookError(
            f"the targets document does not say node group {group.name}'s MIG layout (migConfig; older "
            "documents lack it): run `pulumi up` for this env with this peakguard to publish it"
        )
    return sum(facts.INSTANCE_TYPES[group.instance_type].accelerators(group.mig_config).values())


_MODE_FIELDS = ("model", "precision", "shedding")


def _observe_mode(context: Context) -> Any:
    ports = _ports(context)
    document = ports.cluster.mode_document(ports.namespace, ports.model_service.mode_config_maps["full"])
    return {key: document.get(key) for key in _MODE_FIELDS}


def _desired_mode(context: Context, before: Any) -> Any:
    params = context.params
    return {"model": params["model"], "precision": params["precision"], "shedding": params["shedding"] == "on"}


def _apply_mode(context: Context, target: Any) -> None:
    _ports(context).set_mode("full", target)


def _mode_confirmed(context: Context) -> Reading:
    ports = _ports(context)
    target = context.planned.get("mode") or _desired_mode(context, None)
    pods = ports.endpoints("full")
    confirmed = {}
    for endpoint in pods:
        mode = ports.service.status(endpoint.url).get("mode", {})
        confirmed[endpoint.pod] = all(mode.get(key) == value for key, value in target.items())
    share = sum(confirmed.values()) / len(confirmed) if confirmed else None
    return Reading(share, raw=confirmed, query="share of ready full pods whose /admin/status mode is the target")


RUNBOOK = Runbook(
    name="emergency-stop",
    summary="raise capacity from measured traffic, degrade to a light/INT8 mode with shedding, verify recovery",
    params=(
        Param("model", "model the fleet answers with while degraded", default="light", choices=("light", "full")),
        Param("precision", "precision while degraded", default="int8", choices=("int8", "fp32")),
        Param("shedding", "answer simple queries from the answer table", default="on", choices=("on", "off")),
        Param(
            "qps",
            "requests/s to plan for (default: measured over the pods' metrics)",
            kind=float,
            default=None,
            minimum=0.0,
        ),
        Param(
            "capacity-timeout",
            "seconds new replicas may take to be Ready before the run rolls back (GPU nodes take minutes)",
            kind=float,
            default=900.0,
            minimum=1.0,
        ),
        Param(
            "recovery-timeout",
            "seconds the service has, once every step is done, to be within its SLO before the run rolls back",
            kind=float,
            default=120.0,
            minimum=1.0,
        ),
        Param(
            "replica-rps",
            "requests/s one full-model replica sustains (default: measured by the pods)",
            kind=float,
            default=None,
            minimum=0.001,
        ),
    ),
    steps=(
        Step(
            "incident-hold",
            "set the incident hold so `pulumi up` refuses while this run's changes stand",
            _observe_hold,
            lambda context, before: {"runId": "<this run>", "runbook": "emergency-stop"},
            _apply_hold,
            verify=Gate("hold is this run's", _hold_is_ours, at_least=1.0),
            restore=lambda context, before: _apply_hold(context, None),
            timeout=30,
            undo=undo.hold,
        ),
        Step(
            "gpu-node-groups",
            "raise the full pool's node groups' desired size to fit those replicas",
            observe_groups("full"),
            _desired_full_groups,
            apply_groups,
            verify=Gate("full pool sized as planned", groups_as_planned("gpu-node-groups", "full"), at_least=1.0),
            timeout=60,
            undo=undo.node_groups,
        ),
        Step(
            "hpa-bounds",
            "raise the full model's HPA bounds to the measured need, capped by node capacity",
            observe_hpa,
            _desired_hpa,
            apply_hpa,
            verify=Gate("new replicas Ready", _capacity_arrived, at_least=1.0),
            timeout="capacity-timeout",
            undo=lambda context, before: undo.bounds(
                context, "HorizontalPodAutoscaler", _ports(context).model_service.hpa, before
            ),
        ),
        Step(
            "light-variant",
            "raise the light variant's minimum (MIG slices) to carry the headroom",
            _observe_light,
            _desired_light,
            _apply_light,
            timeout=30,
            undo=lambda context, before: undo.bounds(
                context, "ScaledObject", _ports(context).model_service.scaled_objects.get("light", "light"), before
            ),
        ),
        Step(
            "mig-node-groups",
            "raise the MIG pool's node groups for the light variant",
            observe_groups("light"),
            _desired_mig_groups,
            apply_groups,
            verify=Gate("MIG pool sized as planned", groups_as_planned("mig-node-groups", "light"), at_least=1.0),
            timeout=60,
            undo=undo.node_groups,
        ),
        Step(
            "mode",
            "switch the operating mode (model, precision, shedding): ConfigMap, then every ready pod",
            _observe_mode,
            _desired_mode,
            _apply_mode,
            verify=Gate("pods confirming the mode", _mode_confirmed, at_least=1.0),
            timeout=60,
            destructive=True,
            undo=lambda context, before: undo.mode(context, "full", before),
        ),
    ),
    health=within_slo("degraded"),
    trigger=Gate("incident still on", _incident_on, at_least=OVER_BELOW),
    basis=estimate,
    recovery_timeout="recovery-timeout",
    poll_interval=2.0,
)
