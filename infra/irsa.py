"""IAM roles for service accounts (IRSA): an IAM role only one Kubernetes service account can assume."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_aws as aws

__all__ = ["irsa_role"]


def irsa_role(
    name: str,
    *,
    namespace: str,
    service_account: str,
    oidc_provider_arn: pulumi.Input[str],
    oidc_issuer: pulumi.Input[str],
    policy: pulumi.Input[str] | Mapping[str, Any],
    tags: Mapping[str, str],
    parent: pulumi.Resource,
) -> aws.iam.Role:
    """A role trusted by the cluster's OIDC issuer for `namespace/service_account` alone, with an inline policy."""

    def trust(values: list[str]) -> str:
        arn, issuer = values
        host = issuer.removeprefix("https://")
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Federated": arn},
                        "Action": "sts:AssumeRoleWithWebIdentity",
                        # Both conditions: without `aud`, a token minted for another audience
                        # would do; without `sub`, any service account in the cluster could.
                        "Condition": {
                            "StringEquals": {
                                f"{host}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                                f"{host}:aud": "sts.amazonaws.com",
                            }
                        },
                    }
                ],
            }
        )

    role = aws.iam.Role(
        name,
        assume_role_policy=pulumi.Output.all(oidc_provider_arn, oidc_issuer).apply(trust),
        description=f"IRSA: {namespace}/{service_account}",
        tags=dict(tags),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    document = json.dumps(policy) if isinstance(policy, Mapping) else policy
    aws.iam.RolePolicy(name, role=role.id, policy=document, opts=pulumi.ResourceOptions(parent=parent))
    return role
