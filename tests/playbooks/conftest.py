"""Fake GPU-node hardware and real ansible-runner runs of the node playbooks against localhost.

Nothing here talks to a GPU: the hardware-facing commands (nvidia-smi, fi_info, all_reduce_perf,
mountpoint, findmnt, nvidia-mig-parted, gdscheck, modprobe, the block-device tools) and the
controller's kubectl are small executables that print what the real ones print (the formats are
in the functions below) from state files, and log their calls. The playbooks run for real, through
`ansible_runner.run`, with `ansible_connection: local` and the peakguard_* command variables
pointing at the fakes. A test module's runs start together in its `runs` fixture (two at a time).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
VENV_BIN = Path(sys.executable).parent


def tool_env() -> dict[str, str]:
    """The environment for Ansible's own commands: the venv's tools first on PATH, no colours."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1"}


# --- Output of the real tools ----------------------------------------------------------------


def gpu_listing(gpus: int, *, model: str = "NVIDIA H100 80GB HBM3", mig: Sequence[str] = ()) -> str:
    """`nvidia-smi -L`: one line per GPU, its MIG devices indented under it (driver >= 470)."""
    lines = []
    for gpu in range(gpus):
        lines.append(f"GPU {gpu}: {model} (UUID: GPU-{gpu:08x}-7f3c-4a2e-9d51-b6a0c1e2f3a4)")
        lines += [
            f"  MIG {profile:<13}Device {index:>2}: (UUID: MIG-{gpu:04x}{index:04x}-1c2d-5e6f-8a9b-0c1d2e3f4a5b)"
            for index, profile in enumerate(mig)
        ]
    return "\n".join(lines) + "\n"


def fi_info_efa(devices: int) -> str:
    """`fi_info -p efa -t FI_EP_RDM` from libfabric 2.x: each device twice (fabrics efa-direct, efa)."""
    blocks = []
    for index in range(devices):
        domain = f"rdmap{16 + 16 * index}s27-rdm"
        for fabric in ("efa-direct", "efa"):
            blocks.append(
                f"provider: efa\n    fabric: {fabric}\n    domain: {domain}\n    version: 201.0\n"
                "    type: FI_EP_RDM\n    protocol: FI_PROTO_EFA\n"
            )
    return "".join(blocks)


def all_reduce_perf_output(*, gpus: int = 8, busbw: float = 351.2, wrong: int = 0) -> str:
    """nccl-tests' `all_reduce_perf -b 8M -e 256M -f 2 -g N`, abridged to what a run prints."""
    devices = "".join(
        f"#  Rank {r:2d} Group  0 Pid  41337 on ip-10-40-1-7 device {r:2d} [0x{0x53 + r:02x}] NVIDIA H100 80GB HBM3\n"
        for r in range(gpus)
    )
    header = (
        "#       size         count      type   redop    root     time   algbw   busbw #wrong"
        "     time   algbw   busbw #wrong\n"
        "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)       "
        "     (us)  (GB/s)  (GB/s)       \n"
    )
    rows = (
        f"     8388608       2097152     float     sum      -1    96.87   86.60  151.55 {wrong:6d}"
        f"    95.99   87.39  152.93 {wrong:6d}\n"
        f"   268435456      67108864     float     sum      -1   1344.2  199.70  349.47 {wrong:6d}"
        f"   1341.9  200.04  350.07 {wrong:6d}\n"
    )
    return (
        f"# nThread 1 nGpus {gpus} minBytes 8388608 maxBytes 268435456 step: 2(factor) warmup iters: 5 iters: 20 "
        "agg iters: 1 validation: 1 graph: 0\n#\n# Using devices\n"
        f"{devices}#\n{header}{rows}"
        f"# Out of bounds values : {wrong} {'OK' if wrong == 0 else 'FAILED'}\n"
        f"# Avg bus bandwidth    : {busbw} \n#\n\n"
    )


