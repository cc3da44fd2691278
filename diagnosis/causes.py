"""The verdict: where the time goes, the likely bottleneck, and the runbook for it.

A recording is read over two windows: `recent` (what is wrong now; default the last third) and
`baseline` (the first third: how the same pods did before). Each known cause is a check that either
finds evidence (a score and the figures behind it), finds none, or cannot run for want of a
metric (said so, by name). Causes specific to a pod or a node rank above overload, which is what
is left when demand, not a part of the fleet, explains the queues: a lost or slow replica
overloads its peers too, and the fix is for it, not for them.

- `node-not-ready`: a node holding a serving pod stopped reporting Ready (kube-state-metrics); its
  pods left the balancer. Without kube-state-metrics a pod that stopped being scraped is
  `replica-lost` (node and process cannot be told apart then).
- `slow-layer`: on one pod one layer takes several times its peers' time, relative to the pod's own
  other layers (a throttled or faulty GPU, a bad kernel), so a pod given smaller or larger batches
  is not called slow for it.
- `cold-replica`: a pod created in the recording serves with every layer slower than its warm peers
  (the seed's cold nodes ran at 18% of warm ones); `slow-replica` is the same on an old pod.
- `gpu-memory`: a pod's GPU memory is over 90% (DCGM; absent on CPU).
- `overload`: pods holding most of the requests shed or queue while the layers run at their usual
  speed, or demand grew enough to explain slower layers.

The verdict is `cause` (the first of the ranked findings), `healthy` (the SLO holds and every
check ran and found nothing; GPU memory is checked only where a DCGM exporter reports it), or
`inconclusive` (the SLO is missed with no cause found, too few answers for a p99, or a check could
not run for want of its metrics): never a guess.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from diagnosis.readings import STAGES, FleetReading, PodReading, Window, read
from diagnosis.series import Recording

__all__ = ["CAUSES", "Diagnosis", "Finding", "diagnose"]

Verdict = Literal["cause", "healthy", "inconclusive"]


@dataclass(frozen=True)
class Cause:
    runbook: str | None
    """The peakguard runbook for it (`peakguard runbook list`), None where none automates the fix."""
    action: str


CAUSES: Mapping[str, Cause] = {
    "node-not-ready": Cause("rolling-upgrade", "replace the node (the NodeNotReady alert's runbook); if the "
                            "remaining replicas shed, emergency-stop restores capacity meanwhile"),
    "replica-lost": Cause("rebuild", "a serving pod stopped answering: find why it left (kubectl describe pod), "
                          "rebuild returns the fleet to its declared shape"),
    "slow-layer": Cause(None, "no runbook replaces one node yet: cordon the pod's node (kubectl cordon NODE) and "
                        "delete the pod so it is placed on a healthy one; its GPU is suspect"),
    "cold-replica": Cause("predictive-scale", "capacity arrived cold: be warm before the wave (predictive-scale "
                          "raises the minimum ahead of the forecast; warm pools keep nodes ready)"),
    "slow-replica": Cause(None, "one old pod is slower than its peers in every layer: cordon its node and delete "
                          "the pod (a throttled GPU or a noisy neighbour)"),
    "gpu-memory": Cause("emergency-stop", "a GPU is nearly out of memory (the seed's OOMs): degrade to the light "
                        "model and INT8, which halve the memory a batch needs"),
    "overload": Cause("emergency-stop", "demand is over capacity: scale out, degrade to the light model and INT8, "
                      "shed simple queries"),
}  # fmt: skip
"""Every cause the checks can name, with its runbook."""

CAUSE_SCORE = 0.5
"""A finding under this is a note (a NotReady node that held no serving pod), never the cause."""
SLOW_LAYER_RATIO = 3.0
"""A layer this many times its peers' time, relative to the pod's other layers (so that a pod given
smaller or larger batches than its peers is judged on the layer's share, not its batch), is slow."""
COLD_RATIO = 2.0
"""A pod whose layers are (as a median) this many times its warm peers' is slow in every layer."""
MIN_EXCESS_SECONDS = 0.005
"""Slower by less than this per batch is noise, whatever the ratio."""
SHED_SHARE = 0.01
QUEUE_SHARE = 0.4
"""A pod whose requests spend this share of their time queued is behind."""
LAYERS_AS_USUAL = 1.5
"""Overload needs the layers' time per request no more than this against the baseline: more demand,
not a slower fleet, unless demand grew `DEMAND_GROWTH` times or more."""
DEMAND_GROWTH = 2.0
"""Requests per second this many times the baseline's explain slower layers too: a surge makes
whatever shares the model's cores (tokenising, the HTTP server refusing the excess, on one lab
machine the load itself) take their time. In the lab's overload recordings (tests/diagnosis/recordings,
10-23x the baseline's rate) a request's layers took 1.15-2.1x their baseline time. A fleet slower
everywhere without such growth (a bad model version, throttled GPUs) is not overload."""


@dataclass(frozen=True)
class Finding:
    cause: str
    score: float
    """0-1: how strongly the figures say so; causes rank by it."""
    summary: str
    figures: Mapping[str, Any] = field(default_factory=dict)

    @property
    def runbook(self) -> str | None:
        return CAUSES[self.cause].runbook

    @property
    def action(self) -> str:
        return CAUSES[self.cause].action


@dataclass(frozen=True)
class Diagnosis:
    verdict: Verdict
    reason: str
    """One line: the cause, why healthy, or what was missing."""
    findings: tuple[Finding, ...]
    """Ranked, the likeliest first."""
    unchecked: Mapping[str, str]
    """Check -> the metric it lacked."""
    symptoms: tuple[str, ...]
    """What is wrong from the clients' side (SLO, sheds, errors), empty when nothing is."""
    time: Mapping[str, Any]
    """Where a request's time goes in the recent window: stages and the slowest layers."""
    recent: Window
    baseline: Window
    fleet: Mapping[str, Any]

    @property
    def cause(self) -> Finding | None:
        return self.findings[0] if self.verdict == "cause" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "cause": None if self.cause is None else self.cause.cause,
            "runbook": None if self.cause is None else self.cause.runbook,
            "findings": [asdict(f) | {"runbook": f.runbook, "action": f.action} for f in self.findings],
            "unchecked": dict(self.unchecked),
            "symptoms": list(self.symptoms),
            "time": dict(self.time),
            "recent": asdict(self.recent),
            "baseline": asdict(self.baseline),
            "fleet": dict(self.fleet),
        }


