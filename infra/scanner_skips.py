"""Findings of the peer scanner (Checkov) that a workload accepts on purpose, declared on the object.

Checkov reads `checkov.io/skip<N>: <check id>=<reason>` from an object's annotations; each skip sits
where the object is declared, with its reason, and `tests/policies/test_checkov.py` runs Checkov
over the exported manifests and fails on any finding without one.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["skip_annotations"]


def skip_annotations(skips: Mapping[str, str]) -> dict[str, str]:
    """The annotations that skip each check id with its reason (Checkov splits on '=': none in reasons)."""
    for check, reason in skips.items():
        if "=" in check or "=" in reason or not reason.strip():
            raise ValueError(f"skip of {check}: needs a reason without '=' (Checkov splits on it), got {reason!r}")
    return {f"checkov.io/skip{number}": f"{check}={reason}" for number, (check, reason) in enumerate(skips.items(), 1)}
