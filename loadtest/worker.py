"""One worker of a distributed load: a pod of the Indexed Job (`python -m loadtest.worker`).

It sends its share of the rate (the total over the workers) with the open-loop generator
(model_service.load_generator), its own seed (the run's seed plus its index, from
JOB_COMPLETION_INDEX, which Kubernetes sets in every pod of an Indexed Job), and starts only when
the coordinator writes the start time into the run's ConfigMap: every worker waits at that barrier,
so the ramp is shared. It records every answer's latency (from its scheduled send: coordinated
omission is charged to the server) and every send's lateness in HDR histograms, and prints them as
its last line (`RESULT_PREFIX` + JSON), which the coordinator reads from the pod's log.

Configured by environment (the Job sets it): PEAKGUARD_LOAD_URL, _RPS (the total), _WORKERS,
_DURATION, _SEED, _TIMEOUT, _START_CONFIGMAP, _NAMESPACE, _BARRIER_SECONDS; PEAKGUARD_KUBE_URL for
a plain API URL (the lab), else the pod's service account.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loadtest import histograms

__all__ = ["RESULT_PREFIX", "WorkerSpec", "main", "result_of", "wait_for_start"]

RESULT_PREFIX = "PEAKGUARD_LOAD_RESULT "
START_KEY = "startAt"
"""The ConfigMap key the coordinator writes: Unix seconds at which every worker starts."""


@dataclass(frozen=True)
class WorkerSpec:
    url: str
    total_rps: float
    workers: int
    index: int
    duration: float
    seed: int
    timeout: float
    start_config_map: str
    namespace: str
    barrier_seconds: float

    @property
    def rps(self) -> float:
        return self.total_rps / self.workers

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSpec:
        def need(key: str) -> str:
            value = env.get(key)
            if not value:
                raise ValueError(f"{key} is not set: the worker runs inside the load Job, which sets it")
            return value

        index = int(need("JOB_COMPLETION_INDEX"))
        workers = int(need("PEAKGUARD_LOAD_WORKERS"))
        if not 0 <= index < workers:
            raise ValueError(f"JOB_COMPLETION_INDEX {index} is not among the {workers} workers")
        return cls(
            url=need("PEAKGUARD_LOAD_URL"), total_rps=float(need("PEAKGUARD_LOAD_RPS")), workers=workers, index=index,
            duration=float(need("PEAKGUARD_LOAD_DURATION")), seed=int(need("PEAKGUARD_LOAD_SEED")),
            timeout=float(need("PEAKGUARD_LOAD_TIMEOUT")), start_config_map=need("PEAKGUARD_LOAD_START_CONFIGMAP"),
            namespace=need("PEAKGUARD_LOAD_NAMESPACE"), barrier_seconds=float(need("PEAKGUARD_LOAD_BARRIER_SECONDS")),
        )  # fmt: skip


def wait_for_start(
    read_start: Callable[[], float | None],
    *,
    barrier_seconds: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Poll the barrier until the start time is written, then sleep until it; the start time.
    Raises TimeoutError if it is not written within `barrier_seconds`."""
    give_up = clock() + barrier_seconds
    # Once a second, jittered: a hundred workers polling together must not look like a flood to the
    # API server's priority and fairness.
    jitter = random.Random()  # noqa: S311 (spreading polls, not secrets)
    while True:
        try:
            start = read_start()
        except Exception as exc:  # noqa: BLE001 (a 429 or 5xx at the barrier is waited out, not fatal)
            print(f"loadtest worker: reading the start time failed ({exc}); trying again", file=sys.stderr)
            start = None
        if start is not None:
            break
        if clock() >= give_up:
            raise TimeoutError(f"no start time within {barrier_seconds:g} s: did the coordinator stop?")
        sleep(0.5 + jitter.random())
    if (wait := start - clock()) > 0:
        sleep(wait)
    return start


def result_of(spec: WorkerSpec, report: Any, started_at: float, sending_from: float) -> dict[str, Any]:
    """What the coordinator merges: counts, and the histograms encoded. `started_at` is the barrier's
    start time, `sending_from` this worker's clock when its schedule began."""
    return {
        "index": spec.index,
        "seed": spec.seed + spec.index,
        "rps": spec.rps,
        "startedAt": started_at,
        "sendingFrom": sending_from,
        "sent": report.sent,
        "ok": report.completed_ok,
        "shed": report.shed,
        "errors5xx": report.errors_5xx,
        "transportErrors": report.transport_errors,
        "droppedByGenerator": report.dropped_by_generator,
        "latency": histograms.encode(histograms.of_seconds(report.latencies)),
        "lateness": histograms.encode(histograms.of_seconds(report.send_lags)),
    }


def _read_start(spec: WorkerSpec) -> Callable[[], float | None]:
    from kubernetes import client, config  # type: ignore[import-untyped, unused-ignore]
    from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped, unused-ignore]

    if url := os.environ.get("PEAKGUARD_KUBE_URL"):
        configuration = client.Configuration()
        configuration.host = url
        api = client.CoreV1Api(client.ApiClient(configuration))
    else:
        config.load_incluster_config()
        api = client.CoreV1Api()

    def read() -> float | None:
        try:
            data = api.read_namespaced_config_map(spec.start_config_map, spec.namespace).data or {}
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return float(data[START_KEY]) if START_KEY in data else None

    return read


def main() -> int:
    from model_service.load_generator import SAMPLE_QUERIES, LoadSpec, run_load_sync

    try:
        spec = WorkerSpec.from_env(os.environ)
        start = wait_for_start(_read_start(spec), barrier_seconds=spec.barrier_seconds)
    except (ValueError, TimeoutError) as exc:
        print(f"loadtest worker: {exc}", file=sys.stderr)
        return 2
    load = LoadSpec(url=spec.url, rps=spec.rps, duration=spec.duration, texts=SAMPLE_QUERIES,
                    timeout=spec.timeout, seed=spec.seed + spec.index)  # fmt: skip
    sending_from = time.time()
    report = run_load_sync(load)
    print(RESULT_PREFIX + json.dumps(result_of(spec, report, start, sending_from)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
