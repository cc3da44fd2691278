"""The predictive-scale CronJob: every few minutes, `peakguard runbook run predictive-scale` in the
model service's namespace, with its own IRSA role and Kubernetes Role, each allowed only what that
runbook does (runbooks/library/predictive_scale.py).

AWS (the role's policy): read the request history (`cloudwatch:GetMetricData`, and the target group
found by its tags: `elasticloadbalancing:DescribeTargetGroups`, `DescribeTags`; none of the three
takes a resource narrower than `*`, per the Service Authorization Reference for CloudWatch and
Elastic Load Balancing V2), read the env's SSM switches and targets document, and read and resize
the cluster's node groups. Kubernetes (the Role): read and patch the full model's HPA, take the
runbooks' Lease, read the admin-token Secret (the runbooks' ports read it at start).

It stands aside for incidents (`--stand-aside`): a hold, a freeze or a held lock end its cycle
with exit 0, journaled. `concurrencyPolicy: Forbid` and a deadline shorter than the schedule keep
two cycles from ever overlapping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.config import PredictiveScaleConfig
from infra.irsa import irsa_role
from infra.targets import RUNBOOK_LOCK, freeze_parameter_name, hold_parameter_name, parameter_name

__all__ = ["SERVICE_ACCOUNT", "PredictiveScaleJob", "PredictiveScaleJobArgs"]

SERVICE_ACCOUNT = "predictive-scale"
_JOURNALS = "/var/lib/peakguard/runs"


@dataclass(frozen=True)
class PredictiveScaleJobArgs:
    env: str
    config: PredictiveScaleConfig
    namespace: str
    cluster_name: pulumi.Input[str]
    hpa: str
    admin_token_secret: str
    region: str
    partition: str
    provider: k8s.Provider
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    tags: Mapping[str, str] = field(default_factory=dict)
    depends_on: Sequence[pulumi.Resource] = ()


class PredictiveScaleJob(pulumi.ComponentResource):
    def __init__(self, name: str, args: PredictiveScaleJobArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:runbooks:PredictiveScaleJob", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        account = aws.get_caller_identity_output().account_id
        role = irsa_role(
            f"{name}-role",
            namespace=args.namespace,
            service_account=SERVICE_ACCOUNT,
            oidc_provider_arn=args.oidc_provider_arn,
            oidc_issuer=args.oidc_issuer,
            policy=pulumi.Output.all(account, args.cluster_name).apply(
                lambda values: json.dumps(policy(args.env, args.partition, args.region, values[0], values[1]))
            ),
            tags=args.tags,
            parent=self,
        )
        metadata = {"namespace": args.namespace, "labels": {"app.kubernetes.io/name": SERVICE_ACCOUNT}}
        k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata={**metadata, "name": SERVICE_ACCOUNT, "annotations": {"eks.amazonaws.com/role-arn": role.arn}},
            opts=k8s_opts,
        )
        k8s.rbac.v1.Role(
            f"{name}-role",
            metadata={**metadata, "name": SERVICE_ACCOUNT},
            rules=rules(args.hpa, args.admin_token_secret),
            opts=k8s_opts,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-role-binding",
            metadata={**metadata, "name": SERVICE_ACCOUNT},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVICE_ACCOUNT},
            subjects=[{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": args.namespace}],
            opts=k8s_opts,
        )
        self.cron_job = k8s.batch.v1.CronJob(
            f"{name}-cron-job",
            metadata={**metadata, "name": SERVICE_ACCOUNT},
            spec=cron_job_spec(args),
            opts=k8s_opts,
        )
        self.register_outputs({})


def policy(env: str, partition: str, region: str, account: str, cluster: str) -> dict[str, Any]:
    """What predictive-scale needs of AWS, and nothing else."""
    parameters = [f"arn:{partition}:ssm:{region}:{account}:parameter{name}"
                  for name in (parameter_name(env), hold_parameter_name(env), freeze_parameter_name(env))]  # fmt: skip
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RequestHistory",
                "Effect": "Allow",
                # No resource-level permissions for these three (Service Authorization Reference).
                "Action": [
                    "cloudwatch:GetMetricData",
                    "elasticloadbalancing:DescribeTargetGroups",
                    "elasticloadbalancing:DescribeTags",
                ],
                "Resource": "*",
            },
            {"Sid": "TargetsAndSwitches", "Effect": "Allow", "Action": "ssm:GetParameter", "Resource": parameters},
            {
                "Sid": "NodeGroups",
                "Effect": "Allow",
                "Action": ["eks:DescribeNodegroup", "eks:UpdateNodegroupConfig"],
                "Resource": f"arn:{partition}:eks:{region}:{account}:nodegroup/{cluster}/*/*",
            },
        ],
    }


def rules(hpa: str, admin_token_secret: str) -> list[dict[str, Any]]:
    """What predictive-scale needs of the namespace: its HPA, the runbooks' Lease, the admin token."""
    return [
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "resourceNames": [hpa],
         "verbs": ["get", "patch"]},
        # `create` cannot be limited by name (RBAC: resourceNames does not apply to create).
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [RUNBOOK_LOCK],
         "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [admin_token_secret], "verbs": ["get"]},
    ]  # fmt: skip


def cron_job_spec(args: PredictiveScaleJobArgs) -> dict[str, Any]:
    config = args.config
    every = config.every_minutes
    command = ["runbook", "run", "predictive-scale", "--env", args.env, "--region", args.region,
               "--replica-rps", f"{config.replica_rps:g}", "--horizon", str(config.horizon_minutes),
               "--model", config.model, "--operator", "cronjob/predictive-scale", "--yes", "--stand-aside"]  # fmt: skip
    return {
        "schedule": f"*/{every} * * * *" if every < 60 else "0 * * * *",
        # A cycle never overlaps the next, and a missed one is not made up for: the next forecasts anew.
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 60,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 5,
        "jobTemplate": {
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": max(60, every * 60 - 30),
                "ttlSecondsAfterFinished": 3600,
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": SERVICE_ACCOUNT}},
                    "spec": {
                        "serviceAccountName": SERVICE_ACCOUNT,
                        "restartPolicy": "Never",
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "predictive-scale",
                                "image": config.image,
                                "args": command,
                                "env": [
                                    {"name": "PEAKGUARD_JOURNAL_DIR", "value": _JOURNALS},
                                    {"name": "AWS_REGION", "value": args.region},
                                ],
                                "resources": {
                                    "requests": {"cpu": "500m", "memory": "1Gi"},
                                    "limits": {"memory": "2Gi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [
                                    {"name": "journals", "mountPath": _JOURNALS},
                                    # An emptyDir: the root filesystem is read-only.
                                    {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
                                ],
                            }
                        ],
                        # The journal lives as long as the pod; its records are in the pod's log too.
                        "volumes": [{"name": "journals", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                    },
                },
            }
        },
    }
