"""Capacity: autoscaling reaches the expected peak with 30% headroom, and scales up at once."""

from __future__ import annotations

import math

from policies.findings import UNKNOWN, Resource, Rule, Violation

__all__ = ["EXPECTED_PEAK_ANNOTATION", "RULES"]

EXPECTED_PEAK_ANNOTATION = "peakguard.io/expected-peak-replicas"
"""Set by the Pulumi program on the HPA from the stack config, so the analyzer can check headroom."""
_HEADROOM = 1.3
_LONGEST_SCALE_UP_WINDOW = 15


def _hpa_headroom(resource: Resource) -> list[Violation]:
    annotations = resource.get("metadata.annotations")
    peak = annotations.get(EXPECTED_PEAK_ANNOTATION, UNKNOWN) if isinstance(annotations, dict) else UNKNOWN
    maximum = resource.get("spec.maxReplicas")
    if peak is UNKNOWN:
        return [Violation(f"metadata.annotations[{EXPECTED_PEAK_ANNOTATION}]", None, "the expected peak replicas",
                          "annotate the HPA with the expected peak (infra/model_workload.py does)",
                          status="not-evaluated")]  # fmt: skip
    if maximum is UNKNOWN:
        return [Violation("spec.maxReplicas", None, "known", "set max_replicas", status="not-evaluated")]
    needed = math.ceil(int(peak) * _HEADROOM - 1e-9)
    if int(maximum) < needed:
        return [Violation("spec.maxReplicas", maximum, f">= ceil(1.3 x {peak}) = {needed}",
                          f"raise peakguard:kubernetes.modelService.maxReplicas to {needed}")]  # fmt: skip
    return []


def _hpa_scale_up(resource: Resource) -> list[Violation]:
    window = resource.get("spec.behavior.scaleUp.stabilizationWindowSeconds")
    if window is not UNKNOWN and int(window) > _LONGEST_SCALE_UP_WINDOW:
        return [Violation("spec.behavior.scaleUp.stabilizationWindowSeconds", window,
                          f"<= {_LONGEST_SCALE_UP_WINDOW}", "set it to 0: scale up on the first reading")]  # fmt: skip
    return []


RULES = (
    Rule(
        id="CAP-001", name="hpa-leaves-30-percent-headroom", domain="capacity", severity="mandatory",
        rationale="without 30% over the expected peak the HPA tops out during the surge (the seed's outage).",
        resource_types=("kubernetes:autoscaling/v2:HorizontalPodAutoscaler",), check=_hpa_headroom,
    ),
    Rule(
        id="CAP-002", name="hpa-scales-up-at-once", domain="capacity", severity="mandatory",
        rationale="a long scale-up stabilisation window is the seed's 3-minute scaling lag.",
        resource_types=("kubernetes:autoscaling/v2:HorizontalPodAutoscaler",), check=_hpa_scale_up,
    ),
)  # fmt: skip
