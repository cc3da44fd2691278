"""GPU and EFA: the GPU fleet's network is what the hardware was bought for. One EFA per network
card, each node group in one AZ inside a cluster placement group, EFA traffic open within its group."""

from __future__ import annotations

from collections.abc import Sequence

from policies.findings import UNKNOWN, Resource, Rule, Violation
from policies.wire import gpu_instance, is_gpu_node_group, mapping, of_type, sequence, truthy

__all__ = ["RULES"]

_LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
_NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
_PLACEMENT_GROUP = "aws:ec2/placementGroup:PlacementGroup"
_SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
_EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
_EFA_TYPES = ("efa", "efa-only")


def _is_gpu_template(template: Resource) -> bool:
    return gpu_instance(template) is not None or "peakguard:pool" in mapping(template.get("tags"))


def _efa_per_card(template: Resource) -> list[Violation]:
    if not _is_gpu_template(template):
        return []
    instance = gpu_instance(template)
    if instance is None:
        kind = template.get("instanceType")
        if kind is UNKNOWN:
            return [Violation("instanceType", None, "a known EFA-capable GPU type", "", status="not-evaluated")]
        if kind is None:
            return [
                Violation(
                    "instanceType",
                    None,
                    "set on the GPU launch template",
                    "set instance_type on the launch template, so its EFA layout can be checked",
                )
            ]
        return [
            Violation(
                "instanceType",
                kind,
                "an instance type in infra/facts.py INSTANCE_TYPES",
                "add the type's network cards and EFA limit to infra/facts.py, from the EC2 User Guide",
            )
        ]
    raw = template.get("networkInterfaces")
    interfaces = [mapping(i) for i in sequence(raw)]
    if raw is UNKNOWN or any(UNKNOWN in (i.get("interfaceType"), i.get("networkCardIndex")) for i in interfaces):
        return [Violation("networkInterfaces", None, "known", "", status="not-evaluated")]
    efa = [i for i in interfaces if i.get("interfaceType") in _EFA_TYPES]
    cards = sorted({int(i.get("networkCardIndex", 0)) for i in efa})
    wanted = instance.efa_interface_count
    fix = "build networkInterfaces from infra.facts.efa_interfaces(instance) (infra/launch_templates.py does)"
    found = []
    if len(efa) != wanted or cards != list(range(wanted)):
        found.append(
            Violation(
                "networkInterfaces[*].interfaceType",
                f"{len(efa)} EFA interfaces on cards {cards}",
                f"{wanted} EFA interfaces, one on each network card 0..{wanted - 1} of a {instance.name}",
                fix,
            )
        )
    primary = next((i for i in efa if int(i.get("networkCardIndex", 0)) == 0), None)
    if primary is not None and primary.get("interfaceType") != "efa":
        found.append(
            Violation(
                "networkInterfaces[0].interfaceType",
                primary.get("interfaceType"),
                '"efa"',
                "network card 0 carries the node's IP traffic: EFA with ENA, never efa-only",
            )
        )
    return found


def _one_subnet(node_group: Resource) -> list[Violation]:
    if not is_gpu_node_group(node_group):
        return []
    subnets = node_group.get("subnetIds")
    if subnets is UNKNOWN:
        return [Violation("subnetIds", None, "exactly one subnet", "", status="not-evaluated")]
    if len(sequence(subnets)) != 1:
        return [
            Violation(
                "subnetIds",
                list(sequence(subnets)),
                "exactly one subnet (one AZ)",
                "declare one node group per AZ of the pool (infra/gpu_node_groups.py does); a cluster "
                "placement group cannot span AZs",
            )
        ]
    return []


