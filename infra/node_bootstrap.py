"""User data that joins a GPU node to the cluster with its NVMe instance store as one RAID0 array.

Pure text rendering, no Pulumi: the launch templates base64 it, the tests decode and read it.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from infra.facts import Taint

__all__ = ["NodeJoin", "Taint", "al2023_user_data", "raid0_script", "ubuntu_user_data"]

_BOUNDARY = "==PEAKGUARD=="


@dataclass(frozen=True)
class NodeJoin:
    """What a self-bootstrapping (custom AMI) node needs to join the cluster."""

    cluster_name: str
    endpoint: str
    certificate_authority: str
    """Base64 PEM, as EKS returns it."""
    dns_cluster_ip: str
    """CoreDNS's Service address (the cluster's Service range + 10)."""
    labels: Mapping[str, str]
    taints: Sequence[Taint]


def raid0_script() -> str:
    """The RAID0 script shipped in `infra/node_scripts/` (also run by the node playbooks)."""
    return resources.files("infra").joinpath("node_scripts/nvme_raid0.sh").read_text()


def al2023_user_data(startup_taints: Sequence[Taint] = ()) -> str:
    """MIME user data for an EKS-optimised AL2023 AMI in a managed node group.

    EKS merges its own NodeConfig (cluster name, endpoint, CA) into this one; ours asks nodeadm
    to stripe the instance-store NVMe devices into one RAID0 array that holds the kubelet's and
    containerd's data (pods' emptyDir model caches, image layers), and has the kubelet register
    with `startup_taints`. Those must be on the node from its first moment: the node group's own
    taints are added through the API about half a minute after the node joins, too late to keep
    pods off, and nodeadm deep-merges `kubelet.config`, so EKS's part does not replace ours.
    """
    lines = [
        "---",
        "apiVersion: node.eks.aws/v1alpha1",
        "kind: NodeConfig",
        "spec:",
        "  instance:",
        "    localStorage:",
        "      strategy: RAID0",
    ]
    if startup_taints:
        lines += ["  kubelet:", "    config:", "      registerWithTaints:"]
        for taint in startup_taints:
            lines += [
                f"        - key: {taint.key}",
                f'          value: "{taint.value}"',
                f"          effect: {taint.effect}",
            ]
    node_config = "\n".join(lines)
    return "\n".join(
        [
            "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{_BOUNDARY}"',
            "",
            f"--{_BOUNDARY}",
            "Content-Type: application/node.eks.aws",
            "",
            node_config,
            "",
            f"--{_BOUNDARY}--",
            "",
        ]
    )


def ubuntu_user_data(join: NodeJoin) -> str:
    """A boot script for Canonical's Ubuntu EKS AMI: RAID0 first, then the AMI's bootstrap.

    A custom AMI in a managed node group gets no bootstrap from EKS, so the script passes the
    cluster details, labels and taints itself.
    """
    labels = ",".join(f"{key}={value}" for key, value in sorted(join.labels.items()))
    kubelet_args = f"--node-labels={labels}"
    if join.taints:
        # One flag for all: given twice, the kubelet keeps only the last.
        kubelet_args += " --register-with-taints=" + ",".join(t.flag() for t in join.taints)
    bootstrap = " ".join(
        [
            "/etc/eks/bootstrap.sh",
            shlex.quote(join.cluster_name),
            "--b64-cluster-ca",
            shlex.quote(join.certificate_authority),
            "--apiserver-endpoint",
            shlex.quote(join.endpoint),
            "--dns-cluster-ip",
            shlex.quote(join.dns_cluster_ip),
            "--kubelet-extra-args",
            shlex.quote(kubelet_args),
        ]
    )
    return "\n".join(
        [
            "#!/bin/bash",
            "set -euo pipefail",
            "cat > /usr/local/sbin/peakguard-nvme-raid0 <<'PEAKGUARD_RAID0'",
            raid0_script().rstrip("\n"),
            "PEAKGUARD_RAID0",
            "chmod 0755 /usr/local/sbin/peakguard-nvme-raid0",
            "/usr/local/sbin/peakguard-nvme-raid0",
            bootstrap,
            "",
        ]
    )


def encode(user_data: str) -> str:
    """Launch templates take user data base64-encoded."""
    return base64.b64encode(user_data.encode()).decode()
