"""gpu_driver_upgrade.yml and gds_setup.yml through ansible-runner: where each may act, and refusals.

Neither can really run here (no apt repository with NVIDIA packages, no reboot of the test
machine, no nvidia-fs), so these runs cover what decides: the AMI family, where the driver comes
from, GPU pods on the node, versions already in place, and check-mode plans. The package,
installer and reboot tasks are tagged `node_change` and skipped in the check-mode run.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from .conftest import GDSCHECK_OK, FakeNode, Lab, Run, pod

TARGET = {"peakguard_driver_version": "570.133.20"}


def ubuntu(lab: Lab, name: str, *, operator_driver: bool = False, **hostvars: Any) -> FakeNode:
    node = lab.node(name, peakguard_ami_family="ubuntu", **hostvars)
    node.healthy(gpus=8, efa=32)
    node.kubernetes(pods=[])
    if operator_driver:
        Path(node.hostvars["peakguard_operator_driver_root"]).mkdir(parents=True)
    return node


def nvidia_fs_loaded(node: FakeNode) -> None:
    (Path(node.hostvars["peakguard_sysfs_module_dir"]) / "nvidia_fs").mkdir(parents=True)


@pytest.fixture(scope="module")
def runs(lab: Lab) -> dict[str, Future[Run]]:
    # --- gpu_driver_upgrade.yml ---
    al2023 = lab.node("al2023", peakguard_ami_family="al2023")
    operator = ubuntu(lab, "operator", operator_driver=True)
    busy = ubuntu(lab, "busy")
    busy.kubernetes(pods=[pod("model-service-full-7c9d-xk2lp", limits={"nvidia.com/gpu": "1"})])
    current = ubuntu(lab, "current")
    current.set("driver-version", "570.133.20\n" * 8)
    # No family given: told from this machine's OS (Debian), which no GPU pool runs.
    debian = lab.node("debian")
    upgrade = [al2023, operator, busy, current, debian]

    stale = ubuntu(lab, "stale")
    stale.set("driver-version", "550.144.03\n" * 8)
    record = Path(stale.hostvars["peakguard_efa_installed_packages"])
    record.parent.mkdir(parents=True)
    record.write_text("# EFA installer version: 1.38.0\n# Debug packages installed: no\nlibfabric-aws 1.22.0\n")
    efa = {"peakguard_efa_installer_version": "1.41.0", "peakguard_efa_installer_sha256": "ab" * 32}

    # --- gds_setup.yml ---
    gds_al2023 = lab.node("gds-al2023", peakguard_ami_family="al2023")
    # Operator driver, nvidia-fs loaded by the operator: verified only.
    ready = ubuntu(lab, "ready", operator_driver=True)
    nvidia_fs_loaded(ready)
    ready.set("gdscheck", GDSCHECK_OK)
    # Operator driver, nvidia-fs missing: reported, not loaded behind the operator.
    unloaded = ubuntu(lab, "unloaded", operator_driver=True)
    # Host driver, module not loaded: loaded, persisted, verified.
    host = ubuntu(lab, "host-driver")
    host.set("gdscheck", GDSCHECK_OK)
    # Host driver, loaded, but gdscheck says NVMe is unsupported.
    unsupported = ubuntu(lab, "unsupported")
    nvidia_fs_loaded(unsupported)
    unsupported.set("gdscheck", GDSCHECK_OK.replace("NVMe               : Supported", "NVMe : Unsupported"))
    # Host driver, module not loaded, check mode.
    dry = ubuntu(lab, "gds-dry")
    dry.set("gdscheck", GDSCHECK_OK)

    return {
        "upgrade": lab.start(
            "gpu_driver_upgrade.yml", upgrade, extravars=TARGET, limit=",".join(n.root.name for n in upgrade)
        ),
        "upgrade-check": lab.start(
            "gpu_driver_upgrade.yml",
            [stale],
            check=True,
            skip_tags="node_change",
            limit="stale",
            extravars={**TARGET, **efa},
        ),
        "gds": lab.start("gds_setup.yml", [gds_al2023, ready, unloaded, host, unsupported]),
        "gds-check": lab.start("gds_setup.yml", [dry], check=True),
    }


def test_driver_upgrade_refuses_where_the_ami_or_the_operator_owns_the_driver_and_skips_current_nodes(
    runs: dict[str, Future[Run]],
) -> None:
    run = runs["upgrade"].result()

    assert run.failed_hosts() == {"al2023", "operator", "busy", "debian"}, run.output()
    failures = run.failures()
    assert "ships the NVIDIA driver, fabric manager and EFA software baked in" in failures["al2023"]
    assert "newer AMI release" in failures["al2023"]
    assert "comes from the GPU operator's driver container" in failures["operator"]
    assert "peakguard/model-service-full-7c9d-xk2lp" in failures["busy"]
    assert "AMI family unknown (Debian" in failures["debian"]
    assert run.changed("current") == 0
    plan = run.custom_stats()["peakguard_driver_upgrade"]["current"]
    assert (plan["driver"], plan["efa"]) == (False, False)


def test_driver_upgrade_check_mode_plans_driver_fabric_manager_and_efa(lab: Lab, runs: dict[str, Future[Run]]) -> None:
    run = runs["upgrade-check"].result()

    assert run.status == "successful", run.output()
    plan = run.custom_stats()["peakguard_driver_upgrade"]["stale"]
    assert plan["driver_from"] == "550.144.03" and plan["driver_to"] == "570.133.20"
    assert plan["driver"] is True and plan["branch"] == "570"
    assert plan["fabric_manager"] is True  # p5: H100 SXM on NVSwitch
    assert (plan["efa_from"], plan["efa_to"], plan["efa"]) == ("1.38.0", "1.41.0", True)
    assert "driver 550.144.03 -> 570.133.20" in run.output()
    # The GPU pods were checked again right before the (skipped) changes.
    assert len(lab.nodes["stale"].calls("kubectl")) == 2


def test_gds_refuses_on_al2023_leaves_the_operator_alone_loads_a_host_driver_and_needs_gdscheck(
    lab: Lab, runs: dict[str, Future[Run]]
) -> None:
    run = runs["gds"].result()

    assert run.failed_hosts() == {"gds-al2023", "unloaded", "unsupported"}, run.output()
    failures = run.failures()
    assert "EKS AL2023 NVIDIA AMI" in failures["gds-al2023"]
    assert "amiFamily: ubuntu and gds: true" in failures["gds-al2023"]
    assert "nvidia-fs container loads it" in failures["unloaded"]
    assert "unsupported or missing: NVMe" in failures["unsupported"]
    assert run.changed("ready") == 0
    assert "GPUDirect Storage verified: NVMe Supported" in run.output()
    for name in ("gds-al2023", "ready", "unloaded", "unsupported"):
        assert lab.nodes[name].calls("modprobe") == [], name
    host = lab.nodes["host-driver"]
    assert host.calls("modprobe") == ["modprobe nvidia_fs"]
    assert host.calls("gdscheck") == ["gdscheck -p"]
    assert (Path(host.hostvars["peakguard_modules_load_dir"]) / "nvidia-fs.conf").read_text().endswith("\nnvidia_fs\n")
    assert not (Path(lab.nodes["ready"].hostvars["peakguard_modules_load_dir"]) / "nvidia-fs.conf").exists()


def test_gds_check_mode_only_says_it_would_load_nvidia_fs(lab: Lab, runs: dict[str, Future[Run]]) -> None:
    run = runs["gds-check"].result()
    dry = lab.nodes["gds-dry"]

    assert run.status == "successful", run.output()
    assert "would load nvidia_fs" in run.output()
    assert dry.calls("modprobe") == dry.calls("gdscheck") == []
    assert not (Path(dry.hostvars["peakguard_modules_load_dir"]) / "nvidia-fs.conf").exists()
