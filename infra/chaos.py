"""Chaos as code: AWS Fault Injection Service experiment templates for the chaos-drill runbook, the
role FIS acts as, and the CloudWatch alarms every experiment stops on.

The experiments (the stack picks from `CHAOS_EXPERIMENTS`):
- `gpu-zone-stop-<az>`: stop every instance of the full model's GPU pool in one AZ
  (`aws:ec2:stop-instances`, restarted by FIS after `durationMinutes`, unless the node group's
  Auto Scaling group replaced them first): the seed's lost nodes, a zone at a time, which the 30%
  headroom and the zone spread must absorb.
- `subnet-disconnect-<az>`: cut one AZ's private subnet off (`aws:network:disrupt-connectivity`,
  scope `all`), for `durationMinutes`: a zone's network failing rather than its machines.
- `model-pod-delete`: delete a share of the model pods at once (`aws:eks:pod-delete`), what a
  bad rollout or a noisy neighbour does; FIS acts in the cluster as the Kubernetes user
  `fis-experiment` (an EKS access entry for its role) with a Role limited to what the action does.

Action ids, parameters, target keys and resource types are those of the FIS actions reference
(https://docs.aws.amazon.com/fis/latest/userguide/fis-actions-reference.html; the target keys:
.../action-sequence.html#action-targets); `facts.FIS_ACTIONS` lists each with its target key, and
the policy pack refuses an action outside it.

Stop conditions: two alarms on the model service's ALB target group, which the Load Balancer
Controller creates from the Ingress (so the program finds it by the controller's tags once the
Ingress is up): 5xx from the targets or the ALB itself over 1% of requests (the error-rate alert's
bound), and the targets' p99 response time over the SLO, each for 2 of the last 3 minutes (ALB
metrics are per minute). FIS stops an experiment when either alarms; the chaos-drill runbook stops
it sooner, on the pods' own metrics (runbooks/library/chaos_drill.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.config import ChaosConfig
from infra.facts import FIS_ACTIONS

__all__ = ["ERROR_RATE", "FIS_USER", "ChaosExperiments", "ChaosExperimentsArgs"]

FIS_USER = "fis-experiment"
"""The Kubernetes user FIS's EKS pod actions act as (FIS user guide, "Use the aws:eks:pod actions")."""
ERROR_RATE = 0.01
"""Target 5xx share that alarms: the model service's error-rate alert (infra/alerts.py)."""
_SERVICE_ACCOUNT = "fis-experiments"
_ERROR_SHARE = (
    "IF(FILL(requests, 0) + FILL(balancer, 0) > 0, "
    "(FILL(targets, 0) + FILL(balancer, 0)) / (FILL(requests, 0) + FILL(balancer, 0)), 0)"
)
"""CloudWatch metric math (FILL: a minute the ALB reported no such error counts as 0)."""
_CLUSTER_TAG, _STACK_TAG = "elbv2.k8s.aws/cluster", "ingress.k8s.aws/stack"
"""The tags the AWS Load Balancer Controller puts on what it creates for an Ingress
(aws-load-balancer-controller, pkg/deploy/tracking/provider.go)."""


@dataclass(frozen=True)
class ChaosExperimentsArgs:
    env: str
    config: ChaosConfig
    cluster_name: pulumi.Input[str]
    full_pool: str
    """The GPU pool whose instances `gpu-zone-stop` stops (tagged peakguard:pool by the node groups)."""
    full_pool_zones: Sequence[str]
    """Its AZs: a zone without it would give a template whose target is always empty."""
    private_subnet_ids: Mapping[str, pulumi.Input[str]]
    """By AZ, in the stack's AZ order."""
    namespace: str
    app_label: str
    """The model pods' `app.kubernetes.io/name`."""
    ingress: pulumi.Resource
    """The Ingress whose target group the alarms watch (looked up once it exists)."""
    ingress_name: str
    slo_p99_milliseconds: int
    partition: str
    region: str
    provider: k8s.Provider
    tags: Mapping[str, str] = field(default_factory=dict)


