"""The runbooks `peakguard runbook` knows, by name."""

from __future__ import annotations

from collections.abc import Mapping

from runbooks.library import emergency_stop
from runbooks.spec import Runbook

__all__ = ["RUNBOOKS"]

RUNBOOKS: Mapping[str, Runbook] = {runbook.name: runbook for runbook in (emergency_stop.RUNBOOK,)}
