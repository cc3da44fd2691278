"""Run the Pulumi program with no CLI and no cloud, and record what it would create.

The program runs under Pulumi's own mock engine (`pulumi.runtime.set_mocks`) with a stack's real
`Pulumi.<env>.yaml`. `_AwsAnswers` plays the AWS provider: it returns what AWS computes on create
(ids, ARNs, an EKS endpoint, an Auto Scaling group name), deterministically, so the program's
outputs and the targets document can be checked. `_RecordingMonitor` keeps each registration's
inputs as the engine saw them (wire format: camelCase keys) with its options. The offline preview,
the tests and the offline policy check all read an `OfflineRun`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from infra.config import PROJECT, StackConfig
from infra.stack_files import find_project_dir, load_stack_file

__all__ = ["OfflineRun", "Registration", "find_project_dir", "load_stack_file", "run_offline"]

_ACCOUNT = "123456789012"
# Shaped like the base64 PEM EKS returns; no key material.
_FAKE_CA = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nMIIC/jCCAeagAwIBAgIBADAN\n-----END CERTIFICATE-----\n"
).decode()


@dataclass(frozen=True)
class Registration:
    """One resource the program registered, as the engine (and a policy pack) would see it."""

    urn: str
    id: str
    """The id the (mocked) provider assigned; what other resources' inputs refer to."""
    type: str
    """Pulumi type token, e.g. `aws:eks/nodeGroup:NodeGroup`."""
    name: str
    parent: str
    """URN of the parent component (empty for top-level resources)."""
    custom: bool
    """False for component resources."""
    inputs: Mapping[str, Any]
    """What the program passed, in wire format (camelCase keys, numbers as floats)."""
    outputs: Mapping[str, Any]
    """Inputs plus what the mocked provider computed."""
    ignore_changes: tuple[str, ...]
    protect: bool
    dependencies: tuple[str, ...]


@dataclass(frozen=True)
class OfflineRun:
    config: StackConfig
    resources: tuple[Registration, ...]
    outputs: Mapping[str, Any]
    """Stack outputs, resolved."""
    messages: tuple[str, ...] = field(default_factory=tuple)
    """What the program logged (pulumi.log): decisions worth showing a reviewer."""

    def of_type(self, type_token: str) -> list[Registration]:
        return [r for r in self.resources if r.type == type_token]

    def children_of(self, parent_urn: str) -> list[Registration]:
        return [r for r in self.resources if r.parent == parent_urn]

    def named(self, type_token: str, name: str) -> Registration:
        for resource in self.resources:
            if resource.type == type_token and resource.name == name:
                return resource
        raise KeyError(f"no {type_token} named {name!r}")

    def by_urn(self, urn: str) -> Registration:
        for resource in self.resources:
            if resource.urn == urn:
                return resource
        raise KeyError(urn)


# --- Stack files --------------------------------------------------------------------------


