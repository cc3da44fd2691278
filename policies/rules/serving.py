"""Serving hygiene: cold replicas get no traffic, images are pinned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infra.facts import EKS_TAINT_EFFECTS
from policies.findings import UNKNOWN, Resource, Rule, Violation
from policies.wire import POOL_LABEL, mapping, of_type, sequence, truthy
from policies.workloads import DEPLOYMENT, PDB, accelerators, containers, guarding_budgets

__all__ = ["RULES"]

_MOVING_TAGS = ("latest", "main", "master", "stable", "dev", "edge", "nightly")


def _is_model_service(resource: Resource) -> bool:
    labels = resource.get("spec.template.metadata.labels")
    return isinstance(labels, dict) and labels.get("app.kubernetes.io/name") == "model-service"


def _readiness_after_warm_up(resource: Resource) -> list[Violation]:
    if not _is_model_service(resource):
        return []
    found = []
    for where, container in containers(resource):
        if where.startswith("spec.template.spec.initContainers"):
            continue  # init containers run before readiness matters
        probe = container.get("readinessProbe")
        path = mapping(mapping(probe).get("httpGet")).get("path")
        if UNKNOWN in (probe, path):
            found.append(Violation(f"{where}.readinessProbe", None, "known", "", status="not-evaluated"))
        elif path != "/readyz":
            found.append(
                Violation(
                    f"{where}.readinessProbe.httpGet.path",
                    path,
                    '"/readyz"',
                    "probe /readyz: it passes only after weights load and a warm-up batch",
                )
            )
    return found


def _pinned_images(resource: Resource) -> list[Violation]:
    found = []
    for where, container in containers(resource):
        image = container.get("image")
        if image is UNKNOWN:
            found.append(Violation(f"{where}.image", None, "known", "", status="not-evaluated"))
            continue
        if not isinstance(image, str):
            continue
        pinned = "@sha256:" in image or (
            ":" in image.rsplit("/", 1)[-1] and image.rsplit(":", 1)[-1] not in _MOVING_TAGS
        )
        if not pinned:
            found.append(
                Violation(
                    f"{where}.image",
                    image,
                    "a digest or a fixed tag",
                    "pin it: repo@sha256:<digest> or repo:1.2.3",
                )
            )
    return found


_NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
_EKS_EFFECTS = {eks: kubernetes for kubernetes, eks in EKS_TAINT_EFFECTS.items()}


def _amount(value: Any) -> Any:
    """A device count as a number whether it came as "1", 1 or 1.0."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _requests_and_limits(deployment: Resource) -> list[Violation]:
    found = []
    for path, container in containers(deployment):
        resources = mapping(container.get("resources"))
        requests, limits = mapping(resources.get("requests")), mapping(resources.get("limits"))
        missing = [f"requests.{k}" for k in ("cpu", "memory") if k not in requests]
        missing += [f"limits.{k}" for k in ("memory",) if k not in limits]
        missing += [
            f"limits.{k}"
            for k in requests
            if k.startswith("nvidia.com/") and _amount(limits.get(k)) != _amount(requests[k])
        ]
        if missing:
            found.append(
                Violation(
                    f"{path}.resources",
                    dict(resources),
                    f"{', '.join(missing)} set",
                    "set cpu and memory requests and a memory limit (modelService.cpu/memory in the "
                    "stack config); GPU limits equal to requests",
                )
            )
    return found


def _tolerates(tolerations: Sequence[Any], taint: dict[str, Any]) -> bool:
    for toleration in map(mapping, tolerations):
        if toleration.get("key") not in (taint["key"], None):
            continue
        if toleration.get("effect") not in (taint["effect"], None, ""):
            continue
        if toleration.get("operator") == "Exists" or toleration.get("value") == taint.get("value"):
            return True
    return False


