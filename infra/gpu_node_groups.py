"""GPU pools: per pool and AZ a placement group and an EKS managed node group with EFA, in two
generations (blue/green) so that `rolling-upgrade` can move nodes to a new image batch by batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.config import Generation, GpuPoolConfig, NodeImage
from infra.facts import (
    DRIVER_DEPLOY_LABEL,
    EKS_TAINT_EFFECTS,
    GENERATION_LABEL,
    GPU_TAINT,
    MIG_CONFIG_LABEL,
    NODE_GROUP_LABEL,
    POOL_LABEL,
    PREFLIGHT_TAINT,
)
from infra.launch_templates import (
    CLUSTER_AUTOSCALER_TEMPLATE,
    efa_network_interfaces,
    encrypted_root_volume,
    instance_metadata_options,
    tag_for_scale_from_zero,
)
from infra.node_bootstrap import NodeJoin, al2023_user_data, encode, ubuntu_user_data

__all__ = [
    "GENERATION_LABEL",
    "GpuNodeGroup",
    "GpuNodeGroups",
    "GpuNodeGroupsArgs",
    "node_group_name",
    "scale_from_zero_tags",
]

_ROOT_DEVICE = {"al2023": "/dev/xvda", "ubuntu": "/dev/sda1"}
_AMI_TYPE = {"al2023": "AL2023_x86_64_NVIDIA", "ubuntu": "CUSTOM"}


def node_group_name(pool: str, availability_zone: str, generation: Generation) -> str:
    """Stable, readable names: runbooks and operators find `gpu-full-us-west-2a-blue` at a glance."""
    return f"gpu-{pool}-{availability_zone}-{generation}"


def node_labels(pool: GpuPoolConfig) -> dict[str, str]:
    """Labels every node of the pool carries (the EFA device plugin and MIG manager select on them)."""
    labels = {POOL_LABEL: pool.name, "vpc.amazonaws.com/efa.present": "true"}
    if pool.instance.mig_profiles:
        # The GPU operator's MIG manager applies whatever this label names; say "off" explicitly.
        labels[MIG_CONFIG_LABEL] = pool.mig_profile or "all-disabled"
    if pool.ami_family == "al2023":
        # The EKS NVIDIA AMI ships driver and container toolkit: the GPU operator, which installs
        # its own on the Ubuntu (GDS) pools, must leave these nodes' alone.
        labels[DRIVER_DEPLOY_LABEL] = "pre-installed"
        labels["nvidia.com/gpu.deploy.container-toolkit"] = "false"
    return labels


"""Tag prefix the cluster autoscaler reads a group's would-be node from (its AWS README, "Auto-Discovery
Setup" / scaling a node group to and from 0)."""


def scale_from_zero_tags(pool: GpuPoolConfig) -> dict[str, str]:
    """Auto Scaling group tags that let the cluster autoscaler scale a group up from zero nodes.

    With no node to look at, it builds one from these: without the MIG or GPU resource, a pending
    pod that asks for `nvidia.com/mig-1g.10gb` fits no group and the `mig` pool (minSize 0) never
    grows. EKS creates the group but does not copy labels, taints or extended resources to it
    (eksctl guide, "Scaling up from 0"), so the program tags what the serving pods select on: the
    accelerators a node advertises (facts.InstanceType.accelerators), the pool label, the GPU taint."""
    template = {
        f"{CLUSTER_AUTOSCALER_TEMPLATE}/resources/{resource}": str(count)
        for resource, count in pool.instance.accelerators(node_labels(pool).get(MIG_CONFIG_LABEL)).items()
    }
    template[f"{CLUSTER_AUTOSCALER_TEMPLATE}/label/{POOL_LABEL}"] = pool.name
    template[f"{CLUSTER_AUTOSCALER_TEMPLATE}/taint/{GPU_TAINT.key}"] = f"{GPU_TAINT.value}:{GPU_TAINT.effect}"
    return template


