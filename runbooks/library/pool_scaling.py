"""Steps' pieces that size the full model's capacity: its HPA bounds and its pool's node groups.
Shared by emergency-stop (capacity for the traffic now) and predictive-scale (for the traffic ahead)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from runbooks.engine.spec import Context, Reading
from runbooks.library.service_gates import ports_of
from runbooks.ports.cloud import NodeGroupSize
from runbooks.ports.cluster import Bounds

__all__ = ["apply_groups", "apply_hpa", "groups_as_planned", "node_groups", "nodes_for", "observe_groups",
           "observe_hpa", "spread"]  # fmt: skip


def observe_hpa(context: Context) -> Any:
    ports = ports_of(context)
    return ports.cluster.hpa_bounds(ports.namespace, ports.model_service.hpa).to_dict()


def apply_hpa(context: Context, target: Any) -> None:
    ports = ports_of(context)
    ports.cluster.set_hpa_bounds(ports.namespace, ports.model_service.hpa, Bounds(**target))


def node_groups(context: Context, variant: str) -> list[str]:
    ports = ports_of(context)
    pool = ports.model_service.pools.get(variant)
    return [] if pool is None else [g.name for g in ports.targets.node_groups_of(pool)]


def observe_groups(variant: str) -> Callable[[Context], Any]:
    def observe(context: Context) -> Any:
        ports = ports_of(context)
        cluster = ports.targets.cluster.name
        return {name: ports.cloud.node_group_size(cluster, name).to_dict() for name in node_groups(context, variant)}

    return observe


def nodes_for(context: Context, replicas: int, gpus_per_node: int) -> int:
    """Nodes that hold `replicas` full-model replicas."""
    return math.ceil(replicas * ports_of(context).model_service.gpus_per_replica / gpus_per_node)


def spread(before: dict[str, Any], nodes: int) -> dict[str, Any]:
    """Raise each group's desired size to its share of `nodes` (never lower it, never past max)."""
    share = math.ceil(nodes / len(before))
    return {
        name: {**size, "desired": min(size["max"], max(size["desired"], share)), "min": size["min"]}
        for name, size in before.items()
    }


def apply_groups(context: Context, target: Any) -> None:
    ports = ports_of(context)
    for name, size in sorted(target.items()):
        ports.cloud.set_node_group_size(ports.targets.cluster.name, name, NodeGroupSize(**size))


def groups_as_planned(step: str, variant: str) -> Callable[[Context], Reading]:
    def probe(context: Context) -> Reading:
        ports = ports_of(context)
        live = {n: ports.cloud.node_group_size(ports.targets.cluster.name, n).desired
                for n in node_groups(context, variant)}  # fmt: skip
        planned = {n: size["desired"] for n, size in (context.planned.get(step) or {}).items()}
        short = [n for n, desired in planned.items() if live.get(n, 0) < desired]
        return Reading(0.0 if short else 1.0, raw={"live": live, "planned": planned},
                       query=f"EKS desiredSize >= planned, {variant} pool")  # fmt: skip

    return probe
