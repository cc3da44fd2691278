"""The incident drill: the seed's 8x surge against the real model service in the lab, detected by
the cluster's own alert rules and mitigated by peakguard's runbooks as an on-call engineer runs them.

One run, in order:
1. models: `--artifacts` (trained), or quick ones made once and cached (model_service.quick_models);
2. calibration: one serving process measures its unloaded p99 and the rate it sustains (p99 within
   3x unloaded, the benchmark's definition); the lab's SLO is that 3x, admission's budget 2x, and
   "8x" is eight times the sustainable rate;
3. the lab for the environment (lab.lab), its stack config's SLO set to the measured one, and a real
   Prometheus (lab.prometheus) scraping its pods and evaluating the cluster's alert rules with every
   window scaled by k;
4. open-loop traffic of real banking77 queries through the lab's load balancer: steady at half the
   sustainable rate, the surge at 8x within a second, held, then back;
5. the autopilot: when an alert whose runbook is emergency-stop fires, `peakguard runbook run
   emergency-stop --yes` runs (the same CLI, engine, lock and journal as on call); once the surge
   is over and nothing has fired for a while, `rebuild` takes the fleet back to normal mode, then
   `rolling-upgrade` moves the full pool's nodes to the next AMI release under the steady load
   (the lab's GPU nodes are the EKS node groups' instances, played: lab.node_groups);
6. a fault, if asked for (lab.drill_faults: a killed replica, a lost node or zone, cold replicas,
   a runbook step that fails), at the moment it belongs to;
7. the report (lab.drill_report): what clients saw, when the alert fired, how long each stage of
   the mitigation took, the runbooks' journals, the scraped series per pod.

One machine is not a cluster: replicas are processes sharing these cores, so scaling out adds no
capacity here; degrading (light model, INT8, the answer table) does. The report says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diagnosis.series import Recording, record
from infra.config import ConfigError
from infra.facts import GENERATION_LABEL, HEADROOM, INSTANCE_TYPES, POOL_LABEL
from infra.offline import OfflineRun, find_project_dir, load_stack_file, run_offline
from lab.drill_faults import FAULTS, WHEN, inject
from lab.kube_api import ApiStatus
from lab.kube_state_metrics import KubeStateMetrics
from lab.lab import NAMESPACE, Lab, LabSettings
from lab.node_groups import NodeGroupDelays
from lab.prometheus import Firing, Prometheus
from model_service.benchmark import UNLOADED_RPS, sustainable_rate, unloaded_p99
from model_service.load_generator import Phase, Request, run_phases
from model_service.service_process import ServiceProcess
from runbooks.engine.run import sigterm_as_interrupt

__all__ = [
    "FAULTS",
    "FULL_DEPLOYMENT",
    "NEXT_RELEASE",
    "DrillError",
    "DrillSettings",
    "Prepared",
    "Timeline",
    "prepare",
    "run",
    "run_lab",
    "run_runbook",
]
Log = Callable[[str], None]

NEXT_RELEASE = "1.33.4-20251010"
"""The EKS-optimized AMI release the drill's stack config declares as the full pool's next
generation (`gpuPools.full.next.releaseVersion`; the dev cluster is 1.33), for rolling-upgrade."""
FULL_DEPLOYMENT = "model-service-full"
"""The full model's Deployment and HPA (infra/model_workload.py names both so)."""
_POD_THREADS = 1
"""Torch threads of every serving process, the calibration's too: replicas here share the
machine's cores (on a cluster each has its own device), and two full-model replicas with a thread
a core each oversubscribed them: the CI drill's fleet of two, back in normal mode, ran at p99 twice
the SLO calibrated on one two-thread process, and rebuild's health gate failed."""
_NODE_DELAYS = NodeGroupDelays(scaling=1.0, join=1.5, preflight=1.0, tick=0.5)
"""EKS's minutes as seconds (an update, a boot, the preflight checks): waited for, never skipped."""


class DrillError(RuntimeError):
    """The drill cannot run as asked; the message names the input and the fix."""