def _gpu_tolerations(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    found = []
    for deployment in of_type(resources, DEPLOYMENT):
        if not accelerators(deployment):
            continue
        pool = mapping(deployment.get("spec.template.spec.nodeSelector")).get(POOL_LABEL)
        groups = [g for g in of_type(resources, _NODE_GROUP) if mapping(g.get("labels")).get(POOL_LABEL) == pool]
        if not groups:
            found.append(
                (
                    deployment,
                    Violation(
                        f"spec.template.spec.nodeSelector[{POOL_LABEL}]",
                        pool,
                        "a pool some GPU node group of this stack is labelled with",
                        "set modelService.pool to a key of peakguard:gpuPools",
                    ),
                )
            )
            continue
        tolerations = sequence(deployment.get("spec.template.spec.tolerations"))
        taints = {
            (t.get("key"), _EKS_EFFECTS.get(str(t.get("effect")), t.get("effect"))): t
            for g in groups
            for t in map(mapping, sequence(g.get("taints")))
        }
        for (key, effect), taint in sorted(taints.items()):
            wanted = {"key": key, "effect": effect, "value": taint.get("value")}
            if effect in ("NoSchedule", "NoExecute") and not _tolerates(tolerations, wanted):
                found.append(
                    (
                        deployment,
                        Violation(
                            "spec.template.spec.tolerations",
                            list(tolerations),
                            f"a toleration of {key}={wanted['value']}:{effect} (pool {pool!r})",
                            f'add Toleration(key="{key}", operator="Exists", effect="{effect}")',
                        ),
                    )
                )
    return found


def _non_root(deployment: Resource) -> list[Violation]:
    pod = mapping(deployment.get("spec.template.spec.securityContext"))
    found = []
    for path, container in containers(deployment):
        context = mapping(container.get("securityContext"))
        non_root = context.get("runAsNonRoot", pod.get("runAsNonRoot"))
        user = context.get("runAsUser", pod.get("runAsUser"))
        fix = "set the pod's security_context run_as_non_root=True, run_as_user=10001"
        if UNKNOWN in (non_root, user):
            found.append(Violation(f"{path}.securityContext", None, "known", "", status="not-evaluated"))
        elif user is not None and float(user) == 0:
            found.append(Violation(f"{path}.securityContext.runAsUser", user, "a non-zero user", fix))
        elif not truthy(non_root):
            found.append(Violation(f"{path}.securityContext.runAsNonRoot", non_root, "true", fix))
    return found


def _budget_for_each(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    return [
        (
            deployment,
            Violation(
                "PodDisruptionBudget selecting spec.template.metadata.labels",
                None,
                "one",
                "declare a PodDisruptionBudget per Deployment (infra/model_workload.py does)",
            ),
        )
        for deployment in of_type(resources, DEPLOYMENT)
        if not guarding_budgets(deployment, resources)
    ]


RULES = (
    Rule(
        id="SERV-001",
        name="model-ready-only-after-warm-up",
        domain="serving",
        severity="mandatory",
        rationale="cold replicas served at 18% of warm ones; readiness must wait for the warm-up batch.",
        resource_types=("kubernetes:apps/v1:Deployment",),
        check=_readiness_after_warm_up,
    ),
    Rule(
        id="SERV-002",
        name="image-pinned",
        domain="serving",
        severity="mandatory",
        rationale="a moving tag changes the model server under a running incident without a deploy.",
        resource_types=("kubernetes:apps/v1:Deployment",),
        check=_pinned_images,
        peers=("CKV_K8S_14",),
    ),
    Rule(
        id="SERV-003",
        name="containers-request-and-limit",
        domain="serving",
        severity="mandatory",
        rationale="pods without requests are packed until the node runs out of memory; the seed's GPUs ran "
        "out of memory the same way.",
        resource_types=(DEPLOYMENT,),
        check=_requests_and_limits,
        peers=("CKV_K8S_10", "CKV_K8S_12", "CKV_K8S_13"),
    ),
    Rule(
        id="SERV-004",
        name="gpu-pods-tolerate-their-pool",
        domain="serving",
        severity="mandatory",
        rationale="a GPU pod that does not tolerate its pool's taint stays Pending while the surge waits for it.",
        resource_types=(DEPLOYMENT, _NODE_GROUP),
        stack_check=_gpu_tolerations,
    ),
    Rule(
        id="SERV-005",
        name="containers-run-as-non-root",
        domain="serving",
        severity="mandatory",
        rationale="a model server running as root turns any request-parsing bug into a node compromise.",
        resource_types=(DEPLOYMENT,),
        check=_non_root,
        peers=("CKV_K8S_23", "AVD-KSV-0012"),
    ),
    Rule(
        id="SERV-006",
        name="every-deployment-has-a-disruption-budget",
        domain="serving",
        severity="mandatory",
        rationale="without a PodDisruptionBudget a node drain evicts every replica on the node at once.",
        resource_types=(DEPLOYMENT, PDB),
        stack_check=_budget_for_each,
    ),
)
