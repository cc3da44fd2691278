"""Availability: an AZ's loss leaves two thirds serving. Subnets and system nodes span three AZs in
prod (two elsewhere), each GPU pool spans two in prod, model-service replicas spread over zones."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from policies.findings import UNKNOWN, Resource, Rule, Violation, known
from policies.wire import POOL_LABEL, is_gpu_node_group, mapping, of_type, sequence, stack_env

__all__ = ["RULES"]

_SUBNET = "aws:ec2/subnet:Subnet"
_VPC = "aws:ec2/vpc:Vpc"
_NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
_DEPLOYMENT = "kubernetes:apps/v1:Deployment"
_ZONE_KEY = "topology.kubernetes.io/zone"


def _zones_needed(env: str) -> int:
    return 3 if env == "prod" else 2


def _tier(subnet: Resource) -> str:
    tags = mapping(subnet.get("tags"))
    if "kubernetes.io/role/elb" in tags:
        return "public"
    if "kubernetes.io/role/internal-elb" in tags:
        return "private"
    return "untagged"


def _subnets_span(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    needed = _zones_needed(stack_env(resources))
    subnets = of_type(resources, _SUBNET)
    if not subnets:
        return []
    tiers: dict[str, set[str]] = defaultdict(set)
    for subnet in subnets:
        zone = subnet.get("availabilityZone")
        if not isinstance(zone, str):  # unknown, or left to AWS to pick: not a zone we can count
            return [(subnet, Violation("availabilityZone", None, "a named AZ", "", status="not-evaluated"))]
        tiers[_tier(subnet)].add(zone)
    anchor = next(iter(of_type(resources, _VPC)), subnets[0])
    return [
        (
            anchor,
            Violation(
                f"{tier} subnets' availabilityZone",
                sorted(zones),
                f">= {needed} distinct AZs",
                f"list {needed} AZs in peakguard:network.availabilityZones",
            ),
        )
        for tier, zones in sorted(tiers.items())
        if len(zones) < needed
    ]


def _zones_of(node_groups: Sequence[Resource], subnet_zones: dict[object, str]) -> set[str] | None:
    """The AZs a set of node groups' subnets are in; None if a subnet is not in this stack."""
    zones = set()
    for group in node_groups:
        if group.get("subnetIds") is UNKNOWN:
            return None
        for subnet_id in sequence(group.get("subnetIds")):
            if subnet_id not in subnet_zones:
                return None
            zones.add(subnet_zones[subnet_id])
    return zones


def _subnet_zones(resources: Sequence[Resource]) -> dict[object, str]:
    return {
        s.get("id"): s.get("availabilityZone")
        for s in of_type(resources, _SUBNET)
        if known(s.get("id")) and isinstance(s.get("availabilityZone"), str)
    }


def _system_nodes_span(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    needed = _zones_needed(stack_env(resources))
    system = [g for g in of_type(resources, _NODE_GROUP) if not is_gpu_node_group(g)]
    if not system:
        return []
    zones = _zones_of(system, _subnet_zones(resources))
    if zones is None:
        return [(system[0], Violation("subnetIds", None, "subnets this stack declares", "", status="not-evaluated"))]
    if len(zones) < needed:
        return [
            (
                system[0],
                Violation(
                    "subnetIds (their AZs)",
                    sorted(zones),
                    f">= {needed} distinct AZs",
                    "give the system node group a private subnet in every AZ of the network",
                ),
            )
        ]
    return []


def _gpu_pools_span(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    if stack_env(resources) != "prod":
        return []
    pools: dict[str, list[Resource]] = defaultdict(list)
    for group in sorted(of_type(resources, _NODE_GROUP), key=lambda g: g.name):
        if is_gpu_node_group(group):
            pools[str(mapping(group.get("labels")).get(POOL_LABEL, group.name))].append(group)
    subnet_zones = _subnet_zones(resources)
    found = []
    for pool, groups in sorted(pools.items()):
        zones = _zones_of(groups, subnet_zones)
        if zones is None:
            found.append(
                (groups[0], Violation("subnetIds", None, "subnets this stack declares", "", status="not-evaluated"))
            )
        elif len(zones) < 2:
            found.append(
                (
                    groups[0],
                    Violation(
                        f"pool {pool}: node groups' AZs",
                        sorted(zones),
                        ">= 2 AZs in prod",
                        f"list two or more AZs in peakguard:gpuPools.{pool}.availabilityZones",
                    ),
                )
            )
    return found


def _spread_over_zones(deployment: Resource) -> list[Violation]:
    constraints = deployment.get("spec.template.spec.topologySpreadConstraints")
    if constraints is UNKNOWN:
        return [Violation("spec.template.spec.topologySpreadConstraints", None, "known", "", status="not-evaluated")]
    if not any(mapping(c).get("topologyKey") == _ZONE_KEY for c in sequence(constraints)):
        return [
            Violation(
                "spec.template.spec.topologySpreadConstraints",
                constraints,
                f"a constraint on {_ZONE_KEY}",
                "add TopologySpreadConstraintArgs(topology_key="
                f'"{_ZONE_KEY}", max_skew=1, ...) (infra/model_workload.py does)',
            )
        ]
    return []


RULES = (
    Rule(
        id="AVAIL-001",
        name="subnets-span-three-azs-in-prod",
        domain="availability",
        severity="mandatory",
        rationale="with every subnet in fewer than three AZs, one AZ's loss takes half the capacity at peak.",
        resource_types=(_SUBNET, _VPC),
        stack_check=_subnets_span,
    ),
    Rule(
        id="AVAIL-002",
        name="system-nodes-span-three-azs-in-prod",
        domain="availability",
        severity="mandatory",
        rationale="DNS, the autoscaler and the load balancer controller run on the system nodes; one AZ must not "
        "take them all.",
        resource_types=(_NODE_GROUP, _SUBNET),
        stack_check=_system_nodes_span,
    ),
    Rule(
        id="AVAIL-003",
        name="gpu-pool-spans-two-azs-in-prod",
        domain="availability",
        severity="mandatory",
        rationale="a GPU pool in one AZ is one capacity shortage or AZ event away from the seed's outage.",
        resource_types=(_NODE_GROUP, _SUBNET),
        stack_check=_gpu_pools_span,
    ),
    Rule(
        id="AVAIL-004",
        name="replicas-spread-over-zones",
        domain="availability",
        severity="mandatory",
        rationale="replicas the scheduler packs into one zone go down together with it.",
        resource_types=(_DEPLOYMENT,),
        check=_spread_over_zones,
    ),
)
