"""infra/node_scripts/node_preflight.sh, run for real against fake hardware commands.

The script is what the preflight DaemonSet and node_preflight.yml run; here it reads the outputs
of `nvidia-smi -L`, `fi_info -p efa -t FI_EP_RDM`, `mountpoint`/`findmnt` and `all_reduce_perf`
as the real tools print them (tests/playbooks/conftest.py) and must name the check that fails.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, VENV_BIN, FakeNode, all_reduce_perf_output, fi_info_efa, gpu_listing

SCRIPT = REPO / "infra" / "node_scripts" / "node_preflight.sh"

# p5.48xlarge, as infra/facts.py has it: 8 H100s, 32 EFA interfaces, 8 NVMe devices.
P5 = ["--gpus", "8", "--efa", "32", "--nvme", "8"]


def preflight(node: FakeNode, *args: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=node.script_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {result.stdout!r} (stderr {result.stderr!r})"
    return result.returncode, json.loads(lines[0])


def checks(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in result["checks"]}


def failing(result: dict[str, Any]) -> list[str]:
    return [check["name"] for check in result["checks"] if not check["ok"]]


@pytest.fixture
def p5(fake_node: Callable[..., FakeNode]) -> FakeNode:
    node = fake_node("p5")
    node.healthy(gpus=8, efa=32)
    return node


def raid_args(node: FakeNode) -> list[str]:
    return [
        "--raid-mount",
        node.hostvars["peakguard_raid_mount"],
        "--kubelet-dir",
        node.hostvars["peakguard_kubelet_dir"],
    ]


def test_a_healthy_node_passes_every_check_with_the_numbers_it_found(p5: FakeNode) -> None:
    p5.install_nccl(all_reduce_perf_output(gpus=8, busbw=351.2))

    rc, result = preflight(p5, *P5, *raid_args(p5), "--mig-config", "all-disabled")

    assert rc == 0
    assert result["ok"] is True
    by_name = checks(result)
    assert list(by_name) == ["gpus", "efa", "raid", "mig", "nccl"]
    assert all(check["ok"] for check in result["checks"])
    assert set(result["checks"][0]) == {"name", "ok", "expected", "found", "detail"}
    assert (by_name["gpus"]["expected"], by_name["gpus"]["found"]) == (8, 8)
    assert (by_name["efa"]["expected"], by_name["efa"]["found"]) == (32, 32)
    assert by_name["raid"]["found"] == f"/dev/md127 at {p5.hostvars['peakguard_raid_mount']}"
    assert by_name["mig"]["found"] == "all-disabled"
    assert by_name["nccl"]["found"] == 351.2
    # One process drives all 8 GPUs: a single-node all-reduce over NVLink.
    assert p5.calls("all_reduce_perf") == ["all_reduce_perf -b 8M -e 256M -f 2 -g 8 -c 1"]


def test_nccl_is_skipped_where_all_reduce_perf_is_not_installed_unless_required(p5: FakeNode) -> None:
    rc, result = preflight(p5, *P5, *raid_args(p5), "--mig-config", "all-disabled")

    assert (rc, result["ok"]) == (0, True)
    nccl = checks(result)["nccl"]
    assert nccl["ok"] is True
    assert nccl["found"] is None
    assert nccl["detail"].startswith("skipped:") and "not installed" in nccl["detail"]

    rc, result = preflight(p5, *P5, *raid_args(p5), "--mig-config", "all-disabled", "--nccl", "require")
    assert (rc, failing(result)) == (1, ["nccl"])


def test_nccl_is_run_when_installed_and_fails_on_wrong_results_or_low_bandwidth(p5: FakeNode) -> None:
    p5.install_nccl(all_reduce_perf_output(gpus=8, busbw=351.2, wrong=3))
    rc, result = preflight(p5, *P5, *raid_args(p5), "--checks", "gpus,nccl")
    assert (rc, failing(result)) == (1, ["nccl"])
    assert "Out of bounds values: 3 FAILED" in checks(result)["nccl"]["detail"]

    p5.install_nccl(all_reduce_perf_output(gpus=8, busbw=120.5))
    rc, result = preflight(p5, *P5, "--checks", "gpus,nccl", "--nccl-min-busbw", "300")
    assert (rc, failing(result)) == (1, ["nccl"])
    assert checks(result)["nccl"]["found"] == 120.5


def test_missing_gpus_fail_the_gpus_check(p5: FakeNode) -> None:
    p5.set("nvidia-smi-L", gpu_listing(7))
    rc, result = preflight(p5, *P5, *raid_args(p5), "--mig-config", "all-disabled")
    assert (rc, failing(result)) == (1, ["gpus"])
    assert (checks(result)["gpus"]["expected"], checks(result)["gpus"]["found"]) == (8, 7)

    # No driver at all: nvidia-smi cannot list anything.
    (p5.state / "nvidia-smi-L").unlink()
    rc, result = preflight(p5, *P5, *raid_args(p5))
    assert (rc, failing(result)) == (1, ["gpus"])
    assert "couldn't communicate with the NVIDIA driver" in checks(result)["gpus"]["detail"]


def test_a_wrong_efa_count_fails_the_efa_check(p5: FakeNode) -> None:
    # libfabric lists each device under two fabrics; only distinct devices count.
    p5.set("fi_info", fi_info_efa(31))
    rc, result = preflight(p5, *P5, *raid_args(p5))
    assert (rc, failing(result)) == (1, ["efa"])
    assert (checks(result)["efa"]["expected"], checks(result)["efa"]["found"]) == (32, 31)

    p5.set("fi_info", "")
    rc, result = preflight(p5, *P5, *raid_args(p5))
    assert (rc, failing(result)) == (1, ["efa"])
    assert checks(result)["efa"]["found"] == 0
    assert "No data available" in checks(result)["efa"]["detail"]


def test_an_unmounted_array_fails_the_raid_check(fake_node: Callable[..., FakeNode], tmp_path: Path) -> None:
    node = fake_node("fresh")
    node.healthy(gpus=8, efa=32, nvme=0)  # nothing mounted: the mount point is a plain directory
    mount = Path(node.hostvars["peakguard_raid_mount"])
    mount.mkdir(parents=True)

    rc, result = preflight(node, *P5, *raid_args(node))

    assert (rc, failing(result)) == (1, ["raid"])
    raid = checks(result)["raid"]
    assert raid["found"] == "not mounted"
    assert f"{mount} is not a mount point" in raid["detail"]


def test_the_kubelet_must_live_on_the_array(fake_node: Callable[..., FakeNode]) -> None:
    node = fake_node("rootfs-kubelet")
    node.healthy(gpus=8, efa=32, nvme=0)
    node.mount_raid(devices=8, kubelet_on_array=False)

    rc, result = preflight(node, *P5, *raid_args(node))

    assert (rc, failing(result)) == (1, ["raid"])
    assert "not on the array /dev/md127" in checks(result)["raid"]["detail"]


def test_types_without_instance_store_skip_the_raid_check(p5: FakeNode) -> None:
    rc, result = preflight(p5, "--gpus", "8", "--efa", "32", "--nvme", "0", "--checks", "raid")
    assert (rc, checks(result)["raid"]["detail"]) == (0, "skipped: this instance type has no NVMe instance store")


@pytest.mark.parametrize(
    ("label", "listing", "found"),
    [
        # The label asks for 1g.10gb slices; the MIG manager applied another layout.
        ("all-1g.10gb", gpu_listing(8, mig=["2g.20gb"] * 3), "all-2g.20gb"),
        # Half applied: GPU 1 was left whole.
        (
            "all-1g.10gb",
            gpu_listing(1, mig=["1g.10gb"] * 7) + "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n",
            "GPU0:7x1g.10gb GPU1:none",
        ),
        ("all-disabled", gpu_listing(8, mig=["1g.10gb"] * 7), "all-1g.10gb"),
    ],
    ids=["other-profile", "partial", "should-be-off"],
)
def test_a_mig_layout_that_differs_from_the_label_fails_the_mig_check(
    p5: FakeNode, label: str, listing: str, found: str
) -> None:
    p5.set("nvidia-smi-L", listing)
    p5.set("mig-modes", "Enabled\n" * 8)

    rc, result = preflight(
        p5, "--gpus", str(listing.count("\nGPU ") + 1), "--checks", "gpus,mig", "--mig-config", label
    )

    assert (rc, failing(result)) == (1, ["mig"])
    assert (checks(result)["mig"]["expected"], checks(result)["mig"]["found"]) == (label, found)


def test_mig_mode_on_without_mig_devices_is_not_all_disabled(p5: FakeNode) -> None:
    p5.set("mig-modes", "Enabled\n" + "Disabled\n" * 7)
    rc, result = preflight(p5, *P5, "--checks", "mig", "--mig-config", "all-disabled")
    assert (rc, failing(result)) == (1, ["mig"])
    assert "1 GPU(s) have MIG mode enabled but no MIG devices" in checks(result)["mig"]["detail"]


def test_a_matching_mig_layout_passes_and_nccl_is_not_tried_on_mig_slices(p5: FakeNode) -> None:
    p5.set("nvidia-smi-L", gpu_listing(8, model="NVIDIA A100-SXM4-80GB", mig=["1g.10gb"] * 7))
    p5.install_nccl(all_reduce_perf_output())

    rc, result = preflight(p5, *P5, *raid_args(p5), "--mig-config", "all-1g.10gb")

    assert (rc, result["ok"]) == (0, True)
    assert checks(result)["mig"]["found"] == "all-1g.10gb"
    assert checks(result)["nccl"]["detail"] == "skipped: NCCL does not run across MIG devices"
    assert p5.calls("all_reduce_perf") == []


def test_bad_arguments_still_give_one_json_object_and_exit_2(p5: FakeNode) -> None:
    rc, result = preflight(p5, "--gpus", "eight", "--efa", "32")
    assert rc == 2
    assert result["ok"] is False
    assert result["checks"][0]["name"] == "arguments"
    assert "--gpus must be a whole number" in result["checks"][0]["detail"]

    rc, result = preflight(p5, *P5, "--checks", "gpus,disks")
    assert (rc, result["checks"][0]["detail"]) == (
        2,
        "unknown check 'disks' in --checks (known: gpus,efa,raid,mig,nccl)",
    )


def test_expectations_can_come_from_the_environment_as_the_daemonset_passes_them(p5: FakeNode) -> None:
    env = {
        **p5.script_env(),
        "PREFLIGHT_GPUS": "8",
        "PREFLIGHT_EFA": "32",
        "PREFLIGHT_CHECKS": "gpus,efa",
    }
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout
    assert [c["name"] for c in json.loads(result.stdout)["checks"]] == ["gpus", "efa"]


def test_the_script_passes_shellcheck() -> None:
    result = subprocess.run([str(VENV_BIN / "shellcheck"), str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
