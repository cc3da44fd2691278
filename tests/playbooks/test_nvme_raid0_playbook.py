"""nvme_raid0.yml through ansible-runner: verify-only on AL2023, build on Ubuntu, refusals, idempotency.

The Ubuntu build runs the real infra/node_scripts/nvme_raid0.sh; only the block-device tools it
calls by name (mdadm, mkfs.xfs, blkid, mount, mountpoint, systemctl) are fakes, first on PATH.
"""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from .conftest import Lab, Run


@pytest.fixture(scope="module")
def runs(lab: Lab) -> dict[str, Future[Run]]:
    # AL2023: nodeadm built the array at boot; the playbook only verifies it.
    al_ok = lab.node("al-ok", peakguard_ami_family="al2023")
    al_ok.healthy(gpus=8, efa=32)
    # AL2023 without the array: reported, never built behind nodeadm's back.
    al_missing = lab.node("al-missing", peakguard_ami_family="al2023")
    # Ubuntu without its instance type's devices: refused, not a smaller array.
    ub_empty = lab.node("ub-empty", peakguard_ami_family="ubuntu")
    # Ubuntu with a running kubelet: refused, the binds would hide its data.
    ub_busy = lab.node("ub-busy", peakguard_ami_family="ubuntu")
    ub_busy.instance_store(8)
    ub_busy.set("kubelet", "active")
    # Ubuntu, drained and stopped, devices present: built.
    ub_build = lab.node("ub-build", peakguard_ami_family="ubuntu")
    ub_build.instance_store(8)
    # Ubuntu in check mode: a g6e.12xlarge with its 2 devices.
    ub_fresh = lab.node("ub-fresh", instance_type="g6e.12xlarge", peakguard_ami_family="ubuntu")
    ub_fresh.instance_store(2)

    return {
        "first": lab.start(
            "nvme_raid0.yml", [al_ok, al_missing, ub_empty, ub_busy, ub_build], envvars={"PATH": ub_build.path()}
        ),
        "check": lab.start("nvme_raid0.yml", [ub_fresh], check=True, envvars={"PATH": ub_fresh.path()}),
    }


def test_each_branch_builds_verifies_or_refuses_and_a_second_run_changes_nothing(
    lab: Lab, runs: dict[str, Future[Run]]
) -> None:
    run = runs["first"].result()
    al_ok, ub_build = lab.nodes["al-ok"], lab.nodes["ub-build"]

    assert run.failed_hosts() == {"al-missing", "ub-empty", "ub-busy"}, run.output()
    failures = run.failures()
    assert "nodeadm builds the RAID0 array at boot" in failures["al-missing"]
    assert "p5.48xlarge has 8 NVMe instance-store device(s) (infra/facts.py) but 0 match" in failures["ub-empty"]
    assert "the kubelet is running" in failures["ub-busy"]
    for name in ("al-missing", "ub-empty", "ub-busy"):
        assert lab.nodes[name].calls("mdadm") == lab.nodes[name].calls("mount") == []

    assert run.changed("al-ok") == 0
    assert al_ok.calls("mdadm") == []
    assert run.changed("ub-build") == 1
    array = ub_build.hostvars["peakguard_raid_device"]
    devices = " ".join(str(ub_build.root / "dev" / f"nvme{i}n1") for i in range(1, 9))
    assert ub_build.calls("mdadm")[-1] == (
        f"mdadm --create {array} --run --force --level=0 --name=kubernetes --raid-devices=8 {devices}"
    )
    assert ub_build.calls("mkfs.xfs") == [f"mkfs.xfs -f -L k8s-raid0 {array}"]
    assert len(ub_build.calls("mount")) == 1 + 3  # the array, then kubelet, containerd and pods onto it

    again = lab.run("nvme_raid0.yml", [al_ok, ub_build], envvars={"PATH": ub_build.path()})

    assert again.status == "successful", again.output()
    assert again.changed("al-ok") == again.changed("ub-build") == 0
    assert len(ub_build.calls("mount")) == 4
    assert len(ub_build.calls("mkfs.xfs")) == 1


def test_check_mode_on_ubuntu_reports_what_it_would_build_without_building(
    lab: Lab, runs: dict[str, Future[Run]]
) -> None:
    run = runs["check"].result()
    node = lab.nodes["ub-fresh"]

    assert run.status == "successful", run.output()
    plan = run.custom_stats()["peakguard_nvme_raid0"]["ub-fresh"]
    assert plan["action"] == "build"
    assert plan["check_mode"] is True
    assert plan["devices"] == [str(node.root / "dev" / "nvme1n1"), str(node.root / "dev" / "nvme2n1")]
    assert "would build md RAID0" in run.output()
    assert node.calls("mdadm") == node.calls("mkfs.xfs") == node.calls("mount") == []
    assert not (node.root / "mnt").exists()