def diagnose(recording: Recording, *, recent: Window | None = None, baseline: Window | None = None) -> Diagnosis:
    """The diagnosis of `recording`: by default its last third judged against its first."""
    third = (recording.end - recording.start) / 3
    recent = recent or Window(recording.end - third, recording.end)
    baseline = baseline or Window(recording.start, recording.start + third)
    now, before = read(recording, recent), read(recording, baseline)
    findings: list[Finding] = []
    unchecked: dict[str, str] = {}
    blind = False
    for check, required in ((_lost_nodes, True), (_slow_layers, True), (_slow_replicas, True), (_gpu_memory, False),
                            (_overload, True)):  # fmt: skip
        result = check(recording, now, before)
        if isinstance(result, str):
            unchecked[check.__name__.strip("_").replace("_", "-")] = result
            blind = blind or required
        else:
            findings.extend(result)
    findings.sort(key=lambda f: -f.score)
    symptoms = _symptoms(now, recording.slo_seconds)
    fleet = _fleet_figures(now, recording.slo_seconds) | {"env": recording.notes.get("env")}
    time = _where_time_goes(now)
    if findings and findings[0].score >= CAUSE_SCORE:
        top = findings[0]
        return Diagnosis("cause", f"{top.cause}: {top.summary}", tuple(findings), unchecked, symptoms, time, recent,
                         baseline, fleet)  # fmt: skip
    if now.total == 0:
        return Diagnosis("inconclusive", "no responses in the recent window: is traffic reaching the service and is "
                         "Prometheus scraping its pods?" + _missing(now), tuple(findings), unchecked, symptoms, time,
                         recent, baseline, fleet)  # fmt: skip
    if now.p99_seconds is None:
        answered = now.responses.get("answered", 0)
        return Diagnosis("inconclusive", f"too few answers for a p99 in the recent window ({answered:.0f})"
                         + _missing(now), tuple(findings), unchecked, symptoms, time, recent, baseline,
                         fleet)  # fmt: skip
    if symptoms:
        what = "; ".join(symptoms)
        return Diagnosis("inconclusive", f"{what}, and no known cause matches" + _missing(now, unchecked),
                         tuple(findings), unchecked, symptoms, time, recent, baseline, fleet)  # fmt: skip
    if blind:
        why = "; ".join(f"{name} needs {metric}" for name, metric in unchecked.items())
        return Diagnosis("inconclusive", f"within the SLO, but a cause could hide where it could not look: {why}",
                         tuple(findings), unchecked, symptoms, time, recent, baseline, fleet)  # fmt: skip
    optional = f" (optional, not checked: {', '.join(unchecked)})" if unchecked else ""
    return Diagnosis("healthy", "within the SLO, and no check found a cause" + optional, tuple(findings), unchecked,
                     symptoms, time, recent, baseline, fleet)  # fmt: skip


