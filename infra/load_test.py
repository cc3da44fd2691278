"""Where the distributed load runs (`peakguard loadtest`, loadtest/): a CPU node pool of its own,
tainted so nothing else lands on it and nothing of it lands on the GPU pools, scaled from zero by
the cluster autoscaler when a load Job asks for workers; a namespace with the workers' service
account (allowed to read the run's start ConfigMap, nothing else) and quotas that bound a run to
the pool's size. Absent unless the stack sets `peakguard:kubernetes.loadTest`.

The workers' pods select the pool by its label and tolerate its taint (loadtest/job.py's
WorkerPods defaults are these names); the model service's network policy admits them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import facts
from infra.config import LoadTestConfig
from infra.launch_templates import (
    CLUSTER_AUTOSCALER_TEMPLATE,
    encrypted_root_volume,
    instance_metadata_options,
    tag_for_scale_from_zero,
)

__all__ = [
    "LOAD_POOL", "LOAD_TAINT", "WORKER_ACCOUNT", "LoadTestPool", "LoadTestPoolArgs", "scale_from_zero_tags",
    "workers_per_node",
]  # fmt: skip

LOAD_POOL = "load"
LOAD_TAINT = facts.Taint(key="peakguard.io/load", value="true", effect="NoSchedule")
WORKER_ACCOUNT = "load-worker"


def workers_per_node(config: LoadTestConfig) -> int:
    """One-vCPU workers a node holds: its vCPUs less one, for what the kubelet reserves and the
    node's own DaemonSets (aws-node, kube-proxy) request."""
    cpus, _ = facts.CPU_INSTANCE_TYPES[config.instance_type]
    return cpus - 1


def scale_from_zero_tags(config: LoadTestConfig) -> dict[str, str]:
    """What the cluster autoscaler needs to scale the pool up from zero nodes (EKS copies neither
    labels nor taints to the Auto Scaling group: eksctl guide, "Scaling up from 0"): the pool label
    the workers select, the taint they tolerate, the CPU and memory a node offers."""
    cpus, memory = facts.CPU_INSTANCE_TYPES[config.instance_type]
    return {
        f"{CLUSTER_AUTOSCALER_TEMPLATE}/label/{facts.POOL_LABEL}": LOAD_POOL,
        f"{CLUSTER_AUTOSCALER_TEMPLATE}/taint/{LOAD_TAINT.key}": f"{LOAD_TAINT.value}:{LOAD_TAINT.effect}",
        f"{CLUSTER_AUTOSCALER_TEMPLATE}/resources/cpu": str(cpus),
        f"{CLUSTER_AUTOSCALER_TEMPLATE}/resources/memory": f"{memory}Gi",
    }


@dataclass(frozen=True)
class LoadTestPoolArgs:
    env: str
    config: LoadTestConfig
    cluster_name: pulumi.Input[str]
    cluster_security_group_id: pulumi.Input[str]
    node_role_arn: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    provider: k8s.Provider
    depends_on: Sequence[pulumi.Resource] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


class LoadTestPool(pulumi.ComponentResource):
    def __init__(self, name: str, args: LoadTestPoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:loadtest:LoadTestPool", name, None, opts)
        config, tags = args.config, {**args.tags, "peakguard:pool": LOAD_POOL}
        child = pulumi.ResourceOptions(parent=self)
        template = aws.ec2.LaunchTemplate(
            f"{name}-nodes",
            description=f"Load generator nodes of peakguard {args.env}: IMDSv2 only, encrypted root volume",
            metadata_options=instance_metadata_options(hop_limit=1),
            block_device_mappings=[encrypted_root_volume("/dev/xvda", size_gib=50)],
            vpc_security_group_ids=[args.cluster_security_group_id],
            update_default_version=True,
            tag_specifications=[aws.ec2.LaunchTemplateTagSpecificationArgs(
                resource_type="instance", tags={**tags, "Name": f"peakguard-{args.env}-load"})],
            # The pool tag only on the instances: on a launch template it marks a GPU pool's (policies).
            tags=dict(args.tags),
            opts=child,
        )  # fmt: skip
        self.node_group = aws.eks.NodeGroup(
            f"{name}-nodes",
            cluster_name=args.cluster_name,
            node_group_name=LOAD_POOL,
            node_role_arn=args.node_role_arn,
            subnet_ids=list(args.private_subnet_ids),
            ami_type="AL2023_x86_64_STANDARD",
            instance_types=[config.instance_type],
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)
            ),
            # Idle at zero: a load test is minutes a month; the autoscaler brings nodes for its Job.
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=0, desired_size=0, max_size=config.max_nodes),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable_percentage=facts.MAX_UNAVAILABLE_PERCENTAGE),
            labels={facts.POOL_LABEL: LOAD_POOL},
            taints=[aws.eks.NodeGroupTaintArgs(key=LOAD_TAINT.key, value=LOAD_TAINT.value,
                                               effect=facts.EKS_TAINT_EFFECTS[LOAD_TAINT.effect])],
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on),
                                        ignore_changes=["scalingConfig.desiredSize"]),
        )  # fmt: skip
        group = self.node_group.resources.apply(lambda r: r[0].autoscaling_groups[0].name)
        tag_for_scale_from_zero(name, group, scale_from_zero_tags(config), child)
        self._kubernetes(name, args)
        self.register_outputs({"nodeGroup": self.node_group.node_group_name})

    def _kubernetes(self, name: str, args: LoadTestPoolArgs) -> None:
        config = args.config
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={"name": config.namespace, "labels": {"app.kubernetes.io/part-of": "peakguard",
                                                           "pod-security.kubernetes.io/enforce": "restricted"}},
            opts=k8s_opts,
        )  # fmt: skip
        in_ns = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[namespace])
        metadata = {"namespace": config.namespace, "labels": {"app.kubernetes.io/name": WORKER_ACCOUNT}}
        k8s.core.v1.ServiceAccount(f"{name}-worker", metadata={**metadata, "name": WORKER_ACCOUNT}, opts=in_ns)
        k8s.rbac.v1.Role(
            f"{name}-worker",
            metadata={**metadata, "name": WORKER_ACCOUNT},
            # The start barrier only: a worker reads its run's ConfigMap (loadtest/worker.py).
            rules=[k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["configmaps"], verbs=["get"])],
            opts=in_ns,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-worker",
            metadata={**metadata, "name": WORKER_ACCOUNT},
            role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=WORKER_ACCOUNT),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=WORKER_ACCOUNT, namespace=config.namespace)],
            opts=in_ns,
        )
        workers = workers_per_node(config) * config.max_nodes
        _, memory = facts.CPU_INSTANCE_TYPES[config.instance_type]
        # A run can never ask for more than the pool holds: one worker a vCPU, the pool's nodes at most.
        k8s.core.v1.ResourceQuota(
            f"{name}-quota",
            metadata={**metadata, "name": "load"},
            spec={"hard": {"requests.cpu": str(workers), "limits.cpu": str(workers),
                           "requests.memory": f"{memory * config.max_nodes}Gi",
                           "limits.memory": f"{memory * config.max_nodes}Gi",
                           "pods": str(workers), "count/jobs.batch": "2"}},
            opts=in_ns,
        )  # fmt: skip
        k8s.core.v1.LimitRange(
            f"{name}-defaults",
            metadata={**metadata, "name": "load"},
            spec={"limits": [{"type": "Container", "default": {"cpu": "1", "memory": "1Gi"},
                              "defaultRequest": {"cpu": "1", "memory": "1Gi"}}]},
            opts=in_ns,
        )  # fmt: skip
