"""The shared numbers and the EFA layout every GPU node group is built from."""

from __future__ import annotations

import pytest

from infra import facts


@pytest.mark.parametrize(
    ("peak", "capacity"),
    [(0, 0), (1, 2), (3, 4), (10, 13), (11, 15), (20, 26), (85, 111), (100, 130)],
)
def test_headroom_is_ceil_of_1_3_times_peak_without_float_error(peak: int, capacity: int) -> None:
    # 1.3 * 10 is 13.000000000000002 in floats, whose ceil would be 14.
    assert facts.capacity_with_headroom(peak) == capacity


def test_headroom_may_be_raised_never_lowered() -> None:
    from fractions import Fraction

    assert facts.capacity_with_headroom(10, Fraction(3, 2)) == 15
    with pytest.raises(ValueError, match="below the floor"):
        facts.capacity_with_headroom(10, Fraction(6, 5))


@pytest.mark.parametrize(("size", "batch"), [(0, 0), (1, 0), (2, 0), (3, 1), (5, 1), (6, 2), (60, 20), (61, 20)])
def test_max_batch_is_floor_of_a_third(size: int, batch: int) -> None:
    assert facts.max_batch(size) == batch


def test_max_unavailable_percentage_is_33() -> None:
    assert facts.MAX_UNAVAILABLE_PERCENTAGE == 33


@pytest.mark.parametrize("name", sorted(facts.INSTANCE_TYPES))
def test_efa_layout_one_interface_per_card_primary_on_card_0(name: str) -> None:
    instance = facts.INSTANCE_TYPES[name]
    layout = facts.efa_interfaces(instance)

    assert len(layout) == min(instance.network_cards, instance.max_efa_interfaces)
    assert layout[0] == facts.EfaInterface(network_card_index=0, device_index=0, interface_type="efa")
    assert all(slot.interface_type == "efa-only" for slot in layout[1:])
    pairs = [(slot.network_card_index, slot.device_index) for slot in layout]
    assert len(set(pairs)) == len(pairs), "a (card, device) pair repeats"
    assert sorted(slot.network_card_index for slot in layout) == list(range(len(layout)))


@pytest.mark.parametrize(
    ("name", "interfaces"),
    [("p4d.24xlarge", 4), ("p4de.24xlarge", 4), ("p5.48xlarge", 32), ("p5e.48xlarge", 32), ("p5en.48xlarge", 16)],
)
def test_efa_interface_count_per_p_instance(name: str, interfaces: int) -> None:
    assert len(facts.efa_interfaces(facts.INSTANCE_TYPES[name])) == interfaces


def test_mig_layouts_follow_the_gpu() -> None:
    a100_80 = facts.INSTANCE_TYPES["p4de.24xlarge"]
    a100_40 = facts.INSTANCE_TYPES["p4d.24xlarge"]
    l40s = facts.INSTANCE_TYPES["g6e.12xlarge"]

    assert facts.mig_config_is_valid("all-1g.10gb", a100_80)
    assert not facts.mig_config_is_valid("all-1g.5gb", a100_80)
    assert facts.mig_config_is_valid("all-1g.5gb", a100_40)
    assert facts.mig_config_is_valid("all-disabled", a100_40)
    assert not facts.mig_config_is_valid("all-1g.10gb", l40s)
    assert not facts.mig_config_is_valid("1g.10gb", a100_80)


@pytest.mark.parametrize(
    ("instance_type", "layout", "advertised"),
    [
        # 1g.10gb is a seventh of an 80 GB GPU and a quarter of a 40 GB one (NVIDIA MIG User Guide).
        ("p4de.24xlarge", "all-1g.10gb", {"nvidia.com/mig-1g.10gb": 8 * 7}),
        ("p5.48xlarge", "all-1g.10gb", {"nvidia.com/mig-1g.10gb": 8 * 7}),
        ("p4d.24xlarge", "all-1g.10gb", {"nvidia.com/mig-1g.10gb": 8 * 4}),
        ("p4d.24xlarge", "all-1g.5gb", {"nvidia.com/mig-1g.5gb": 8 * 7}),
        ("p5.48xlarge", "all-1g.20gb", {"nvidia.com/mig-1g.20gb": 8 * 4}),
        ("p5e.48xlarge", "all-3g.71gb", {"nvidia.com/mig-3g.71gb": 8 * 2}),
        (
            "p5.48xlarge",
            "all-balanced",
            {"nvidia.com/mig-1g.10gb": 16, "nvidia.com/mig-2g.20gb": 8, "nvidia.com/mig-3g.40gb": 8},
        ),
        ("p5.48xlarge", "all-disabled", {"nvidia.com/gpu": 8}),
        ("p5.48xlarge", None, {"nvidia.com/gpu": 8}),
        ("g6e.12xlarge", None, {"nvidia.com/gpu": 4}),
    ],
)
def test_what_a_node_advertises_follows_its_gpu_memory_and_layout(
    instance_type: str, layout: str | None, advertised: dict[str, int]
) -> None:
    assert facts.INSTANCE_TYPES[instance_type].accelerators(layout) == advertised


def test_a_layout_the_gpu_has_not_is_refused_naming_the_ones_it_has() -> None:
    with pytest.raises(ValueError, match=r"'all-1g.5gb' is not one of A100-SXM4-80GB's.*1g.10gb, 1g.20gb"):
        facts.INSTANCE_TYPES["p4de.24xlarge"].accelerators("all-1g.5gb")


@pytest.mark.parametrize(
    ("text", "version"),
    [("v1.19.2-eksbuild.1", (1, 19, 2)), ("v1.12.1-eksbuild.20", (1, 12, 1)), ("1.19.2", None), ("latest", None)],
)
def test_addon_versions_parse(text: str, version: tuple[int, int, int] | None) -> None:
    assert facts.parse_addon_version(text) == version