class ChaosExperiments(pulumi.ComponentResource):
    template_ids: dict[str, pulumi.Output[str]]
    """Experiment name -> FIS template id (published in the targets document)."""

    def __init__(self, name: str, args: ChaosExperimentsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:chaos:ChaosExperiments", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account = aws.get_caller_identity_output().account_id
        alarms = self._alarms(name, args)
        role = aws.iam.Role(
            f"{name}-fis",
            assume_role_policy=account.apply(lambda acct: json.dumps(trust_policy(args.partition, acct))),
            tags=dict(args.tags),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-fis",
            role=role.id,
            policy=pulumi.Output.all(account, args.cluster_name).apply(
                lambda values: json.dumps(role_policy(args.env, args.partition, args.region, values[0], values[1]))
            ),
            opts=child,
        )
        experiments = set(args.config.experiments)
        if "subnet-disconnect" in experiments:
            # The NACL work of disrupt-connectivity, as AWS maintains it (conditioned on FIS's own tag).
            aws.iam.RolePolicyAttachment(
                f"{name}-fis-network",
                role=role.name,
                policy_arn=f"arn:{args.partition}:iam::aws:policy/service-role/AWSFaultInjectionSimulatorNetworkAccess",
                opts=child,
            )
        if "model-pod-delete" in experiments:
            self._pod_access(name, args, role)
        stop = [aws.fis.ExperimentTemplateStopConditionArgs(source="aws:cloudwatch:alarm", value=a.arn) for a in alarms]
        self.template_ids = {}
        minutes = f"PT{args.config.duration_minutes}M"
        zones = [az for az in args.private_subnet_ids if az in args.full_pool_zones]
        for experiment in args.config.experiments:
            if experiment == "gpu-zone-stop":
                for az in zones:
                    self._template(
                        name, f"gpu-zone-stop-{az}", args, role, stop,
                        f"stop the {args.full_pool} pool's GPU instances in {az} for {minutes}",
                        # The managed node group's Auto Scaling group replaces a stopped instance; FIS
                        # then cannot start it again, and completes instead of failing (FIS reference).
                        "aws:ec2:stop-instances",
                        {"startInstancesAfterDuration": minutes, "completeIfInstancesTerminated": "true"},
                        aws.fis.ExperimentTemplateTargetArgs(
                            name="gpu-instances", resource_type="aws:ec2:instance", selection_mode="ALL",
                            resource_tags=[
                                aws.fis.ExperimentTemplateTargetResourceTagArgs(key=key, value=value)
                                for key, value in (("peakguard:env", args.env), ("peakguard:pool", args.full_pool))
                            ],
                            filters=[aws.fis.ExperimentTemplateTargetFilterArgs(
                                path="Placement.AvailabilityZone", values=[az])],
                        ),
                    )  # fmt: skip
            elif experiment == "subnet-disconnect":
                for az, subnet_id in args.private_subnet_ids.items():
                    subnet_arn = pulumi.Output.all(account, subnet_id).apply(
                        lambda values: f"arn:{args.partition}:ec2:{args.region}:{values[0]}:subnet/{values[1]}"
                    )
                    self._template(
                        name, f"subnet-disconnect-{az}", args, role, stop,
                        f"cut the private subnet in {az} off for {minutes}",
                        "aws:network:disrupt-connectivity", {"duration": minutes, "scope": "all"},
                        aws.fis.ExperimentTemplateTargetArgs(
                            name="zone-subnet", resource_type="aws:ec2:subnet", selection_mode="ALL",
                            resource_arns=[subnet_arn],
                        ),
                    )  # fmt: skip
            else:
                percent = args.config.pod_delete_percent
                self._template(
                    name, "model-pod-delete", args, role, stop,
                    f"delete {percent}% of the model pods at once",
                    # Its orchestration pod must pass the namespace's restricted Pod Security Standard.
                    "aws:eks:pod-delete",
                    {"kubernetesServiceAccount": _SERVICE_ACCOUNT, "fisPodSecurityPolicy": "restricted"},
                    aws.fis.ExperimentTemplateTargetArgs(
                        name="model-pods", resource_type="aws:eks:pod", selection_mode=f"PERCENT({percent})",
                        parameters={
                            "clusterIdentifier": args.cluster_name, "namespace": args.namespace,
                            "selectorType": "labelSelector",
                            "selectorValue": f"app.kubernetes.io/name={args.app_label}",
                        },
                    ),
                )  # fmt: skip
        self.register_outputs({"templates": self.template_ids})

    def _template(
        self,
        name: str,
        experiment: str,
        args: ChaosExperimentsArgs,
        role: aws.iam.Role,
        stop: Sequence[aws.fis.ExperimentTemplateStopConditionArgs],
        description: str,
        action_id: str,
        parameters: Mapping[str, str],
        target: aws.fis.ExperimentTemplateTargetArgs,
    ) -> None:
        key, _ = FIS_ACTIONS[action_id]
        template = aws.fis.ExperimentTemplate(
            f"{name}-{experiment}",
            description=f"peakguard {args.env}: {description}",
            role_arn=role.arn,
            stop_conditions=list(stop),
            actions=[
                aws.fis.ExperimentTemplateActionArgs(
                    name=experiment.replace("-", "_"),
                    action_id=action_id,
                    parameters=[
                        aws.fis.ExperimentTemplateActionParameterArgs(key=k, value=v) for k, v in parameters.items()
                    ],
                    target=aws.fis.ExperimentTemplateActionTargetArgs(key=key, value=target.name),
                )
            ],
            targets=[target],
            # A target that resolves to nothing (a zone with no GPU node now) fails the experiment
            # rather than passing a drill that injected no fault.
            experiment_options=aws.fis.ExperimentTemplateExperimentOptionsArgs(
                account_targeting="single-account", empty_target_resolution_mode="fail"
            ),
            tags={**args.tags, "Name": f"peakguard-{args.env}-{experiment}", "peakguard:experiment": experiment},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.template_ids[experiment] = template.id

    def _alarms(self, name: str, args: ChaosExperimentsArgs) -> list[aws.cloudwatch.MetricAlarm]:
        """Target 5xx share and target p99 of the Ingress's ALB target group."""
        group = aws.lb.get_target_group_output(
            tags={_CLUSTER_TAG: args.cluster_name, _STACK_TAG: f"{args.namespace}/{args.ingress_name}"},
            opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[args.ingress]),
        )
        balancer = aws.lb.get_load_balancer_output(
            arn=group.load_balancer_arns.apply(_first_balancer), opts=pulumi.InvokeOutputOptions(parent=self)
        )
        dimensions = {"TargetGroup": group.arn_suffix, "LoadBalancer": balancer.arn_suffix}
        child = pulumi.ResourceOptions(parent=self)
        common: dict[str, Any] = {
            "comparison_operator": "GreaterThanThreshold", "evaluation_periods": 3, "datapoints_to_alarm": 2,
            # The ALB reports nothing for a minute without requests: a quiet minute is not a failure.
            "treat_missing_data": "notBreaching", "tags": dict(args.tags),
        }  # fmt: skip
        # A zone stopped or cut off shows as the ALB's own 502/503/504 (HTTPCode_ELB_5XX_Count, per load
        # balancer), not the targets': both count. A request refused before a target was chosen is
        # not in RequestCount, so the ALB's errors are added to the denominator too.
        errors = aws.cloudwatch.MetricAlarm(
            f"{name}-target-5xx",
            alarm_description=f"peakguard {args.env}: over {ERROR_RATE:.0%} of model-service requests answered 5xx "
            "by the targets or the ALB (stops FIS experiments)",
            threshold=ERROR_RATE,
            metric_queries=[
                _metric("targets", "HTTPCode_Target_5XX_Count", dimensions),
                _metric("balancer", "HTTPCode_ELB_5XX_Count", {"LoadBalancer": dimensions["LoadBalancer"]}),
                _metric("requests", "RequestCount", dimensions),
                aws.cloudwatch.MetricAlarmMetricQueryArgs(
                    id="share",
                    expression=_ERROR_SHARE,
                    label="5xx share, targets' and the ALB's",
                    return_data=True,
                ),
            ],
            **common,
            opts=child,
        )
        latency = aws.cloudwatch.MetricAlarm(
            f"{name}-target-p99",
            alarm_description=f"peakguard {args.env}: model-service targets' p99 response time over the "
            f"{args.slo_p99_milliseconds} ms SLO (stops FIS experiments)",
            namespace="AWS/ApplicationELB",
            metric_name="TargetResponseTime",
            extended_statistic="p99",
            period=60,
            dimensions=dimensions,
            threshold=args.slo_p99_milliseconds / 1000,
            **common,
            opts=child,
        )
        return [errors, latency]

    def _pod_access(self, name: str, args: ChaosExperimentsArgs, role: aws.iam.Role) -> None:
        """What `aws:eks:pod-delete` needs in the cluster: the FIS role known as FIS_USER (an access
        entry), and a ServiceAccount and Role limited to the FIS pod's work, bound to both."""
        aws.eks.AccessEntry(
            f"{name}-fis-user",
            cluster_name=args.cluster_name,
            principal_arn=role.arn,
            user_name=FIS_USER,
            type="STANDARD",
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider)
        metadata = {"namespace": args.namespace, "name": _SERVICE_ACCOUNT,
                    "labels": {"app.kubernetes.io/name": _SERVICE_ACCOUNT}}  # fmt: skip
        k8s.core.v1.ServiceAccount(f"{name}-fis-service-account", metadata=metadata, opts=k8s_opts)
        k8s.rbac.v1.Role(
            f"{name}-fis-role",
            metadata=metadata,
            # The FIS user guide's role for the EKS pod actions ("Configure the Kubernetes service account").
            rules=[
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=[""], resources=["configmaps"], verbs=["get", "create", "patch", "delete"]
                ),
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=[""], resources=["pods"], verbs=["create", "list", "get", "delete", "deletecollection"]
                ),
                k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods/ephemeralcontainers"], verbs=["update"]),
                k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods/exec"], verbs=["create"]),
                k8s.rbac.v1.PolicyRuleArgs(api_groups=["apps"], resources=["deployments"], verbs=["get"]),
            ],
            opts=k8s_opts,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-fis-binding",
            metadata=metadata,
            role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=_SERVICE_ACCOUNT),
            subjects=[
                k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=_SERVICE_ACCOUNT, namespace=args.namespace),
                k8s.rbac.v1.SubjectArgs(kind="User", name=FIS_USER, api_group="rbac.authorization.k8s.io"),
            ],
            opts=k8s_opts,
        )


