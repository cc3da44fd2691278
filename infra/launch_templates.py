"""Launch-template parts every node group shares: IMDSv2, encrypted root volumes, EFA interfaces."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from infra import facts

__all__ = [
    "CLUSTER_AUTOSCALER_TEMPLATE",
    "efa_network_interfaces",
    "encrypted_root_volume",
    "instance_metadata_options",
    "tag_for_scale_from_zero",
]

CLUSTER_AUTOSCALER_TEMPLATE = "k8s.io/cluster-autoscaler/node-template"
"""Auto Scaling group tags under this prefix describe the node a group would start: the cluster
autoscaler reads them to scale a group up from zero nodes."""


def instance_metadata_options(*, hop_limit: int) -> aws.ec2.LaunchTemplateMetadataOptionsArgs:
    """IMDSv2 only. Hop limit 1 keeps pods (one network hop further) away from the node's
    credentials; 2 only where a pool's config says its pods need instance metadata."""
    if hop_limit not in (1, 2):
        raise ValueError(f"IMDS hop limit must be 1 or 2, got {hop_limit}")
    return aws.ec2.LaunchTemplateMetadataOptionsArgs(
        http_endpoint="enabled",
        http_tokens="required",
        http_put_response_hop_limit=hop_limit,
    )


def encrypted_root_volume(device_name: str, *, size_gib: int) -> aws.ec2.LaunchTemplateBlockDeviceMappingArgs:
    """An encrypted gp3 root volume. Encrypted with the account's default EBS key: a customer key
    would also need a grant for the Auto Scaling service-linked role, or nodes fail to launch."""
    return aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
        device_name=device_name,
        ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
            volume_size=size_gib,
            volume_type="gp3",
            encrypted="true",
            delete_on_termination="true",
        ),
    )


def efa_network_interfaces(
    instance: facts.InstanceType, security_group_ids: Sequence[pulumi.Input[str]]
) -> list[aws.ec2.LaunchTemplateNetworkInterfaceArgs]:
    """One interface per network card, as `infra.facts.efa_interfaces` lays them out.

    No subnet: the managed node group places the interfaces in its own subnet. Security groups
    go on every interface, because a launch template that defines network interfaces may not
    also set `vpc_security_group_ids`.
    """
    return [
        aws.ec2.LaunchTemplateNetworkInterfaceArgs(
            network_card_index=slot.network_card_index,
            device_index=slot.device_index,
            interface_type=slot.interface_type,
            security_groups=list(security_group_ids),
            delete_on_termination="true",
            associate_public_ip_address="false",
        )
        for slot in facts.efa_interfaces(instance)
    ]


def tag_for_scale_from_zero(
    prefix: str, autoscaling_group: pulumi.Input[str], template: dict[str, str], opts: pulumi.ResourceOptions
) -> None:
    """One Auto Scaling group tag per node-template entry (EKS copies none of a node group's labels,
    taints or resources to its group: eksctl guide, "Scaling up from 0"); not propagated to instances."""
    for key, value in template.items():
        aws.autoscaling.Tag(
            f"{prefix}-ca-" + key.removeprefix(CLUSTER_AUTOSCALER_TEMPLATE + "/").replace("/", "-"),
            autoscaling_group_name=autoscaling_group,
            tag=aws.autoscaling.TagTagArgs(key=key, value=value, propagate_at_launch=False),
            opts=opts,
        )