@dataclass(frozen=True)
class GpuNodeGroupsArgs:
    env: str
    pools: Sequence[GpuPoolConfig]
    cluster_name: pulumi.Input[str]
    cluster_endpoint: pulumi.Input[str]
    cluster_certificate_authority: pulumi.Input[str]
    cluster_security_group_id: pulumi.Input[str]
    """EKS's cluster security group: node <-> control plane traffic."""
    dns_cluster_ip: str
    """CoreDNS's Service address, for nodes that bootstrap themselves (custom AMIs)."""
    node_role_arn: pulumi.Input[str]
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Mapping[str, pulumi.Input[str]]
    """Private subnet per AZ."""
    depends_on: Sequence[pulumi.Resource] = ()
    """Resources nodes must not join before (the VPC CNI add-on)."""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuNodeGroup:
    """What the program publishes about one per-AZ group."""

    pool: str
    availability_zone: str
    instance_type: str
    generation: Generation
    serving: bool
    """False for the incoming generation of an upgrade."""
    mig_config: str | None
    """The MIG layout its nodes are labelled with; None where the GPUs have no MIG."""
    name: pulumi.Output[str]
    autoscaling_group: pulumi.Output[str]
    node_group: aws.eks.NodeGroup
    launch_template: aws.ec2.LaunchTemplate


def _tags(args: GpuNodeGroupsArgs, pool: GpuPoolConfig, az: str) -> dict[str, str]:
    """What every resource of a pool in one AZ is tagged with (the node inventory finds nodes by them)."""
    return {**args.tags, "peakguard:env": args.env, "peakguard:pool": pool.name, "peakguard:az": az}


