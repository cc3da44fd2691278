"""The cluster's add-ons, as pinned Helm releases: GPUs, EFA, scaling, load balancing, metrics, traces.

Every chart version comes from `peakguard:kubernetes.charts`; the repositories are here. Charts
install through `helm.v3.Release` (its values are ordinary inputs: reviewable in a diff, testable
under mocks, checked by the policy pack). Release names are fixed, because the Services other
objects point at (Prometheus, the OTLP collector) are named after them.

Node scaling is the cluster autoscaler, not Karpenter: the GPU capacity is EKS managed node groups,
one per pool and AZ, some launched into capacity reservations and with MIG layouts set at launch
(`infra/gpu_node_groups.py`). The autoscaler grows and shrinks exactly those groups, which the
runbooks also size; Karpenter would provision its own instances beside them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.config import GpuPoolConfig
from infra.facts import GPU_TAINT, MAX_UNAVAILABLE_PERCENTAGE, PREFLIGHT_TAINT
from infra.irsa import irsa_role

__all__ = [
    "CHART_SOURCES",
    "FSX_CSI_CONTROLLER_SERVICE_ACCOUNT",
    "FSX_CSI_DRIVER",
    "FSX_CSI_DRIVER_ADDON",
    "ClusterAddons",
    "ClusterAddonsArgs",
    "ReleaseName",
]

CHART_SOURCES: Mapping[str, tuple[str, str]] = {
    "gpuOperator": ("https://helm.ngc.nvidia.com/nvidia", "gpu-operator"),
    "efaDevicePlugin": ("https://aws.github.io/eks-charts", "aws-efa-k8s-device-plugin"),
    "metricsServer": ("https://kubernetes-sigs.github.io/metrics-server/", "metrics-server"),
    "clusterAutoscaler": ("https://kubernetes.github.io/autoscaler", "cluster-autoscaler"),
    "awsLoadBalancerController": ("https://aws.github.io/eks-charts", "aws-load-balancer-controller"),
    "kubePrometheusStack": ("https://prometheus-community.github.io/helm-charts", "kube-prometheus-stack"),
    "prometheusAdapter": ("https://prometheus-community.github.io/helm-charts", "prometheus-adapter"),
    "keda": ("https://kedacore.github.io/charts", "keda"),
    "openTelemetryCollector": ("https://open-telemetry.github.io/opentelemetry-helm-charts", "opentelemetry-collector"),
}
"""Chart repository and chart name per `peakguard:kubernetes.charts` key."""


@dataclass(frozen=True)
class ReleaseName:
    name: str
    namespace: str


RELEASES: Mapping[str, ReleaseName] = {
    "gpuOperator": ReleaseName("gpu-operator", "gpu-operator"),
    "efaDevicePlugin": ReleaseName("aws-efa-k8s-device-plugin", "kube-system"),
    "metricsServer": ReleaseName("metrics-server", "kube-system"),
    "clusterAutoscaler": ReleaseName("cluster-autoscaler", "kube-system"),
    "awsLoadBalancerController": ReleaseName("aws-load-balancer-controller", "kube-system"),
    "kubePrometheusStack": ReleaseName("kube-prometheus-stack", "monitoring"),
    "prometheusAdapter": ReleaseName("prometheus-adapter", "monitoring"),
    "keda": ReleaseName("keda", "keda"),
    "openTelemetryCollector": ReleaseName("otel-collector", "observability"),
}

FSX_CSI_DRIVER_ADDON = "aws-fsx-csi-driver"
"""The EKS add-on's name (EKS User Guide, "Amazon EKS add-ons": Amazon FSx CSI driver)."""
FSX_CSI_CONTROLLER_SERVICE_ACCOUNT = "fsx-csi-controller-sa"
"""The add-on's controller service account in kube-system (its chart's controller.serviceAccount.name)."""
FSX_CSI_DRIVER = "fsx.csi.aws.com"
"""The CSI driver name a PersistentVolume names (the driver's static-provisioning example)."""