@dataclass(frozen=True)
class DrillSettings:
    data: Path
    """The public data sets (banking77/ inside): `$PEAKGUARD_DATA`, fetched by `.ci/fetch_data`."""
    out: Path
    """Where the run's journals, Prometheus data, logs and report go."""
    cache: Path
    """Where quick models are kept between runs."""
    artifacts: Path | None = None
    """Trained models to serve instead of quick ones."""
    env: str = "dev"
    steady_seconds: float = 30.0
    surge_seconds: float = 90.0
    after_seconds: float = 60.0
    after_max_seconds: float = 360.0
    """The after phase goes on, past `after_seconds`, while the autopilot still has work (rebuild
    needs traffic to compare its canary with), up to this."""
    surge_factor: float = 8.0
    """The surge, as a multiple of the sustainable rate (the seed's 8x)."""
    max_surge_rps: float | None = 300.0
    """A ceiling on the surge: the load generator and the lab's load balancer share one process, and a
    fast model's 8x can be more than they offer on 2 cores (offered 456 rps, they stalled for 30 s and
    3205 requests timed out; 300 rps held in the CI drill). The report says when it capped the surge."""
    steady_share: float = 0.5
    """Steady traffic, as a share of the sustainable rate."""
    time_scale: float = 0.05
    """k: every alert's `for:`, range and offset times this (2 minutes become 6 s)."""
    autopilot: bool = True
    fault: str | None = None
    seed: int = 0
    calibration_seconds: float = 4.0
    """Length of the unloaded run and of each step of the sustainable-rate search."""
    max_pods: int = 3
    """Pods the lab can run: the full model's replicas (its HPA maximum is all but one, so
    emergency-stop's plan fits) and rebuild's canary beside them; each beyond the first is a warm
    spare process until a pod takes it."""
    quiet_before_rebuild: float = 6.0
    """Seconds without a firing alert, after the surge, before `rebuild` runs."""
    project_dir: Path | None = None
    """The checkout holding Pulumi.yaml (the program the lab is seeded from): default, the current
    directory or a parent, else the checkout this code runs from."""
    rebuild: bool = True
    """With the autopilot: once the surge is over and calm, `rebuild` takes the fleet back to normal mode."""
    upgrade: bool = True
    """With the autopilot: after rebuild, `rolling-upgrade` to `NEXT_RELEASE` under the steady load."""
    window: float | None = None
    """The runbooks' `--window` (a gate's window lasts at least this and up to five times it, for the
    100 answers a p99 needs); default: long enough that five of them hold 150 steady-phase requests."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "project_dir", _project_dir(self.project_dir))
        # Absolute, since the pods, Prometheus and the runbooks each run with a working directory of their own.
        for name in ("data", "out", "cache", "artifacts"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).resolve())
        if self.fault is not None and self.fault not in FAULTS:
            raise DrillError(f"--fault {self.fault!r} is not one of {', '.join(FAULTS)}")
        if self.max_pods < 3:
            raise DrillError(
                f"max-pods must be at least 3 (the first replica, one the runbook adds, rebuild's canary), "
                f"got {self.max_pods}"
            )
        if self.fault == "bad-step" and not self.autopilot:
            raise DrillError("--fault bad-step breaks a step of the autopilot's rebuild: drop --no-autopilot")
        for name in ("steady_seconds", "surge_seconds", "after_seconds", "surge_factor", "time_scale"):
            if getattr(self, name) <= 0:
                raise DrillError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


def _project_dir(given: Path | None) -> Path:
    """Found before anything is measured: minutes of calibration must not end in "no Pulumi.yaml"."""
    tried = [given] if given is not None else [Path.cwd(), Path(__file__).resolve().parent]
    for start in tried:
        with contextlib.suppress(ConfigError):
            return find_project_dir(start)
    raise DrillError(
        f"no Pulumi.yaml in {' or '.join(str(p) for p in tried)} or their parents: run the drill from the peakguard "
        "checkout (the lab is seeded from its Pulumi program)"
    )


@dataclass
class Timeline:
    """What happened, as it happened; the report is computed from it."""

    started: float = 0.0
    """Unix time the traffic began."""
    phases: list[Phase] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    alerts: dict[str, float] = field(default_factory=dict)
    """Alert name -> Unix time it was first seen firing."""
    runbooks: list[dict[str, Any]] = field(default_factory=list)
    """Each runbook run: name, command, started, ended, exit status, journal, output."""
    events: list[tuple[float, str]] = field(default_factory=list)
    """(Unix time, what happened): faults, decisions, notes."""
    calibration: dict[str, Any] = field(default_factory=dict)
    models: str = ""
    recording: Recording | None = None
    """What `peakguard diagnose` reads (diagnosis.series), from Prometheus at the end; None if it could not answer."""
    upgrade: dict[str, Any] = field(default_factory=dict)
    """The full pool's Ready nodes by generation before and after rolling-upgrade."""
    fault: dict[str, Any] = field(default_factory=dict)
    """The fault's effect: when it struck (Unix time), Ready replicas just before and a few seconds after."""
    evaluation_interval: float = 1.0
    """Seconds between Prometheus's rule evaluations (and scrapes)."""
    history: dict[str, Any] = field(default_factory=dict)
    """The request history CloudWatch was given before the traffic (the predictive variant)."""
    capacity: list[tuple[float, int, int]] = field(default_factory=list)
    """(Unix time, Ready full-model replicas, the HPA's minimum), every half second from the traffic's start."""
    balancer_errors: dict[str, int] = field(default_factory=dict)
    """The load balancer's own error answers by status and cause, at the end."""
    autopilot_done: threading.Event = field(default_factory=threading.Event)
    """Set once the autopilot has nothing more to do (or there is none)."""
    traffic_over: threading.Event = field(default_factory=threading.Event)
    """Set when the load generator stopped: no runbook starts after it (its gates would judge silence)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, text: str) -> None:
        with self.lock:
            self.events.append((time.time(), text))

    def phase_start(self, name: str) -> float:
        offset = 0.0
        for phase in self.phases:
            if phase.name == name:
                return self.started + offset
            offset += phase.seconds
        raise KeyError(name)


@dataclass(frozen=True)
class Prepared:
    """What every run of the lab on this machine shares: the queries, the models, the calibration."""

    texts: list[str]
    models: Path
    models_line: str
    calibration: dict[str, Any]


AtStart = Callable[[Lab, "Timeline"], None]
"""Run in a thread of its own when the traffic starts (the predictive variant's CronJob cycle)."""


def run(settings: DrillSettings, *, log: Log = print) -> Timeline:
    """Run the drill; the timeline it leaves (lab.drill_report turns it into numbers)."""
    return run_lab(settings, prepare(settings, log=log), log=log)


def prepare(settings: DrillSettings, *, log: Log = print) -> Prepared:
    """The models (made or found) and this machine's calibration, once for every run that follows."""
    settings.out.mkdir(parents=True, exist_ok=True)
    texts = _queries(settings.data)
    models = _models(settings, log)
    line = _models_line(models)
    log(f"models: {line}")
    return Prepared(texts, models, line, _calibrate(models, texts, settings, log))


def run_lab(
    settings: DrillSettings, prepared: Prepared, *, log: Log = print, at_start: AtStart | None = None
) -> Timeline:
    """One run of the traffic against a fresh lab: its timeline."""
    timeline = Timeline()
    _clear_scratch(settings.out)
    texts, models = prepared.texts, prepared.models
    timeline.models = prepared.models_line
    timeline.calibration = dict(prepared.calibration)
    slo, budget = timeline.calibration["slo_seconds"], timeline.calibration["latency_budget_seconds"]
    sustainable = timeline.calibration["sustainable_rps"]
    surge_rps = settings.surge_factor * sustainable
    if settings.max_surge_rps is not None and surge_rps > settings.max_surge_rps:
        timeline.calibration["surge_capped_from_rps"] = surge_rps
        log(f"surge capped at {settings.max_surge_rps:.0f} rps ({settings.surge_factor:g}x would be {surge_rps:.0f})")
        surge_rps = settings.max_surge_rps
    timeline.phases = [
        Phase("steady", settings.steady_seconds, settings.steady_share * sustainable),
        Phase("surge", settings.surge_seconds, surge_rps),
        Phase("after", max(settings.after_seconds, settings.after_max_seconds), settings.steady_share * sustainable),
    ]
    assert settings.project_dir is not None  # resolved by DrillSettings
    program = _program(settings.project_dir, settings.env, slo, settings.max_pods)
    (full_pool,) = [pool for pool in program.config.gpu_pools if pool.name == "full"]
    lab_settings = LabSettings(
        artifacts=models,
        workdir=settings.out / "lab",
        env=settings.env,
        program=program,
        pod_settings={"latency_budget": budget, "chaos": settings.fault == "slow-layer"},
        max_pods=settings.max_pods,
        pod_threads=_POD_THREADS,
        # Warm spares for the pods emergency-stop and rebuild add and, with the upgrade, for the full
        # replicas rolling-upgrade moves to new nodes: on a cluster each loads on a node of its own.
        warm_spares=(settings.max_pods - 1) * (2 if settings.upgrade and settings.autopilot else 1),
        # The GPU nodes are the node groups' instances: blue serving one an AZ, the next generation
        # declared empty, as `pulumi up` leaves a stack whose config declares `next`.
        nodes="node-groups",
        incoming_image={"releaseVersion": NEXT_RELEASE},
        node_group_delays=_NODE_DELAYS,
        # emergency-stop plans min(replicas needed, what the node groups can grow to) and raises the
        # HPA to it: the node groups' maxSize (one replica a node) is the full replicas the lab can run,
        # shared by the AZs; each node has GPUs for every pod, the canary's too.
        node_group_max_size=math.ceil((settings.max_pods - 1) / max(1, len(full_pool.availability_zones))),
        gpus_per_node=full_pool.instance.gpus * settings.max_pods,
    )
    log(f"lab: standing up {settings.env} (SLO p99 {slo * 1000:.0f} ms, admission budget {budget * 1000:.0f} ms)")
    with (
        sigterm_as_interrupt(),
        Lab(lab_settings) as lab,
        KubeStateMetrics(lab.store) as kube_state,
        Prometheus(
            settings.out / "prometheus",
            env=settings.env,
            namespace=NAMESPACE,
            slo_seconds=slo,
            time_scale=settings.time_scale,
            static_jobs={"kube-state-metrics": kube_state.url.removeprefix("http://")},
        ) as prometheus,
    ):
        timeline.evaluation_interval = prometheus.interval
        stop = threading.Event()
        following = threading.Thread(target=_follow_pods, args=(lab, prometheus, stop), daemon=True)
        following.start()  # Prometheus scrapes the pods from the warm-up on
        _warm_up(lab, timeline, texts, settings, log)
        warm_up_errors = lab.proxy.errors()
        # Alerts are recorded as they fire even while the autopilot waits for a runbook.
        threads = [threading.Thread(target=_watch_loop, args=(prometheus, timeline, stop), daemon=True)]
        if settings.autopilot:
            threads.append(
                threading.Thread(target=_autopilot, args=(lab, prometheus, settings, timeline, stop, log), daemon=True)
            )
        else:
            timeline.autopilot_done.set()
        if settings.fault is not None and WHEN[settings.fault] != "before-rebuild":
            threads.append(threading.Thread(target=_fault, args=(lab, settings, timeline, stop, log), daemon=True))
        threads.append(threading.Thread(target=_sample_capacity, args=(lab, timeline, stop), daemon=True))
        if at_start is not None:
            threads.append(threading.Thread(target=at_start, args=(lab, timeline), daemon=True))
        # Every thread times itself from the traffic's start: set before any of them runs.
        timeline.started = time.time()
        for thread in threads:
            thread.start()
        progress = threading.Thread(target=_progress, args=(timeline, stop, log), daemon=True)
        try:
            progress.start()
            asyncio.run(
                run_phases(
                    f"{lab.proxy_url}/v1/intent",
                    timeline.phases,
                    texts,
                    record=timeline.requests.append,
                    seed=settings.seed,
                    timeout=10,
                    stop_when=lambda: _enough(timeline, settings),
                )
            )
            timeline.traffic_over.set()
            _finish_runbooks(timeline, stop)
        finally:
            timeline.traffic_over.set()
            stop.set()
            for thread in [*threads, following, progress]:
                thread.join(timeout=30)
        timeline.recording = _record(prometheus, timeline, slo, settings)
        errors = lab.proxy.errors()
        timeline.balancer_errors = {
            cause: errors[cause] - warm_up_errors.get(cause, 0)
            for cause in errors
            if errors[cause] > warm_up_errors.get(cause, 0)
        }
    return timeline


# --- Preparation --------------------------------------------------------------------------------


def _clear_scratch(out: Path) -> None:
    """Remove the last run's lab (pods' mode files and logs) and Prometheus data from `out`: a pod of
    this run must not start on another run's mode files (and `make demo` twice failed on them).
    The journals stay: each run's are named for it."""
    for scratch in _SCRATCH:
        shutil.rmtree(out / scratch, ignore_errors=True)


_SCRATCH = ("lab", "prometheus")


def _queries(data: Path) -> list[str]:
    from model_service.datasets import DatasetError, load_banking77

    folder = data / "banking77"
    if not (folder / "test.csv").is_file():
        raise DrillError(
            f"no banking77 data under {data} (expected {folder / 'test.csv'}): set PEAKGUARD_DATA or pass "
            "--data, or download the data sets with `.ci/fetch_data DIR`"
        )
    try:
        return list(load_banking77(folder).test.texts)
    except DatasetError as exc:
        raise DrillError(str(exc)) from None


def _models(settings: DrillSettings, log: Log) -> Path:
    if settings.artifacts is not None:
        if not settings.artifacts.is_dir():
            raise DrillError(f"--artifacts {settings.artifacts} is not a folder of model versions (peakguard train)")
        return settings.artifacts
    from model_service import quick_models

    started = time.monotonic()
    root = quick_models.prepare(settings.data, settings.cache, log=log)
    log(f"models ready in {time.monotonic() - started:.0f} s")
    return root


def _models_line(root: Path) -> str:
    """Which models serve, and how good they are, so nobody mistakes a quick model for a trained one."""
    from model_service.artifacts import ModelCard, newest_version

    folder = root / newest_version(root)
    parts = []
    for name in ("full", "light"):
        path = folder / f"{name}.json"
        card = ModelCard.from_json(path.read_text(), source=str(path))
        recipe = card.training.get("recipe", "trained")
        accuracy = card.metrics.get("test_accuracy")
        shown = f"{100 * accuracy:.1f}% on banking77's test split" if isinstance(accuracy, float) else "no accuracy"
        parts.append(f"{name} ({recipe}): {shown}")
    return f"{'; '.join(parts)} (version {folder.name})"


def _calibrate(models: Path, texts: list[str], settings: DrillSettings, log: Log) -> dict[str, Any]:
    """The benchmark's definitions, measured on serving processes of this machine: the unloaded p99
    (the median of three runs, after a warm-up: one noisy run would move the SLO), then, with
    admission's budget at 2x that, the rate sustained with p99 within 3x, confirmed over a longer run."""
    log("calibration: one serving process, unloaded p99, then the rate it sustains")
    seconds, seed = settings.calibration_seconds, settings.seed
    serve = {"artifacts": str(models), "max_wait": 0.002}
    probe_args: dict[str, Any] = {"ready_timeout": 180, "log_dir": settings.out, "threads": _POD_THREADS}
    with ServiceProcess(serve, **probe_args) as probe:
        unloaded_p99(probe.url, texts, seconds=seconds, seed=seed)  # warm-up: thread pools, allocator
        runs = sorted(unloaded_p99(probe.url, texts, seconds=seconds, seed=seed + n)[0] for n in range(3))
    baseline = runs[1]
    slo, budget = 3.0 * baseline, 2.0 * baseline
    with ServiceProcess({**serve, "latency_budget": budget}, **probe_args) as probe:
        unloaded_p99(probe.url, texts, seconds=seconds, seed=seed)
        sustainable, steps = sustainable_rate(
            probe.url,
            texts,
            slo=slo,
            # The unloaded p99, the SLO's base, is measured at 10 rps: the search starts there.
            start_rps=UNLOADED_RPS,
            step_seconds=seconds,
            seed=seed,
            log=log,
            confirm_seconds=2 * seconds,
        )
    shown = ", ".join(f"{r * 1000:.0f}" for r in runs)
    surge = settings.surge_factor * sustainable
    log(
        f"calibration: unloaded p99 {baseline * 1000:.1f} ms (runs {shown}), sustains {sustainable:.0f} rps; "
        f"surge {settings.surge_factor:g}x = {surge:.0f} rps"
    )
    return {
        "unloaded_p99_seconds": baseline,
        "unloaded_p99_runs_seconds": runs,
        "slo_seconds": slo,
        "latency_budget_seconds": budget,
        "sustainable_rps": sustainable,
        "steps": steps,
    }


def full_replicas_most(max_pods: int) -> int:
    """The full model's HPA maximum in a lab of `max_pods`: every pod but rebuild's canary."""
    return max(1, max_pods - 1)


def _program(project_dir: Path, env: str, slo: float, max_pods: int) -> OfflineRun:
    """The Pulumi program for `env` with the SLO this machine was measured to meet and the replicas
    it can run (the alerts, the HPA and the runbooks' plans read them from there, as they would from
    a real stack's config): the full model's HPA may grow to every pod but the canary's, and the
    expected peak is what that maximum holds with the headroom rule's 30%. The full pool declares
    its next generation, for rolling-upgrade."""
    values = load_stack_file(project_dir, env)
    kubernetes = dict(values.get("peakguard:kubernetes") or {})
    most = full_replicas_most(max_pods)
    pools = dict(values.get("peakguard:gpuPools") or {})
    pool = pools.get("full", {})
    pools["full"] = {**pool, "next": {"releaseVersion": NEXT_RELEASE}}
    kubernetes["modelService"] = {
        **(kubernetes.get("modelService") or {}),
        "sloP99Milliseconds": max(10, round(slo * 1000)),
        "minReplicas": 1,
        "maxReplicas": most,
        "expectedPeakReplicas": max(1, math.floor(most / float(HEADROOM))),
        # One replica a node, so that the node groups' sizes in the lab are its replicas (see _lab_capacity).
        "gpusPerReplica": INSTANCE_TYPES[pool["instanceType"]].gpus,
    }
    overrides = {"peakguard:kubernetes": kubernetes, "peakguard:gpuPools": pools}
    return run_offline(env, project_dir=project_dir, overrides=overrides)


# --- While it runs ------------------------------------------------------------------------------


def _warm_up(lab: Lab, timeline: Timeline, texts: list[str], settings: DrillSettings, log: Log) -> None:
    """Fresh processes pay for their first batches (allocations, thread pools) and Prometheus for its
    start-up: seconds of steady traffic first, not recorded, so that "before" is the steady state it
    stands for (without it, the first 10 s of a run had a p99 of 886 ms against 217 unloaded)."""
    answers: list[str] = []
    warm_up = Phase("warm-up", _WARM_UP_SECONDS, timeline.phases[0].rps)
    url = f"{lab.proxy_url}/v1/intent"
    record = answers.append

    asyncio.run(
        run_phases(url, [warm_up], texts, record=lambda r: record(r.outcome), seed=settings.seed + 7, timeout=10)
    )
    log(f"warm-up: {answers.count('answered')} of {len(answers)} answered in {_WARM_UP_SECONDS:g} s, not counted")


_WARM_UP_SECONDS = 4.0
"""Long enough for every pod's first batches and a few of Prometheus's scrapes; short against the drill."""


def _enough(timeline: Timeline, settings: DrillSettings) -> bool:
    """The traffic may end: the after phase has lasted its minimum and the autopilot is done."""
    after = timeline.phase_start("after")
    return time.time() >= after + settings.after_seconds and timeline.autopilot_done.is_set()


def _follow_pods(lab: Lab, prometheus: Prometheus, stop: threading.Event) -> None:
    """Prometheus scrapes the Ready pods, as the PodMonitor makes it do in the cluster."""
    known: list[tuple[str, str]] = []
    while not stop.is_set():
        with contextlib.suppress(Exception):
            now = lab.ready_backends()
            if now != known:
                prometheus.set_targets(now)
                known = now
        stop.wait(0.5)


def _sample_capacity(lab: Lab, timeline: Timeline, stop: threading.Event) -> None:
    """The full model's Ready replicas and HPA minimum, every half second: when capacity arrived."""
    while not stop.is_set():
        with contextlib.suppress(ApiStatus):  # not created yet, or gone: a missing sample, never a guess
            deployment = lab.store.get("deployments", NAMESPACE, FULL_DEPLOYMENT)
            hpa = lab.store.get("horizontalpodautoscalers", NAMESPACE, FULL_DEPLOYMENT)
            ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
            with timeline.lock:
                timeline.capacity.append((time.time(), ready, int(hpa["spec"].get("minReplicas", 1))))
        stop.wait(0.5)


def _watch(prometheus: Prometheus, timeline: Timeline) -> list[Firing]:
    """Record when each alert is first seen firing; the alerts firing now."""
    firing: list[Firing] = []
    with contextlib.suppress(Exception):
        firing = prometheus.firing()
    with timeline.lock:
        for alert in firing:
            timeline.alerts.setdefault(alert.name, time.time())
    return firing


def _watch_loop(prometheus: Prometheus, timeline: Timeline, stop: threading.Event) -> None:
    while not stop.is_set():
        _watch(prometheus, timeline)
        stop.wait(1.0)


def _autopilot(
    lab: Lab, prometheus: Prometheus, settings: DrillSettings, timeline: Timeline, stop: threading.Event, log: Log
) -> None:
    """What the on-call does when paged: run the runbook the alert names, then rebuild once calm."""
    mitigated = rebuilt = False
    attempts = 0
    quiet_since: float | None = None
    while not stop.is_set():
        firing = _watch(prometheus, timeline)
        now = time.time()
        paging = [alert for alert in firing if alert.annotations.get("runbook") == "emergency-stop"]
        if paging and not mitigated:
            names = ", ".join(sorted({alert.name for alert in paging}))
            again = " again, after its rollback" if attempts else ""
            timeline.note(f"paged: {names}; running emergency-stop{again}")
            log(f"autopilot: {names} firing; running emergency-stop{again}")
            exit_status = run_runbook(
                lab, settings, timeline, "emergency-stop", "--capacity-timeout", "120", "--recovery-timeout", "60"
            )
            attempts += 1
            # A run that rolled back is run once more, as the on-call would once the cause is fixed.
            mitigated = exit_status == 0 or attempts >= _EMERGENCY_STOP_ATTEMPTS
            continue
        quiet_since = (quiet_since or now) if not firing else None
        calm = quiet_since is not None and now - quiet_since >= settings.quiet_before_rebuild
        if (
            mitigated
            and not rebuilt
            and settings.rebuild
            and calm
            and now >= timeline.phase_start("after")
            and _flowing(timeline)
        ):
            version = _served_version(lab)
            timeline.note(f"calm for {settings.quiet_before_rebuild:g} s after the surge; running rebuild")
            log("autopilot: the surge is over and nothing fires; running rebuild (back to normal mode)")
            undo = _strike(lab, settings, timeline, log) if settings.fault == "bad-step" else None
            rebuild = ("rebuild", "--version", version, "--canary-timeout", "120")
            normal = run_runbook(lab, settings, timeline, *rebuild) == 0
            if not normal:
                if undo is not None:
                    undo()
                if _flowing(timeline):  # the drill is ending: no second run against a lab going away
                    timeline.note("rebuild did not finish; running it again")
                    log("autopilot: rebuild did not finish; running it again")
                    normal = run_runbook(lab, settings, timeline, *rebuild) == 0
            rebuilt = True
            # Nodes are changed only on a fleet back to normal, as a change freeze would have it.
            if settings.upgrade and normal and _flowing(timeline):
                _upgrade(lab, settings, timeline, log)
            timeline.autopilot_done.set()
        elif (not mitigated or not settings.rebuild) and now >= timeline.phase_start("after") + settings.after_seconds:
            timeline.autopilot_done.set()  # nothing paged, or nothing to take back in this run
        stop.wait(1.0)


_EMERGENCY_STOP_ATTEMPTS = 2


def _flowing(timeline: Timeline) -> bool:
    """Traffic still flows, for a runbook whose gates judge it (the after phase may have run out)."""
    return not timeline.traffic_over.is_set()


def _upgrade(lab: Lab, settings: DrillSettings, timeline: Timeline, log: Log) -> None:
    """rolling-upgrade to the next generation, under the after phase's steady load; not on a fleet
    short of Ready replicas (a fault's dead replica is not restarted in the lab), whose gate could
    only fail."""
    short = _replicas_short(lab)
    if short is not None:
        timeline.note(f"rolling-upgrade not run: {short}")
        log(f"autopilot: rolling-upgrade not run: {short}")
        return
    timeline.note(f"fleet back to normal; running rolling-upgrade to {NEXT_RELEASE}")
    log(f"autopilot: the fleet is back to normal; running rolling-upgrade to {NEXT_RELEASE} under steady load")
    timeline.upgrade["before"] = _generations(lab)
    bounds = ("--drain-timeout", "60", "--node-timeout", "120", "--gate-timeout", "60", "--poll", "0.5")
    run_runbook(lab, settings, timeline, "rolling-upgrade", "--to", NEXT_RELEASE, *bounds)
    # A removed node's instance ends, then its Node goes (lab.node_groups): read once that settled.
    deadline = time.monotonic() + 10
    while len(_generations(lab) or {}) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    timeline.upgrade["after"] = _generations(lab)


def _replicas_short(lab: Lab) -> str | None:
    """Why the full fleet is not whole (fewer Ready replicas than it wants), or None."""
    deployment = lab.store.get("deployments", NAMESPACE, FULL_DEPLOYMENT)
    wanted = int(deployment.get("spec", {}).get("replicas") or 0)
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    return None if ready >= wanted else f"{FULL_DEPLOYMENT} has {ready} of {wanted} replicas Ready"


def _generations(lab: Lab) -> dict[str, int] | None:
    """The full pool's Ready nodes, by generation; None if the lab could not say."""
    found: dict[str, int] = {}
    try:
        nodes = lab.store.list("nodes", labels=f"{POOL_LABEL}=full")
    except Exception:  # noqa: BLE001 (a figure that could not be read is None, never 0)
        return None
    for node in nodes:
        conditions = (node.get("status") or {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            generation = node["metadata"].get("labels", {}).get(GENERATION_LABEL, "")
            found[generation] = found.get(generation, 0) + 1
    return dict(sorted(found.items()))


def _served_version(lab: Lab) -> str:
    from model_service.artifacts import newest_version

    return newest_version(lab.settings.artifacts)


def run_runbook(lab: Lab, settings: DrillSettings, timeline: Timeline, name: str, *args: str) -> int:
    """`peakguard runbook run NAME --yes` as the on-call would type it; waits for it to end; its exit status."""
    journals = settings.out / "journal"
    command = [
        sys.executable,
        "-m",
        "peakguard",
        "runbook",
        "run",
        name,
        "--env",
        settings.env,
        "--kube-url",
        lab.kube_url,
        "--window",
        f"{_window(settings, timeline):g}",
        "--yes",
        "--operator",
        "drill-autopilot",
        *args,
    ]
    env = lab.command_env(os.environ) | {"PEAKGUARD_JOURNAL_DIR": str(journals)}
    before = set(journals.glob("*.jsonl")) if journals.is_dir() else set()
    entry: dict[str, Any] = {"runbook": name, "command": " ".join(command[2:]), "started": time.time()}
    with timeline.lock:
        timeline.runbooks.append(entry)
    done = subprocess.run(  # noqa: S603
        command, env=env, cwd=settings.project_dir, capture_output=True, text=True, timeout=900, check=False
    )
    journal = sorted(set(journals.glob("*.jsonl")) - before)
    entry.update(
        ended=time.time(),
        exit=done.returncode,
        output=done.stdout + done.stderr,
        journal=str(journal[0]) if journal else None,
    )
    return done.returncode


def _window(settings: DrillSettings, timeline: Timeline) -> float:
    """The runbooks' traffic window: given, or sized so that the steady rate fills a p99's sample."""
    if settings.window is not None:
        return settings.window
    steady = timeline.phases[0].rps
    return round(min(20.0, max(2.0, 150 / (5 * steady))), 1)


def _finish_runbooks(timeline: Timeline, stop: threading.Event) -> None:
    """The traffic has ended; a runbook still running is let finish (bounded by its own timeouts)."""
    deadline = time.time() + 300
    while time.time() < deadline and any("ended" not in entry for entry in timeline.runbooks):
        time.sleep(0.5)


def _fault(lab: Lab, settings: DrillSettings, timeline: Timeline, stop: threading.Event, log: Log) -> None:
    """The fault, when it strikes (the surge's start or its peak), and taken back when the surge ends."""
    assert settings.fault is not None
    surge = timeline.phase_start("surge")
    strike = surge if WHEN[settings.fault] == "surge-start" else surge + settings.surge_seconds / 2
    if not _wait_until(strike, stop):
        return
    undo = _strike(lab, settings, timeline, log)
    if _wait_until(time.time() + _FAULT_SETTLES, stop):
        with contextlib.suppress(Exception):  # the lab's API is busy at the peak; the figure is then missing
            timeline.fault["ready_after"] = len(lab.ready_backends())
    if _wait_until(timeline.phase_start("after"), stop):
        with contextlib.suppress(Exception):
            timeline.fault["served_after"] = lab.proxy.served()
        if undo is not None:
            undo()


_FAULT_SETTLES = 3.0
"""Seconds after a fault before its effect on the Ready replicas is counted (readiness and slices follow it)."""


def _strike(lab: Lab, settings: DrillSettings, timeline: Timeline, log: Log) -> Callable[[], None] | None:
    assert settings.fault is not None

    def note(text: str) -> None:
        timeline.note(text)
        log(text)

    with contextlib.suppress(Exception):
        timeline.fault["ready_before"] = len(lab.ready_backends())
    timeline.fault["at"] = time.time()
    with contextlib.suppress(Exception):
        timeline.fault["served_before"] = lab.proxy.served()
    try:
        return inject(settings.fault, lab, note, slo_seconds=timeline.calibration["slo_seconds"], detail=timeline.fault)
    except Exception as error:  # noqa: BLE001 (a fault that fails is reported, never a dead thread)
        timeline.fault["failed"] = f"{type(error).__name__}: {error}"
        note(f"fault {settings.fault} could not be applied: {type(error).__name__}: {error}")
        return None


def _wait_until(moment: float, stop: threading.Event) -> bool:
    """Wait for the Unix time `moment`; False if the drill stopped first."""
    while not stop.is_set() and time.time() < moment:
        stop.wait(0.2)
    return not stop.is_set()


def _progress(timeline: Timeline, stop: threading.Event, log: Log) -> None:
    """One line a few seconds: where the run is, what clients see, what fires, what runs."""
    while not stop.wait(5.0):
        now = time.time()
        recent = [r for r in list(timeline.requests) if timeline.started + r.at >= now - 5]
        answered = sorted(r.latency for r in recent if r.latency is not None)
        p99 = answered[int(0.99 * (len(answered) - 1))] * 1000 if answered else float("nan")
        shed = sum(r.outcome == "shed" for r in recent)
        failed = sum(r.outcome in ("failed", "dropped") for r in recent)
        phase = _phase_at(timeline, now - timeline.started)
        running = [entry["runbook"] for entry in timeline.runbooks if "ended" not in entry]
        rates = f"{len(recent) / 5:6.0f} req/s  answered {len(answered) / 5:5.0f}/s  shed {shed / 5:5.0f}/s"
        doing = f"running {running[0]}" if running else ""
        log(
            f"[{now - timeline.started:5.0f} s] {phase:6} {rates}  failed {failed}  p99 {p99:6.0f} ms  "
            f"alerts {len(timeline.alerts)}  {doing}"
        )


def _phase_at(timeline: Timeline, offset: float) -> str:
    for phase in timeline.phases:
        if offset < phase.seconds:
            return phase.name
        offset -= phase.seconds
    return "done"


def _record(prometheus: Prometheus, timeline: Timeline, slo: float, settings: DrillSettings) -> Recording | None:
    """What `peakguard diagnose` reads, as the cluster's Prometheus would answer it, over the traffic:
    the run can be diagnosed later (`peakguard diagnose --from-drill`)."""
    notes: dict[str, Any] = {
        "fault": settings.fault,
        "events": [[t - timeline.started, text] for t, text in timeline.events],
    }
    if timeline.fault.get("at") is not None:
        notes["fault_at"] = timeline.fault["at"]
    errors: list[str] = []
    recording = record(prometheus.query_range, namespace=NAMESPACE, start=timeline.started, end=time.time(),
                       step=prometheus.interval, slo_seconds=slo, notes=notes,
                       on_error=lambda name, exc: errors.append(f"{name}: {exc}"))  # fmt: skip
    if errors:
        timeline.note(f"recording: not read from Prometheus: {'; '.join(errors)}")
    # The drill's figures stand without it; the report then says there is no recording.
    return recording if recording.series else None
