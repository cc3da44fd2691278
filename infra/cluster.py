"""The EKS control plane, its identity plumbing, core add-ons and the CPU system node group."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra import facts
from infra.config import ClusterConfig
from infra.launch_templates import encrypted_root_volume, instance_metadata_options

__all__ = ["Cluster", "ClusterArgs"]

_NODE_POLICIES = (
    "AmazonEKSWorkerNodePolicy",
    "AmazonEC2ContainerRegistryReadOnly",
    "AmazonEKS_CNI_Policy",
    # Session Manager: how the node playbooks reach nodes without SSH keys or open ports.
    "AmazonSSMManagedInstanceCore",
)


def _assume_role_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


@dataclass(frozen=True)
class ClusterArgs:
    config: ClusterConfig
    """The validated `peakguard:cluster` settings."""
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    """One per AZ; the control plane's ENIs and the system nodes go here."""
    partition: str = "aws"
    """ARN partition of the managed policies."""
    tags: Mapping[str, str] = field(default_factory=dict)


class Cluster(pulumi.ComponentResource):
    """EKS with KMS-encrypted secrets, control-plane logs, IRSA, add-ons and system nodes."""

    name: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    certificate_authority: pulumi.Output[str]
    """Base64 PEM of the cluster CA, as kubeconfig and bootstrap scripts take it."""
    security_group_id: pulumi.Output[str]
    """The cluster security group EKS creates; every node interface carries it."""
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    node_role_arn: pulumi.Output[str]
    system_node_group: aws.eks.NodeGroup
    vpc_cni: aws.eks.Addon
    """GPU node groups depend on it: nodes must not join before the CNI that drives EFA is there."""

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:infra:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        config = args.config
        tags = dict(args.tags)

        secrets_key = aws.kms.Key(
            f"{name}-secrets",
            description=f"Envelope encryption of Kubernetes secrets in EKS cluster {config.name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            tags=tags,
            opts=child,
        )
        aws.kms.Alias(
            f"{name}-secrets", name=f"alias/{config.name}-secrets", target_key_id=secrets_key.key_id, opts=child
        )

        cluster_role = aws.iam.Role(
            f"{name}-cluster", assume_role_policy=_assume_role_policy("eks.amazonaws.com"), tags=tags, opts=child
        )
        cluster_policy = aws.iam.RolePolicyAttachment(
            f"{name}-cluster",
            role=cluster_role.name,
            policy_arn=f"arn:{args.partition}:iam::aws:policy/AmazonEKSClusterPolicy",
            opts=child,
        )
        # Created before the cluster so we own its retention; EKS would create it without one.
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-control-plane",
            name=f"/aws/eks/{config.name}/cluster",
            retention_in_days=90,
            tags=tags,
            opts=child,
        )
        cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=config.name,
            version=config.kubernetes_version,
            role_arn=cluster_role.arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=list(args.private_subnet_ids),
                endpoint_private_access=True,
                endpoint_public_access=config.endpoint_public_access,
                public_access_cidrs=list(config.public_access_cidrs) if config.endpoint_public_access else None,
            ),
            # Pinned rather than left to EKS, so self-bootstrapping nodes can be told CoreDNS's address.
            kubernetes_network_config=aws.eks.ClusterKubernetesNetworkConfigArgs(
                service_ipv4_cidr=str(config.service_cidr)
            ),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                resources=["secrets"],
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=secrets_key.arn),
            ),
            enabled_cluster_log_types=list(config.log_types),
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API",
                # Whoever runs `pulumi up` administers the cluster: the Kubernetes side of the
                # program deploys through that identity.
                bootstrap_cluster_creator_admin_permissions=True,
            ),
            # Add-ons are ours, pinned below; EKS's unmanaged defaults would drift.
            bootstrap_self_managed_addons=False,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster_policy, log_group]),
        )
        self.name = cluster.name
        self.endpoint = cluster.endpoint
        self.certificate_authority = cluster.certificate_authority.data
        self.security_group_id = cluster.vpc_config.cluster_security_group_id
        self.oidc_issuer = cluster.identities[0].oidcs[0].issuer

        # IRSA: pods assume IAM roles through the cluster's OIDC issuer. AWS trusts the issuer's
        # certificate through its own CA library, so no thumbprint is pinned.
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc", url=self.oidc_issuer, client_id_lists=["sts.amazonaws.com"], tags=tags, opts=child
        )
        self.oidc_provider_arn = oidc.arn

        node_role = aws.iam.Role(
            f"{name}-node", assume_role_policy=_assume_role_policy("ec2.amazonaws.com"), tags=tags, opts=child
        )
        node_policies = [
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{policy}",
                role=node_role.name,
                policy_arn=f"arn:{args.partition}:iam::aws:policy/{policy}",
                opts=child,
            )
            for policy in _NODE_POLICIES
        ]
        self.node_role_arn = node_role.arn

        def addon(
            addon_name: str,
            depends_on: list[pulumi.Resource] | None = None,
            configuration: dict[str, str] | None = None,
        ) -> aws.eks.Addon:
            return aws.eks.Addon(
                f"{name}-{addon_name}",
                cluster_name=cluster.name,
                addon_name=addon_name,
                addon_version=config.addon_versions[addon_name],
                configuration_values=None if configuration is None else json.dumps(configuration),
                resolve_conflicts_on_create="OVERWRITE",
                # An operator's hotfix to an add-on's settings survives the next `pulumi up`.
                resolve_conflicts_on_update="PRESERVE",
                tags=tags,
                opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on or []),
            )

        # The network-policy agent: without it the model service's NetworkPolicy is accepted and not
        # enforced (EKS User Guide, "Configure your cluster for Kubernetes network policies":
        # configuration value enableNetworkPolicy, VPC CNI 1.14 or later).
        self.vpc_cni = addon("vpc-cni", configuration={"enableNetworkPolicy": "true"})
        kube_proxy = addon("kube-proxy")

        system = config.system_nodes
        system_template = aws.ec2.LaunchTemplate(
            f"{name}-system",
            description=f"System nodes of {config.name}: IMDSv2 only, encrypted root volume",
            metadata_options=instance_metadata_options(hop_limit=1),
            block_device_mappings=[encrypted_root_volume("/dev/xvda", size_gib=100)],
            vpc_security_group_ids=[self.security_group_id],
            update_default_version=True,
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(
                    resource_type="instance",
                    tags={**tags, "peakguard:pool": "system", "Name": f"{config.name}-system"},
                )
            ],
            tags=tags,
            opts=child,
        )
        self.system_node_group = aws.eks.NodeGroup(
            f"{name}-system",
            cluster_name=cluster.name,
            node_group_name="system",
            node_role_arn=node_role.arn,
            subnet_ids=list(args.private_subnet_ids),
            ami_type="AL2023_x86_64_STANDARD",
            instance_types=[system.instance_type],
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=system_template.id, version=system_template.latest_version.apply(str)
            ),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=system.scaling.min_size,
                desired_size=system.scaling.desired_size,
                max_size=system.scaling.max_size,
            ),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(
                max_unavailable_percentage=facts.MAX_UNAVAILABLE_PERCENTAGE
            ),
            labels={"peakguard.io/pool": "system"},
            tags=tags,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*node_policies, self.vpc_cni, kube_proxy],
                # The cluster autoscaler and the runbooks own the live size.
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )
        # CoreDNS needs nodes to schedule on; created before them it reports DEGRADED and fails.
        addon("coredns", depends_on=[self.system_node_group])

        self.register_outputs(
            {
                "name": self.name,
                "endpoint": self.endpoint,
                "oidcProviderArn": self.oidc_provider_arn,
                "securityGroupId": self.security_group_id,
            }
        )
