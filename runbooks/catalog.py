"""The runbooks `peakguard runbook` knows, by name."""

from __future__ import annotations

from collections.abc import Mapping

from runbooks.engine.spec import Runbook
from runbooks.library import chaos_drill, emergency_stop, predictive_scale, rebuild, rolling_upgrade

__all__ = ["RUNBOOKS"]

RUNBOOKS: Mapping[str, Runbook] = {
    r.name: r
    for r in (
        emergency_stop.RUNBOOK,
        rebuild.RUNBOOK,
        rolling_upgrade.RUNBOOK,
        predictive_scale.RUNBOOK,
        chaos_drill.RUNBOOK,
    )
}
