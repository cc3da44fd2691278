"""The coordinator of a distributed load: create the barrier ConfigMap and the Indexed Job, wait for
every worker to run, start them together, wait for the Job to end, read each worker's result from
its pod's log, merge. Whatever happens (a failure, Ctrl-C, SIGTERM), the Job and the ConfigMap are
deleted before it returns: a load never outlives its command.

Bounded twice: by duration (the Job's activeDeadlineSeconds, and the wait here) and by a hard
request cap checked before anything is created (rate x duration, with the Poisson schedule's
spread, may not exceed `max_requests`).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadtest.job import JOB_NAME_LABEL, WorkerPods, job_manifest, start_config_map
from loadtest.report import merge
from loadtest.worker import RESULT_PREFIX, START_KEY

__all__ = ["LoadPlan", "LoadRefusedError", "run_distributed"]

Log = Callable[[str], None]


class LoadRefusedError(ValueError):
    """The plan is refused before anything is created; the message says why and the fix."""


@dataclass(frozen=True)
class LoadPlan:
    url: str
    rps: float
    duration: float
    workers: int
    pods: WorkerPods
    seed: int = 0
    timeout: float = 10.0
    """Seconds a request may take."""
    max_requests: int = 20_000_000
    """The hard cap on requests the whole run may send."""
    start_lead: float = 3.0
    """Seconds between the last worker running and the common start."""
    pods_timeout: float = 300.0
    """Seconds for every worker to be running (scheduled, image pulled) before the run gives up."""

    def check(self) -> None:
        if self.workers < 1:
            raise LoadRefusedError(f"--workers {self.workers}: at least one worker")
        if not (self.rps > 0 and self.duration > 0 and math.isfinite(self.rps * self.duration)):
            raise LoadRefusedError("--rps and --duration must be positive numbers")
        expected = self.rps * self.duration
        # Poisson arrivals: the count's standard deviation is its square root; five of them is the cap's margin.
        worst = expected + 5 * math.sqrt(expected)
        if worst > self.max_requests:
            raise LoadRefusedError(
                f"{self.rps:g} rps for {self.duration:g} s may send up to {worst:,.0f} requests, over the cap of "
                f"{self.max_requests:,}: shorten --duration or raise --max-requests"
            )

    @property
    def deadline_seconds(self) -> int:
        return math.ceil(self.pods_timeout + self.start_lead + self.duration + self.timeout + 60)


def _env(plan: LoadPlan, config_map: str, kube_url: str | None) -> dict[str, str]:
    env = {
        "PEAKGUARD_LOAD_URL": plan.url, "PEAKGUARD_LOAD_RPS": repr(plan.rps),
        "PEAKGUARD_LOAD_WORKERS": str(plan.workers), "PEAKGUARD_LOAD_DURATION": repr(plan.duration),
        "PEAKGUARD_LOAD_SEED": str(plan.seed), "PEAKGUARD_LOAD_TIMEOUT": repr(plan.timeout),
        "PEAKGUARD_LOAD_START_CONFIGMAP": config_map, "PEAKGUARD_LOAD_NAMESPACE": plan.pods.namespace,
        "PEAKGUARD_LOAD_BARRIER_SECONDS": repr(plan.pods_timeout + plan.start_lead + 30),
    }  # fmt: skip
    if kube_url:
        env["PEAKGUARD_KUBE_URL"] = kube_url
    return env


def _phases(core: Any, namespace: str, job: str) -> dict[str, str]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={job}").items
    return {pod.metadata.name: pod.status.phase or "Pending" for pod in pods}


def _wait(condition: Callable[[], Any], *, timeout: float, what: str, sleep: Callable[[float], None]) -> Any:
    give_up = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() >= give_up:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        sleep(0.5)
    return found


def run_distributed(
    core: Any,
    batch: Any,
    plan: LoadPlan,
    *,
    kube_url: str | None = None,
    log: Log = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Run the plan on the cluster `core` (CoreV1Api) and `batch` (BatchV1Api) talk to; the merged
    report. `kube_url` is passed to the workers when they reach the API at a plain URL (the lab)."""
    plan.check()
    namespace = plan.pods.namespace
    name = f"peakguard-load-{secrets.token_hex(3)}"
    config_map = f"{name}-start"
    core.create_namespaced_config_map(namespace, start_config_map(config_map, namespace))
    try:
        env = _env(plan, config_map, kube_url)
        batch.create_namespaced_job(namespace, job_manifest(name, plan.pods, workers=plan.workers, env=env,
                                                            deadline_seconds=plan.deadline_seconds))  # fmt: skip
        log(f"{name}: {plan.workers} workers x {plan.rps / plan.workers:g} rps for {plan.duration:g} s")

        def all_running() -> bool:
            phases = _phases(core, namespace, name)
            if any(phase in ("Failed", "Succeeded") for phase in phases.values()):
                raise RuntimeError(f"a worker ended before the start: {phases}; see its log")
            return len(phases) == plan.workers and all(phase == "Running" for phase in phases.values())

        _wait(all_running, timeout=plan.pods_timeout, sleep=sleep,
              what=f"all {plan.workers} workers running (quota, node pool size, image pull?)")  # fmt: skip
        start = time.time() + plan.start_lead
        core.patch_namespaced_config_map(config_map, namespace, {"data": {START_KEY: repr(start)}})
        log(f"{name}: every worker running; all start at {time.strftime('%H:%M:%S', time.gmtime(start))} UTC")

        def ended() -> str | None:
            status = batch.read_namespaced_job_status(name, namespace).status
            for condition in status.conditions or []:
                if condition.type in ("Complete", "Failed") and condition.status == "True":
                    return str(condition.type)
            return None

        outcome = _wait(ended, timeout=plan.start_lead + plan.duration + plan.timeout + 60, sleep=sleep,
                        what=f"Job {name} to end")  # fmt: skip
        results, missing = [], []
        for pod in sorted(_phases(core, namespace, name)):
            # Undecoded: kubernetes 36 returns a `str` response as the text of its bytes (b'...').
            log_text = core.read_namespaced_pod_log(pod, namespace, _preload_content=False).data.decode("utf-8")
            lines = [line for line in log_text.splitlines() if line.startswith(RESULT_PREFIX)]
            if lines:
                results.append(json.loads(lines[-1][len(RESULT_PREFIX) :]))
            else:
                missing.append(pod)
        report = merge(results, plan_of(plan), expected_workers=plan.workers)
        report["job"] = {"name": name, "namespace": namespace, "outcome": outcome, "workersWithoutResult": missing}
        if missing:
            report["invalidBecause"].append(f"{len(missing)} worker(s) left no result: {', '.join(missing)}")
        return report
    finally:
        _clean_up(core, batch, namespace, name, config_map, log)


def plan_of(plan: LoadPlan) -> dict[str, Any]:
    return {"url": plan.url, "rps": plan.rps, "duration": plan.duration, "workers": plan.workers,
            "seed": plan.seed, "maxRequests": plan.max_requests, "image": plan.pods.image}  # fmt: skip


def _clean_up(core: Any, batch: Any, namespace: str, job: str, config_map: str, log: Log) -> None:
    from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped, unused-ignore]

    deletions: tuple[tuple[str, Callable[[], Any]], ...] = (
        (f"Job {job}", lambda: batch.delete_namespaced_job(job, namespace, propagation_policy="Background")),
        (f"ConfigMap {config_map}", lambda: core.delete_namespaced_config_map(config_map, namespace)),
    )
    for what, delete in deletions:
        try:
            delete()
            log(f"deleted {what}")
        except ApiException as exc:
            if exc.status != 404:
                log(f"could not delete {what} in {namespace}: {exc.status} {exc.reason}; delete it by hand "
                    f"(kubectl -n {namespace} delete job,configmap -l app.kubernetes.io/name=load-worker)")  # fmt: skip