def _engine_form(value: Any) -> str:
    """What the engine hands a program: scalars as text, structured values as JSON text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- The mock provider --------------------------------------------------------------------


def _hex(*parts: str, length: int = 17) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


# Types whose physical name the provider generates from the logical one when the program
# gives none (Pulumi's autonaming: name plus a random suffix).
_AUTONAMED = {
    "aws:iam/role:Role": "name",
    "aws:ec2/placementGroup:PlacementGroup": "name",
    "aws:ec2/securityGroup:SecurityGroup": "name",
    "aws:ec2/launchTemplate:LaunchTemplate": "name",
    "aws:cloudwatch/metricAlarm:MetricAlarm": "name",
}

_ID_PREFIX = {
    "aws:ec2/vpc:Vpc": "vpc-",
    "aws:ec2/subnet:Subnet": "subnet-",
    "aws:ec2/securityGroup:SecurityGroup": "sg-",
    "aws:ec2/internetGateway:InternetGateway": "igw-",
    "aws:ec2/natGateway:NatGateway": "nat-",
    "aws:ec2/eip:Eip": "eipalloc-",
    "aws:ec2/routeTable:RouteTable": "rtb-",
    "aws:ec2/routeTableAssociation:RouteTableAssociation": "rtbassoc-",
    "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce-",
    "aws:ec2/launchTemplate:LaunchTemplate": "lt-",
    "aws:fsx/lustreFileSystem:LustreFileSystem": "fs-",
    "aws:fsx/dataRepositoryAssociation:DataRepositoryAssociation": "dra-",
    "aws:fis/experimentTemplate:ExperimentTemplate": "EXT",
}


_GET_PARAMETERS_BY_PATH = "aws:ssm/getParametersByPath:getParametersByPath"
_GET_CALLER_IDENTITY = "aws:index/getCallerIdentity:getCallerIdentity"
_GET_TARGET_GROUP = "aws:lb/getTargetGroup:getTargetGroup"
_GET_LOAD_BALANCER = "aws:lb/getLoadBalancer:getLoadBalancer"


class _AwsAnswers(pulumi_mocks.Mocks):
    """Plays the AWS provider: inputs back, plus realistic computed outputs."""

    def __init__(self, region: str, parameters: Mapping[str, str] | None = None) -> None:
        self.region = region
        self.parameters = dict(parameters or {})
        """SSM parameters that exist in the account (name -> value): the incident hold, say."""

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        kind, name = args.typ, args.name
        state = dict(args.inputs)
        autoname = _AUTONAMED.get(kind)
        if autoname and not state.get(autoname) and not state.get(f"{autoname}Prefix"):
            state[autoname] = f"{name}-{_hex(kind, name, length=7)}"
        resource_id = _ID_PREFIX.get(kind, "") + _hex(kind, name)
        region, account = self.region, _ACCOUNT

        if kind == "aws:eks/cluster:Cluster":
            cluster = state["name"]
            oidc_id = _hex("oidc", cluster, length=32).upper()
            resource_id = cluster
            state.update(
                arn=f"arn:aws:eks:{region}:{account}:cluster/{cluster}",
                endpoint=f"https://{oidc_id}.gr7.{region}.eks.amazonaws.com",
                certificateAuthority={"data": _FAKE_CA},
                identities=[{"oidcs": [{"issuer": f"https://oidc.eks.{region}.amazonaws.com/id/{oidc_id}"}]}],
                vpcConfig={
                    **state.get("vpcConfig", {}),
                    "clusterSecurityGroupId": "sg-" + _hex("eks-cluster-sg", cluster),
                },
                status="ACTIVE",
                platformVersion="eks.1",
            )
        elif kind == "aws:eks/nodeGroup:NodeGroup":
            group = state.get("nodeGroupName") or f"{name}-{_hex(kind, name, length=7)}"
            resource_id = f"{state['clusterName']}:{group}"
            state.update(
                nodeGroupName=group,
                arn=f"arn:aws:eks:{region}:{account}:nodegroup/{state['clusterName']}/{group}/{_hex(group, length=8)}",
                # EKS names the Auto Scaling group it creates eks-<group>-<uuid>.
                resources=[
                    {
                        "autoscalingGroups": [{"name": f"eks-{group}-{_hex('asg', group, length=8)}"}],
                        "remoteAccessSecurityGroupId": "",
                    }
                ],
                status="ACTIVE",
            )
        elif kind == "aws:ec2/launchTemplate:LaunchTemplate":
            state.update(
                latestVersion=1.0,
                defaultVersion=1.0,
                arn=f"arn:aws:ec2:{region}:{account}:launch-template/{resource_id}",
            )
        elif kind == "aws:s3/bucket:Bucket":
            bucket = state.get("bucket") or f"{state.get('bucketPrefix', name)}{_hex(kind, name, length=10)}"
            resource_id = bucket
            state.update(
                bucket=bucket,
                arn=f"arn:aws:s3:::{bucket}",
                bucketRegionalDomainName=f"{bucket}.s3.{region}.amazonaws.com",
            )
        elif kind == "aws:kms/key:Key":
            key_id = "-".join(
                _hex("kms", name, length=32)[i:j] for i, j in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))
            )
            resource_id = key_id
            state.update(keyId=key_id, arn=f"arn:aws:kms:{region}:{account}:key/{key_id}")
        elif kind == "aws:iam/role:Role":
            state.update(
                arn=f"arn:aws:iam::{account}:role/{state['name']}", uniqueId="AROA" + _hex(name, length=16).upper()
            )
            resource_id = state["name"]
        elif kind == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
            issuer = str(state.get("url", "")).removeprefix("https://")
            state.update(arn=f"arn:aws:iam::{account}:oidc-provider/{issuer}")
            resource_id = state["arn"]
        elif kind == "aws:fsx/lustreFileSystem:LustreFileSystem":
            state.update(
                dnsName=f"{resource_id}.fsx.{region}.amazonaws.com",
                mountName=_hex("mount", name, length=8),
                arn=f"arn:aws:fsx:{region}:{account}:file-system/{resource_id}",
            )
        elif kind == "aws:ssm/parameter:Parameter":
            resource_id = state["name"]
            state.update(arn=f"arn:aws:ssm:{region}:{account}:parameter{state['name']}", version=1.0)
        elif kind == "aws:ec2/placementGroup:PlacementGroup":
            resource_id = state["name"]
            state.update(
                placementGroupId="pg-" + _hex(kind, name),
                arn=f"arn:aws:ec2:{region}:{account}:placement-group/{state['name']}",
            )
        elif kind == "aws:cloudwatch/metricAlarm:MetricAlarm":
            resource_id = state["name"]
            state.update(arn=f"arn:aws:cloudwatch:{region}:{account}:alarm:{state['name']}")
        elif kind == "aws:fis/experimentTemplate:ExperimentTemplate":
            state.update(arn=f"arn:aws:fis:{region}:{account}:experiment-template/{resource_id}")
        elif kind == "random:index/randomPassword:RandomPassword":
            # What the random provider computes on create: a password of the asked length.
            state.update(result=_hex("password", name, length=64)[: int(state.get("length", 32))])
        else:
            state.setdefault("arn", f"arn:aws:{kind.split(':')[1].split('/')[0]}:{region}:{account}:{name}")
        return resource_id, state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token == _GET_PARAMETERS_BY_PATH:
            path = str(args.args.get("path", "/"))
            names = sorted(name for name in self.parameters if name.startswith(path) and "/" not in name[len(path) :])
            return {
                "id": path,
                "path": path,
                "names": names,
                "values": [self.parameters[name] for name in names],
                "types": ["String"] * len(names),
                "arns": [f"arn:aws:ssm:{self.region}:{_ACCOUNT}:parameter{name}" for name in names],
            }, []
        if args.token == _GET_CALLER_IDENTITY:
            return {
                "id": _ACCOUNT,
                "accountId": _ACCOUNT,
                "arn": f"arn:aws:iam::{_ACCOUNT}:user/peakguard-offline",
                "userId": "AIDA" + _hex("caller", length=16).upper(),
            }, []
        if args.token == _GET_TARGET_GROUP:
            return self._target_group(args.args), []
        if args.token == _GET_LOAD_BALANCER:
            arn = str(args.args.get("arn", ""))
            return {"id": arn, "arn": arn, "arnSuffix": arn[arn.index("app/") :], "loadBalancerType": "application"}, []
        raise NotImplementedError(
            f"the offline engine does not answer the invoke {args.token}; teach infra/offline.py "
            "a realistic answer for it"
        )

    def _target_group(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """The Ingress's target group and its ALB as the AWS Load Balancer Controller names them
        (k8s-<namespace, 8>-<name, 8>-<hash>), found by the controller's tags."""
        tags = dict(query.get("tags") or {})
        stack = str(tags.get("ingress.k8s.aws/stack", "peakguard/model-service"))
        namespace, _, ingress = stack.partition("/")
        prefix = f"k8s-{namespace[:8]}-{ingress[:8]}"
        elb = f"arn:aws:elasticloadbalancing:{self.region}:{_ACCOUNT}"
        group = f"targetgroup/{prefix}-{_hex('tg', stack, length=10)}/{_hex('tg-id', stack, length=16)}"
        balancer = f"{elb}:loadbalancer/app/{prefix}-{_hex('lb', stack, length=10)}/{_hex('lb-id', stack, length=16)}"
        return {"id": f"{elb}:{group}", "arn": f"{elb}:{group}", "arnSuffix": group, "tags": tags,
                "loadBalancerArns": [balancer], "port": 8080, "protocol": "HTTP", "targetType": "ip"}  # fmt: skip


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """Pulumi's mock monitor, also keeping each registration's inputs and options."""

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.requests: dict[str, tuple[Any, dict[str, Any]]] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            self.requests[response.urn] = (request, _reveal(rpc.deserialize_properties(request.object)))
        return response