GDSCHECK_OK = """\
 GDS release version: 1.13.1.3
 nvidia_fs version:  2.24 libcufile version: 2.12
 Platform: x86_64
 ============
 ENVIRONMENT:
 ============
 =====================
 DRIVER CONFIGURATION:
 =====================
 NVMe P2PDMA        : Unsupported
 NVMe               : Supported
 NVMeOF             : Unsupported
 SCSI               : Unsupported
 ScaleFlux CSD      : Unsupported
 NVMesh             : Unsupported
 DDN EXAScaler      : Supported
 IBM Spectrum Scale : Unsupported
 NFS                : Unsupported
 BeeGFS             : Unsupported
 WekaFS             : Unsupported
 Userspace RDMA     : Unsupported
 --Mellanox PeerDirect : Disabled
 --rdma library        : Not Loaded (libcufile_rdma.so)
 --rdma devices        : Not configured
 --rdma_device_status  : Up: 0 Down: 0
 =====================
 CUFILE CONFIGURATION:
 =====================
 properties.use_compat_mode : true
 properties.force_compat_mode : false
 =========
 GPU INFO:
 =========
 GPU index 0 NVIDIA H100 80GB HBM3 bar:1 bar size (MiB):131072 supports GDS, IOMMU State: Disabled
 ==============
 PLATFORM INFO:
 ==============
 IOMMU: disabled
 Nvidia Driver Info Status: Supported(Nvidia Open Driver Installed)
 Cuda Driver Version Installed:  12080
 Platform: p5.48xlarge, Arch: x86_64(Linux 6.8.0-1021-aws)
 Platform verification succeeded
"""


# --- Fake executables ------------------------------------------------------------------------

# Each reads its answers from files in $STATE (set in its own body) and logs its argv to
# $STATE/calls. Missing answer files mean the real tool's failure.
_FAKES = {
    "nvidia-smi": r"""
case "$*" in
  -L) if [ ! -f "$STATE/nvidia-smi-L" ]; then
        echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."; exit 9
      fi
      cat "$STATE/nvidia-smi-L" ;;
  *mig.mode.current*) cat "$STATE/mig-modes" ;;
  *driver_version*) cat "$STATE/driver-version" ;;
  *) echo "fake nvidia-smi: unexpected $*" >&2; exit 2 ;;
esac
""",
    "fi_info": r"""
[ -s "$STATE/fi_info" ] || { echo "fi_getinfo: -61 (No data available)" >&2; exit 1; }
cat "$STATE/fi_info"
""",
    "all_reduce_perf": r"""
cat "$STATE/all_reduce_perf"
""",
    "mountpoint": r"""
grep -qxF -- "${@: -1}" "$STATE/mounted" 2>/dev/null || { echo "${@: -1} is not a mountpoint"; exit 32; }
""",
    # findmnt -n -o SOURCE --target PATH: the source of the mount PATH is on, as the real one
    # prints it (the kernel's device name; bind mounts as device[/subdir]).
    "findmnt": r"""
target="${@: -1}"
line="$(grep -F -- " $target" "$STATE/mounts" 2>/dev/null | awk -v t="$target" '$2 == t' | tail -n1)"
[ -n "$line" ] || { echo /dev/nvme0n1p1; exit 0; }
echo "${line%% *}"
""",
    "kubectl": r"""
case "$1 $2" in
  "get node") cat "$STATE/node.json" ;;
  "get pods") cat "$STATE/pods.json" ;;
  *) echo "fake kubectl: unexpected $*" >&2; exit 2 ;;
esac
""",
    # Applying a layout makes nvidia-smi show the listing the test prepared for it.
    "nvidia-mig-parted": r"""
cp "$STATE/after-mig-parted" "$STATE/nvidia-smi-L"
""",
    "gdscheck": r"""
cat "$STATE/gdscheck"
""",
    # Block-device tools infra/node_scripts/nvme_raid0.sh calls by name (found through PATH).
    "mdadm": r"""
if [ "$1" = --assemble ]; then [ -e "$STATE/array" ]; exit; fi
touch "$STATE/array"
""",
    "blkid": r"""
[ -e "$STATE/formatted-$(basename "$1")" ]
""",
    "mkfs.xfs": r"""
touch "$STATE/formatted-$(basename "${@: -1}")"
""",
    # mount DEV DIR, or mount --bind SRC DIR: DIR becomes a mount point, as findmnt would show it.
    "mount": r"""
target="${@: -1}" source="${@: -2:1}"
echo "$target" >> "$STATE/mounted"
if [ "$1" = --bind ]; then
  device="$(awk -v d="$(dirname "$source")" '$2 == d { print $1 }' "$STATE/mounts" | tail -n1)"
  echo "$device[/$(basename "$source")] $target" >> "$STATE/mounts"
else
  [ "$source" = "$PEAKGUARD_RAID_DEVICE" ] && source=/dev/md127
  echo "$source $target" >> "$STATE/mounts"
fi
""",
    # Loading a module makes it show up in the fake sysfs.
    "modprobe": r"""
mkdir -p "$STATE/../sys/module/${@: -1}"
""",
    "systemctl": r"""
if [ "$1" = is-active ]; then
  state="$(cat "$STATE/$2" 2>/dev/null || echo inactive)"; echo "$state"; [ "$state" = active ]
fi
""",
}


