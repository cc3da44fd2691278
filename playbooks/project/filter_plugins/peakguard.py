"""Jinja filters that read tools' output: `kubectl get pods -o json` about a node, `gdscheck -p`.

Loaded by Ansible from the playbooks' `filter_plugins/` directory (no import of ours): kept in
Python because walking containers' resource limits, or parsing a report, in Jinja is unreadable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/mig-")
"""Extended resources that give a pod GPUs: whole GPUs, or MIG slices (mixed strategy: one
resource per profile, e.g. `nvidia.com/mig-1g.10gb`)."""

MIG_MANAGER_LABEL = ("app", "nvidia-mig-manager")
"""The label of the GPU operator's MIG manager DaemonSet pods."""


def _pods(pod_list: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = pod_list.get("items")
    if not isinstance(items, list):
        raise ValueError("expected a Kubernetes PodList (`kubectl get pods -o json`), got no 'items' list")
    return items


def _name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"


def _uses_gpus(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec", {})
    for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        resources = container.get("resources") or {}
        for kind in ("limits", "requests"):
            if any(key.startswith(GPU_RESOURCES) for key in resources.get(kind) or {}):
                return True
    return False


def gpu_pods(pod_list: Mapping[str, Any]) -> list[str]:
    """`namespace/name` of the pods that hold GPUs or MIG slices, sorted."""
    return sorted(_name(pod) for pod in _pods(pod_list) if _uses_gpus(pod))


def mig_manager_pods(pod_list: Mapping[str, Any]) -> list[str]:
    """`namespace/name` of the GPU operator's MIG manager pods among them."""
    key, value = MIG_MANAGER_LABEL
    return sorted(
        _name(pod) for pod in _pods(pod_list) if (pod.get("metadata", {}).get("labels") or {}).get(key) == value
    )


_GDSCHECK_LINE = re.compile(r"^\s*(?P<name>[A-Za-z][A-Za-z0-9 ()_/-]*?)\s*:\s*(?P<value>\S.*?)\s*$")


def gdscheck_support(report: str) -> dict[str, str]:
    """Each storage backend `gdscheck -p` reports, as `{"NVMe": "Supported", "NFS": "Unsupported"}`.

    Its lines read ` NVMe               : Supported` (newer releases: `NVMe : nvfs, compat`). Lines
    that are sub-items (`--rdma library : ...`) or properties (`properties.use_compat_mode : ...`)
    are not backends and are left out.
    """
    support: dict[str, str] = {}
    for line in report.splitlines():
        match = _GDSCHECK_LINE.match(line)
        if match and "." not in match["name"]:
            support.setdefault(match["name"], match["value"])
    return support


class FilterModule:
    """Ansible's entry point for filter plugins."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "peakguard_gpu_pods": gpu_pods,
            "peakguard_mig_manager_pods": mig_manager_pods,
            "peakguard_gdscheck_support": gdscheck_support,
        }
