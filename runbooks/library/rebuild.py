"""rebuild: the seed's phase two. A new model version goes out as a canary, is compared with the
rest of the fleet, and is promoted to every pod in normal mode, or everything rolls back.

1. the canary's mode ConfigMap names the new version (pods load it from the artifact store);
2. the canary Deployment is scaled up through its ScaledObject, and must become Ready on the new
   version and serve within `--tolerance` of the rest's p99 with errors under 1%, measured from
   the pods' own metrics (no canary traffic or no data is inconclusive, never a pass);
3. promotion: the full fleet's mode ConfigMap gets the version and normal mode (full model, FP32,
   no shedding, batches 16-128), pushed to every ready pod and confirmed there; the canary goes
   back to zero;
4. the incident hold of the emergency run is lifted, so `pulumi up` may run again;
5. infrastructure changes (EFA, NVMe, GPUDirect Storage) are a `pulumi up`: run when the Pulumi
   CLI is installed here, otherwise planned, shown and reported as a manual step with the exact
   command.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from runbooks.engine.spec import Context, Gate, LeftToOperator, Param, Reading, Runbook, Step
from runbooks.errors import RunbookError
from runbooks.library import undo
from runbooks.library.service_gates import ERROR_BUDGET, ports_of, within_slo
from runbooks.ports.cluster import Bounds

__all__ = ["NORMAL_MODE", "RUNBOOK"]

NORMAL_MODE = {"model": "full", "precision": "fp32", "shedding": False, "batch_min": 16, "batch_max": 128}
"""The operating mode the fleet returns to once the incident is over."""
_FLOOR_SECONDS = 0.005
"""A p99 comparison floor: at a few milliseconds, noise is not a regression."""


def _observe_canary_version(context: Context) -> Any:
    ports = ports_of(context)
    document = ports.cluster.mode_document(ports.namespace, ports.model_service.mode_config_maps["canary"])
    return {"model_version": document.get("model_version", "")}


def _apply_canary_version(context: Context, target: Any) -> None:
    ports_of(context).set_mode("canary", target)


def _observe_canary_bounds(context: Context) -> Any:
    ports = ports_of(context)
    return ports.cluster.scaled_object_bounds(ports.namespace, ports.model_service.scaled_objects["canary"]).to_dict()


def _desired_canary_bounds(context: Context, before: Any) -> Any:
    replicas = int(context.params["canary-replicas"])
    return {"min": replicas, "max": max(before["max"], replicas)}


def _apply_canary_bounds(context: Context, target: Any) -> None:
    ports = ports_of(context)
    ports.cluster.set_scaled_object_bounds(
        ports.namespace, ports.model_service.scaled_objects["canary"], Bounds(**target)
    )


def _canary_as_good(context: Context) -> Reading:
    """Canary p99 against the rest's (times the tolerance) and its error rate against 1%; <= 1 passes.

    After an emergency the rest of the fleet runs degraded (light model, INT8, the answer table) and
    answers faster than any pod in normal mode can: then the canary, which runs normal mode, is
    judged against the SLO instead, since being slower than a degraded fleet is what normal mode is."""
    ports = ports_of(context)
    version = context.params["version"]
    canary = ports.endpoints("canary")
    wanted = int(context.params["canary-replicas"])
    versions = {e.pod: ports.service.status(e.url).get("version") for e in canary}
    if len(canary) < wanted or any(v != version for v in versions.values()):
        return Reading(None, raw={"ready": len(canary), "wanted": wanted, "versions": versions},
                       query="canary pods Ready on the new version")  # fmt: skip
    rest = ports.endpoints("full")
    if not rest:
        raise RunbookError("no ready full-model pods to compare the canary with")
    window = ports.window_seconds
    canary_window = ports.service.window([e.url for e in canary], window, sleep=ports.sleep)
    rest_window = ports.service.window([e.url for e in rest], window, sleep=ports.sleep)
    canary_p99, rest_p99 = canary_window.quantile(0.99), rest_window.quantile(0.99)
    errors = canary_window.error_rate
    if canary_p99 is None or rest_p99 is None or errors is None:
        return Reading(None, raw={"canaryRequests": canary_window.requests, "restRequests": rest_window.requests},
                       query="no canary or fleet traffic in the window")  # fmt: skip
    tolerance = float(context.params["tolerance"])
    degraded = sorted(e.pod for e in rest if _degraded(ports.service.status(e.url).get("mode", {})))
    slo = ports.model_service.slo_p99_ms / 1000
    limit = slo if degraded else tolerance * max(rest_p99, _FLOOR_SECONDS)
    value = max(canary_p99 / limit, errors / ERROR_BUDGET)
    raw = {"canaryP99": round(canary_p99, 4), "restP99": round(rest_p99, 4), "canaryErrorRate": round(errors, 5),
           "tolerance": tolerance, "versions": versions, "limitSeconds": round(limit, 4),
           "judgedAgainst": f"the SLO: the fleet runs degraded on {', '.join(degraded)}" if degraded
           else "the fleet's p99 x tolerance"}  # fmt: skip
    query = "max(canary p99 / (tolerance x rest p99, or the SLO while the rest is degraded), canary errors / 1%)"
    return Reading(value, raw=raw, query=query)


def _degraded(mode: Any) -> bool:
    """A pod's mode is not normal mode's model, precision and shedding."""
    return any(mode.get(key) != NORMAL_MODE[key] for key in ("model", "precision", "shedding"))


def _observe_fleet(context: Context) -> Any:
    ports = ports_of(context)
    document = ports.cluster.mode_document(ports.namespace, ports.model_service.mode_config_maps["full"])
    canary = ports.cluster.scaled_object_bounds(ports.namespace, ports.model_service.scaled_objects["canary"])
    mode = {key: document.get(key) for key in ("model_version", *NORMAL_MODE)}
    return {"mode": mode, "canaryMin": canary.min}


def _desired_fleet(context: Context, before: Any) -> Any:
    return {"mode": {"model_version": context.params["version"], **NORMAL_MODE}, "canaryMin": before["canaryMin"]}


def _apply_fleet(context: Context, target: Any) -> None:
    ports = ports_of(context)
    ports.set_mode("full", target["mode"])
    canary = ports.model_service.scaled_objects["canary"]
    bounds = ports.cluster.scaled_object_bounds(ports.namespace, canary)
    ports.cluster.set_scaled_object_bounds(ports.namespace, canary, Bounds(min=target["canaryMin"], max=bounds.max))


def _fleet_confirms(context: Context) -> Reading:
    ports = ports_of(context)
    target = (context.planned.get("promote") or {}).get("mode") or {}
    confirmed = {}
    for endpoint in ports.endpoints("full"):
        status = ports.service.status(endpoint.url)
        mode = status.get("mode", {})
        confirmed[endpoint.pod] = status.get("version") == target.get("model_version") and all(
            mode.get(key) == value for key, value in target.items() if key != "model_version"
        )
    share = sum(confirmed.values()) / len(confirmed) if confirmed else None
    return Reading(share, raw=confirmed, query="share of ready full pods serving the version in normal mode")


def _undo_promote(context: Context, before: Any) -> str:
    canary = ports_of(context).model_service.scaled_objects["canary"]
    put_back = undo.bounds(context, "ScaledObject", canary, {"min": before["canaryMin"]})
    return f"{undo.mode(context, 'full', before['mode'])}; {put_back}"


def _observe_hold(context: Context) -> Any:
    return ports_of(context).cloud.switches.hold()


def _apply_hold(context: Context, target: Any) -> None:
    switches = ports_of(context).cloud.switches
    if target is None:
        switches.lift_hold()
    else:
        switches.put_back_hold(target)


def _pulumi_command(context: Context) -> str:
    return f"pulumi up -s {context.env} --yes"


def _observe_infra(context: Context) -> Any:
    return {"pulumiUp": "not run"}


def _desired_infra(context: Context, before: Any) -> Any:
    cli = shutil.which("pulumi")
    command = _pulumi_command(context)
    return {"pulumiUp": command if cli else f"manual: {command} (no Pulumi CLI on this machine)"}


def _apply_infra(context: Context, target: Any) -> LeftToOperator | None:
    command = target["pulumiUp"]
    if command.startswith("manual:"):
        # Reported, not faked: the run ends "succeeded, manual step pending" with the exact command.
        return LeftToOperator(_pulumi_command(context), "no Pulumi CLI on the machine that ran the runbook")
    done = subprocess.run(command.split(), capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RunbookError(f"`{command}` failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return None


RUNBOOK = Runbook(
    name="rebuild",
    summary="roll a model version out as a canary, compare it, promote it in normal mode, lift the hold",
    params=(
        Param("version", "model version folder to roll out (uploaded to the bucket's models/ prefix)"),
        Param("canary-replicas", "canary pods to compare", kind=int, default=1, minimum=1, maximum=20),
        Param(
            "canary-timeout",
            "seconds the canary may take to be Ready and measured",
            kind=float,
            default=600.0,
            minimum=1.0,
        ),
        Param(
            "tolerance", "how much slower than the fleet (p99) the canary may be", kind=float, default=1.5, minimum=1.0
        ),
    ),
    steps=(
        Step(
            "canary-version",
            "point the canary's mode ConfigMap at the new version",
            _observe_canary_version,
            lambda context, before: {"model_version": context.params["version"]},
            _apply_canary_version,
            timeout=30,
            undo=lambda context, before: undo.mode(context, "canary", before),
        ),
        Step(
            "canary-up",
            "scale the canary up and compare it with the fleet",
            _observe_canary_bounds,
            _desired_canary_bounds,
            _apply_canary_bounds,
            verify=Gate("canary as good as the fleet", _canary_as_good, at_most=1.0),
            timeout="canary-timeout",
            undo=lambda context, before: undo.bounds(
                context, "ScaledObject", ports_of(context).model_service.scaled_objects["canary"], before
            ),
        ),
        Step(
            "promote",
            "the version and normal mode to every pod, the canary back to zero",
            _observe_fleet,
            _desired_fleet,
            _apply_fleet,
            verify=Gate("fleet serving it", _fleet_confirms, at_least=1.0),
            timeout=300,
            undo=_undo_promote,
        ),
        Step(
            "lift-hold",
            "lift the incident hold, so `pulumi up` may run again",
            _observe_hold,
            lambda context, before: None,
            _apply_hold,
            timeout=30,
            undo=undo.hold,
        ),
        Step(
            "infra",
            "apply infrastructure changes (EFA, NVMe, GDS) with `pulumi up`",
            _observe_infra,
            _desired_infra,
            _apply_infra,
            restore=lambda context, before: None,
            timeout=3600,
            undo=lambda context, before: (
                f"Pulumi stack {context.env}: a `pulumi up` is not undone by a runbook; revert the commit it "
                f"applied and run `pulumi up -s {context.env}`"
            ),
        ),
    ),
    health=within_slo("normal"),
    recovery_timeout=120.0,
    poll_interval=2.0,
)
