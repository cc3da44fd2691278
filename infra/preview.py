"""What `peakguard preview` prints: an offline run's resources, one table per component."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from infra.facts import MIG_CONFIG_LABEL
from infra.offline import OfflineRun, Registration

__all__ = ["render", "to_json"]

_Describe = Callable[[Registration, "_Index"], str]


class _Index:
    """Look-ups across the run: a resource by the id or name other resources refer to it by."""

    def __init__(self, run: OfflineRun) -> None:
        self.run = run
        self._by_id = {resource.id: resource for resource in run.resources if resource.id}

    def find(self, ref: Any) -> Registration | None:
        return self._by_id.get(ref) if isinstance(ref, str) else None

    def az_of_subnets(self, subnet_ids: Any) -> str:
        ids = subnet_ids if isinstance(subnet_ids, list) else [subnet_ids]
        azs = []
        for subnet_id in ids:
            subnet = self.find(subnet_id)
            azs.append(str(subnet.inputs.get("availabilityZone")) if subnet else "?")
        return ", ".join(azs)


def _int(value: Any) -> str:
    return str(int(value)) if isinstance(value, (int, float)) else "-"


def _subnet(r: Registration, idx: _Index) -> str:
    tags = r.inputs.get("tags", {})
    kind = "public" if "kubernetes.io/role/elb" in tags else "private"
    return f"{kind} {r.inputs.get('cidrBlock')} in {r.inputs.get('availabilityZone')}"


def _route_table(r: Registration, idx: _Index) -> str:
    routes = r.inputs.get("routes", [])
    targets = [
        f"{route.get('cidrBlock')} -> "
        + (
            "NAT in " + idx.az_of_subnets(nat.inputs.get("subnetId"))
            if (nat := idx.find(route.get("natGatewayId")))
            else "internet gateway"
        )
        for route in routes
    ]
    return "; ".join(targets)


def _security_group(r: Registration, idx: _Index) -> str:
    def rules(direction: str) -> str:
        parts = []
        for rule in r.inputs.get(direction, []):
            protocol = "all" if rule.get("protocol") == "-1" else rule.get("protocol")
            ports = (
                ""
                if protocol == "all"
                else f" {_int(rule.get('fromPort'))}"
                + (f"-{_int(rule.get('toPort'))}" if rule.get("toPort") != rule.get("fromPort") else "")
            )
            source = (
                "self"
                if rule.get("self")
                else ",".join(rule.get("cidrBlocks", [])) or ("group " + ",".join(rule.get("securityGroups", [])))
            )
            parts.append(f"{protocol}{ports} {source}")
        return "; ".join(parts) or "none"

    return f"in: {rules('ingress')} | out: {rules('egress')}"


def _cluster(r: Registration, idx: _Index) -> str:
    vpc = r.inputs.get("vpcConfig", {})
    public = ",".join(vpc.get("publicAccessCidrs", [])) if vpc.get("endpointPublicAccess") else "off"
    encrypted = "KMS" if r.inputs.get("encryptionConfig") else "NONE"
    return (
        f"k8s {r.inputs.get('version')}, AZs {idx.az_of_subnets(vpc.get('subnetIds', []))}, "
        f"endpoint private + public {public}, secrets {encrypted}, "
        f"logs {len(r.inputs.get('enabledClusterLogTypes', []))}/5"
    )


def _launch_template(r: Registration, idx: _Index) -> str:
    interfaces = r.inputs.get("networkInterfaces", [])
    kinds = Counter(i.get("interfaceType", "interface") for i in interfaces)
    efa = "EFA " + " + ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) if interfaces else "no EFA"
    metadata = r.inputs.get("metadataOptions", {})
    imds = (
        "IMDSv2" if metadata.get("httpTokens") == "required" else "IMDSv1!"
    ) + f" hop {_int(metadata.get('httpPutResponseHopLimit'))}"
    mappings: list[dict[str, Any]] = r.inputs.get("blockDeviceMappings", [])
    root: dict[str, Any] = mappings[0].get("ebs", {}) if mappings else {}
    disk = f"{_int(root.get('volumeSize'))} GiB {root.get('volumeType')}" + (
        " encrypted" if root.get("encrypted") == "true" else " UNENCRYPTED"
    )
    placement = r.inputs.get("placement", {}).get("groupName") or "no placement group"
    user_data = base64.b64decode(r.inputs.get("userData", "")).decode(errors="replace")
    boot = (
        "nodeadm RAID0"
        if "strategy: RAID0" in user_data
        else "bootstrap.sh + RAID0"
        if "nvme-raid0" in user_data
        else "EKS default"
    )
    reservation = (
        r.inputs.get("capacityReservationSpecification", {})
        .get("capacityReservationTarget", {})
        .get("capacityReservationId")
    )
    where = f"reservation {reservation}" if reservation else placement
    return f"{r.inputs.get('instanceType', 'type from node group')}, {efa}, {imds}, {disk}, {where}, {boot}"


def _node_group(r: Registration, idx: _Index) -> str:
    scaling = r.inputs.get("scalingConfig", {})
    template = idx.find(r.inputs.get("launchTemplate", {}).get("id"))
    instance = (r.inputs.get("instanceTypes") or [template.inputs.get("instanceType") if template else "?"])[0]
    owned = " (desired ignored)" if "scalingConfig.desiredSize" in r.ignore_changes else ""
    labels = r.inputs.get("labels", {})
    mig = f", MIG {labels[MIG_CONFIG_LABEL]}" if MIG_CONFIG_LABEL in labels else ""
    return (
        f"{r.inputs.get('nodeGroupName')}: {instance} in {idx.az_of_subnets(r.inputs.get('subnetIds', []))}, "
        f"min/desired/max {_int(scaling.get('minSize'))}/{_int(scaling.get('desiredSize'))}/"
        f"{_int(scaling.get('maxSize'))}{owned}, max unavailable "
        f"{_int(r.inputs.get('updateConfig', {}).get('maxUnavailablePercentage'))}%, "
        f"{r.inputs.get('amiType')}{mig}"
    )


def _lustre(r: Registration, idx: _Index) -> str:
    return (
        f"{r.inputs.get('deploymentType')} {_int(r.inputs.get('storageCapacity'))} GiB, "
        f"{_int(r.inputs.get('perUnitStorageThroughput'))} MB/s/TiB, EFA "
        f"{'on' if r.inputs.get('efaEnabled') else 'off'}, in {idx.az_of_subnets(r.inputs.get('subnetIds'))}"
    )


def _parameter(r: Registration, idx: _Index) -> str:
    value = str(r.inputs.get("insecureValue", r.inputs.get("value", "")))
    return f"{r.inputs.get('name')} ({r.inputs.get('tier')}, {len(value.encode())} bytes)"


def _helm_release(r: Registration, idx: _Index) -> str:
    return (
        f"{r.inputs.get('chart')} {r.inputs.get('version')} in {r.inputs.get('namespace')} "
        f"({r.inputs.get('repositoryOpts', {}).get('repo')})"
    )


def _deployment(r: Registration, idx: _Index) -> str:
    pod = r.inputs.get("spec", {}).get("template", {}).get("spec", {})
    container = (pod.get("containers") or [{}])[0]
    requests = container.get("resources", {}).get("requests", {})
    accelerators = ", ".join(f"{k} {v}" for k, v in requests.items() if k.startswith("nvidia.com/"))
    readiness = container.get("readinessProbe", {}).get("httpGet", {}).get("path", "-")
    spread = ",".join(c.get("topologyKey", "").rsplit("/", 1)[-1] for c in pod.get("topologySpreadConstraints", []))
    return (
        f"pool {pod.get('nodeSelector', {}).get('peakguard.io/pool')}, {accelerators}, ready {readiness}, "
        f"spread {spread}, grace {_int(pod.get('terminationGracePeriodSeconds'))} s, {container.get('image')}"
    )


def _hpa(r: Registration, idx: _Index) -> str:
    spec = r.inputs.get("spec", {})
    pods = [m.get("pods", {}) for m in spec.get("metrics", []) if m.get("type") == "Pods"]
    metrics = ", ".join(
        f"{p.get('metric', {}).get('name')} avg {p.get('target', {}).get('averageValue')}" for p in pods
    )
    window = spec.get("behavior", {}).get("scaleUp", {}).get("stabilizationWindowSeconds")
    bounds = f"{_int(spec.get('minReplicas'))}/{_int(spec.get('maxReplicas'))}"
    return f"min/max {bounds}, {metrics}, scale-up window {_int(window)} s"


def _scaled_object(r: Registration, idx: _Index) -> str:
    spec = r.inputs.get("spec", {})
    bounds = f"{_int(spec.get('minReplicaCount'))}/{_int(spec.get('maxReplicaCount'))}"
    return f"{spec.get('scaleTargetRef', {}).get('name')}: min/max {bounds}"


def _ingress(r: Registration, idx: _Index) -> str:
    annotations = r.inputs.get("metadata", {}).get("annotations", {})
    attributes = annotations.get("alb.ingress.kubernetes.io/target-group-attributes", "")
    return (
        f"{annotations.get('alb.ingress.kubernetes.io/scheme')} ALB, {attributes.replace(',', ', ')}, "
        f"health {annotations.get('alb.ingress.kubernetes.io/healthcheck-path')}"
    )


_DESCRIBE: dict[str, _Describe] = {
    "kubernetes:helm.sh/v3:Release": _helm_release,
    "kubernetes:apps/v1:Deployment": _deployment,
    "kubernetes:autoscaling/v2:HorizontalPodAutoscaler": _hpa,
    "kubernetes:networking.k8s.io/v1:Ingress": _ingress,
    "kubernetes:policy/v1:PodDisruptionBudget": lambda r, _: (
        f"maxUnavailable {r.inputs.get('spec', {}).get('maxUnavailable')}"
    ),
    "kubernetes:keda.sh/v1alpha1:ScaledObject": _scaled_object,
    "kubernetes:core/v1:ConfigMap": lambda r, _: ", ".join(r.inputs.get("data", {})),
    "kubernetes:monitoring.coreos.com/v1:PrometheusRule": lambda r, _: (
        f"{sum(len(g.get('rules', [])) for g in r.inputs.get('spec', {}).get('groups', []))} alerts"
    ),
    "aws:ec2/vpc:Vpc": lambda r, _: f"{r.inputs.get('cidrBlock')}",
    "aws:ec2/subnet:Subnet": _subnet,
    "aws:ec2/natGateway:NatGateway": lambda r, idx: f"in {idx.az_of_subnets(r.inputs.get('subnetId'))}",
    "aws:ec2/routeTable:RouteTable": _route_table,
    # com.amazonaws.<region>.ecr.api -> ecr.api
    "aws:ec2/vpcEndpoint:VpcEndpoint": lambda r, _: (
        f"{str(r.inputs.get('serviceName')).split('.', 3)[-1]} ({r.inputs.get('vpcEndpointType')})"
    ),
    "aws:ec2/securityGroup:SecurityGroup": _security_group,
    "aws:eks/cluster:Cluster": _cluster,
    "aws:eks/addon:Addon": lambda r, _: f"{r.inputs.get('addonName')} {r.inputs.get('addonVersion')}",
    "aws:eks/nodeGroup:NodeGroup": _node_group,
    "aws:ec2/launchTemplate:LaunchTemplate": _launch_template,
    "aws:ec2/placementGroup:PlacementGroup": lambda r, _: f"{r.inputs.get('strategy')}",
    "aws:kms/key:Key": lambda r, _: "rotation on" if r.inputs.get("enableKeyRotation") else "rotation OFF",
    "aws:s3/bucket:Bucket": lambda r, _: f"{r.outputs.get('bucket')}",
    "aws:s3/bucketVersioning:BucketVersioning": lambda r, _: r.inputs.get("versioningConfiguration", {}).get(
        "status", ""
    ),
    "aws:fsx/lustreFileSystem:LustreFileSystem": _lustre,
    "aws:ssm/parameter:Parameter": _parameter,
    "aws:cloudwatch/logGroup:LogGroup": lambda r, _: (
        f"{r.inputs.get('name')}, {_int(r.inputs.get('retentionInDays'))} days"
    ),
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": lambda r, _: str(r.inputs.get("policyArn", "")).rsplit("/", 1)[
        -1
    ],
}


def _short_type(token: str) -> str:
    # aws:eks/nodeGroup:NodeGroup -> eks:NodeGroup; kubernetes:apps/v1:Deployment -> k8s:Deployment
    package, _, rest = token.partition(":")
    module = rest.split("/", 1)[0]
    if package == "aws":
        return f"{module}:{rest.rsplit(':', 1)[-1]}"
    if package == "kubernetes":
        return f"k8s:{rest.rsplit(':', 1)[-1]}"
    return token


def _resource_table(title: str, resources: list[Registration], index: _Index) -> Table:
    counts = Counter(_short_type(r.type) for r in resources)
    table = Table(
        title=f"{title}: {len(resources)} resources",
        caption=", ".join(f"{n} {kind}" for kind, n in counts.most_common()),
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("type", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("key properties", overflow="fold")
    for resource in sorted(resources, key=lambda r: (_short_type(r.type), r.name)):
        describe = _DESCRIBE.get(resource.type)
        table.add_row(_short_type(resource.type), resource.name, describe(resource, index) if describe else "")
    return table


def _gpu_table(run: OfflineRun, index: _Index) -> Table:
    """One row per GPU node group: what an SRE checks first."""
    table = Table(title="GPU node groups (one per pool and AZ)", title_justify="left")
    for column in (
        "pool",
        "AZ",
        "node group",
        "instance",
        "GPUs",
        "EFA: efa+efa-only",
        "min/des/max",
        "max unavail",
        "placement",
        "AMI",
        "MIG",
        "IMDS hop",
    ):
        table.add_column(column, no_wrap=True)
    groups = sorted(run.of_type("aws:eks/nodeGroup:NodeGroup"), key=lambda g: str(g.inputs.get("nodeGroupName")))
    for group in groups:
        labels = group.inputs.get("labels", {})
        template = index.find(group.inputs.get("launchTemplate", {}).get("id"))
        if "peakguard.io/pool" not in labels or labels["peakguard.io/pool"] == "system" or template is None:
            continue
        pool = run.config.pool(labels["peakguard.io/pool"])
        interfaces = template.inputs.get("networkInterfaces", [])
        efa_only = sum(1 for i in interfaces if i.get("interfaceType") == "efa-only")
        scaling = group.inputs.get("scalingConfig", {})
        reservation = (
            template.inputs.get("capacityReservationSpecification", {})
            .get("capacityReservationTarget", {})
            .get("capacityReservationId")
        )
        placement = template.inputs.get("placement", {}).get("groupName")
        table.add_row(
            pool.name,
            index.az_of_subnets(group.inputs.get("subnetIds", [])),
            str(group.inputs.get("nodeGroupName")),
            pool.instance_type,
            f"{pool.instance.gpus}x {pool.instance.gpu_model.split('-')[0]}",
            f"{len(interfaces) - efa_only}+{efa_only}",
            "/".join(_int(scaling.get(k)) for k in ("minSize", "desiredSize", "maxSize")),
            f"{_int(group.inputs.get('updateConfig', {}).get('maxUnavailablePercentage'))}%",
            reservation or ("cluster" if placement else "none"),
            pool.ami_family + (" + GDS" if pool.gds else ""),
            labels.get(MIG_CONFIG_LABEL, "-"),
            _int(template.inputs.get("metadataOptions", {}).get("httpPutResponseHopLimit")),
        )
    return table


def render(run: OfflineRun, console: Console) -> None:
    """Print the plan: a summary, the GPU node groups, then each component's resources."""
    index = _Index(run)
    config = run.config
    custom = [r for r in run.resources if r.custom]
    console.print(
        f"[bold]peakguard preview[/bold] env [bold]{config.env}[/bold], region {config.region}, "
        f"cluster {config.cluster.name}: {len(custom)} resources would be created "
        "(offline, under Pulumi's mocks: nothing was created)"
    )
    console.print(_gpu_table(run, index))
    for component in (r for r in run.resources if not r.custom):
        children = [r for r in run.children_of(component.urn) if r.custom]
        if children:
            console.print(_resource_table(f"{component.type.rsplit(':', 1)[-1]} {component.name}", children, index))
    top = [r for r in custom if not r.parent]
    if top:
        console.print(_resource_table("Stack-level", top, index))
    for message in run.messages:
        console.print(f"[yellow]note:[/yellow] {message}")
    totals = Counter(_short_type(r.type) for r in custom)
    console.print("totals: " + ", ".join(f"{n} {kind}" for kind, n in totals.most_common()))


def to_json(run: OfflineRun) -> str:
    """The plan as JSON: each resource's type, name, parent and wire-format inputs, plus outputs."""
    return json.dumps(
        {
            "env": run.config.env,
            "resources": [
                {
                    "urn": r.urn,
                    "type": r.type,
                    "name": r.name,
                    "parent": r.parent or None,
                    "inputs": r.inputs,
                    "ignoreChanges": list(r.ignore_changes),
                }
                for r in run.resources
            ],
            "outputs": run.outputs,
            "notes": list(run.messages),
        },
        indent=2,
        default=str,
    )
