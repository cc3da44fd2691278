"""A capacity plan for one stack: the model service's replicas for a request rate within a latency
SLO (`queueing`), the 30% headroom of `infra.facts` on top, then GPUs, nodes per AZ of its pool,
what one AZ's loss leaves, and the cost per hour where the stack config has prices."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from capacity.queueing import SEED_UTILISATION, replicas_for, seed_replicas
from infra import facts
from infra.config import StackConfig

__all__ = ["Plan", "plan", "render"]


@dataclass(frozen=True)
class Plan:
    env: str
    pool: str
    instance_type: str
    availability_zones: tuple[str, ...]
    rps: float
    p99_ms: float
    replica_rps: float
    replica_rps_source: str
    replicas_modelled: int
    """The fewest replicas whose modelled p99 meets the SLO (M/M/c)."""
    modelled_p99_ms: float
    utilisation: float
    replicas: int
    """With headroom: ceil(1.3 x modelled), `facts.capacity_with_headroom`."""
    gpus: int
    nodes_per_az: int
    nodes: int
    configured_max_nodes: int
    """What the stack's scalingPerAz.maxSize allows over its AZs."""
    replicas_after_losing_an_az: int
    share_of_peak_after_losing_an_az: float
    """Replicas the remaining AZs hold, over the modelled need (1.0 = the peak still fits)."""
    seed_formula_replicas: int
    """N from the seed's lambda = N/T / (1 + rho), at its own rho (0.618), without headroom."""
    usd_per_hour: float | None
    price_source: str | None
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(config: StackConfig, *, rps: float, p99_ms: float, replica_rps: float, replica_rps_source: str) -> Plan:
    """The plan for the stack's model-service pool; ValueError names an SLO no size can meet."""
    service = config.kubernetes.model_service
    pool = config.pool(service.pool)
    instance = pool.instance
    sizing = replicas_for(rps, replica_rps, p99_ms / 1000)
    replicas = facts.capacity_with_headroom(sizing.replicas)
    replicas_per_node = instance.gpus // service.gpus_per_replica
    azs = pool.availability_zones
    nodes_needed = math.ceil(replicas / replicas_per_node)
    per_az = math.ceil(nodes_needed / len(azs))  # the spread keeps AZs even: the plan buys whole AZ shares
    left = per_az * (len(azs) - 1) * replicas_per_node
    warnings = []
    if per_az > pool.scaling_per_az.max_size:
        warnings.append(
            f"needs {per_az} nodes per AZ; the stack allows {pool.scaling_per_az.max_size} "
            f"(gpuPools.{pool.name}.scalingPerAz.maxSize): raise it, or the autoscaler stops short of the peak"
        )
    if per_az > facts.NODES_PER_MANAGED_NODE_GROUP:
        warnings.append(
            f"{per_az} nodes per AZ is more than one EKS managed node group holds "
            f"({facts.NODES_PER_MANAGED_NODE_GROUP}): split the pool"
        )
    if replicas > service.max_replicas:
        warnings.append(
            f"{replicas} replicas is above the HPA's maximum ({service.max_replicas}, modelService.maxReplicas)"
        )
    price = None if config.pricing is None else config.pricing.usd_per_hour.get(pool.instance_type)
    if config.pricing is not None and price is None:
        warnings.append(f"no price for {pool.instance_type} in pricing.usdPerHour: the plan has no cost")
    return Plan(
        env=config.env,
        pool=pool.name,
        instance_type=pool.instance_type,
        availability_zones=azs,
        rps=rps,
        p99_ms=p99_ms,
        replica_rps=replica_rps,
        replica_rps_source=replica_rps_source,
        replicas_modelled=sizing.replicas,
        modelled_p99_ms=sizing.latency_quantile_seconds * 1000,
        utilisation=sizing.utilisation,
        replicas=replicas,
        gpus=replicas * service.gpus_per_replica,
        nodes_per_az=per_az,
        nodes=per_az * len(azs),
        configured_max_nodes=pool.max_capacity,
        replicas_after_losing_an_az=left,
        share_of_peak_after_losing_an_az=left / sizing.replicas,
        seed_formula_replicas=seed_replicas(rps, replica_rps),
        usd_per_hour=None if price is None else price * per_az * len(azs),
        price_source=None if config.pricing is None else f"{config.pricing.source} ({config.pricing.date})",
        warnings=tuple(warnings),
    )


def render(result: Plan) -> str:
    lines = [
        f"capacity plan for {result.env}: {result.rps:g} requests/s, p99 within {result.p99_ms:g} ms",
        f"  replica rate     {result.replica_rps:g} requests/s ({result.replica_rps_source})",
        f"  M/M/c            {result.replicas_modelled} replicas at {result.utilisation:.1%} utilisation, "
        f"modelled p99 {result.modelled_p99_ms:.0f} ms",
        f"  with headroom    {result.replicas} replicas (x{float(facts.HEADROOM):g}), {result.gpus} GPUs",
        f"  pool {result.pool:<11} {result.nodes} x {result.instance_type}: {result.nodes_per_az} in each of "
        f"{', '.join(result.availability_zones)} (the stack allows {result.configured_max_nodes})",
        f"  one AZ lost      {result.replicas_after_losing_an_az} replicas left, "
        f"{result.share_of_peak_after_losing_an_az:.0%} of the modelled need",
        f"  seed's formula   {result.seed_formula_replicas} replicas (lambda = N/T / (1 + rho) at rho "
        f"{SEED_UTILISATION:.3f}; M/M/c needs {result.replicas_modelled} before headroom)",
    ]
    if result.usd_per_hour is not None:
        lines.append(f"  cost             ${result.usd_per_hour:,.2f} per hour On-Demand ({result.price_source})")
    else:
        lines.append("  cost             unknown: no price for the pool's instance type (peakguard:pricing)")
    lines += [f"  warning: {warning}" for warning in result.warnings]
    return "\n".join(lines)