def _missing(now: FleetReading, unchecked: Mapping[str, str] | None = None) -> str:
    parts = []
    if now.missing:
        parts.append(f"missing series: {', '.join(now.missing)}")
    if unchecked:
        parts.append("not checked: " + ", ".join(unchecked))
    return f" ({'; '.join(parts)})" if parts else ""


# --- checks: each returns its findings, or the metric it lacked --------------------------------------


def _lost_nodes(recording: Recording, now: FleetReading, before: FleetReading) -> list[Finding] | str:
    if not recording.has("node_ready") or not recording.has("pod_node"):
        return _lost_replicas(recording, now, before)
    findings = []
    nodes: dict[str, list[PodReading]] = {}
    for pod in now.pods.values():
        if pod.node is not None and pod.node_ready is not None and pod.node_ready < 0.5:
            nodes.setdefault(pod.node, []).append(pod)
    on_lost_nodes = {pod.pod for pods in nodes.values() for pod in pods}
    for node, pods in sorted(nodes.items()):
        serving_before = [p.pod for p in pods if before.pods.get(p.pod) and before.pods[p.pod].total > 0]
        gone = [p.pod for p in pods if p.pod in serving_before and p.last_seen is not None
                and p.last_seen < now.window.end - 2 * recording.step]  # fmt: skip
        since = _first_not_ready(recording, node, now.window)
        if not serving_before:
            findings.append(Finding("node-not-ready", 0.3, f"node {node} is NotReady; it held no pod serving before",
                                    {"node": node, "not_ready_since": since}))  # fmt: skip
            continue
        peers = _peers_rate(now, before, exclude=set(serving_before))
        findings.append(Finding(
            "node-not-ready", 0.95,
            f"node {node} stopped reporting Ready{_since(since, now.window)}; {', '.join(serving_before)} on it "
            f"{'left the balancer' if gone else 'is on it'}{peers['text']}",
            {"node": node, "not_ready_since": since, "pods": serving_before, "pods_gone": gone, **peers["figures"]},
        ))  # fmt: skip
    others = _lost_replicas(recording, now, before, exclude=on_lost_nodes)
    return findings + (others if isinstance(others, list) else [])


def _lost_replicas(
    recording: Recording, now: FleetReading, before: FleetReading, *, exclude: frozenset[str] | set[str] = frozenset()
) -> list[Finding] | str:
    """A pod that served in the baseline and stopped being scraped while others still are (a killed
    process, an evicted pod; without kube-state-metrics, a lost node looks the same)."""
    if not recording.has("responses"):
        return "responses (the service's peakguard_request_seconds)"
    findings = []
    still = [p for p in now.pods.values() if p.scraped and p.last_seen is not None
             and p.last_seen >= now.window.end - 2 * recording.step]  # fmt: skip
    blind = not recording.has("node_ready")
    for pod in now.pods.values():
        was = before.pods.get(pod.pod)
        if was is None or was.total == 0 or not still or pod.pod in exclude:
            continue
        if pod.listed is False:
            continue  # deleted on purpose (scale-in, a rollout): kube-state-metrics no longer lists it
        if pod.last_seen is not None and pod.last_seen < now.window.end - 2 * recording.step:
            peers = _peers_rate(now, before, exclude={pod.pod})
            findings.append(Finding(
                "replica-lost", 0.8,
                f"{pod.pod} served in the baseline and stopped being scraped{_since(pod.last_seen, now.window)}"
                f"{peers['text']}" + (" (kube-state-metrics absent: its node's state is unknown)" if blind else
                                      "; its node stayed Ready"),
                {"pod": pod.pod, "last_seen": pod.last_seen, **peers["figures"]},
            ))  # fmt: skip
    return findings