_SYSTEM_NODES = {"peakguard.io/pool": "system"}
# Node agents must run on a GPU node before it passes preflight: the checks need them (the MIG
# manager applies the layout the check expects, the operator's driver container provides
# nvidia-smi on Ubuntu nodes), so they tolerate the startup taint as well as the GPU one.
_GPU_NODE_TOLERATIONS = [GPU_TAINT.toleration(), PREFLIGHT_TAINT.toleration()]


@dataclass(frozen=True)
class ClusterAddonsArgs:
    env: str
    chart_versions: Mapping[str, str]
    cluster_autoscaler_image_tag: str
    """The autoscaler release of the cluster's minor: the chart's default follows the chart, not the cluster."""
    efa_device_plugin_image_tag: str
    """The plugin's own release (the chart's version is not the plugin's)."""
    pools: Sequence[GpuPoolConfig]
    provider: k8s.Provider
    cluster_name: pulumi.Input[str]
    region: str
    vpc_id: pulumi.Input[str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    partition: str
    in_flight_metric: str
    """The model service's in-flight gauge, exposed to HPAs through the Prometheus adapter."""
    fsx_csi_driver: bool = False
    """Install the FSx CSI driver (EKS add-on): pods mount the stack's FSx for Lustre file system."""
    fsx_csi_driver_version: str | None = None
    """Pinned add-on version; None takes EKS's default for the cluster's Kubernetes version."""
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    """What must exist first: the system nodes the controllers run on."""
    tags: Mapping[str, str] = field(default_factory=dict)


class ClusterAddons(pulumi.ComponentResource):
    prometheus_url: str
    """Prometheus inside the cluster (for KEDA triggers and the adapter)."""
    otlp_endpoint: str
    """The OpenTelemetry collector's OTLP/HTTP endpoint inside the cluster."""
    releases: dict[str, k8s.helm.v3.Release]
    """By `CHART_SOURCES` key."""

    def __init__(self, name: str, args: ClusterAddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:infra:ClusterAddons", name, None, opts)
        self._args = args
        self._name = name
        self.releases = {}
        prometheus = RELEASES["kubePrometheusStack"]
        self.prometheus_url = f"http://{prometheus.name}-prometheus.{prometheus.namespace}.svc.cluster.local:9090"
        collector = RELEASES["openTelemetryCollector"]
        self.otlp_endpoint = f"http://{collector.name}.{collector.namespace}.svc.cluster.local:4318"

        # Monitoring first: its CRDs (ServiceMonitor) are used by the GPU operator's DCGM exporter.
        monitoring = self._release("kubePrometheusStack", self._kube_prometheus_stack())
        self._release("gpuOperator", self._gpu_operator(), depends_on=[monitoring])
        self._release("efaDevicePlugin", self._efa_device_plugin())
        self._release(
            "metricsServer",
            {
                "replicas": 2,
                "nodeSelector": _SYSTEM_NODES,
                "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
            },
        )
        self._release("clusterAutoscaler", self._cluster_autoscaler())
        self._release("awsLoadBalancerController", self._load_balancer_controller())
        self._release("prometheusAdapter", self._prometheus_adapter(), depends_on=[monitoring])
        self._release("keda", {"nodeSelector": _SYSTEM_NODES})
        self._release("openTelemetryCollector", self._collector())
        if args.fsx_csi_driver:
            self._fsx_csi_driver()
        self.register_outputs({"prometheusUrl": self.prometheus_url, "otlpEndpoint": self.otlp_endpoint})

    def _release(
        self, key: str, values: Mapping[str, Any], *, depends_on: list[pulumi.Resource] | None = None
    ) -> k8s.helm.v3.Release:
        repository, chart = CHART_SOURCES[key]
        release = RELEASES[key]
        created = k8s.helm.v3.Release(
            f"{self._name}-{release.name}",
            name=release.name,
            chart=chart,
            version=self._args.chart_versions[key],
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=repository),
            namespace=release.namespace,
            create_namespace=True,
            values=dict(values),
            # A failed upgrade rolls back instead of leaving a half-applied add-on.
            atomic=True,
            cleanup_on_fail=True,
            timeout=900,
            max_history=10,
            opts=pulumi.ResourceOptions(
                parent=self, provider=self._args.provider, depends_on=[*self._args.depends_on, *(depends_on or [])]
            ),
        )
        self.releases[key] = created
        return created

    def _irsa(
        self, key: str, service_account: str, policy: pulumi.Input[str] | Mapping[str, Any]
    ) -> pulumi.Output[str]:
        release = RELEASES[key]
        role = irsa_role(
            f"{self._name}-{release.name}",
            namespace=release.namespace,
            service_account=service_account,
            oidc_provider_arn=self._args.oidc_provider_arn,
            oidc_issuer=self._args.oidc_issuer,
            policy=policy,
            tags=self._args.tags,
            parent=self,
        )
        arn: pulumi.Output[str] = role.arn
        return arn

    def _fsx_csi_driver(self) -> aws.eks.Addon:
        """The FSx for Lustre CSI driver, as the EKS add-on (EKS User Guide, "Deploy the FSx for Lustre
        driver"), for the static volume the model service mounts. Its controller authenticates by IRSA
        on `fsx-csi-controller-sa`; a static volume needs no file system created or deleted, only
        described (the driver's install guide: static provisioning needs fsx:DescribeFileSystems)."""
        args = self._args
        role = irsa_role(
            f"{self._name}-fsx-csi-driver",
            namespace="kube-system",
            service_account=FSX_CSI_CONTROLLER_SERVICE_ACCOUNT,
            oidc_provider_arn=args.oidc_provider_arn,
            oidc_issuer=args.oidc_issuer,
            policy={
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "fsx:DescribeFileSystems", "Resource": "*"}],
            },
            tags=args.tags,
            parent=self,
        )
        return aws.eks.Addon(
            f"{self._name}-aws-fsx-csi-driver",
            cluster_name=args.cluster_name,
            addon_name=FSX_CSI_DRIVER_ADDON,
            addon_version=args.fsx_csi_driver_version,
            service_account_role_arn=role.arn,
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
        )

    # --- Values per chart --------------------------------------------------------------

    def _gpu_operator(self) -> dict[str, Any]:
        pools = self._args.pools
        # EKS's AL2023 NVIDIA AMIs ship the driver and container toolkit; the operator installs
        # them only on pools that need its driver container (GPUDirect Storage's nvidia-fs). Its
        # nodes say which they are through `nvidia.com/gpu.deploy.driver` (infra/gpu_node_groups.py).
        driver_container = any(pool.ami_family == "ubuntu" for pool in pools)
        return {
            "operator": {"nodeSelector": _SYSTEM_NODES},
            "driver": {
                "enabled": driver_container,
                # Where the operator's driver container provides the driver, the operator rolls a
                # driver.version change over the nodes itself: at most a third of them at once, as
                # every other node change here (the seed's rolling-upgrade rule), each drained first
                # so its model pods leave through their disruption budgets (emptyDir: their weights
                # are fetched again). GPU operator values, driver.upgradePolicy ("GPU Driver Upgrades").
                "upgradePolicy": {
                    "autoUpgrade": True,
                    "maxUnavailable": f"{MAX_UNAVAILABLE_PERCENTAGE}%",
                    "drain": {"enable": True, "deleteEmptyDir": True, "force": False, "timeoutSeconds": 900},
                },
            },
            "toolkit": {"enabled": driver_container},
            "gds": {"enabled": any(pool.gds for pool in pools)},
            # Mixed: each MIG profile is its own resource (nvidia.com/mig-1g.10gb), so the light
            # variant asks for a slice and never lands on a whole GPU by accident.
            "mig": {"strategy": "mixed"},
            # The MIG manager applies the layout named by the node's `nvidia.com/mig.config`
            # label, which the node group sets at launch.
            "migManager": {"enabled": True},
            # honorLabels: the exporter labels each GPU's series with the pod using it
            # (DCGM_EXPORTER_KUBERNETES, on in the chart), and without it Prometheus renames those to
            # exported_pod/exported_namespace (the chart's default is false: deployments/gpu-operator/
            # values.yaml, dcgmExporter.serviceMonitor), so no per-pod query would match them.
            "dcgmExporter": {"serviceMonitor": {"enabled": True, "honorLabels": True}},
            "daemonsets": {"tolerations": _GPU_NODE_TOLERATIONS},
            "node-feature-discovery": {"worker": {"tolerations": _GPU_NODE_TOLERATIONS}},
        }

    def _efa_device_plugin(self) -> dict[str, Any]:
        # By the label our GPU node groups carry (infra/gpu_node_groups.py), not by the chart's
        # default instance-type allowlist, which silently schedules nothing on a type it does not
        # name. The chart builds its required node affinity from `supportedInstanceLabels`.
        efa_label = {"vpc.amazonaws.com/efa.present": "true"}
        return {
            "image": {"tag": self._args.efa_device_plugin_image_tag},
            "supportedInstanceLabels": {"keys": list(efa_label), "values": list(efa_label.values())},
            "nodeSelector": efa_label,
            "tolerations": _GPU_NODE_TOLERATIONS,
        }

    def _cluster_autoscaler(self) -> dict[str, Any]:
        args = self._args
        cluster = args.cluster_name
        role_arn = self._irsa(
            "clusterAutoscaler",
            "cluster-autoscaler",
            pulumi.Output.from_input(cluster).apply(_cluster_autoscaler_policy),
        )
        return {
            "autoDiscovery": {"clusterName": cluster},
            # Chart 9.52.1 defaults to v1.34.x, which does not support a 1.33 cluster.
            "image": {"tag": args.cluster_autoscaler_image_tag},
            "awsRegion": args.region,
            "rbac": {
                "serviceAccount": {
                    "name": "cluster-autoscaler",
                    "annotations": {"eks.amazonaws.com/role-arn": role_arn},
                }
            },
            "nodeSelector": _SYSTEM_NODES,
            "extraArgs": {
                # Each pool is one node group per AZ: grow them together so zone spread holds.
                "balance-similar-node-groups": "true",
                "expander": "least-waste",
                # Model pods keep their weights in emptyDir: that must not pin a node forever.
                "skip-nodes-with-local-storage": "false",
                "scale-down-delay-after-add": "10m",
                "scale-down-unneeded-time": "10m",
                "max-node-provision-time": "15m",
                # A new GPU node is tainted until preflight passes (infra/node_preflight.py). Told
                # it is a startup taint, the autoscaler counts the node as coming capacity instead
                # of adding another for the pods that cannot land on it yet.
                "startup-taint": PREFLIGHT_TAINT.key,
            },
        }

    def _load_balancer_controller(self) -> dict[str, Any]:
        args = self._args
        role_arn = self._irsa(
            "awsLoadBalancerController",
            "aws-load-balancer-controller",
            _load_balancer_controller_policy(args.partition),
        )
        return {
            "clusterName": args.cluster_name,
            "region": args.region,
            "vpcId": args.vpc_id,
            "replicaCount": 2,
            "nodeSelector": _SYSTEM_NODES,
            "serviceAccount": {
                "create": True,
                "name": "aws-load-balancer-controller",
                "annotations": {"eks.amazonaws.com/role-arn": role_arn},
            },
        }

    def _kube_prometheus_stack(self) -> dict[str, Any]:
        return {
            "prometheus": {
                "prometheusSpec": {
                    # Rules, ServiceMonitors and PodMonitors from every namespace, not only the
                    # ones labelled for this release: the model service's live in its own.
                    "ruleSelectorNilUsesHelmValues": False,
                    "serviceMonitorSelectorNilUsesHelmValues": False,
                    "podMonitorSelectorNilUsesHelmValues": False,
                    "retention": "15d",
                    "nodeSelector": _SYSTEM_NODES,
                }
            },
            "grafana": {
                "nodeSelector": _SYSTEM_NODES,
                "sidecar": {"dashboards": {"enabled": True, "label": "grafana_dashboard", "searchNamespace": "ALL"}},
            },
            "alertmanager": {"alertmanagerSpec": {"nodeSelector": _SYSTEM_NODES}},
            # Node exporter runs on GPU nodes too: node and OOM signals come from there.
            "prometheus-node-exporter": {"tolerations": _GPU_NODE_TOLERATIONS},
        }

    def _prometheus_adapter(self) -> dict[str, Any]:
        prometheus = RELEASES["kubePrometheusStack"]
        metric = self._args.in_flight_metric
        return {
            "prometheus": {"url": f"http://{prometheus.name}-prometheus.{prometheus.namespace}.svc", "port": 9090},
            "nodeSelector": _SYSTEM_NODES,
            "rules": {
                "default": False,
                "custom": [
                    {
                        "seriesQuery": f'{metric}{{namespace!="",pod!=""}}',
                        "resources": {
                            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
                        },
                        "name": {"matches": f"^{metric}$", "as": metric},
                        # A short window: the HPA must see a surge on its next reading.
                        "metricsQuery": "max_over_time(<<.Series>>{<<.LabelMatchers>>}[30s])",
                    }
                ],
            },
        }

    def _collector(self) -> dict[str, Any]:
        args = self._args
        role_arn = self._irsa(
            "openTelemetryCollector",
            "otel-collector",
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
                                   "xray:GetSamplingTargets"],
                        "Resource": "*",
                    }
                ],
            },
        )  # fmt: skip
        return {
            "mode": "deployment",
            "fullnameOverride": RELEASES["openTelemetryCollector"].name,
            # The contrib build carries the X-Ray exporter; X-Ray also holds the ALB's trace ids.
            "image": {"repository": "otel/opentelemetry-collector-contrib"},
            "replicaCount": 2,
            "nodeSelector": _SYSTEM_NODES,
            "serviceAccount": {
                "create": True,
                "name": "otel-collector",
                "annotations": {"eks.amazonaws.com/role-arn": role_arn},
            },
            "config": {
                "receivers": {
                    "otlp": {"protocols": {"http": {"endpoint": "0.0.0.0:4318"}, "grpc": {"endpoint": "0.0.0.0:4317"}}}
                },
                "processors": {
                    "memory_limiter": {"check_interval": "1s", "limit_percentage": 80, "spike_limit_percentage": 25},
                    "batch": {},
                },
                "exporters": {"awsxray": {"region": args.region}},
                "service": {
                    "pipelines": {
                        "traces": {
                            "receivers": ["otlp"],
                            "processors": ["memory_limiter", "batch"],
                            "exporters": ["awsxray"],
                        }
                    }
                },
            },
        }