def _placement(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    groups = {mapping(g.props).get("name"): g for g in of_type(resources, _PLACEMENT_GROUP)}
    found = []
    for template in of_type(resources, _LAUNCH_TEMPLATE):
        if not _is_gpu_template(template):
            continue
        reservation = mapping(template.get("capacityReservationSpecification.capacityReservationTarget"))
        if reservation.get("capacityReservationId") or reservation.get("capacityReservationResourceGroupArn"):
            continue
        name = template.get("placement.groupName")
        if name is UNKNOWN:
            found.append((template, Violation("placement.groupName", None, "known", "", status="not-evaluated")))
            continue
        if not name:
            found.append(
                (
                    template,
                    Violation(
                        "placement.groupName",
                        None,
                        "a cluster placement group, or a named capacity reservation",
                        "give the pool a placement group per AZ (gpu_node_groups.py) or "
                        "gpuPools.<pool>.capacityReservations in the stack config",
                    ),
                )
            )
            continue
        group = groups.get(name)
        if group is None:
            found.append(
                (
                    template,
                    Violation(
                        "placement.groupName", name, "a placement group this stack declares", "", status="not-evaluated"
                    ),
                )
            )
        elif group.get("strategy") != "cluster":
            found.append(
                (
                    group,
                    Violation(
                        "strategy",
                        group.get("strategy"),
                        '"cluster"',
                        'strategy="cluster": EFA\'s latency needs the nodes on one spine',
                    ),
                )
            )
    return found


def _all_traffic_with_itself(rule: object, sg_id: object, *, anywhere_counts: bool = False) -> bool:
    """An inline rule (`self`) or a separate one (`referencedSecurityGroupId`) allowing every
    protocol; for egress, all traffic to anywhere includes the group itself."""
    rule = mapping(rule)
    protocol = str(rule.get("protocol", rule.get("ipProtocol", "")))
    if protocol not in ("-1", "all"):
        return False
    anywhere = "0.0.0.0/0" in sequence(rule.get("cidrBlocks")) or rule.get("cidrIpv4") == "0.0.0.0/0"
    return truthy(rule.get("self")) or rule.get("referencedSecurityGroupId") == sg_id or (anywhere_counts and anywhere)


def _efa_security_group(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    groups = {mapping(g.props).get("id"): g for g in of_type(resources, _SECURITY_GROUP)}
    separate_in = [mapping(r.props) for r in of_type(resources, _INGRESS_RULE)]
    separate_out = [mapping(r.props) for r in of_type(resources, _EGRESS_RULE)]
    found = []
    for template in of_type(resources, _LAUNCH_TEMPLATE):
        if gpu_instance(template) is None:
            continue
        attached = {
            sg for i in sequence(template.get("networkInterfaces")) for sg in sequence(mapping(i).get("securityGroups"))
        }
        declared = [sg for sg in attached if sg is not UNKNOWN and sg in groups]

        def open_both_ways(sg_id: object) -> bool:
            group = groups[sg_id]
            ingress = [*sequence(group.get("ingress")), *(r for r in separate_in if r.get("securityGroupId") == sg_id)]
            egress = [*sequence(group.get("egress")), *(r for r in separate_out if r.get("securityGroupId") == sg_id)]
            return any(_all_traffic_with_itself(r, sg_id) for r in ingress) and any(
                _all_traffic_with_itself(r, sg_id, anywhere_counts=True) for r in egress
            )

        if any(open_both_ways(sg) for sg in declared):
            continue
        if not declared:  # groups made outside this stack: their rules are not ours to see
            found.append(
                (
                    template,
                    Violation(
                        "networkInterfaces[*].securityGroups",
                        None,
                        "a group allowing all protocols to and from itself",
                        "",
                        status="not-evaluated",
                    ),
                )
            )
            continue
        found.append(
            (
                template,
                Violation(
                    "networkInterfaces[*].securityGroups",
                    sorted(groups[sg].name for sg in declared),
                    "one group allowing all protocols from itself and to itself",
                    "attach the pool's EFA security group (infra/gpu_node_groups.py): "
                    "ingress and egress protocol -1, self=True",
                ),
            )
        )
    return found


RULES = (
    Rule(
        id="EFA-001",
        name="gpu-template-has-an-efa-per-network-card",
        domain="gpu/efa",
        severity="mandatory",
        rationale="without an EFA on every network card, inter-node traffic falls back to TCP at a fraction of "
        "the bandwidth the GPUs were bought for (the seed's rebuild phase moved to RDMA/EFA).",
        resource_types=(_LAUNCH_TEMPLATE,),
        check=_efa_per_card,
    ),
    Rule(
        id="EFA-002",
        name="gpu-node-group-in-one-az",
        domain="gpu/efa",
        severity="mandatory",
        rationale="a GPU node group spread over AZs cannot sit in one cluster placement group, and EFA does "
        "not cross AZs.",
        resource_types=(_NODE_GROUP,),
        check=_one_subnet,
    ),
    Rule(
        id="EFA-003",
        name="gpu-nodes-in-a-cluster-placement-group",
        domain="gpu/efa",
        severity="mandatory",
        rationale="GPU nodes scattered across the AZ's network see tail latency EFA cannot hide; a cluster "
        "placement group (or a reservation) keeps them on one spine.",
        resource_types=(_LAUNCH_TEMPLATE, _PLACEMENT_GROUP),
        stack_check=_placement,
    ),
    Rule(
        id="EFA-004",
        name="efa-security-group-open-to-itself",
        domain="gpu/efa",
        severity="mandatory",
        rationale="EFA needs all protocols between the group's members both ways; a missing egress rule makes "
        "NCCL hang at start-up, not fail.",
        resource_types=(_LAUNCH_TEMPLATE, _SECURITY_GROUP, _INGRESS_RULE, _EGRESS_RULE),
        stack_check=_efa_security_group,
    ),
)
