"""The drill's numbers, from its timeline: what clients saw before, during and after the surge, when
the alert fired, how long each stage of the mitigation took, what the runbooks did. One report
model (`report`), rendered as the terminal summary, the JSON file and the plot.

Every figure is computed from what was measured in that run: client-side latencies from each
request's scheduled send (coordinated omission charged), the runbooks' own journals for their
stages, Prometheus for when an alert fired. A figure that could not be measured is None, never 0.
"""

from __future__ import annotations

import datetime
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra.alerts import detection_bound
from infra.facts import HEADROOM
from lab.drill import DrillSettings, Timeline
from model_service.load_generator import LAG_BAR_MS, Request, percentile

__all__ = ["plot", "render", "report", "write_json"]

ONE_MACHINE = (
    "One machine is not a cluster: the lab's replicas are processes sharing this machine's cores, so the "
    "emergency-stop's scale-out adds no capacity here; the mode change (light model, INT8, the answer table) and "
    "admission control are what carry the surge. On a real cluster each replica is its own GPU, and scaling out "
    "adds capacity as the plan's figures say."
)


def report(timeline: Timeline, settings: DrillSettings) -> dict[str, Any]:
    """Every number the drill reports, JSON-able."""
    requests = list(timeline.requests)
    surge_start = timeline.phase_start("surge")
    after_start = timeline.phase_start("after")
    alert_at = min(timeline.alerts.values(), default=None)
    first_alert = min(timeline.alerts, key=timeline.alerts.__getitem__, default=None)
    mitigation = _mitigation(timeline, alert_at)
    rollbacks = _rollbacks(timeline)
    verified_at = mitigation.get("verified_at")
    windows = {
        "before": _stats([r for r in requests if r.phase == "steady"]),
        "during": _stats([r for r in requests if r.phase == "surge"]),
        "after": _stats([r for r in requests if r.phase == "after"]),
    }
    upgrade = _upgrade(timeline)
    if upgrade is not None:
        windows["during_upgrade"] = upgrade.pop("traffic")
    if verified_at is not None:
        windows["during_mitigated"] = _stats(
            [r for r in requests if r.phase == "surge" and timeline.started + r.at >= verified_at]
        )
    sent = len(requests)
    answered = sum(r.outcome == "answered" for r in requests)
    shed = sum(r.outcome == "shed" for r in requests)
    failed = sum(r.outcome in ("failed", "dropped") for r in requests)
    before_p99 = windows["before"]["p99_ms"]
    mitigated_p99 = windows.get("during_mitigated", {}).get("p99_ms")
    k = settings.time_scale
    return {
        "models": timeline.models,
        "autopilot": settings.autopilot,
        "fault": settings.fault,
        "fault_effect": _fault_effect(timeline, settings),
        "calibration": {key: value for key, value in timeline.calibration.items() if key != "steps"}
        | {"ramp": timeline.calibration.get("steps", [])},
        "phases": [{"name": p.name, "seconds": p.seconds, "offered_rps": round(p.rps, 1)} for p in timeline.phases],
        "time_scale_k": k,
        "time_to_detect_s": _seconds(alert_at, surge_start),
        "detect_bound_s": None
        if first_alert is None
        else detection_bound(
            first_alert,
            time_scale=k,
            evaluation_interval=timeline.evaluation_interval,
            scrape_interval=timeline.evaluation_interval,
        ),
        "first_alerts": {
            name: round(at - surge_start, 1) for name, at in sorted(timeline.alerts.items(), key=lambda item: item[1])
        },
        "time_to_mitigate_s": mitigation.get("total_s"),
        "mitigation_stages_s": mitigation.get("stages"),
        "mitigation_status": mitigation.get("status"),
        "rollback_s": rollbacks[0]["rollback_s"] if rollbacks else None,
        "rollbacks": rollbacks,
        "upgrade": upgrade,
        "p50_ms": {name: window["p50_ms"] for name, window in windows.items()},
        "p99_ms": {name: window["p99_ms"] for name, window in windows.items()},
        "windows": windows,
        "mitigated_p99_over_before": None if mitigated_p99 is None or not before_p99 else mitigated_p99 / before_p99,
        "requests_total": sent,
        "requests_answered": answered,
        "requests_shed": shed,
        "requests_failed": failed,
        "answered_plus_shed_equals_sent": answered + shed == sent,
        "answered_from_table": sum(r.served_by == "cache" for r in requests),
        "failed_by_status": dict(Counter(str(r.status) for r in requests if r.outcome in ("failed", "dropped"))),
        "balancer_errors": timeline.balancer_errors,
        "generator_lag_p99_ms": (lag := _percentile_ms([r.lag for r in requests if r.outcome != "dropped"], 99)),
        # The load generator's one bar: over it, the generator sent late enough to shape the latencies.
        "generator_behind": None if lag is None else lag > LAG_BAR_MS,
        "runbooks": [{key: value for key, value in entry.items() if key != "output"} for entry in timeline.runbooks],
        "timeline": [{"t_s": round(at - timeline.started, 2), "what": what} for at, what in sorted(timeline.events)],
        "recording": None if timeline.recording is None else timeline.recording.to_dict(),
        "one_machine": ONE_MACHINE,
        "after_surge_starts_s": round(after_start - timeline.started, 1),
    }