def _write_fake(root: Path, command: str) -> None:
    fake = root / "bin" / command
    fake.write_text(f'#!/bin/bash\nSTATE={root / "state"}\necho "{command} $*" >> "$STATE/calls"\n{_FAKES[command]}')
    fake.chmod(0o755)


@dataclass
class FakeNode:
    """One fake GPU node: its commands' answers in `state/`, the commands in `bin/`."""

    root: Path
    hostvars: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def set(self, name: str, text: str) -> None:
        (self.state / name).write_text(text)

    def calls(self, command: str) -> list[str]:
        path = self.state / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return [line for line in lines if line.split(" ", 1)[0] == command]

    def path(self) -> str:
        """PATH with this node's fakes first: for scripts that call tools by name (nvme_raid0.sh)."""
        return os.pathsep.join([str(self.bin), str(VENV_BIN), os.environ["PATH"]])

    def install_nccl(self, output: str) -> None:
        """Put nccl-tests' all_reduce_perf on the node, printing `output`."""
        self.set("all_reduce_perf", output)
        _write_fake(self.root, "all_reduce_perf")

    def script_env(self) -> dict[str, str]:
        """Environment for running infra/node_scripts/node_preflight.sh against this node."""
        return {
            "PATH": self.path(),
            "NVIDIA_SMI": str(self.bin / "nvidia-smi"),
            "FI_INFO": str(self.bin / "fi_info"),
            "ALL_REDUCE_PERF": str(self.bin / "all_reduce_perf"),
            "MOUNTPOINT": str(self.bin / "mountpoint"),
            "FINDMNT": str(self.bin / "findmnt"),
        }

    # --- Healthy nodes ---

    def healthy(
        self, *, gpus: int, efa: int, mig: Sequence[str] = (), model: str = "NVIDIA H100 80GB HBM3", nvme: int = 8
    ) -> FakeNode:
        self.set("nvidia-smi-L", gpu_listing(gpus, model=model, mig=mig))
        self.set("mig-modes", ("Enabled\n" if mig else "Disabled\n") * gpus)
        self.set("fi_info", fi_info_efa(efa))
        if nvme:
            self.mount_raid(devices=nvme)
        return self

    def mount_raid(self, *, devices: int, kubelet_on_array: bool = True) -> None:
        """The array mounted where nodeadm and nvme_raid0.sh put it, the kubelet's data bound onto it."""
        device = "/dev/md127" if devices > 1 else "/dev/nvme1n1"
        mount, kubelet = self.hostvars["peakguard_raid_mount"], self.hostvars["peakguard_kubelet_dir"]
        with (self.state / "mounted").open("a") as mounted:
            mounted.write(f"{mount}\n{kubelet}\n")
        kubelet_source = f"{device}[/kubelet]" if kubelet_on_array else "/dev/nvme0n1p1[/var/lib/kubelet]"
        with (self.state / "mounts").open("a") as mounts:
            mounts.write(f"{device} {mount}\n{kubelet_source} {kubelet}\n")

    def instance_store(self, devices: int) -> None:
        """NVMe instance-store devices as udev names them under /dev/disk/by-id (plus aliases)."""
        by_id = Path(self.hostvars["peakguard_nvme_glob"]).parent
        by_id.mkdir(parents=True, exist_ok=True)
        (self.root / "dev").mkdir(exist_ok=True)
        for index in range(1, devices + 1):
            device = self.root / "dev" / f"nvme{index}n1"
            device.touch()
            serial = f"nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{index:04d}"
            (by_id / serial).symlink_to(device)
            (by_id / f"{serial}_1").symlink_to(device)
            (by_id / f"{serial}-part1").symlink_to(device)

    def kubernetes(
        self, *, labels: Mapping[str, str] | None = None, pods: Sequence[Mapping[str, Any]] = ()
    ) -> FakeNode:
        """What the cluster says about the node: its labels and the pods bound to it."""
        name = self.hostvars["private_dns_name"]
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": dict(labels or {})}}
        self.set("node.json", json.dumps(node))
        self.set("pods.json", json.dumps({"apiVersion": "v1", "kind": "PodList", "items": list(pods)}))
        return self


