"""Serving hygiene: cold replicas get no traffic, images are pinned."""

from __future__ import annotations

from typing import Any

from policies.findings import UNKNOWN, Resource, Rule, Violation

__all__ = ["RULES"]

_MOVING_TAGS = ("latest", "main", "master", "stable", "dev", "edge", "nightly")


def _containers(resource: Resource) -> list[dict[str, Any]]:
    containers = resource.get("spec.template.spec.containers")
    return containers if isinstance(containers, list) else []


def _is_model_service(resource: Resource) -> bool:
    labels = resource.get("spec.template.metadata.labels")
    return isinstance(labels, dict) and labels.get("app.kubernetes.io/name") == "model-service"


def _readiness_after_warm_up(resource: Resource) -> list[Violation]:
    if not _is_model_service(resource):
        return []
    found = []
    for index, container in enumerate(_containers(resource)):
        path = (container.get("readinessProbe") or {}).get("httpGet", {}).get("path")
        if path != "/readyz":
            found.append(Violation(f"spec.template.spec.containers[{index}].readinessProbe.httpGet.path", path,
                                   '"/readyz"', "probe /readyz: it passes only after weights load and a warm-up batch")
                         )  # fmt: skip
    return found


def _pinned_images(resource: Resource) -> list[Violation]:
    found = []
    for index, container in enumerate(_containers(resource)):
        image = container.get("image", UNKNOWN)
        if image is UNKNOWN:
            continue
        pinned = "@sha256:" in image or (
            ":" in image.rsplit("/", 1)[-1] and image.rsplit(":", 1)[-1] not in _MOVING_TAGS
        )
        if not pinned:
            found.append(Violation(f"spec.template.spec.containers[{index}].image", image, "a digest or a fixed tag",
                                   "pin it: repo@sha256:<digest> or repo:1.2.3")
                         )  # fmt: skip
    return found


RULES = (
    Rule(
        id="SERV-001", name="model-ready-only-after-warm-up", domain="serving", severity="mandatory",
        rationale="cold replicas served at 18% of warm ones; readiness must wait for the warm-up batch.",
        resource_types=("kubernetes:apps/v1:Deployment",), check=_readiness_after_warm_up,
    ),
    Rule(
        id="SERV-002", name="image-pinned", domain="serving", severity="mandatory",
        rationale="a moving tag changes the model server under a running incident without a deploy.",
        resource_types=("kubernetes:apps/v1:Deployment",), check=_pinned_images, peers=("CKV_K8S_14",),
    ),
)  # fmt: skip