def _first_balancer(arns: Sequence[str]) -> str:
    if not arns:
        raise ValueError(
            "the model service's target group is attached to no load balancer yet: has the AWS Load Balancer "
            "Controller reconciled the Ingress? Run `pulumi up` again once it has"
        )
    return sorted(arns)[0]


def _metric(query_id: str, metric: str, dimensions: Mapping[str, Any]) -> aws.cloudwatch.MetricAlarmMetricQueryArgs:
    return aws.cloudwatch.MetricAlarmMetricQueryArgs(
        id=query_id,
        metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
            namespace="AWS/ApplicationELB", metric_name=metric, dimensions=dict(dimensions), period=60, stat="Sum"
        ),
    )


def trust_policy(partition: str, account: str) -> dict[str, Any]:
    """FIS may assume the role, for this account's experiments only (the confused-deputy conditions
    of the FIS user guide's service role)."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "fis.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": account},
                "ArnLike": {"aws:SourceArn": f"arn:{partition}:fis:*:{account}:experiment/*"},
            },
        }],
    }  # fmt: skip


def role_policy(env: str, partition: str, region: str, account: str, cluster: str) -> dict[str, Any]:
    """Stop and start this env's instances only (by tag); describe what the pod action resolves."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "StopAndStartThisEnvsInstances",
                "Effect": "Allow",
                "Action": ["ec2:StopInstances", "ec2:StartInstances"],
                "Resource": f"arn:{partition}:ec2:{region}:{account}:instance/*",
                "Condition": {"StringEquals": {"aws:ResourceTag/peakguard:env": env}},
            },
            {
                # Describe* and tag:GetResources take no resource narrower than * (Service
                # Authorization Reference for EC2 and the Resource Groups Tagging API).
                "Sid": "ResolveTargets",
                "Effect": "Allow",
                "Action": ["ec2:DescribeInstances", "ec2:DescribeSubnets", "tag:GetResources"],
                "Resource": "*",
            },
            {
                "Sid": "FindTheCluster",
                "Effect": "Allow",
                "Action": ["eks:DescribeCluster"],
                "Resource": f"arn:{partition}:eks:{region}:{account}:cluster/{cluster}",
            },
        ],
    }