def pod(
    name: str, *, namespace: str = "peakguard", limits: Mapping[str, str] | None = None, **labels: str
) -> dict[str, Any]:
    """A pod as `kubectl get pods -o json` lists it, with one container's resource limits."""
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "main", "resources": {"limits": dict(limits or {})}}]},
        "status": {"phase": "Running"},
    }


# --- ansible-runner --------------------------------------------------------------------------


@dataclass
class Run:
    """A finished ansible-runner run and what the tests read from it."""

    runner: Any

    @property
    def status(self) -> str:
        return str(self.runner.status)

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return dict(self.runner.stats or {})

    def changed(self, host: str) -> int:
        return int(self.stats.get("changed", {}).get(host, 0))

    def failed_hosts(self) -> set[str]:
        return set(self.stats.get("failures", {})) | set(self.stats.get("dark", {}))

    def failures(self) -> dict[str, str]:
        """Each failed host's message (the task's `msg`)."""
        messages = {}
        for event in self.runner.events:
            if event.get("event") == "runner_on_failed" and not event["event_data"].get("ignore_errors"):
                data = event["event_data"]
                messages[data["host"]] = str(data["res"].get("msg", data["res"]))
        return messages

    def custom_stats(self) -> dict[str, Any]:
        """What the playbook published with set_stats."""
        for event in self.runner.events:
            if event.get("event") == "playbook_on_stats":
                return dict(event["event_data"].get("artifact_data", {}))
        return {}

    def output(self) -> str:
        return Path(self.runner.stdout.name).read_text()


# --- A lab: fake nodes and the playbooks to run against them ----------------------------------