def _peers_rate(now: FleetReading, before: FleetReading, *, exclude: set[str]) -> dict[str, Any]:
    rate_now = sum(p.total for p in now.pods.values() if p.pod not in exclude) / max(now.window.seconds, 1e-9)
    rate_before = sum(p.total for p in before.pods.values() if p.pod not in exclude) / max(before.window.seconds, 1e-9)
    text = f"; the other pods' requests went from {rate_before:.1f}/s to {rate_now:.1f}/s" if rate_before else ""
    return {"text": text, "figures": {"peers_rps_before": round(rate_before, 2), "peers_rps_now": round(rate_now, 2)}}


def _first_not_ready(recording: Recording, node: str, window: Window) -> float | None:
    for s in recording.of("node_ready"):
        if s.labels.get("node") == node:
            ready_until = None
            for t, value in s.samples:
                if t > window.end:
                    break
                if value >= 0.5:
                    ready_until = None
                elif ready_until is None:
                    ready_until = t
            return ready_until
    return None


def _since(when: float | None, window: Window) -> str:
    return "" if when is None else f" {window.end - when:.0f} s before the window's end"


def _layer_ratios(pod: PodReading, reference: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: seconds / reference[key] for key, seconds in pod.layer_seconds.items()
            if reference.get(key, 0) > 0}  # fmt: skip


def _peer_layers(
    now: FleetReading, pod: PodReading, *, warm_after: float | None = None
) -> dict[tuple[str, str], float]:
    """Each layer's median per-batch time on the other serving pods (with `warm_after`, only those
    born before it)."""
    found: dict[tuple[str, str], list[float]] = {}
    for other in now.pods.values():
        if other.pod == pod.pod or not other.layer_seconds:
            continue
        if warm_after is not None and _young(other, warm_after):
            continue
        for key, seconds in other.layer_seconds.items():
            found.setdefault(key, []).append(seconds)
    return {key: statistics.median(values) for key, values in found.items()}


def _young(pod: PodReading, born_after: float) -> bool:
    """Created (or, lacking kube-state-metrics, first scraped) after `born_after`."""
    born = pod.created if pod.created is not None else pod.first_seen
    return born is not None and born > born_after


def _born_after(recording: Recording) -> float:
    """A pod born after this started inside the recording (its first scrape can lag a step)."""
    return recording.start + 1.5 * recording.step


def _slow_layers(recording: Recording, now: FleetReading, before: FleetReading) -> list[Finding] | str:
    if not recording.has("layer_sum") or not recording.has("layer_count"):
        return "layer_sum/layer_count (peakguard_layer_seconds)"
    found = {f.figures["pod"]: f for f in _slow_layers_in(now, before, span="")}
    # A slow layer can open the pod's breaker at once: the recent window then holds only its light
    # model, which no peer runs to compare with. The span since the baseline still holds the
    # moment its full model slowed.
    since = read(recording, Window(before.window.end, now.window.end))
    for finding in _slow_layers_in(since, before, span=" since the baseline"):
        found.setdefault(finding.figures["pod"], finding)
    return list(found.values())


def _slow_layers_in(now: FleetReading, before: FleetReading, *, span: str) -> list[Finding]:
    findings = []
    for pod in now.serving:
        peers = _peer_layers(now, pod)
        reference = peers or dict(before.pods[pod.pod].layer_seconds if pod.pod in before.pods else {})
        ratios = _layer_ratios(pod, reference)
        if len(ratios) < 2:
            continue
        key = max(ratios, key=ratios.__getitem__)
        others = statistics.median(r for k, r in ratios.items() if k != key)
        relative = ratios[key] / others if others > 0 else 0.0
        excess = pod.layer_seconds[key] - reference[key] * others
        if relative >= SLOW_LAYER_RATIO and excess >= MIN_EXCESS_SECONDS:
            model, layer = key
            findings.append(Finding(
                "slow-layer", min(0.99, 0.9 + relative / 1000),
                f"on {pod.pod} the {model} model's {layer} takes {pod.layer_seconds[key] * 1000:.0f} ms a batch"
                f"{span} against "
                f"{reference[key] * 1000:.2g} ms on {'its peers' if peers else 'itself before'} "
                f"({relative:.1f}x, its other layers {others:.2f}x)",
                {"pod": pod.pod, "node": pod.node, "model": model, "layer": layer, "ratio": round(relative, 2),
                 "seconds": pod.layer_seconds[key], "reference_seconds": reference[key],
                 "other_layers_ratio": round(others, 2), "batches": pod.layer_batches.get(key),
                 "window": [now.window.start, now.window.end]},
            ))  # fmt: skip
    return findings


