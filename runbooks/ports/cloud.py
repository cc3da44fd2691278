"""The cloud port: the targets document, EKS node group sizes, single nodes' instances, and the SSM
switches, through boto3.

boto3 honours AWS_ENDPOINT_URL, so the local drill and the tests point it at moto on 127.0.0.1
with no code of ours in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.targets import TargetsDocument, TargetsDocumentError, parameter_name
from runbooks.errors import RunbookError
from runbooks.ports.aws_clients import BoundedClient
from runbooks.ports.aws_errors import translate as _translate
from runbooks.ports.fault_experiments import FaultExperiments
from runbooks.ports.request_history import CloudWatchRequestHistory
from runbooks.ports.switches import SsmSwitches

__all__ = ["AwsCloud", "NodeGroupSize", "instance_id_of"]


@dataclass(frozen=True)
class NodeGroupSize:
    min: int
    desired: int
    max: int

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "desired": self.desired, "max": self.max}


def instance_id_of(provider_id: str) -> str:
    """The EC2 instance behind a node, from its `spec.providerID` (`aws:///us-west-2a/i-0abc...`)."""
    instance = provider_id.rsplit("/", 1)[-1]
    if not provider_id.startswith("aws://") or not instance.startswith("i-"):
        raise RunbookError(f"providerID {provider_id!r} is not an EC2 instance (aws:///<az>/i-...); is it an EKS node?")
    return instance


class AwsCloud:
    def __init__(self, session: Any, *, env: str) -> None:
        """`session` is a boto3 Session in the env's account and region."""
        self._session = session
        self._env = env
        self._eks = BoundedClient(session, "eks")
        self._ssm = BoundedClient(session, "ssm")
        self._autoscaling = BoundedClient(session, "autoscaling")
        self._ec2 = BoundedClient(session, "ec2")
        self.switches = SsmSwitches(self._ssm, env=env)

    def request_history(self, *, cluster: str, namespace: str, ingress: str) -> CloudWatchRequestHistory:
        """The model service's request-rate history (its ALB target group's RequestCount)."""
        cloudwatch, elbv2 = BoundedClient(self._session, "cloudwatch"), BoundedClient(self._session, "elbv2")
        return CloudWatchRequestHistory(cloudwatch, elbv2, cluster=cluster, namespace=namespace, ingress=ingress)

    def fault_experiments(self) -> FaultExperiments:
        """AWS FIS: the env's experiment templates and the experiments a run starts."""
        return FaultExperiments(BoundedClient(self._session, "fis"), env=self._env)

    def targets(self) -> TargetsDocument:
        """What the Pulumi program published for this env (no Pulumi backend needed)."""
        name = parameter_name(self._env)
        try:
            value = self._ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except self._ssm.exceptions.ParameterNotFound:
            raise RunbookError(
                f"SSM parameter {name} not found: has `pulumi up -s {self._env}` run in this account and region?"
            ) from None
        except Exception as exc:
            raise _translate(exc, f"read SSM parameter {name}") from exc
        try:
            return TargetsDocument.from_json(value, source=name)
        except TargetsDocumentError as exc:
            raise RunbookError(str(exc)) from None

    def node_group_size(self, cluster: str, node_group: str) -> NodeGroupSize:
        try:
            group = self._eks.describe_nodegroup(clusterName=cluster, nodegroupName=node_group)["nodegroup"]
        except Exception as exc:
            raise _translate(exc, f"describe EKS node group {cluster}/{node_group}") from exc
        scaling = group["scalingConfig"]
        return NodeGroupSize(min=scaling["minSize"], desired=scaling["desiredSize"], max=scaling["maxSize"])

    def set_node_group_size(self, cluster: str, node_group: str, size: NodeGroupSize) -> None:
        if not 0 <= size.min <= size.desired <= size.max:
            raise RunbookError(f"node group {node_group}: {size.to_dict()} needs min <= desired <= max")
        try:
            self._eks.update_nodegroup_config(
                clusterName=cluster,
                nodegroupName=node_group,
                scalingConfig={"minSize": size.min, "desiredSize": size.desired, "maxSize": size.max},
            )
        except Exception as exc:
            raise _translate(exc, f"resize EKS node group {cluster}/{node_group} to {size.to_dict()}") from exc

    def instances_of(self, autoscaling_group: str) -> list[str]:
        """Instance ids the group holds now, launching or in service (not those on their way out)."""
        leaving = ("Terminating", "Terminated", "Detaching", "Detached")
        instances = self._autoscaling_group(autoscaling_group).get("Instances", [])
        return sorted(i["InstanceId"] for i in instances if not i["LifecycleState"].startswith(leaving))

    def autoscaling_group_size(self, autoscaling_group: str) -> NodeGroupSize:
        """The Auto Scaling group's own sizes: where an EKS scaling update shows once it has landed
        (EKS applies UpdateNodegroupConfig asynchronously)."""
        group = self._autoscaling_group(autoscaling_group)
        return NodeGroupSize(min=group["MinSize"], desired=group["DesiredCapacity"], max=group["MaxSize"])

    def _autoscaling_group(self, name: str) -> dict[str, Any]:
        try:
            found = self._autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        except Exception as exc:
            raise _translate(exc, f"describe Auto Scaling group {name}") from exc
        if not found:
            raise RunbookError(
                f"Auto Scaling group {name} not found: the targets document is older than the node groups; "
                "re-run `pulumi up`"
            )
        group: dict[str, Any] = found[0]
        return group

    def group_of_instance(self, instance_id: str) -> str | None:
        """The Auto Scaling group an instance belongs to; None once it is gone."""
        try:
            found = self._autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])
        except Exception as exc:
            raise _translate(exc, f"describe instance {instance_id} in Auto Scaling") from exc
        instances = found.get("AutoScalingInstances", [])
        return str(instances[0]["AutoScalingGroupName"]) if instances else None

    def node_group_image(self, cluster: str, node_group: str) -> dict[str, str | None]:
        """What the group's nodes boot: its AL2023 `releaseVersion`, or the AMI of its launch template
        (a custom AMI), whichever it has."""
        try:
            group = self._eks.describe_nodegroup(clusterName=cluster, nodegroupName=node_group)["nodegroup"]
        except Exception as exc:
            raise _translate(exc, f"describe EKS node group {cluster}/{node_group}") from exc
        image: dict[str, str | None] = {"releaseVersion": group.get("releaseVersion"), "amiId": None}
        template = group.get("launchTemplate") or {}
        if template.get("id"):
            try:
                versions = self._ec2.describe_launch_template_versions(
                    LaunchTemplateId=template["id"], Versions=[str(template.get("version", "$Latest"))]
                )["LaunchTemplateVersions"]
            except Exception as exc:
                raise _translate(exc, f"describe launch template {template['id']} of {node_group}") from exc
            if versions:
                image["amiId"] = versions[0].get("LaunchTemplateData", {}).get("ImageId")
        return image

    def remove_instance(self, instance_id: str) -> None:
        """Terminate one node's instance and lower its group's desired size by one, so the group does
        not launch a replacement: the drained node goes, and only it (a blue/green batch's last step).

        Through Auto Scaling's TerminateInstanceInAutoScalingGroup, as the cluster-autoscaler removes
        nodes of EKS managed node groups; EKS follows the group's new desired size.
        """
        try:
            self._autoscaling.terminate_instance_in_auto_scaling_group(
                InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
            )
        except Exception as exc:
            raise _translate(exc, f"terminate instance {instance_id} (and lower its group's desired size)") from exc
