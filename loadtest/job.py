"""The Indexed Job that runs the workers, and its start ConfigMap (the barrier).

Indexed (Kubernetes "Job with indexed completion"): N pods, one per index, all at once
(parallelism = completions = N), each told its index by JOB_COMPLETION_INDEX. A failed worker is
not retried (backoffLimit 0): its share would start late and out of step with the others, and the
report would mix two ramps. activeDeadlineSeconds bounds the whole Job whatever happens to the
coordinator, and the finished Job is garbage-collected after ttlSecondsAfterFinished.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JOB_NAME_LABEL", "WORKER_UID", "WorkerPods", "job_manifest", "start_config_map"]

WORKER_UID = 10001
"""The load worker image's numeric user (loadtest/Dockerfile), so runAsNonRoot can be verified."""
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
"""The label Kubernetes puts on a Job's pods (Kubernetes 1.27+; `job-name` before)."""


@dataclass(frozen=True)
class WorkerPods:
    """Where and as what the workers run."""

    image: str
    """The load worker image (loadtest/Dockerfile: peakguard[load], not the service image)."""
    namespace: str = "peakguard-load"
    service_account: str = "load-worker"
    node_selector: Mapping[str, str] = field(default_factory=lambda: {"peakguard.io/pool": "load"})
    tolerations: tuple[Mapping[str, str], ...] = (
        {"key": "peakguard.io/load", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    )
    cpu: str = "1"
    """One core a worker: the generator is one event loop, and its measured ceiling is per core."""
    memory: str = "1Gi"


def start_config_map(name: str, namespace: str) -> dict[str, Any]:
    """Empty until the coordinator writes `startAt` into it, once every worker is running."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "load-worker"}},
            "data": {}}  # fmt: skip


def job_manifest(
    name: str, pods: WorkerPods, *, workers: int, env: Mapping[str, str], deadline_seconds: int
) -> dict[str, Any]:
    resources = {"cpu": pods.cpu, "memory": pods.memory}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": pods.namespace, "labels": {"app.kubernetes.io/name": "load-worker"}},
        "spec": {
            "completionMode": "Indexed",
            "completions": workers,
            "parallelism": workers,
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "load-worker"}},
                "spec": {
                    "restartPolicy": "Never",
                    # The namespace enforces the restricted Pod Security Standard (infra/load_test.py).
                    "securityContext": {"runAsNonRoot": True, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "serviceAccountName": pods.service_account,
                    "nodeSelector": dict(pods.node_selector),
                    "tolerations": [dict(t) for t in pods.tolerations],
                    "containers": [{
                        "name": "worker",
                        "image": pods.image,
                        "command": ["python", "-m", "loadtest.worker"],
                        "env": [{"name": key, "value": value} for key, value in sorted(env.items())],
                        "resources": {"requests": resources, "limits": resources},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    }  # fmt: skip