def _slow_replicas(recording: Recording, now: FleetReading, before: FleetReading) -> list[Finding] | str:
    if not recording.has("layer_sum") or not recording.has("layer_count"):
        return "layer_sum/layer_count (peakguard_layer_seconds)"
    born_after = _born_after(recording)
    findings = []
    for pod in now.serving:
        reference = _peer_layers(now, pod, warm_after=born_after)
        ratios = _layer_ratios(pod, reference)
        if len(ratios) < 2:
            continue
        typical = statistics.median(ratios.values())
        excess = sum(pod.layer_seconds[k] - reference[k] for k in ratios)
        if typical < COLD_RATIO or excess < MIN_EXCESS_SECONDS:
            continue
        young = _young(pod, born_after)
        born = pod.created if pod.created is not None else pod.first_seen
        age = "" if born is None else f", {now.window.end - born:.0f} s old"
        findings.append(Finding(
            "cold-replica" if young else "slow-replica", 0.85 if young else 0.82,
            f"{pod.pod}{age}: every layer {typical:.1f}x its warm peers' time a batch "
            f"({pod.answered / max(now.window.seconds, 1e-9):.1f} answers/s against the fleet's "
            f"{_per_pod_rate(now, exclude=pod.pod):.1f} a pod)",
            {"pod": pod.pod, "node": pod.node, "ratio": round(typical, 2), "created": pod.created,
             "first_seen": pod.first_seen, "young": young},
        ))  # fmt: skip
    return findings


def _per_pod_rate(now: FleetReading, *, exclude: str) -> float:
    others = [p for p in now.serving if p.pod != exclude]
    return sum(p.answered for p in others) / len(others) / max(now.window.seconds, 1e-9) if others else 0.0


def _gpu_memory(recording: Recording, now: FleetReading, before: FleetReading) -> list[Finding] | str:
    if not recording.has("gpu_memory"):
        return "gpu_memory (DCGM_FI_DEV_FB_USED/FREE: a GPU node with NVIDIA's DCGM exporter)"
    return [
        Finding("gpu-memory", 0.8, f"{pod.pod}'s GPU memory reached {pod.gpu_memory:.0%}",
                {"pod": pod.pod, "node": pod.node, "share": pod.gpu_memory})
        for pod in now.pods.values() if pod.gpu_memory is not None and pod.gpu_memory >= 0.9
    ]  # fmt: skip


def _overload(recording: Recording, now: FleetReading, before: FleetReading) -> list[Finding] | str:
    if not recording.has("stage_sum") or not recording.has("stage_count"):
        return "stage_sum/stage_count (peakguard_stage_seconds)"
    serving = now.serving
    if not serving:
        return []
    behind = [p for p in serving if (p.shed_share or 0) >= SHED_SHARE or _queued(p) >= QUEUE_SHARE]
    # Weighed by requests, not pods: a balancer sends more to a pod that sheds (a refusal is quick),
    # so one overloaded pod can hold most of the demand while its peer queues just under the bar.
    held = sum(p.total for p in behind) / sum(p.total for p in serving)
    if held <= 0.5:
        return []
    layers_now = _fleet_layers(now)
    layers_before = _fleet_layers(before)
    common = [layers_now[k] / layers_before[k] for k in layers_now if layers_before.get(k, 0) > 0]
    slower = statistics.median(common) if common else None
    rate_now = now.total / max(now.window.seconds, 1e-9)
    rate_before = before.total / max(before.window.seconds, 1e-9)
    surged = rate_before > 0 and rate_now >= DEMAND_GROWTH * rate_before
    if slower is not None and slower > LAYERS_AS_USUAL and not surged:
        return []
    shed = now.share("shed") or 0.0
    queued = _queue_share(now)
    growth = f", {rate_now / rate_before:.1f}x the baseline's {rate_before:.1f}/s" if rate_before > 0 else ""
    score = 0.5 + 0.29 * min(1.0, shed / 0.2 + (queued or 0.0) / 2)
    return [Finding(
        "overload", round(score, 3),
        f"{len(behind)} of {len(serving)} pods, with {held:.0%} of the requests, shed or queue: {shed:.1%} of "
        f"requests shed, "
        f"{(queued or 0):.0%} of a request's time queued, at {rate_now:.1f} requests/s{growth}; the layers run "
        + ("at their baseline speed" if slower is None or slower <= 1.2 else f"{slower:.2f}x their baseline time"),
        {"shed_share": round(shed, 4), "queue_share": None if queued is None else round(queued, 3),
         "rps": round(rate_now, 2), "baseline_rps": round(rate_before, 2),
         "layers_vs_baseline": None if slower is None else round(slower, 2), "pods_behind": [p.pod for p in behind]},
    )]  # fmt: skip