def _reveal(value: Any) -> Any:
    """Secrets in their plain form: offline there is nothing to protect and checks need the value."""
    if rpc.is_rpc_secret(value):
        return _reveal(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {key: _reveal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_reveal(item) for item in value]
    return value


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_offline(
    env: str,
    *,
    project_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    ssm_parameters: Mapping[str, str] | None = None,
    preview: bool = False,
    stack_file: Path | None = None,
) -> OfflineRun:
    """Run the program for `env` under mocks, from `Pulumi.<env>.yaml` in `project_dir`.

    `overrides` replaces whole top-level config keys (e.g. `{"peakguard:storage": {...}}`), the
    way a changed stack file would. `ssm_parameters` are what the account holds (the incident
    hold); `preview` runs as `pulumi preview` instead of `pulumi up`; `stack_file` reads the config
    from that file instead of `Pulumi.<env>.yaml` (a proposed change, checked as `env`). Raises `ConfigError` before
    anything runs if the config is invalid, exactly as `pulumi up` would refuse it.
    """
    from infra import program

    values = load_stack_file(project_dir or find_project_dir(), env, stack_file)
    values.update(overrides or {})
    config = StackConfig.from_mapping(values, stack=env)

    answers = _AwsAnswers(config.region, ssm_parameters)
    monitor = _RecordingMonitor(answers)
    logger = logging.getLogger(f"peakguard.offline.{env}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    messages = _Messages()
    logger.addHandler(messages)
    # Pulumi's mocks need a current event loop; an earlier asyncio.run() in this thread leaves none.
    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(answers, project=PROJECT, stack=env, preview=preview, monitor=monitor, logger=logger)
    pulumi.runtime.set_all_config({key: _engine_form(value) for key, value in values.items()})

    resolved: dict[str, Any] = {}

    def _program() -> pulumi.Output[Any]:
        outputs = program.declare(program.stack_config())
        return pulumi.Output.from_input(outputs).apply(resolved.update)

    try:
        pulumi.runtime.test(_program)()  # type: ignore[no-untyped-call]
    finally:
        logger.removeHandler(messages)

    resources = []
    for urn, (request, inputs) in monitor.requests.items():
        registered = monitor.resources.get(urn)
        resources.append(
            Registration(
                urn=urn,
                id=registered.id if registered else "",
                type=request.type,
                name=request.name,
                parent=request.parent if "::pulumi:pulumi:Stack::" not in request.parent else "",
                custom=bool(request.custom),
                inputs=inputs,
                outputs=_reveal(dict(registered.state)) if registered else dict(inputs),
                ignore_changes=tuple(request.ignoreChanges),
                protect=bool(request.protect),
                dependencies=tuple(request.dependencies),
            )
        )
    return OfflineRun(config=config, resources=tuple(resources), outputs=resolved, messages=tuple(messages.lines))
