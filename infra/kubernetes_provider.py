"""The Kubernetes provider the program deploys through: built from the EKS cluster it just made.

The kubeconfig authenticates with `aws eks get-token`, so whoever runs `pulumi up` (the cluster
creator, an admin by `bootstrap_cluster_creator_admin_permissions`) needs only their AWS
credentials: no kubeconfig file, no long-lived token in the state.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_kubernetes as k8s

__all__ = ["kubeconfig", "kubernetes_provider"]


def kubeconfig(cluster_name: str, endpoint: str, certificate_authority: str, region: str) -> str:
    """A kubeconfig for one EKS cluster, authenticating through the AWS CLI (JSON is valid YAML)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster_name,
                    "cluster": {"server": endpoint, "certificate-authority-data": certificate_authority},
                }
            ],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
            "current-context": cluster_name,
            "users": [
                {
                    "name": cluster_name,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "aws",
                            "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region],
                            "interactiveMode": "Never",
                        }
                    },
                }
            ],
        }
    )


def kubernetes_provider(
    name: str,
    *,
    cluster_name: pulumi.Input[str],
    endpoint: pulumi.Input[str],
    certificate_authority: pulumi.Input[str],
    region: str,
    depends_on: list[pulumi.Resource] | None = None,
) -> k8s.Provider:
    """A provider bound to the cluster; every Kubernetes resource of the program names it."""
    config = pulumi.Output.all(cluster_name, endpoint, certificate_authority).apply(
        lambda values: kubeconfig(values[0], values[1], values[2], region)
    )
    return k8s.Provider(
        name,
        kubeconfig=config,
        # Server-side apply: fields a runbook or a controller owns (replicas, HPA bounds, the mode
        # ConfigMap's data) stay theirs instead of being overwritten by a client-side merge.
        enable_server_side_apply=True,
        # A deleted cluster must not wedge `pulumi destroy` on objects that went with it.
        delete_unreachable=True,
        opts=pulumi.ResourceOptions(depends_on=depends_on or []),
    )
