"""How many light replicas emergency-stop expects a node of the light pool to hold: one MIG
instance each, so the GPUs times the instances the node's layout cuts each GPU into, which the
GPU's memory decides. Sizing the MIG node groups from a wrong count asks for too few nodes."""

from __future__ import annotations

import pytest

from infra.targets import NodeGroupTarget
from runbooks.errors import RunbookError
from runbooks.library.emergency_stop import _light_replicas_per_node


def _group(instance_type: str, mig_config: str | None) -> NodeGroupTarget:
    return NodeGroupTarget("mig", "us-west-2a", "gpu-mig-us-west-2a-blue", "eks-1", instance_type, "blue",
                           mig_config=mig_config)  # fmt: skip


@pytest.mark.parametrize(
    ("instance_type", "layout", "replicas"),
    [
        ("p4de.24xlarge", "all-1g.10gb", 56),  # 8 A100-80GB, 7 each: the seed's split
        ("p4d.24xlarge", "all-1g.10gb", 32),  # 8 A100-40GB: 1g.10gb is a quarter of one
        ("p4d.24xlarge", "all-1g.5gb", 56),
        ("p5.48xlarge", "all-1g.20gb", 32),
    ],
)
def test_a_node_holds_its_gpus_times_the_instances_its_layout_makes(
    instance_type: str, layout: str, replicas: int
) -> None:
    assert _light_replicas_per_node(_group(instance_type, layout)) == replicas


def test_a_document_without_the_layout_is_refused_saying_how_to_publish_it() -> None:
    with pytest.raises(RunbookError, match=r"gpu-mig-us-west-2a-blue's MIG layout .* run `pulumi up`"):
        _light_replicas_per_node(_group("p4de.24xlarge", None))