def _mitigation(timeline: Timeline, alert_at: float | None) -> dict[str, Any]:
    """Stages of the emergency-stop run, from its journal: decide (alert to its first step), capacity
    (node groups and HPA until the replicas are Ready), mode, verify (the recovery gate)."""
    attempts = [e for e in timeline.runbooks if e["runbook"] == "emergency-stop" and e.get("journal")]
    if not attempts:
        return {}
    # The run that verified the recovery, if one did; stages count from the alert all the same.
    entry = next((e for e in attempts if e.get("exit") == 0), attempts[-1])
    records = _journal(entry)
    at = {(r["event"], r.get("step")): _unix(r["at"]) for r in records}
    finished = next((r for r in records if r["event"] == "run_finished"), None)
    verified = next((r for r in records if r["event"] == "run_verified"), None)
    status = finished["status"] if finished else "unfinished"
    start = alert_at if alert_at is not None else entry["started"]
    first_step = min((t for (event, _), t in at.items() if event == "step_started"), default=None)
    capacity_done = max(
        (
            t
            for (event, step), t in at.items()
            if event in ("step_done", "step_skipped")
            and step in ("gpu-node-groups", "hpa-bounds", "light-variant", "mig-node-groups")
        ),
        default=None,
    )
    mode_done = at.get(("step_done", "mode")) or at.get(("step_skipped", "mode"))
    verified_at = _unix(verified["at"]) if verified and verified["gate"]["verdict"] == "pass" else None
    stages = {
        "decide": _seconds(first_step, start),
        "capacity": _seconds(capacity_done, first_step),
        "mode": _seconds(mode_done, capacity_done),
        "verify": _seconds(verified_at, mode_done),
    }
    return {
        "status": status,
        "total_s": _seconds(verified_at, start),
        "stages": stages,
        "verified_at": verified_at,
        "attempts": len(attempts),
    }


def _upgrade(timeline: Timeline) -> dict[str, Any] | None:
    """The rolling-upgrade run under steady load: how long it took, the full pool's Ready nodes by
    generation before and after, and what clients saw while it ran (`traffic`)."""
    entry = next((e for e in timeline.runbooks if e["runbook"] == "rolling-upgrade"), None)
    if entry is None:
        return None
    ended = entry.get("ended", math.inf)
    during = [r for r in timeline.requests if entry["started"] <= timeline.started + r.at <= ended]
    traffic = _stats(during)
    slo_ms = timeline.calibration["slo_seconds"] * 1000
    return {
        "exit": entry.get("exit"),
        "seconds": _seconds(entry.get("ended"), entry["started"]),
        "nodes_before": timeline.upgrade.get("before"),
        "nodes_after": timeline.upgrade.get("after"),
        "within_slo": None if traffic["p99_ms"] is None else traffic["p99_ms"] <= slo_ms,
        "traffic": traffic,
    }


