"""The Job controller and the kubelet for Indexed Jobs, played: each pod of a Job runs its container's
command as a local process (the distributed load's workers, `loadtest.worker`).

As the Job controller does for `completionMode: Indexed` (Kubernetes docs, "Jobs", Completion mode):
`parallelism` pods at once, one per index, each labelled `batch.kubernetes.io/job-name` and
annotated `batch.kubernetes.io/job-completion-index`, and its containers given JOB_COMPLETION_INDEX;
the Job's status counts active, succeeded and failed pods and lists `completedIndexes`, and it ends
with a `Complete` condition once every index succeeded, or `Failed` once more pods failed than
`backoffLimit` allows or `activeDeadlineSeconds` passed (its pods then stopped). Deleting the Job
stops its pods' processes and removes them. Not played: retries (the load Job's backoffLimit is 0),
pod failure policies, suspension, scheduling (pods run at once).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.kube_api import ApiStatus, ObjectStore

__all__ = ["PlayedJobs"]

_MERGE = "application/merge-patch+json"
_JOB_NAME = "batch.kubernetes.io/job-name"
_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass
class _Run:
    namespace: str
    job: str
    deadline: float | None
    processes: dict[str, tuple[int, subprocess.Popen[bytes]]] = field(default_factory=dict)
    """Pod name -> (index, its container's process)."""
    finished: bool = False


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ranges(indexes: list[int]) -> str:
    """`0-2,4`: how completedIndexes lists them."""
    parts: list[str] = []
    run: list[int] = []
    for index in sorted(indexes):
        if run and index == run[-1] + 1:
            run.append(index)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [index]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


class PlayedJobs:
    """Use as a context manager; `env` is added to every container's environment (the lab's API URL)."""

    def __init__(self, store: ObjectStore, *, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.workdir = workdir
        self.env = dict(env or {})
        self._runs: dict[tuple[str, str], _Run] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="played-jobs", daemon=True)

    def __enter__(self) -> PlayedJobs:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for run in list(self._runs.values()):
            self._kill(run)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.tick()

    def tick(self) -> None:
        jobs = {(j["metadata"]["namespace"], j["metadata"]["name"]): j for j in self.store.list("jobs", None)}
        for key, run in list(self._runs.items()):
            if key not in jobs:  # deleted: its pods go with it
                self._kill(run)
                for pod in run.processes:
                    with contextlib.suppress(ApiStatus):
                        self.store.delete("pods", run.namespace, pod, grace_seconds=0)
                del self._runs[key]
        for key, job in jobs.items():
            if job["spec"].get("completionMode") != "Indexed":
                continue  # only Indexed Jobs are played (the load's)
            found = self._runs.get(key)
            if found is None:
                found = self._runs[key] = self._start(job)
            if not found.finished:
                self._update(job, found)

    def _start(self, job: Mapping[str, Any]) -> _Run:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        spec = job["spec"]
        deadline = spec.get("activeDeadlineSeconds")
        run = _Run(namespace, name, time.monotonic() + deadline if deadline else None)
        template = spec["template"]
        for index in range(int(spec.get("parallelism", spec.get("completions", 1)))):
            pod = f"{name}-{index}-{os.urandom(3).hex()[:5]}"
            labels = {**template.get("metadata", {}).get("labels", {}), _JOB_NAME: name, "job-name": name}
            self.store.create("pods", namespace, {
                "metadata": {"name": pod, "labels": labels, "annotations": {_INDEX: str(index)},
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                  "uid": job["metadata"]["uid"], "controller": True}]},
                "spec": template["spec"],
                "status": {"phase": "Pending"},
            })  # fmt: skip
            (container,) = template["spec"]["containers"]
            command = [*container.get("command", []), *container.get("args", [])]
            if command and command[0] in ("python", "python3"):
                command[0] = sys.executable  # the container's Python is this checkout's here
            env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", [])}, **self.env,
                   "JOB_COMPLETION_INDEX": str(index)}  # fmt: skip
            log = self.workdir / f"{namespace}.{pod}.log"
            with log.open("wb") as out:
                # The Job's own container command (a test's, or the coordinator's worker).
                process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                           stdin=subprocess.DEVNULL)  # fmt: skip
            self.store.pod_logs[(namespace, pod)] = log
            run.processes[pod] = (index, process)
            self.store.patch("pods", namespace, pod, {"status": {"phase": "Running", "startTime": _now()}},
                             content_type=_MERGE, only_status=True)  # fmt: skip
        return run

    def _update(self, job: Mapping[str, Any], run: _Run) -> None:
        spec = job["spec"]
        succeeded: list[int] = []
        failed: list[int] = []
        active = 0
        for pod, (index, process) in run.processes.items():
            code = process.poll()
            if code is None:
                active += 1
                continue
            (succeeded if code == 0 else failed).append(index)
            phase = "Succeeded" if code == 0 else "Failed"
            try:
                if self.store.get("pods", run.namespace, pod).get("status", {}).get("phase") != phase:
                    self.store.patch("pods", run.namespace, pod, {"status": {"phase": phase}},
                                     content_type=_MERGE, only_status=True)  # fmt: skip
            except ApiStatus:
                pass
        condition = None
        if len(succeeded) >= int(spec.get("completions", 1)):
            condition = {"type": "Complete", "status": "True", "lastTransitionTime": _now()}
        elif len(failed) > int(spec.get("backoffLimit", 6)):
            condition = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                         "lastTransitionTime": _now()}  # fmt: skip
        elif run.deadline is not None and time.monotonic() > run.deadline:
            self._kill(run)
            condition = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                         "lastTransitionTime": _now()}  # fmt: skip
        status: dict[str, Any] = {"active": active, "succeeded": len(succeeded), "failed": len(failed),
                                  "completedIndexes": _ranges(succeeded)}  # fmt: skip
        if condition is not None:
            if condition["type"] == "Failed":
                self._kill(run)
            status |= {"active": 0, "conditions": [condition], "completionTime": _now()}
            run.finished = True
        with contextlib.suppress(ApiStatus):  # deleted meanwhile: the next tick stops its pods
            self.store.patch("jobs", run.namespace, run.job, {"status": status}, content_type=_MERGE,
                             only_status=True)  # fmt: skip

    def _kill(self, run: _Run) -> None:
        for _, process in run.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in run.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
