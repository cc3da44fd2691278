"""Recorded runs for `peakguard diagnose`: the lab under steady traffic, one known cause injected at
a random moment, and the metrics the cluster's Prometheus would hold, kept as a recording.

`peakguard drill record --cause C --seeds N` makes one; each (cause, seed) draws its own run from a
generator seeded with both: the load (30-60% of what one serving process sustains), the replicas
(2 or 3), the length (75-95 s), when the fault strikes, which pod it strikes, and how hard:

- `none`: nothing happens; the diagnosis must claim no cause;
- `overload`: the rate jumps to 3-6x the sustainable one (capped at `MAX_RPS`, what the generator
  offers here);
- `slow-layer`: one pod's layer (drawn from those every model has) sleeps 10-50% of the SLO before
  every batch (`PUT /admin/chaos`), as a throttled GPU would make it;
- `node-not-ready`: a serving pod's node stops reporting Ready (the played kubelet): its pods
  leave the load balancer, the others take their traffic;
- `cold-replica`: the full model's HPA minimum goes up by one; the new pod starts with no warm
  spare (its models load on these cores) and, once its models are in, every layer takes 3-6x its
  time (`slow_down`), easing linearly over 2.5-4 times the rest of the run: the seed's cold nodes
  ran at 18% of warm ones. This one is played: a CPU replica has no GPU caches to fill, so what is
  real is the new pod and its age; its slowness is the chaos seam's.

Pods time their layers on every 4th batch (the service's default is 20; at a GPU's rates that
is plenty, at the lab's few batches a second it would leave a window with none).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from diagnosis.series import Recording, RecordingError, record
from infra.offline import OfflineRun
from lab.drill import DrillSettings, Prepared, _follow_pods, _program, prepare
from lab.kube_state_metrics import KubeStateMetrics
from lab.lab import NAMESPACE, Lab, LabSettings, ServePod
from lab.prometheus import Prometheus
from model_service.artifacts import ModelCard, newest_version
from model_service.load_generator import Phase, Request, run_phases

__all__ = ["MAX_RPS", "RECORDED", "Plan", "plan", "record_run"]

Log = Callable[[str], None]
RECORDED = ("none", "overload", "cold-replica", "slow-layer", "node-not-ready")
"""The causes a recording can carry (`none`: no fault)."""
MAX_RPS = 250.0
"""The most the generator and the lab's balancer offer from one process here (the drill's surge cap is 300)."""
LAYER_SAMPLE_EVERY = 4
_FULL_HPA = "model-service-full"


@dataclass(frozen=True)
class Plan:
    cause: str
    seed: int
    seconds: float
    """Length of the recorded traffic."""
    fault_at: float
    """Seconds from the traffic's start when the fault strikes (`none`: nothing does)."""
    replicas: int
    rps: float
    fault_rps: float
    """The rate after `fault_at` (the same as `rps` but for overload)."""
    layer: str | None = None
    delay_seconds: float | None = None
    cold_factor: float | None = None
    cold_ease_seconds: float | None = None
    pick: float = 0.0
    """Which Ready pod the fault strikes: this share into their sorted list."""


def plan(cause: str, seed: int, *, sustainable_rps: float, slo_seconds: float, layers: list[str]) -> Plan:
    """The run of (cause, seed), drawn reproducibly."""
    if cause not in RECORDED:
        raise ValueError(f"cause {cause!r} is not one of {', '.join(RECORDED)}")
    rng = random.Random(f"{cause}/{seed}")  # noqa: S311 (a reproducible draw, not a secret)
    seconds = rng.uniform(75.0, 95.0)
    replicas = rng.choice((2, 3))
    rps = rng.uniform(0.3, 0.6) * sustainable_rps
    # Cold strikes early: the new pod's models take seconds to load on these shared cores, and it must
    # serve in the last third, the part a diagnosis judges.
    fault_at = rng.uniform(0.1, 0.2) * seconds if cause == "cold-replica" else rng.uniform(0.3, 0.5) * seconds
    fault_rps = min(MAX_RPS, rng.uniform(3.0, 6.0) * sustainable_rps) if cause == "overload" else rps
    extra: dict[str, Any] = {"pick": rng.random()}
    if cause == "slow-layer":
        extra |= {"layer": rng.choice(layers), "delay_seconds": rng.uniform(0.1, 0.5) * slo_seconds}
    if cause == "cold-replica":
        extra |= {
            "cold_factor": rng.uniform(3.0, 6.0),
            "cold_ease_seconds": rng.uniform(2.5, 4.0) * (seconds - fault_at),
        }
    return Plan(cause, seed, seconds, fault_at if cause != "none" else seconds, replicas, rps, fault_rps, **extra)