def _cluster_autoscaler_policy(cluster_name: str) -> str:
    """What the autoscaler needs: read everywhere, resize only this cluster's node groups."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Discover",
                    "Effect": "Allow",
                    "Action": [
                        "autoscaling:DescribeAutoScalingGroups",
                        "autoscaling:DescribeAutoScalingInstances",
                        "autoscaling:DescribeLaunchConfigurations",
                        "autoscaling:DescribeScalingActivities",
                        "autoscaling:DescribeTags",
                        "ec2:DescribeImages",
                        "ec2:DescribeInstanceTypes",
                        "ec2:DescribeLaunchTemplateVersions",
                        "ec2:GetInstanceTypesFromInstanceRequirements",
                        "eks:DescribeNodegroup",
                    ],
                    "Resource": "*",
                },
                {
                    # EKS tags the Auto Scaling groups of its managed node groups with this key.
                    "Sid": "ResizeOwnGroups",
                    "Effect": "Allow",
                    "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"}
                    },
                },
            ],
        }
    )


def _load_balancer_controller_policy(partition: str) -> dict[str, Any]:
    """The load balancer controller's permissions: read broadly, change only what it tagged as its own.

    Written for the features this repo uses (ALB Ingress, IP targets, ACM certificates); WAF and
    Shield associations are left out until an Ingress asks for them.
    """
    owned = {"Null": {"aws:ResourceTag/elbv2.k8s.aws/cluster": "false"}}
    tagged_on_create = {"Null": {"aws:RequestTag/elbv2.k8s.aws/cluster": "false"}}
    elb = f"arn:{partition}:elasticloadbalancing:*:*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Read",
                "Effect": "Allow",
                "Action": [
                    "ec2:Describe*",
                    "ec2:GetSecurityGroupsForVpc",
                    "elasticloadbalancing:Describe*",
                    "acm:ListCertificates",
                    "acm:DescribeCertificate",
                    "iam:ListServerCertificates",
                    "iam:GetServerCertificate",
                    "cognito-idp:DescribeUserPoolClient",
                    "wafv2:GetWebACLForResource",
                    "waf-regional:GetWebACLForResource",
                    "shield:GetSubscriptionState",
                ],
                "Resource": "*",
            },
            {
                "Sid": "ServiceLinkedRole",
                "Effect": "Allow",
                "Action": "iam:CreateServiceLinkedRole",
                "Resource": "*",
                "Condition": {"StringEquals": {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}},
            },
            {
                "Sid": "CreateSecurityGroups",
                "Effect": "Allow",
                "Action": "ec2:CreateSecurityGroup",
                "Resource": "*",
            },
            {
                "Sid": "TagNewSecurityGroups",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": f"arn:{partition}:ec2:*:*:security-group/*",
                "Condition": {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup"}, **tagged_on_create},
            },
            {
                # The node security group is not the controller's: it opens the targets' ports there.
                "Sid": "OpenTargetPorts",
                "Effect": "Allow",
                "Action": ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"],
                "Resource": "*",
            },
            {
                "Sid": "ManageOwnSecurityGroups",
                "Effect": "Allow",
                "Action": ["ec2:DeleteSecurityGroup", "ec2:CreateTags", "ec2:DeleteTags"],
                "Resource": "*",
                "Condition": owned,
            },
            {
                "Sid": "CreateLoadBalancers",
                "Effect": "Allow",
                "Action": ["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"],
                "Resource": "*",
                "Condition": tagged_on_create,
            },
            {
                "Sid": "TagOnCreate",
                "Effect": "Allow",
                "Action": "elasticloadbalancing:AddTags",
                "Resource": [f"{elb}:targetgroup/*/*", f"{elb}:loadbalancer/app/*/*", f"{elb}:loadbalancer/net/*/*"],
                "Condition": {
                    "StringEquals": {"elasticloadbalancing:CreateAction": ["CreateTargetGroup", "CreateLoadBalancer"]},
                    **tagged_on_create,
                },
            },
            {
                "Sid": "ManageOwnLoadBalancers",
                "Effect": "Allow",
                "Action": [
                    "elasticloadbalancing:AddTags",
                    "elasticloadbalancing:RemoveTags",
                    "elasticloadbalancing:ModifyLoadBalancerAttributes",
                    "elasticloadbalancing:SetIpAddressType",
                    "elasticloadbalancing:SetSecurityGroups",
                    "elasticloadbalancing:SetSubnets",
                    "elasticloadbalancing:DeleteLoadBalancer",
                    "elasticloadbalancing:ModifyTargetGroup",
                    "elasticloadbalancing:ModifyTargetGroupAttributes",
                    "elasticloadbalancing:DeleteTargetGroup",
                    "elasticloadbalancing:RegisterTargets",
                    "elasticloadbalancing:DeregisterTargets",
                ],
                "Resource": "*",
                "Condition": owned,
            },
            {
                # Listeners and rules carry no tags of their own to condition on.
                "Sid": "ListenersAndRules",
                "Effect": "Allow",
                "Action": [
                    "elasticloadbalancing:CreateListener",
                    "elasticloadbalancing:DeleteListener",
                    "elasticloadbalancing:ModifyListener",
                    "elasticloadbalancing:ModifyListenerAttributes",
                    "elasticloadbalancing:AddListenerCertificates",
                    "elasticloadbalancing:RemoveListenerCertificates",
                    "elasticloadbalancing:CreateRule",
                    "elasticloadbalancing:DeleteRule",
                    "elasticloadbalancing:ModifyRule",
                    "elasticloadbalancing:SetRulePriorities",
                ],
                "Resource": "*",
            },
        ],
    }
