"""predictive-scale: be warm before the wave (the seed's long-term fix, issue 20).

Reactive scaling lagged three minutes behind the seed's surge, and cold nodes ran at 18% of warm
ones. So every few minutes (a CronJob, `infra/`), this runbook reads the request rate's history
(the ALB target group's RequestCount in CloudWatch), forecasts its p90 `--horizon` minutes ahead
(`forecast.predict`, the backtest's protocol run forward) and sets the full model's HPA minimum
to what that p90 needs, with the node groups raised to hold it, before the wave arrives:

- replicas = the 30% headroom of `infra/facts.py` on ceil(rate / one replica's rate), for the rate
  now and for the p90 ahead; the minimum is the larger, never below the stack's declared minimum,
  never above its declared maximum (nor the HPA's live one);
- the HPA minimum and node groups' desired sizes are only raised (never lowered: the cluster autoscaler removes idle
  nodes), each within its maximum;
- it stands aside for an incident: under an incident hold it does not act (`StandAsideError`), and
  the engine refuses under a change freeze or while another runner holds the lock. Scheduled with
  `--stand-aside`, each of those ends the cycle with exit 0, journaled as refused. It holds the lock
  for seconds: its steps set bounds and desired sizes and wait for nothing to start. The hold is
  read again under the lock (the `no-incident-hold` step pins its absence in the plan), so a hold
  set between the plan and the run stops it too.

It only ever raises the HPA minimum and the node groups: a minimum set higher by someone else (an
operator before a sale, an incident's runbook) is theirs, and lowering after the peak is left to
`pulumi up` (which sets the declared minimum again). Adding capacity cannot break the SLO, so its
health gate is its own change: the HPA minimum is as planned once the run ends. A failed step rolls
back like every runbook's. The forecast covers `--horizon` from now: the history ends at the last
complete period (CloudWatch's newest may still be filling), and the steps ahead count from there.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from infra import facts
from runbooks.engine.spec import Context, Gate, Param, Reading, Runbook, Step
from runbooks.errors import RunbookError, StandAsideError
from runbooks.library import undo
from runbooks.library.pool_scaling import (
    apply_groups,
    apply_hpa,
    groups_as_planned,
    nodes_for,
    observe_groups,
    observe_hpa,
    spread,
)
from runbooks.library.service_gates import ports_of
from runbooks.ports.request_history import PERIOD_SECONDS

__all__ = ["RUNBOOK", "forecast_need"]


def forecast_need(context: Context) -> dict[str, Any]:
    """The plan's basis: the rate now, its p90 ahead, the replicas each needs, and the minimum."""
    ports = ports_of(context)
    hold = ports.cloud.switches.hold()
    if hold is not None:
        raise StandAsideError(
            f"incident hold by {hold.get('runbook')} run {hold.get('runId')}: predictive-scale stands aside until "
            "the incident's runbooks lift it"
        )
    service = ports.model_service
    if not service.ingress or not {"min", "max"} <= set(service.replicas):
        raise RunbookError(
            f"the targets document of {ports.targets.env} lacks modelService.ingress or .replicas (older documents "
            "do): run `pulumi up` for this env with this peakguard to publish them"
        )
    params = context.params
    per_replica = float(params["replica-rps"])
    history = ports.cloud.request_history(cluster=ports.targets.cluster.name, namespace=service.namespace,
                                          ingress=service.ingress)  # fmt: skip
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rates = history.rates(now=now, hours=24 * params["history-days"])
    values, index = _regular(rates.times, rates.rates, rates.until)
    # Steps from the last complete period's start to the one that holds now + horizon: the forecast
    # covers the horizon from now, not from the last datum (which is minutes old).
    last_start = rates.until - dt.timedelta(seconds=PERIOD_SECONDS)
    target = now + dt.timedelta(minutes=params["horizon"])
    horizon = max(1, int((target - last_start).total_seconds() // PERIOD_SECONDS))
    try:
        from forecast.predict import predict
    except ImportError as exc:
        raise RunbookError(
            f"predictive-scale needs the forecast extra (pip install 'peakguard[forecast]'): {exc}"
        ) from None
    try:
        ahead = predict(values, index, horizon=horizon, model=params["model"])
    except ValueError as exc:
        raise RunbookError(f"cannot forecast from {rates.source}: {exc}") from None
    now_rps = float(values[-1])
    need_now = facts.capacity_with_headroom(math.ceil(now_rps / per_replica))
    need_ahead = facts.capacity_with_headroom(math.ceil(max(ahead.p90, 0.0) / per_replica))
    live = observe_hpa(context)
    ceiling = min(live["max"], service.replicas["max"])
    wanted = max(service.replicas["min"], need_now, need_ahead)
    groups = ports.targets.node_groups_of(service.pools["full"])
    if not groups:
        raise RunbookError(f"the targets document lists no node groups of pool {service.pools['full']!r}")
    return {
        "source": rates.source,
        "points": len(values),
        "rpsNow": round(now_rps, 3),
        "forecastAt": ahead.at.isoformat(),
        "forecastRps": round(ahead.point, 3),
        "forecastP90Rps": round(ahead.p90, 3),
        "model": ahead.model,
        "replicaRps": per_replica,
        "needNow": need_now,
        "needAhead": need_ahead,
        "declared": dict(service.replicas),
        "minReplicas": min(ceiling, wanted),
        "cappedByMax": wanted > ceiling,
        "gpusPerNode": facts.INSTANCE_TYPES[groups[0].instance_type].gpus,
    }


def _regular(times: tuple[dt.datetime, ...], rates: tuple[float, ...], until: dt.datetime) -> tuple[Any, Any]:
    """One rate per period from the first point to the last complete period (ending at `until`); a
    period CloudWatch has no datum for had no requests (an ALB reports RequestCount only for periods
    with requests), a quiet night up to now included."""
    import numpy as np
    import pandas as pd

    if not times:
        raise RunbookError("CloudWatch has no RequestCount for the target group in the history asked for")
    observed = pd.Series(rates, index=pd.DatetimeIndex([t.astimezone(dt.UTC) for t in times]).tz_convert(None))
    last = pd.Timestamp(until.astimezone(dt.UTC)).tz_convert(None) - pd.Timedelta(seconds=PERIOD_SECONDS)
    index = pd.date_range(observed.index[0], last, freq=f"{PERIOD_SECONDS}s")
    return observed.groupby(level=0).sum().reindex(index, fill_value=0.0).to_numpy(dtype=np.float64), index


def _observe_hold(context: Context) -> Any:
    """The hold, as the plan pins it: the engine re-reads every step's state under the lock and
    refuses a run whose state moved, so a hold set after the plan was made stops the run."""
    return ports_of(context).cloud.switches.hold_owner()


def _desired_groups(context: Context, before: Any) -> Any:
    if not before:
        return before
    basis = context.basis
    return spread(before, nodes_for(context, basis["minReplicas"], basis["gpusPerNode"]))


def _desired_hpa(context: Context, before: Any) -> Any:
    # Only raised: a minimum someone set higher (an operator before a sale, an incident's runbook) is
    # theirs, and a forecast must not undo it.
    return {"min": max(before["min"], context.basis["minReplicas"]), "max": before["max"]}


def _hpa_as_planned(context: Context) -> Reading:
    live = observe_hpa(context)
    planned = context.planned.get("hpa-minimum") or live
    return Reading(1.0 if live == planned else 0.0, raw={"live": live, "planned": planned},
                   query=f"HPA {ports_of(context).model_service.hpa} bounds == planned")  # fmt: skip


RUNBOOK = Runbook(
    name="predictive-scale",
    summary="forecast the request rate's p90 ahead; set the HPA minimum and node groups to meet it before it comes",
    params=(
        Param(
            "replica-rps",
            "requests/s one full-model replica sustains (`peakguard bench model` on the pool's GPU)",
            kind=float,
            minimum=0.001,
        ),
        Param(
            "horizon",
            "minutes ahead to be ready for (new GPU nodes take minutes)",
            kind=float,
            default=15.0,
            minimum=1.0,
            maximum=720.0,
        ),
        Param(
            "history-days",
            "days of RequestCount history to forecast from (the forecaster needs 4 whole days; 5 leaves a margin)",
            kind=float,
            default=14.0,
            minimum=5.0,
            maximum=63.0,
        ),
        Param(
            "model",
            "forecaster (the backtest compares them)",
            default="holt_winters",
            choices=("holt_winters", "lstm", "seasonal_naive"),
        ),
    ),
    steps=(
        Step(
            "no-incident-hold",
            "change nothing; the incident hold's absence, pinned in the plan, is checked again under the lock",
            _observe_hold,
            lambda context, before: before,
            lambda context, target: None,
            timeout=10,
            undo=lambda context, before: "nothing: this step only reads the incident hold and changes nothing",
        ),
        Step(
            "gpu-node-groups",
            "raise the full pool's node groups' desired size to hold the planned minimum (never lowered)",
            observe_groups("full"),
            _desired_groups,
            apply_groups,
            verify=Gate("full pool sized as planned", groups_as_planned("gpu-node-groups", "full"), at_least=1.0),
            timeout=60,
            undo=undo.node_groups,
        ),
        Step(
            "hpa-minimum",
            "set the full model's HPA minimum to what the forecast's p90 needs (within the declared bounds)",
            observe_hpa,
            _desired_hpa,
            apply_hpa,
            verify=Gate("HPA minimum as planned", _hpa_as_planned, at_least=1.0),
            timeout=30,
            undo=lambda context, before: undo.bounds(
                context, "HorizontalPodAutoscaler", ports_of(context).model_service.hpa, before
            ),
        ),
    ),
    health=Gate("HPA minimum as planned", _hpa_as_planned, at_least=1.0),
    basis=forecast_need,
    recovery_timeout=30.0,
)