def common_layers(models: Path) -> list[str]:
    """The layers every served model has (a slowed layer slows it in each): block0.. and head."""
    folder = models / newest_version(models)
    cards = [ModelCard.from_json((folder / f"{name}.json").read_text(), source=str(folder / f"{name}.json"))
             for name in ("full", "light")]  # fmt: skip
    depth = min(card.config.layers for card in cards)
    return [*(f"block{i}" for i in range(depth)), "head"]


@functools.cache
def _program_for(project_dir: Path, env: str, slo: float, replicas: int) -> OfflineRun:
    """The program under mocks, once per replica count (each run takes seconds; recordings repeat them)."""
    # The full model's HPA may reach one more than the replicas (cold-replica's new pod).
    return _program(project_dir, env, slo, replicas + 2)


def record_run(settings: DrillSettings, prepared: Prepared, run: Plan, *, log: Log = print) -> Recording:
    """Run `run` against a fresh lab and return what Prometheus held, the plan and what struck in its notes."""
    calibration = prepared.calibration
    slo, budget = calibration["slo_seconds"], calibration["latency_budget_seconds"]
    if settings.project_dir is None:
        raise ValueError("DrillSettings resolves project_dir: none given")
    program = _program_for(settings.project_dir, settings.env, slo, run.replicas)
    (full_pool,) = [pool for pool in program.config.gpu_pools if pool.name == "full"]
    lab_settings = LabSettings(
        artifacts=prepared.models, workdir=settings.out / "lab", env=settings.env, program=program,
        pod_settings={"latency_budget": budget, "chaos": True, "layer_sample_every": LAYER_SAMPLE_EVERY},
        max_pods=run.replicas + 1, replicas=run.replicas, pod_threads=1, nodes="fixed",
        # Two nodes hold every pod (the program asks a node's GPUs for each replica, as the drill's does).
        gpus_per_node=full_pool.instance.gpus * (run.replicas + 1),
    )  # fmt: skip
    for scratch in ("lab", "prometheus"):
        shutil.rmtree(settings.out / scratch, ignore_errors=True)
    events: list[tuple[float, str]] = []
    requests: list[Request] = []
    with (
        Lab(lab_settings) as lab,
        KubeStateMetrics(lab.store) as kube_state,
        Prometheus(settings.out / "prometheus", env=settings.env, namespace=NAMESPACE, slo_seconds=slo,
                   static_jobs={"kube-state-metrics": kube_state.url.removeprefix("http://")}) as prometheus,
    ):  # fmt: skip
        stop = threading.Event()
        following = threading.Thread(target=_follow_pods, args=(lab, prometheus, stop), daemon=True)
        following.start()
        url = f"{lab.proxy_url}/v1/intent"
        asyncio.run(run_phases(url, [Phase("warm-up", 4.0, run.rps)], prepared.texts, record=lambda _r: None,
                               seed=run.seed + 7, timeout=10))  # fmt: skip
        started = time.time()

        def note(text: str) -> None:
            events.append((time.time() - started, text))
            log(f"[{time.time() - started:5.1f} s] {text}")

        struck: dict[str, Any] = {}
        striking = threading.Thread(target=_strike, args=(lab, run, started, stop, note, struck), daemon=True)
        striking.start()
        try:
            asyncio.run(run_phases(url, [Phase("before", run.fault_at, run.rps),
                                         Phase("after", max(0.0, run.seconds - run.fault_at), run.fault_rps)],
                                   prepared.texts, record=requests.append, seed=run.seed, timeout=10))  # fmt: skip
        finally:
            stop.set()
            striking.join(timeout=30)
            following.join(timeout=5)
        end = time.time()
        if run.cause != "none" and "at" not in struck:
            why = struck.get("error", "no error")
            raise RecordingError(f"{run.cause} seed {run.seed}: the fault did not strike ({why}); nothing recorded, "
                                 "since its label would be a lie")  # fmt: skip
        time.sleep(2 * prometheus.interval)  # the last scrape of the traffic's end
        answered = sum(r.outcome == "answered" for r in requests)
        notes = {"cause": run.cause, "plan": asdict(run), "events": events, "struck": struck,
                 "requests": len(requests), "answered": answered,
                 "shed": sum(r.outcome == "shed" for r in requests),
                 "failed": sum(r.outcome == "failed" for r in requests),
                 "generator_lag_p99_ms": _lag_p99_ms(requests)}  # fmt: skip
        errors: list[str] = []
        recording = record(prometheus.query_range, namespace=NAMESPACE, start=started, end=end,
                           step=prometheus.interval, slo_seconds=slo, notes=notes,
                           on_error=lambda name, exc: errors.append(f"{name}: {exc}"))  # fmt: skip
        if errors:
            raise RecordingError(f"{run.cause} seed {run.seed}: Prometheus did not answer: {'; '.join(errors)}")
        return recording


def _lag_p99_ms(requests: list[Request]) -> float | None:
    lags = sorted(r.lag for r in requests)
    return round(lags[int(0.99 * (len(lags) - 1))] * 1000, 1) if lags else None


