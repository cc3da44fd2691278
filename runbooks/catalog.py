"""The runbooks `peakguard runbook` knows, by name."""

from __future__ import annotations

from collections.abc import Mapping

from runbooks.library import emergency_stop, rebuild, rolling_upgrade
from runbooks.spec import Runbook

__all__ = ["RUNBOOKS"]

RUNBOOKS: Mapping[str, Runbook] = {
    r.name: r for r in (emergency_stop.RUNBOOK, rebuild.RUNBOOK, rolling_upgrade.RUNBOOK)
}