class Lab:
    """Fake nodes and a copy of playbooks/, under one directory; runs the playbooks against the
    nodes (each a localhost alias) through ansible-runner, one at a time or two side by side."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: dict[str, FakeNode] = {}
        self._runs = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ansible-runner")
        # A copy with symlinks dereferenced (as a checkout elsewhere has them), without the AWS
        # inventory: each run gets a localhost inventory instead.
        self.private_data_dir = root / "playbooks"
        shutil.copytree(
            PLAYBOOKS, self.private_data_dir, symlinks=False, ignore=shutil.ignore_patterns("inventory", "artifacts")
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def node(self, name: str, **hostvars: Any) -> FakeNode:
        """A new fake node: a p5.48xlarge by default, every hardware command a fake of its own."""
        root = self.root / "nodes" / name
        (root / "state").mkdir(parents=True)
        (root / "bin").mkdir()
        for command in _FAKES:
            if command != "all_reduce_perf":  # not installed until a test installs it
                _write_fake(root, command)
        (root / "fstab").write_text("LABEL=cloudimg-rootfs / ext4 defaults 0 1\n")
        (root / "etc" / "modules-load.d").mkdir(parents=True)
        node = FakeNode(root=root)
        node.hostvars = {
            "instance_type": "p5.48xlarge",
            "private_dns_name": f"ip-10-40-1-{len(self.nodes) + 10}.us-west-2.compute.internal",
            **{f"peakguard_{var}": str(root / "bin" / command) for var, command in _COMMAND_VARS.items()},
            "peakguard_raid_mount": str(root / "mnt" / "k8s-disks" / "0"),
            "peakguard_raid_device": str(root / "dev" / "md" / "kubernetes"),
            "peakguard_kubelet_dir": str(root / "var" / "lib" / "kubelet"),
            "peakguard_bind_dirs": [str(root / "var" / d) for d in ("lib/kubelet", "lib/containerd", "log/pods")],
            "peakguard_nvme_glob": str(root / "by-id" / "nvme-Amazon_EC2_NVMe_Instance_Storage_*"),
            "peakguard_fstab": str(root / "fstab"),
            "peakguard_operator_driver_root": str(root / "run" / "nvidia" / "driver"),
            "peakguard_sysfs_module_dir": str(root / "sys" / "module"),
            "peakguard_modules_load_dir": str(root / "etc" / "modules-load.d"),
            "peakguard_efa_installed_packages": str(root / "opt" / "amazon" / "efa_installed_packages"),
            **hostvars,
        }
        self.nodes[name] = node
        return node

    def inventory(self, nodes: Sequence[FakeNode]) -> Path:
        """An inventory of `nodes`, each a localhost alias named after its directory."""
        inventory = self.root / f"hosts-{next(self._runs)}.yml"
        hosts = {node.root.name: node.hostvars for node in nodes}
        local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        inventory.write_text(yaml.safe_dump({"all": {"vars": local, "hosts": hosts}}))
        return inventory

    def run(
        self,
        playbook: str,
        nodes: Sequence[FakeNode],
        *,
        check: bool = False,
        extravars: Mapping[str, Any] | None = None,
        skip_tags: str | None = None,
        limit: str | None = None,
        envvars: Mapping[str, str] | None = None,
    ) -> Run:
        """Run `playbook` against `nodes` and wait for it."""
        inventory = self.inventory(nodes)
        runner = ansible_runner.run(
            private_data_dir=str(self.private_data_dir),
            playbook=playbook,
            inventory=str(inventory),
            extravars=dict(extravars or {}),
            envvars={
                # ansible-runner starts ansible-playbook from this PATH.
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                "ANSIBLE_LOCAL_TEMP": str(self.root / "ansible-tmp"),
                "ANSIBLE_NOCOLOR": "1",
                **(envvars or {}),
            },
            cmdline="--check" if check else None,
            skip_tags=skip_tags,
            limit=limit,
            quiet=True,
            # Else ansible-runner writes cmdline, envvars and extravars into env/ and the next run
            # of the same directory silently reuses them (e.g. --check).
            suppress_env_files=True,
        )
        return Run(runner)

    def start(self, playbook: str, nodes: Sequence[FakeNode], **options: Any) -> Future[Run]:
        """Start a run beside the others (a run keeps about one core busy; these machines have two)."""
        return self._pool.submit(self.run, playbook, nodes, **options)


# Playbook variables naming a hardware or cluster command -> the fake that answers for it.
_COMMAND_VARS = {
    "nvidia_smi": "nvidia-smi",
    "fi_info": "fi_info",
    "all_reduce_perf": "all_reduce_perf",
    "mountpoint": "mountpoint",
    "findmnt": "findmnt",
    "kubectl": "kubectl",
    "nvidia_mig_parted": "nvidia-mig-parted",
    "gdscheck": "gdscheck",
    "systemctl": "systemctl",
    "modprobe": "modprobe",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab per test module: its tests start their runs together and share the results."""
    lab = Lab(tmp_path_factory.mktemp("lab"))
    yield lab
    lab.close()


@pytest.fixture
def fake_node(tmp_path: Path) -> Iterator[Callable[..., FakeNode]]:
    """Fake nodes of the test's own, for running scripts against (no playbook runs)."""
    lab = Lab(tmp_path)
    yield lab.node
    lab.close()