def _fault_effect(timeline: Timeline, settings: DrillSettings) -> dict[str, Any] | None:
    """What the fault took and what clients saw for the rest of the surge; for a lost node or zone, the
    share of the fleet it took against the headroom rule (a fleet sized at 1.3x its expected peak)."""
    if not timeline.fault.get("at") or settings.fault == "bad-step":
        return None  # bad-step strikes at rebuild, after the surge: its figures are the rollback's
    at = timeline.fault["at"]
    surge_end = timeline.phase_start("after")
    rest = [r for r in timeline.requests if r.phase == "surge" and at <= timeline.started + r.at < surge_end]
    stats = _stats(rest)
    slo_ms = timeline.calibration["slo_seconds"] * 1000
    effect: dict[str, Any] = {
        "at_s": round(at - timeline.started, 1),
        "ready_before": timeline.fault.get("ready_before"),
        "ready_after": timeline.fault.get("ready_after"),
        "rest_of_surge": stats,
        "within_slo_after": None if stats["p99_ms"] is None else stats["p99_ms"] <= slo_ms,
    }
    slowed = timeline.fault.get("pod")
    served_before, served_after = timeline.fault.get("served_before"), timeline.fault.get("served_after")
    if slowed and served_before is not None and served_after is not None:
        # What least-outstanding-requests did with a slow replica (round robin would give it 1/n).
        taken = {pod: served_after.get(pod, 0) - served_before.get(pod, 0) for pod in served_after}
        total = sum(taken.values())
        # Pods that served then, and the slowed one even if it got nothing.
        serving = {pod for pod, count in taken.items() if count > 0} | {slowed}
        if total > 0 and serving:
            effect |= {"slowed_pod": slowed, "slowed_share": round(taken.get(slowed, 0) / total, 3),
                       "even_share": round(1 / len(serving), 3)}  # fmt: skip
    before, after = effect["ready_before"], effect["ready_after"]
    if settings.fault in ("node", "zone") and before and after is not None:
        lost = (before - after) / before
        left = (1 - lost) * float(HEADROOM)  # of the expected peak
        effect |= {"lost_share": round(lost, 3), "left_of_expected_peak": round(left, 3),
                   "missing_of_expected_peak": round(max(0.0, 1 - left), 3)}  # fmt: skip
    return effect


def _journal(entry: dict[str, Any]) -> list[dict[str, Any]]:
    text = Path(entry["journal"]).read_text() if entry.get("journal") else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _rollbacks(timeline: Timeline) -> list[dict[str, Any]]:
    """Each runbook run that rolled back: from its failure to the end of its rollback, and whether
    the health gate after the rollback passed (the service verified healthy again)."""
    found = []
    for entry in timeline.runbooks:
        records = _journal(entry)
        done = next((r for r in records if r["event"] == "rollback_done"), None)
        if done is None:
            continue
        finished = next((r for r in records if r["event"] == "run_finished"), {})
        gate = done.get("gate") or {}
        found.append(
            {
                "runbook": entry["runbook"],
                "status": finished.get("status", "unfinished"),
                "reason": finished.get("reason"),
                "rollback_s": round(float(done["seconds"]), 1),
                "healthy_after": gate.get("verdict") == "pass" if gate else None,
                "journal": entry.get("journal"),
            }
        )
    return found


def _stats(requests: Sequence[Request]) -> dict[str, Any]:
    answered = [r.latency for r in requests if r.latency is not None]
    return {
        "requests": len(requests),
        "answered": len(answered),
        "shed": sum(r.outcome == "shed" for r in requests),
        "failed": sum(r.outcome in ("failed", "dropped") for r in requests),
        "p50_ms": _percentile_ms(answered, 50),
        "p99_ms": _percentile_ms(answered, 99),
    }


def _percentile_ms(values: Sequence[float], q: float) -> float | None:
    seconds = percentile(values, q)
    return None if seconds is None else round(seconds * 1000, 1)


