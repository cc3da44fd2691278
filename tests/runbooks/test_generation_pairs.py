"""Which node groups a rolling upgrade moves: pairs of serving and incoming generations, from the
targets document, and errors that say how to declare what is missing."""

from __future__ import annotations

import pytest

from infra.targets import ClusterTarget, NodeGroupTarget, TargetsDocument
from runbooks.errors import RunbookError
from runbooks.nodes.fleet import generation_pairs


def _group(pool: str, az: str, generation: str, *, serving: bool) -> NodeGroupTarget:
    name = f"gpu-{pool}-{az}-{generation}"
    return NodeGroupTarget(pool, az, name, f"eks-{name}-1", "p5.48xlarge", generation=generation, serving=serving)


def _targets(*groups: NodeGroupTarget) -> TargetsDocument:
    system = NodeGroupTarget("system", None, "system", "eks-system-1", "m7i.xlarge")
    return TargetsDocument("prod", ClusterTarget("peakguard-prod", "https://x", "us-west-2"), (system, *groups))


UPGRADING = _targets(
    _group("full", "us-west-2a", "blue", serving=True),
    _group("full", "us-west-2a", "green", serving=False),
    _group("full", "us-west-2b", "blue", serving=True),
    _group("full", "us-west-2b", "green", serving=False),
    _group("mig", "us-west-2a", "green", serving=True),
)


def test_every_pool_and_az_with_an_incoming_generation_is_paired_with_its_serving_one() -> None:
    pairs = generation_pairs(UPGRADING)

    assert [(p.key, p.serving.name, p.incoming.name) for p in pairs] == [
        ("full/us-west-2a", "gpu-full-us-west-2a-blue", "gpu-full-us-west-2a-green"),
        ("full/us-west-2b", "gpu-full-us-west-2b-blue", "gpu-full-us-west-2b-green"),
    ]


@pytest.mark.parametrize("name", ["full", "gpu-full-us-west-2b-blue", "gpu-full-us-west-2b-green"])
def test_a_selection_by_pool_or_either_generations_name(name: str) -> None:
    keys = [p.key for p in generation_pairs(UPGRADING, [name])]

    assert keys == (["full/us-west-2a", "full/us-west-2b"] if name == "full" else ["full/us-west-2b"])


def test_a_pool_with_no_upgrade_declared_is_refused_saying_how_to_declare_one() -> None:
    with pytest.raises(RunbookError) as error:
        generation_pairs(UPGRADING, ["mig"])

    message = str(error.value)
    assert "--nodegroup mig: no incoming generation is declared" in message
    assert "peakguard:gpuPools.<pool>.next" in message and "pulumi up -s prod" in message


def test_nothing_declared_anywhere_is_refused() -> None:
    with pytest.raises(RunbookError, match=r"no GPU pool of prod has an incoming generation"):
        generation_pairs(_targets(_group("full", "us-west-2a", "blue", serving=True)))


def test_an_incoming_group_without_a_serving_one_beside_it_is_an_inconsistent_document() -> None:
    with pytest.raises(RunbookError, match=r"no single serving node group beside it"):
        generation_pairs(_targets(_group("full", "us-west-2c", "green", serving=False)))