class GpuNodeGroups(pulumi.ComponentResource):
    """All GPU pools of an environment and the EFA security group their interfaces share."""

    efa_security_group_id: pulumi.Output[str]
    groups: list[GpuNodeGroup]

    def __init__(self, name: str, args: GpuNodeGroupsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:infra:GpuNodeGroups", name, None, opts)
        tags = dict(args.tags)
        # EFA's OS-bypass traffic is dropped unless the group allows all protocols to itself in
        # BOTH directions; the cluster security group on the same interfaces covers the rest.
        self_rule = {
            "protocol": "-1",
            "from_port": 0,
            "to_port": 0,
            "self": True,
            "description": "EFA: all traffic between members of this group",
        }
        efa_sg = aws.ec2.SecurityGroup(
            f"{name}-efa",
            vpc_id=args.vpc_id,
            description="EFA: all protocols between GPU nodes, both directions",
            ingress=[aws.ec2.SecurityGroupIngressArgs(**self_rule)],
            egress=[aws.ec2.SecurityGroupEgressArgs(**self_rule)],
            tags={**tags, "Name": f"{name}-efa"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.efa_security_group_id = efa_sg.id
        self.groups = []
        for pool in args.pools:
            component = _GpuPool(
                f"{name}-{pool.name}",
                pool=pool,
                args=args,
                efa_security_group_id=efa_sg.id,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.groups.extend(component.groups)
        self.register_outputs(
            {"efaSecurityGroupId": self.efa_security_group_id, "nodeGroups": [g.name for g in self.groups]}
        )


class _GpuPool(pulumi.ComponentResource):
    """One pool: per AZ a placement group (or the reservation's), and per generation a launch
    template and a node group. The serving generation always; the other only while the stack
    config names an image for it (`next`), empty, for `rolling-upgrade` to move nodes into."""

    def __init__(
        self,
        name: str,
        *,
        pool: GpuPoolConfig,
        args: GpuNodeGroupsArgs,
        efa_security_group_id: pulumi.Output[str],
        opts: pulumi.ResourceOptions,
    ) -> None:
        super().__init__("peakguard:infra:GpuPool", name, None, opts)
        self.groups: list[GpuNodeGroup] = []
        generations: list[tuple[Generation, NodeImage, bool]] = [(pool.generation, pool.image, True)]
        if pool.next_image is not None:
            generations.append((pool.idle_generation, pool.next_image, False))
        for az in pool.availability_zones:
            placement = self._placement(name, pool, az, args)
            for generation, image, serving in generations:
                self.groups.append(
                    self._group(
                        name, pool, az, args, efa_security_group_id, placement, generation, image, serving=serving
                    )
                )
        self.register_outputs({"nodeGroups": [g.name for g in self.groups]})

    def _placement(
        self, name: str, pool: GpuPoolConfig, az: str, args: GpuNodeGroupsArgs
    ) -> aws.ec2.LaunchTemplatePlacementArgs | None:
        """Both generations of an AZ share it: old and new nodes stay close for EFA while they overlap."""
        reservation = pool.capacity_reservations.get(az)
        # EFA needs the group's instances close together: a cluster placement group, one per AZ
        # because a placement group cannot span AZs. A capacity reservation already fixes where
        # instances go, and a placement group of ours beside it causes InsufficientInstanceCapacity
        # even while the reservation has room (eksctl issue #7949: 11 of 16 reserved nodes launched,
        # fixed by not creating one; AWS ParallelCluster's PlacementGroupCapacityTypeValidator warns
        # the same). So there we use the reservation's own placement group, if it was created in one.
        if reservation is None:
            placement_group = aws.ec2.PlacementGroup(
                f"{name}-{az}", strategy="cluster", tags=_tags(args, pool, az), opts=pulumi.ResourceOptions(parent=self)
            )
            return aws.ec2.LaunchTemplatePlacementArgs(group_name=placement_group.name)
        pulumi.log.info(
            f"{pool.name} in {az}: launches into capacity reservation {reservation.reservation_id} "
            f"({reservation.type}); "
            + (
                f"using its placement group {reservation.placement_group}"
                if reservation.placement_group
                else "no placement group is created beside a reservation"
            ),
            resource=self,
        )
        if reservation.placement_group:
            return aws.ec2.LaunchTemplatePlacementArgs(group_name=reservation.placement_group)
        return None

    def _group(
        self,
        name: str,
        pool: GpuPoolConfig,
        az: str,
        args: GpuNodeGroupsArgs,
        efa_security_group_id: pulumi.Output[str],
        placement: aws.ec2.LaunchTemplatePlacementArgs | None,
        generation: Generation,
        image: NodeImage,
        *,
        serving: bool,
    ) -> GpuNodeGroup:
        child = pulumi.ResourceOptions(parent=self)
        group_name = node_group_name(pool.name, az, generation)
        resource_name = f"{name}-{az}-{generation}"
        tags = {
            **_tags(args, pool, az),
            "peakguard:generation": generation,
            # Says which generation holds the pool's capacity, for the policy pack's sums.
            "peakguard:serving": "true" if serving else "false",
        }
        reservation = pool.capacity_reservations.get(az)

        labels = {**node_labels(pool), GENERATION_LABEL: generation}
        capacity_type = "CAPACITY_BLOCK" if reservation and reservation.type == "capacity-block" else "ON_DEMAND"
        if pool.ami_family == "al2023":
            user_data: pulumi.Input[str] = encode(al2023_user_data(startup_taints=[PREFLIGHT_TAINT]))
        else:
            # A custom AMI gets no bootstrap from EKS: the node must carry the labels EKS would set.
            join_labels = {
                **labels,
                NODE_GROUP_LABEL: group_name,
                "eks.amazonaws.com/nodegroup-image": image.ami_id or "",
                "eks.amazonaws.com/capacityType": capacity_type,
            }
            user_data = pulumi.Output.all(
                args.cluster_name, args.cluster_endpoint, args.cluster_certificate_authority
            ).apply(
                lambda values: encode(
                    ubuntu_user_data(
                        NodeJoin(
                            cluster_name=values[0],
                            endpoint=values[1],
                            certificate_authority=values[2],
                            dns_cluster_ip=args.dns_cluster_ip,
                            labels=join_labels,
                            taints=[GPU_TAINT, PREFLIGHT_TAINT],
                        )
                    )
                )
            )

        template = aws.ec2.LaunchTemplate(
            resource_name,
            description=f"{group_name}: {pool.instance_type}, EFA on every network card",
            instance_type=pool.instance_type,
            image_id=image.ami_id,
            network_interfaces=efa_network_interfaces(
                pool.instance, [args.cluster_security_group_id, efa_security_group_id]
            ),
            metadata_options=instance_metadata_options(hop_limit=2 if pool.pods_need_instance_metadata else 1),
            block_device_mappings=[encrypted_root_volume(_ROOT_DEVICE[pool.ami_family], size_gib=pool.root_volume_gib)],
            placement=placement,
            capacity_reservation_specification=(
                aws.ec2.LaunchTemplateCapacityReservationSpecificationArgs(
                    capacity_reservation_target=aws.ec2.LaunchTemplateCapacityReservationSpecificationCapacityReservationTargetArgs(
                        capacity_reservation_id=reservation.reservation_id
                    )
                )
                if reservation
                else None
            ),
            instance_market_options=(
                aws.ec2.LaunchTemplateInstanceMarketOptionsArgs(market_type="capacity-block")
                if reservation and reservation.type == "capacity-block"
                else None
            ),
            user_data=user_data,
            update_default_version=True,
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="instance", tags={**tags, "Name": group_name}),
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="volume", tags=tags),
            ],
            # Says why the hop limit is 2, for the policy pack's IMDS rule (policies/rules/security.py).
            tags={**tags, "peakguard:pods-need-instance-metadata": "true"}
            if pool.pods_need_instance_metadata
            else tags,
            opts=child,
        )

        scaling = pool.scaling_per_az
        # The incoming generation is declared empty; `rolling-upgrade` moves the pool's nodes into it.
        sizes = (scaling.min_size, scaling.desired_size, scaling.max_size) if serving else (0, 0, scaling.max_size)
        node_group = aws.eks.NodeGroup(
            resource_name,
            cluster_name=args.cluster_name,
            node_group_name=group_name,
            node_role_arn=args.node_role_arn,
            subnet_ids=[args.private_subnet_ids[az]],
            ami_type=_AMI_TYPE[pool.ami_family],
            release_version=image.release_version,
            capacity_type=capacity_type,
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)
            ),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=sizes[0], desired_size=sizes[1], max_size=sizes[2]
            ),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable_percentage=pool.max_unavailable_percentage),
            # EKS replaces nodes whose GPUs or kubelet go unhealthy, instead of leaving them in rotation.
            node_repair_config=aws.eks.NodeGroupNodeRepairConfigArgs(enabled=True),
            labels=labels,
            # Not the startup taint: EKS applies these through the API after the node joined, and
            # would put it back on a node whose preflight had already passed.
            taints=[
                aws.eks.NodeGroupTaintArgs(
                    key=GPU_TAINT.key, value=GPU_TAINT.value, effect=EKS_TAINT_EFFECTS[GPU_TAINT.effect]
                )
            ],
            tags=tags,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=list(args.depends_on),
                # The cluster autoscaler and the runbooks own the live size (DESIGN: who owns which field).
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )
        autoscaling_group = node_group.resources.apply(lambda r: r[0].autoscaling_groups[0].name)
        tag_for_scale_from_zero(resource_name, autoscaling_group, scale_from_zero_tags(pool), child)
        return GpuNodeGroup(
            pool=pool.name,
            availability_zone=az,
            instance_type=pool.instance_type,
            generation=generation,
            serving=serving,
            mig_config=labels.get(MIG_CONFIG_LABEL),
            name=node_group.node_group_name,
            autoscaling_group=autoscaling_group,
            node_group=node_group,
            launch_template=template,
        )
