"""A hundred and more bad stack values, each through the command a user runs: `peakguard preview
--env prod --stack-file FILE` must exit 2 with one line naming the key, and never a traceback.

Each case changes one value of the real `Pulumi.prod.yaml` (a few cases are raw YAML, where the
file's text is the point: a duplicated key, YAML 1.1's `yes`, an unquoted version). Several kinds
per key: the wrong type, out of range, a bad format, and what AWS or an incident would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import StackConfig
from infra.offline import load_stack_file
from peakguard.cli import main
from tests.infra.conftest import PROJECT_DIR, stack_values

DELETE = object()
RES = "cr-0123456789abcdef0"
NET, CLUSTER, FULL, MIG = "peakguard:network", "peakguard:cluster", "peakguard:gpuPools.full", "peakguard:gpuPools.mig"
FSX, K8S = "peakguard:storage.fsx", "peakguard:kubernetes"
SVC = f"{K8S}.modelService"

# (the dotted path changed, its bad value, the key the message must name when it is another one)
CASES: list[tuple[str, Any, str | None]] = [
    ("aws:region", "mars-1", None),
    ("aws:region", 2, None),
    ("aws:region", DELETE, None),
    (f"{NET}.vpcCidr", "banana", None),
    (f"{NET}.vpcCidr", "10.40.0.0/8", None),
    (f"{NET}.vpcCidr", "10.40.0.1/16", None),
    (f"{NET}.vpcCidr", 1040, None),
    (f"{NET}.vpcCidr", ["10.40.0.0/16"], None),
    (f"{NET}.availabilityZones", "us-west-2a", None),
    (f"{NET}.availabilityZones", ["us-west-2a"], None),
    (f"{NET}.availabilityZones", ["us-east-1a", "us-east-1b", "us-east-1c"], None),
    (f"{NET}.availabilityZones", ["us-west-2a", "us-west-2a", "us-west-2b"], None),
    (f"{NET}.availabilityZones", [], None),
    (f"{NET}.natGateways", "single", None),
    (f"{NET}.natGateways", "perAZ", None),
    (f"{NET}.natGateways", True, None),
    (f"{NET}.subnets", {"a": 1}, None),
    (f"{CLUSTER}.name", "1cluster", None),
    (f"{CLUSTER}.name", "a" * 70, None),
    (f"{CLUSTER}.kubernetesVersion", "1.99", None),
    (f"{CLUSTER}.kubernetesVersion", "1.29", None),
    (f"{CLUSTER}.kubernetesVersion", 1.33, None),
    (f"{CLUSTER}.kubernetesVersion", "v1.33", None),
    (f"{CLUSTER}.endpoint.publicAccess", "yes", None),
    (f"{CLUSTER}.endpoint.publicAccess", 1, None),
    (f"{CLUSTER}.endpoint.publicAccessCidrs", ["0.0.0.0/0"], None),
    (f"{CLUSTER}.endpoint.publicAccessCidrs", ["0.0.0.0/1", "128.0.0.0/1"], None),
    (f"{CLUSTER}.endpoint.publicAccessCidrs", ["10.0.0.0/9"], None),
    (f"{CLUSTER}.endpoint.publicAccessCidrs", ["203.0.113.0/33"], None),
    (f"{CLUSTER}.endpoint.publicAccessCidrs", "203.0.113.0/24", None),
    (f"{CLUSTER}.endpoint.publicAccessCidrs", [], None),
    (f"{CLUSTER}.endpoint.privateAccess", True, None),
    (f"{CLUSTER}.serviceIpv4Cidr", "10.40.0.0/16", None),
    (f"{CLUSTER}.serviceIpv4Cidr", "172.0.0.0/8", None),
    (f"{CLUSTER}.serviceIpv4Cidr", "nope", None),
    (f"{CLUSTER}.logTypes", [], None),
    (f"{CLUSTER}.logTypes", ["api", "audit", "kernel"], None),
    (f"{CLUSTER}.logTypes", "api", None),
    (f"{CLUSTER}.addons.vpcCni", "1.20.4", None),
    (f"{CLUSTER}.addons.vpcCni", "v1.10.0-eksbuild.1", None),
    (f"{CLUSTER}.addons.coredns", 112, None),
    (f"{CLUSTER}.addons.kubeProxy", "v1.31.2-eksbuild.3", None),
    (f"{CLUSTER}.addons.kubeProxy", DELETE, None),
    (f"{CLUSTER}.addons.ebsCsi", "v1.0.0-eksbuild.1", None),
    (f"{CLUSTER}.systemNodes.instanceType", "", None),
    (f"{CLUSTER}.systemNodes.instanceType", "banana.huge", None),
    (f"{CLUSTER}.systemNodes.scaling.minSize", 2, None),
    (f"{CLUSTER}.systemNodes.scaling", {"minSize": 3, "maxSize": 2}, None),
    (f"{CLUSTER}.systemNodes.scaling.maxSize", 1000, None),
    (f"{CLUSTER}.systemNodes.scaling.maxSize", "six", None),
    (f"{FULL}.instanceType", "banana.huge", None),
    (f"{FULL}.instanceType", "p5.48XLARGE", None),
    (f"{FULL}.availabilityZones", ["us-west-2d"], None),
    (f"{FULL}.availabilityZones", [], None),
    (f"{FULL}.amiFamily", "bottlerocket", None),
    (f"{FULL}.amiFamily", "ubuntu", f"{FULL}.amiId"),
    (f"{FULL}.amiId", "ami-123", None),
    (f"{FULL}.amiId", "ami-0123456789abcdef0", None),
    (f"{FULL}.releaseVersion", "banana", None),
    (f"{FULL}.migProfile", "all-3g.99gb", None),
    (f"{FULL}.expectedPeakNodes", -1, None),
    (f"{FULL}.expectedPeakNodes", 11.5, None),
    (f"{FULL}.expectedPeakNodes", 30, f"{FULL}.scalingPerAz.maxSize"),
    (f"{FULL}.expectedPeakNodes", 2000, None),
    (f"{FULL}.headroom", 1.1, None),
    (f"{FULL}.headroom", "lots", None),
    (f"{FULL}.headroom", 100, None),
    (f"{FULL}.scalingPerAz.maxSize", 2, None),
    (f"{FULL}.scalingPerAz.minSize", -1, None),
    (f"{FULL}.scalingPerAz", [1, 1, 5], None),
    (f"{FULL}.scalingPerAz.desiredSize", 9, f"{FULL}.scalingPerAz"),
    (f"{FULL}.maxUnavailablePercentage", 50, None),
    (f"{FULL}.maxUnavailablePercentage", 0, None),
    (f"{FULL}.rootVolumeGiB", 10, None),
    (f"{FULL}.rootVolumeGiB", 100000, None),
    (f"{FULL}.podsNeedInstanceMetadata", "maybe", None),
    (f"{FULL}.gds", True, None),
    (f"{FULL}.capacityReservations", {"us-west-2a": {"id": "cr-1"}}, f"{FULL}.capacityReservations.us-west-2a.id"),
    (f"{FULL}.capacityReservations", {"us-west-2z": {"id": RES}}, f"{FULL}.capacityReservations.us-west-2z"),
    (f"{FULL}.capacityReservations", {"us-west-2a": {"id": RES, "type": "spot"}},
     f"{FULL}.capacityReservations.us-west-2a.type"),
    (f"{FULL}.generation", "red", None),
    (f"{FULL}.next", {"releaseVersion": "banana"}, f"{FULL}.next.releaseVersion"),
    (f"{FULL}.next", {}, f"{FULL}.next.releaseVersion"),
    (f"{FULL}.instanceTypes", "p5.48xlarge", None),
    (f"{MIG}.migProfile", "all-2g.99gb", None),
    (f"{MIG}.migProfile", "all-balanced", f"{SVC}.lightPool"),
    (f"{FSX}.availabilityZone", "us-west-2d", None),
    (f"{FSX}.storageCapacityGiB", 1000, None),
    (f"{FSX}.storageCapacityGiB", 3000, None),
    (f"{FSX}.storageCapacityGiB", 2_400_000_000_000, None),
    (f"{FSX}.storageCapacityGiB", 2.4e12, None),
    (f"{FSX}.throughputPerTiB", 300, None),
    (f"{FSX}.throughputPerTiB", "fast", None),
    (f"{FSX}.enabled", "no", None),
    (f"{K8S}.charts.gpuOperator", "^25.3", None),
    (f"{K8S}.charts.keda", 2.17, None),
    (f"{K8S}.charts.grafana", "1.0.0", None),
    (f"{K8S}.charts.keda", DELETE, None),
    (f"{K8S}.clusterAutoscalerImageTag", "v1.34.0", None),
    (f"{K8S}.clusterAutoscalerImageTag", "latest", None),
    (f"{K8S}.efaDevicePluginImageTag", "0.5.13", None),
    (f"{SVC}.namespace", "Peakguard", None),
    (f"{SVC}.image", "123456789012.dkr.ecr.us-west-2.amazonaws.com/peakguard/model-service:latest", None),
    (f"{SVC}.image", "123456789012.dkr.ecr.us-west-2.amazonaws.com/peakguard/model-service", None),
    (f"{SVC}.weightsImage", "aws-cli", None),
    (f"{SVC}.pool", "mig", None),
    (f"{SVC}.pool", "gpu", None),
    (f"{SVC}.lightPool", "full", None),
    (f"{SVC}.gpusPerReplica", 9, None),
    (f"{SVC}.gpusPerReplica", 0, None),
    (f"{SVC}.expectedPeakReplicas", 0, None),
    (f"{SVC}.maxReplicas", 100, None),
    (f"{SVC}.maxReplicas", 1_000_000_000, None),
    (f"{SVC}.maxReplicas", 1e9, None),
    (f"{SVC}.minReplicas", 200, None),
    (f"{SVC}.inFlightPerReplica", 5000, None),
    (f"{SVC}.maxRequestSeconds", 0, None),
    (f"{SVC}.startupSeconds", 10, None),
    (f"{SVC}.sloP99Milliseconds", 5, None),
    (f"{SVC}.cpu", "0", None),
    (f"{SVC}.cpu", "four", None),
    (f"{SVC}.memory", "16GB", None),
    (f"{SVC}.mode", {"model": "medium"}, f"{SVC}.mode.model"),
    (f"{SVC}.mode", {"precision": "int4"}, f"{SVC}.mode.precision"),
    (f"{SVC}.mode", {"batchMin": 200}, f"{SVC}.mode.batchMin"),
    (f"{SVC}.mode", {"batchMax": 1000}, f"{SVC}.mode.batchMax"),
    (f"{SVC}.ingress", {"host": "not a host!!"}, f"{SVC}.ingress.host"),
    (f"{SVC}.ingress", {"scheme": "public"}, f"{SVC}.ingress.scheme"),
    (f"{SVC}.ingress", {"certificateArn": "arn:aws:iam::123:cert"}, f"{SVC}.ingress.certificateArn"),
    (f"{SVC}.adminSourceCidrs", ["0.0.0.0/0"], None),
    (f"{SVC}.adminSourceCidrs", ["10.0.0.0/33"], None),
    ("peakguard:tags", {"aws:team": "x"}, "peakguard:tags.aws:team"),
    ("peakguard:tags", {"team": "x" * 300}, "peakguard:tags.team"),
    ("peakguard:tags", {"team": 7}, "peakguard:tags.team"),
    ("peakguard:tags", {f"team{i}": "x" for i in range(60)}, None),
    ("peakguard:tags", "team=x", None),
    ("peakguard:owner", "ml-platform", None),
]  # fmt: skip

# Raw YAML: (the text replaced in Pulumi.prod.yaml, its replacement, the key the message names).
RAW_CASES = [
    ("    natGateways: perAz\n", "    natGateways: perAz\n    natGateways: single\n", "key 'natGateways' is also set"),
    ("      publicAccess: true\n", "      publicAccess: yes\n", f"{CLUSTER}.endpoint.publicAccess"),
    ('    kubernetesVersion: "1.33"\n', "    kubernetesVersion: 1.33\n", f"{CLUSTER}.kubernetesVersion"),
    ("  peakguard:network:\n", "  peakgaurd:network:\n", "peakgaurd:network"),
]


def _changed(path: str, value: Any) -> dict[str, Any]:
    values = stack_values("prod")
    head, *rest = path.split(".")
    parent: Any = values
    for name in [head, *rest][:-1]:
        parent = parent[name]
    last = [head, *rest][-1]
    if value is DELETE:
        del parent[last]
    else:
        parent[last] = value
    return values


_RAW_IDS = ["duplicated-key", "yaml-1.1-yes", "unquoted-version", "misspelt-namespace"]


def _preview_refuses(stack_file: Path, names: str, capsys: pytest.CaptureFixture[str]) -> str:
    """`names`: the text that names the key (`peakguard:network.vpcCidr: `)."""
    code = main(["preview", "--env", "prod", "--project-dir", str(PROJECT_DIR), "--stack-file", str(stack_file)])
    captured = capsys.readouterr()
    message = " ".join(captured.err.split())
    assert code == 2, f"exit {code}, stderr: {captured.err}"
    assert "Traceback" not in captured.err
    assert names in message, message
    assert len(captured.err.strip().splitlines()) == 1, captured.err  # one line, never wrapped
    return message


def _id(case: tuple[str, Any, str | None]) -> str:
    path, value, _ = case
    shown = "absent" if value is DELETE else repr(value)
    return f"{path.removeprefix('peakguard:')}={shown[:40]}"


def test_the_table_has_at_least_a_hundred_bad_values() -> None:
    assert len(CASES) + len(RAW_CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=[_id(case) for case in CASES])
def test_a_bad_value_exits_2_naming_its_key(
    case: tuple[str, Any, str | None], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, value, key = case
    stack_file = tmp_path / "Pulumi.prod.yaml"
    stack_file.write_text(yaml.safe_dump({"config": _changed(path, value)}, sort_keys=False, width=10_000))
    _preview_refuses(stack_file, f"{key or path}: ", capsys)


@pytest.mark.parametrize(("text", "replacement", "key"), RAW_CASES, ids=_RAW_IDS)
def test_bad_yaml_text_exits_2_naming_its_key(
    text: str, replacement: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = (PROJECT_DIR / "Pulumi.prod.yaml").read_text()
    assert text in original, f"the prod stack file no longer holds {text!r}: update the case"
    stack_file = tmp_path / "Pulumi.prod.yaml"
    stack_file.write_text(original.replace(text, replacement, 1))
    _preview_refuses(stack_file, key if " " in key else f"{key}: ", capsys)


def test_the_unchanged_file_is_not_refused(tmp_path: Path) -> None:
    # The seam the table relies on: the same dump of the real values is a valid stack file.
    stack_file = tmp_path / "Pulumi.prod.yaml"
    stack_file.write_text(yaml.safe_dump({"config": stack_values("prod")}, sort_keys=False))
    values: Mapping[str, Any] = load_stack_file(PROJECT_DIR, "prod", stack_file)

    assert StackConfig.from_mapping(values, stack="prod").env == "prod"
