"""mig_configure.yml through ansible-runner: verify, refuse beside the operator or busy GPUs, apply.

The node's layout comes from a fake `nvidia-smi -L`; its label and pods from a fake kubectl (the
controller's view of the cluster); applying is a fake nvidia-mig-parted that logs its call and
makes nvidia-smi show the new layout.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from .conftest import FakeNode, Lab, Run, gpu_listing, pod

A100 = "NVIDIA A100-SXM4-80GB"
MIG_MANAGER = pod("nvidia-mig-manager-x7k2p", namespace="gpu-operator", app="nvidia-mig-manager")
LIGHT_MODEL = pod("model-service-light-5d9f-abcde", limits={"nvidia.com/mig-1g.10gb": "1"})
LOGGER = pod("fluent-bit-q8v4n", namespace="kube-system")


def p4de(lab: Lab, name: str, *, layout: list[str], **hostvars: Any) -> FakeNode:
    """A mig-pool node (8 A100 80GB) showing `layout` on every GPU."""
    node = lab.node(name, instance_type="p4de.24xlarge", peakguard_ami_family="al2023", **hostvars)
    node.healthy(gpus=8, efa=4, model=A100, mig=layout)
    node.set("after-mig-parted", gpu_listing(8, model=A100, mig=["1g.10gb"] * 7))
    return node


@pytest.fixture(scope="module")
def runs(lab: Lab) -> dict[str, Future[Run]]:
    # Layout as labelled, operator present: verified, nothing done.
    matching = p4de(lab, "matching", layout=["1g.10gb"] * 7)
    matching.kubernetes(
        labels={"nvidia.com/mig.config": "all-1g.10gb", "nvidia.com/mig.config.state": "success"},
        pods=[MIG_MANAGER, LIGHT_MODEL],
    )
    # Layout differs, operator present: reported, never applied by us.
    operator = p4de(lab, "operator", layout=["3g.40gb"] * 2)
    operator.kubernetes(
        labels={"nvidia.com/mig.config": "all-1g.10gb", "nvidia.com/mig.config.state": "failed"}, pods=[MIG_MANAGER]
    )
    # Layout differs, no operator, a pod holds a MIG slice: refused.
    busy = p4de(lab, "busy", layout=[], peakguard_mig_config="all-1g.10gb")
    busy.kubernetes(pods=[LIGHT_MODEL, LOGGER])
    # Layout differs, no operator, no GPU pods: applied with nvidia-mig-parted, then verified.
    idle = p4de(lab, "idle", layout=[], peakguard_mig_config="all-1g.10gb")
    idle.kubernetes(pods=[LOGGER])
    # A GPU without MIG is skipped.
    l40s = lab.node("l40s", instance_type="g6e.48xlarge", peakguard_ami_family="al2023")
    # Check mode, on a node that would be applied.
    dry = p4de(lab, "dry", layout=[], peakguard_mig_config="all-1g.10gb", peakguard_gpu_operator="absent")
    dry.kubernetes(pods=[])

    return {
        "apply": lab.start("mig_configure.yml", [matching, operator, busy, idle, l40s]),
        "check": lab.start("mig_configure.yml", [dry], check=True),
    }


def test_verify_refuse_or_apply_and_mig_parted_only_where_the_operator_is_absent(
    lab: Lab, runs: dict[str, Future[Run]]
) -> None:
    run = runs["apply"].result()

    assert run.failed_hosts() == {"operator", "busy"}, run.output()
    failures = run.failures()
    assert "the layout is all-3g.40gb, not all-1g.10gb" in failures["operator"]
    assert "gpu-operator/nvidia-mig-manager-x7k2p" in failures["operator"]
    assert "nvidia.com/mig.config.state is failed" in failures["operator"]
    assert "1 pod(s) hold GPUs or MIG slices" in failures["busy"]
    assert "peakguard/model-service-light-5d9f-abcde" in failures["busy"]
    assert "fluent-bit" not in failures["busy"]

    assert run.changed("matching") == 0
    assert run.changed("l40s") == 0
    assert run.changed("idle") == 1
    assert lab.nodes["idle"].calls("nvidia-mig-parted") == [
        "nvidia-mig-parted apply --config-file /etc/nvidia-mig-manager/config.yaml --selected-config all-1g.10gb"
    ]
    for name in ("matching", "operator", "busy", "l40s"):
        assert lab.nodes[name].calls("nvidia-mig-parted") == [], name
    # The label was read from Kubernetes where no layout was given.
    assert lab.nodes["matching"].calls("kubectl")[0].startswith("kubectl get node ip-10-40-1-")


def test_check_mode_says_what_it_would_apply_and_applies_nothing(lab: Lab, runs: dict[str, Future[Run]]) -> None:
    run = runs["check"].result()

    assert run.status == "successful", run.output()
    assert "would apply all-1g.10gb (now all-disabled)" in run.output()
    assert lab.nodes["dry"].calls("nvidia-mig-parted") == []