def _queued(pod: PodReading) -> float:
    """The share of a request's time spent queued on `pod` (0 without stage figures)."""
    total = pod.request_seconds
    return pod.stage_seconds.get("queue", 0.0) / total if total else 0.0


def _fleet_layers(reading: FleetReading) -> dict[tuple[str, str], float]:
    """Each layer's median time per request (a batch's time over its mean size): under overload the
    batches grow and a batch takes longer, while each request in it takes less."""
    found: dict[tuple[str, str], list[float]] = {}
    for pod in reading.serving:
        size = pod.batch_size or 1.0
        for key, seconds in pod.layer_seconds.items():
            found.setdefault(key, []).append(seconds / size)
    return {key: statistics.median(values) for key, values in found.items()}


def _queue_share(reading: FleetReading) -> float | None:
    weighted = [(p.answered, p.stage_seconds.get("queue", 0.0), p.request_seconds) for p in reading.serving
                if p.request_seconds]  # fmt: skip
    total = sum(w for w, _, _ in weighted)
    if not total:
        return None
    return sum(w * q for w, q, _ in weighted) / sum(w * r for w, _, r in weighted if r)


# --- what the clients see, and where the time goes ---------------------------------------------------


def _symptoms(now: FleetReading, slo: float | None) -> tuple[str, ...]:
    found = []
    if slo is not None and now.p99_seconds is not None and now.p99_seconds > slo:
        found.append(f"p99 {now.p99_seconds * 1000:.0f} ms over the {slo * 1000:.0f} ms SLO")
    if (shed := now.share("shed")) is not None and shed > SHED_SHARE:
        found.append(f"{shed:.1%} shed")
    if (errors := now.share("server_error")) is not None and errors > 0.01:
        found.append(f"{errors:.1%} server errors")
    return tuple(found)


def _fleet_figures(now: FleetReading, slo: float | None) -> dict[str, Any]:
    seconds = max(now.window.seconds, 1e-9)
    return {
        "pods_serving": len(now.serving),
        "pods": sorted(now.pods),
        "requests_per_second": round(now.total / seconds, 2),
        "answered_per_second": round(now.responses.get("answered", 0.0) / seconds, 2),
        "shed_share": now.share("shed"),
        "server_error_share": now.share("server_error"),
        "p99_ms": None if now.p99_seconds is None else round(now.p99_seconds * 1000, 1),
        "slo_ms": None if slo is None else round(slo * 1000, 1),
        "missing_series": list(now.missing),
    }


def _where_time_goes(now: FleetReading) -> dict[str, Any]:
    """A request's mean time by stage (weighted by each pod's answers), and the slowest layers by pod."""
    pods = [p for p in now.serving if p.request_seconds]
    weight = sum(p.answered for p in pods)
    stages: dict[str, float] = {}
    if weight:
        for stage in STAGES:
            stages[stage] = sum(p.answered * p.stage_seconds.get(stage, 0.0) for p in pods) / weight
    total = sum(stages.values())
    layers = sorted(((seconds, pod.pod, model, layer) for pod in now.serving
                     for (model, layer), seconds in pod.layer_seconds.items()), reverse=True)[:5]  # fmt: skip
    return {
        "stages_ms": {stage: round(seconds * 1000, 2) for stage, seconds in stages.items()},
        "stage_shares": {stage: round(seconds / total, 3) for stage, seconds in stages.items()} if total else {},
        "slowest_layers": [
            {"pod": pod, "model": model, "layer": layer, "ms_per_batch": round(seconds * 1000, 2)}
            for seconds, pod, model, layer in layers
        ],
        "pods": {
            p.pod: {
                "answered_per_second": round(p.answered / max(now.window.seconds, 1e-9), 2),
                "shed_share": p.shed_share,
                "p99_ms": None if p.p99_seconds is None else round(p.p99_seconds * 1000, 1),
                "batch_size": p.batch_size,
                "queue_depth": p.queue_depth,
                "breaker_open": p.breaker_open,
                "node": p.node,
                "stages_ms": {k: round(v * 1000, 2) for k, v in p.stage_seconds.items()},
            }
            for p in now.pods.values()
        },
    }