def _strike(lab: Lab, run: Plan, started: float, stop: threading.Event, note: Callable[[str], None],
            struck: dict[str, Any]) -> None:  # fmt: skip
    """Strike `run`'s fault at its moment; `struck` gets when (`at`, Unix time) and what, or `error`."""
    if run.cause == "none" or stop.wait(max(0.0, started + run.fault_at - time.time())):
        return
    try:
        if run.cause == "overload":
            struck |= {"at": time.time(), "rps": run.fault_rps}
            note(f"overload: {run.fault_rps:.0f} requests/s from {run.rps:.0f}")
            return
        ready = lab.ready_backends()
        if not ready:
            raise RuntimeError("no Ready pod to strike")
        pod, url = ready[min(len(ready) - 1, int(run.pick * len(ready)))]
        auth = {"authorization": f"Bearer {lab.token}"}
        if run.cause == "slow-layer":
            slow = {"slow_layer": {"layer": run.layer, "seconds": run.delay_seconds}}
            answer = httpx.put(f"{url}/admin/chaos", json=slow, headers=auth, timeout=10)
            answer.raise_for_status()
            struck |= {"at": time.time(), "pod": pod, "layer": run.layer}
            note(f"slow-layer: {pod}'s {run.layer} sleeps {(run.delay_seconds or 0) * 1000:.0f} ms a batch")
        elif run.cause == "node-not-ready":
            node = lab.store.get("pods", NAMESPACE, pod)["spec"]["nodeName"]
            lab.controllers.set_node_ready(node, False)
            struck |= {"at": time.time(), "pod": pod, "node": node}
            note(f"node-not-ready: {node} (holding {pod}) NotReady")
        elif run.cause == "cold-replica":
            _cold_replica(lab, run, auth, stop, note, struck)
    except Exception as exc:  # noqa: BLE001 (recorded, and the recording refused: see record_run)
        struck["error"] = f"{type(exc).__name__}: {exc}"
        note(f"{run.cause}: did not strike: {struck['error']}")


def _cold_replica(lab: Lab, run: Plan, auth: dict[str, str], stop: threading.Event, note: Callable[[str], None],
                  struck: dict[str, Any]) -> None:  # fmt: skip
    if run.cold_factor is None or run.cold_ease_seconds is None:
        raise ValueError(f"a cold-replica plan needs cold_factor and cold_ease_seconds: {run}")
    started: list[ServePod] = []
    lab.on_pod_started.append(started.append)
    lab.store.patch("horizontalpodautoscalers", NAMESPACE, _FULL_HPA, {"spec": {"minReplicas": run.replicas + 1}},
                    content_type="application/merge-patch+json")  # fmt: skip
    note(f"cold-replica: the HPA's minimum raised to {run.replicas + 1}; the new pod starts with no warm spare")
    while not started and not stop.wait(0.1):
        pass
    if not started:
        return
    pod = started[0]
    loaded = None
    while loaded is None and not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.put(
                f"{pod.url}/admin/chaos", json={"slow_down": {"factor": run.cold_factor}}, headers=auth, timeout=5
            )
            if answer.status_code == 200:
                loaded = time.time()
                break
        stop.wait(0.1)
    if loaded is None:
        return
    struck |= {"at": loaded, "pod": pod.pod, "factor": run.cold_factor}
    note(f"cold-replica: {pod.pod} serves with every layer {run.cold_factor:.1f}x its time, easing over "
         f"{run.cold_ease_seconds:.0f} s")  # fmt: skip
    while not stop.wait(2.0):
        eased = max(0.0, 1.0 - (time.time() - loaded) / run.cold_ease_seconds)
        with contextlib.suppress(httpx.HTTPError):
            httpx.put(f"{pod.url}/admin/chaos", json={"slow_down": {"factor": 1.0 + (run.cold_factor - 1.0) * eased}},
                      headers=auth, timeout=5)  # fmt: skip


def write(recording: Recording, folder: Path) -> Path:
    """`recording` as `<cause>-<seed>.json.gz` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{recording.notes['cause']}-{recording.notes['plan']['seed']}.json.gz"
    recording.write(path)
    return path


def record_many(
    settings: DrillSettings, causes: list[str], seeds: list[int], folder: Path, *, log: Log = print
) -> list[Path]:
    """One calibration, then a fresh lab per (cause, seed)."""
    prepared = prepare(settings, log=log)
    layers = common_layers(prepared.models)
    written = []
    for cause in causes:
        for seed in seeds:
            run = plan(cause, seed, sustainable_rps=prepared.calibration["sustainable_rps"],
                       slo_seconds=prepared.calibration["slo_seconds"], layers=layers)  # fmt: skip
            log(f"recording {cause} seed {seed}: {json.dumps(asdict(run))}")
            written.append(write(record_run(settings, prepared, run, log=log), folder))
            log(f"  -> {written[-1]}")
    return written
