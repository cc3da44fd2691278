"""The hand-typed instance table (`facts.INSTANCE_TYPES`) diffed against EC2's DescribeInstanceTypes.

The table decides how many EFA interfaces a node gets, how many GPUs a replica may take and whether
the preflight builds a RAID array over the instance store, so a typo there is a wrong node. Its rows
were typed from the EC2 documentation; this compares each with what EC2 itself describes: in tests,
moto's bundled copy of that data; for a user with credentials, a live region (`peakguard facts verify`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.facts import INSTANCE_TYPES, InstanceType

__all__ = ["Difference", "describe", "differences"]

_MIB = 2**20
_GPU_MEMORY = re.compile(r"-(\d+)GB$")


@dataclass(frozen=True)
class Difference:
    instance_type: str
    field: str
    ours: object
    described: object

    def __str__(self) -> str:
        return f"{self.instance_type}: {self.field} is {self.ours!r} in infra/facts.py, {self.described!r} in EC2"


def describe(ec2: Any, names: Iterable[str]) -> dict[str, Mapping[str, Any]]:
    """DescribeInstanceTypes for `names` (an EC2 client), by name; a type the region lacks is absent."""
    wanted = sorted(set(names))
    found: dict[str, Mapping[str, Any]] = {}
    # The API takes at most 100 names per call (EC2 API reference, DescribeInstanceTypes).
    for start in range(0, len(wanted), 100):
        chunk = wanted[start : start + 100]
        try:
            pages = ec2.get_paginator("describe_instance_types").paginate(InstanceTypes=chunk)
            found.update({item["InstanceType"]: item for page in pages for item in page["InstanceTypes"]})
        except ec2.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidInstanceType":
                raise
            # One unknown name fails the whole call: ask one at a time to learn which.
            for name in chunk:
                try:
                    for item in ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"]:
                        found[item["InstanceType"]] = item
                except ec2.exceptions.ClientError as one:
                    if one.response.get("Error", {}).get("Code") != "InvalidInstanceType":
                        raise
    return found


def differences(
    described: Mapping[str, Mapping[str, Any]], table: Mapping[str, InstanceType] = INSTANCE_TYPES
) -> list[Difference]:
    """Every field of every row that EC2 describes otherwise, and every row EC2 does not describe."""
    found = []
    for name, ours in sorted(table.items()):
        theirs = described.get(name)
        if theirs is None:
            found.append(Difference(name, "instance type", "listed", "not described (unknown here)"))
            continue
        network = theirs.get("NetworkInfo", {})
        gpus = theirs.get("GpuInfo", {}).get("Gpus", [])
        disks = theirs.get("InstanceStorageInfo", {}).get("Disks", [])
        pairs: list[tuple[str, object, object]] = [
            ("network cards", ours.network_cards, network.get("MaximumNetworkCards")),
            ("EFA interfaces", ours.max_efa_interfaces, network.get("EfaInfo", {}).get("MaximumEfaInterfaces")),
            ("GPUs", ours.gpus, sum(gpu.get("Count", 0) for gpu in gpus)),
            ("GPU model", ours.gpu_model.split("-")[0], gpus[0].get("Name") if gpus else None),
            ("instance-store volumes", ours.nvme_volumes, sum(disk.get("Count", 0) for disk in disks)),
            ("instance-store volume GB", ours.nvme_volume_gb, disks[0].get("SizeInGB") if len(disks) == 1 else disks),
        ]
        found += [Difference(name, field, mine, theirs) for field, mine, theirs in pairs if mine != theirs]
        memory = gpus[0].get("MemoryInfo", {}).get("SizeInMiB") if gpus else None
        if not _same_gpu_memory(ours.gpu_model, memory):
            found.append(Difference(name, "GPU memory", ours.gpu_model, f"{memory} MiB"))
    return found


def _same_gpu_memory(gpu_model: str, mib: object) -> bool:
    """`H100-SXM5-80GB` against EC2's MiB. EC2 writes some in binary units (A100 80 GB: 81920 MiB)
    and some in decimal ones (L40S 48 GB: 45776 MiB, 48e9 bytes)."""
    match = _GPU_MEMORY.search(gpu_model)
    if match is None or not isinstance(mib, int):
        return False
    gb = int(match[1])
    return mib == gb * 1024 or round(mib * _MIB / 1e9) == gb