def _seconds(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else round(end - start, 1)


def _unix(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def render(numbers: dict[str, Any]) -> str:
    """The terminal summary."""

    def ms(value: Any) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    lines = [
        f"models: {numbers['models']}",
        f"calibration: unloaded p99 {numbers['calibration']['unloaded_p99_seconds'] * 1000:.0f} ms, sustains "
        f"{numbers['calibration']['sustainable_rps']:.0f} rps; phases "
        + ", ".join(f"{p['name']} {p['offered_rps']:.0f} rps x {p['seconds']:.0f} s" for p in numbers["phases"])
        + _capped(numbers["calibration"]),
        f"requests: {numbers['requests_total']} sent, {numbers['requests_answered']} answered "
        f"({numbers['answered_from_table']} from the answer table), {numbers['requests_shed']} shed with Retry-After, "
        f"{numbers['requests_failed']} failed (5xx, timeouts, resets)",
    ]
    if numbers.get("generator_behind"):
        lines.append(
            f"  the load generator fell behind: send lag p99 {numbers['generator_lag_p99_ms']:.0f} ms, over the "
            f"{LAG_BAR_MS:g} ms bar; the latencies below measured it as well as the service (one machine)"
        )
    if numbers["balancer_errors"]:
        causes = ", ".join(f"{count} x {cause}" for cause, count in sorted(numbers["balancer_errors"].items()))
        lines.append(f"  the load balancer's own errors: {causes}")
    for name in ("before", "during", "during_mitigated", "after", "during_upgrade"):
        if name in numbers["windows"]:
            window = numbers["windows"][name]
            lines.append(
                f"  {name:17} p50 {ms(window['p50_ms']):>8}  p99 {ms(window['p99_ms']):>8}  "
                f"{window['answered']} answered, {window['shed']} shed, {window['failed']} failed"
            )
    if numbers["autopilot"]:
        lines.append(
            f"alert: first fired {numbers['time_to_detect_s']} s after the surge began (bound: k x (for + range) "
            f"+ one scrape + one evaluation = {numbers['detect_bound_s']} s, k = {numbers['time_scale_k']:g}): "
            f"{numbers['first_alerts']}"
        )
        lines.append(
            f"emergency-stop: {numbers['mitigation_status']}, mitigation verified {numbers['time_to_mitigate_s']} s "
            f"after the alert; stages {numbers['mitigation_stages_s']}"
        )
        for rollback in numbers["rollbacks"]:
            healthy = {True: "verified healthy", False: "NOT verified healthy", None: "no health gate"}
            lines.append(
                f"{rollback['runbook']}: {rollback['status']} in {rollback['rollback_s']} s after its failure, "
                f"{healthy[rollback['healthy_after']]} after ({rollback['reason']})"
            )
        ratio = numbers["mitigated_p99_over_before"]
        if ratio is not None:
            lines.append(f"after mitigation, admitted p99 is {ratio:.2f}x the pre-surge p99 (goal <= 3x)")
        upgrade = numbers["upgrade"]
        if upgrade is not None:
            window = numbers["windows"]["during_upgrade"]
            slo = {True: "within the SLO", False: "NOT within the SLO", None: "no answers to judge"}
            ended = "unfinished" if upgrade["seconds"] is None else f"exit {upgrade['exit']} in {upgrade['seconds']} s"
            lines.append(
                f"rolling-upgrade: {ended}; the full pool's Ready nodes "
                f"{upgrade['nodes_before']} -> {upgrade['nodes_after']}; meanwhile p99 {ms(window['p99_ms'])} "
                f"({slo[upgrade['within_slo']]}), {window['failed']} of {window['requests']} requests failed"
            )
    else:
        lines.append(f"no autopilot: alerts fired {numbers['first_alerts']} and nobody acted")
    effect = numbers["fault_effect"]
    if effect is not None:
        lines.append(_fault_line(numbers["fault"], effect))
    for entry in numbers["runbooks"]:
        lines.append(f"  {entry['runbook']}: exit {entry.get('exit')}, journal {entry.get('journal')}")
    lines.append(numbers["one_machine"])
    return "\n".join(lines)


def _capped(calibration: dict[str, Any]) -> str:
    capped = calibration.get("surge_capped_from_rps")
    return "" if capped is None else f" (the surge capped from {capped:.0f} rps: more than the generator offers)"


def _fault_line(fault: str, effect: dict[str, Any]) -> str:
    rest = effect["rest_of_surge"]
    p99 = "-" if rest["p99_ms"] is None else f"{rest['p99_ms']:.0f} ms"
    slo = {True: "within the SLO", False: "NOT within the SLO", None: "no answers to judge"}[effect["within_slo_after"]]
    line = (
        f"fault {fault} at {effect['at_s']} s: Ready replicas {effect['ready_before']} -> {effect['ready_after']}; "
        f"the rest of the surge: p99 {p99} ({slo}), {rest['answered']} answered, {rest['shed']} shed, "
        f"{rest['failed']} failed"
    )
    if "slowed_share" in effect:
        line += (
            f"; the slowed pod {effect['slowed_pod']} got {effect['slowed_share']:.0%} of the requests after it "
            f"(an even share, as round robin gives, would be {effect['even_share']:.0%})"
        )
    if "lost_share" in effect:
        line += (
            f"; it took {effect['lost_share']:.0%} of the fleet: a fleet sized by the headroom rule (1.3x its expected "
            f"peak) keeps {effect['left_of_expected_peak']:.0%} of that peak"
        )
        if effect["missing_of_expected_peak"] > 0:
            line += f", {effect['missing_of_expected_peak']:.0%} short of it"
    return line


def write_json(numbers: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(numbers, indent=2, default=str) + "\n")


def plot(timeline: Timeline, numbers: dict[str, Any], path: Path) -> None:
    """p50/p99, offered vs answered rate, sheds and errors over time, each runbook step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    requests = list(timeline.requests)
    end = max((r.at for r in requests), default=0.0)
    seconds = list(range(math.ceil(end) + 1))
    buckets: list[list[Request]] = [[] for _ in seconds]
    for r in requests:
        buckets[min(len(seconds) - 1, int(r.at))].append(r)
    p50 = [_percentile_ms([r.latency for r in b if r.latency is not None], 50) for b in buckets]
    p99 = [_percentile_ms([r.latency for r in b if r.latency is not None], 99) for b in buckets]
    offered = [len(b) for b in buckets]
    answered = [sum(r.outcome == "answered" for r in b) for b in buckets]
    shed = [sum(r.outcome == "shed" for r in b) for b in buckets]
    failed = [sum(r.outcome in ("failed", "dropped") for r in b) for b in buckets]

    figure, (latency, rate) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    latency.plot(seconds, [v if v is not None else float("nan") for v in p50], label="p50")
    latency.plot(seconds, [v if v is not None else float("nan") for v in p99], label="p99")
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (from scheduled send)")
    rate.plot(seconds, offered, label="offered")
    rate.plot(seconds, answered, label="answered")
    rate.plot(seconds, shed, label="shed (429/503 + Retry-After)")
    rate.plot(seconds, failed, label="failed")
    rate.set_ylabel("requests per second")
    rate.set_xlabel("seconds since the traffic began")
    for axis in (latency, rate):
        for phase_start in (timeline.phase_start("surge"), timeline.phase_start("after")):
            axis.axvline(phase_start - timeline.started, color="grey", linestyle=":")
        for name, at in timeline.alerts.items():
            axis.axvline(at - timeline.started, color="red", alpha=0.4)
            if axis is latency:
                axis.annotate(name, (at - timeline.started, 1), rotation=90, fontsize=7, color="red")
        for step_at, step in _step_marks(timeline):
            axis.axvline(step_at, color="green", alpha=0.3)
            if axis is rate:
                axis.annotate(step, (step_at, 0), rotation=90, fontsize=7, color="green")
        axis.legend(loc="upper left", fontsize=8)
    title = "with autopilot" if numbers["autopilot"] else "no autopilot"
    figure.suptitle(f"peakguard drill surge ({title}): {numbers['phases'][1]['offered_rps']:.0f} rps surge")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _step_marks(timeline: Timeline) -> list[tuple[float, str]]:
    marks = []
    for entry in timeline.runbooks:
        if not entry.get("journal"):
            continue
        for line in Path(entry["journal"]).read_text().splitlines():
            record = json.loads(line)
            if record["event"] in ("step_done", "run_verified", "rollback_started", "run_finished"):
                label = f"{entry['runbook']}: {record.get('step') or record['event']}"
                marks.append((_unix(record["at"]) - timeline.started, label))
    return marks
