"""A real Prometheus for the lab: it scrapes the pods' `/metrics` and evaluates the cluster's own
alert rules (infra/alerts.py), so the drill's alerts are the PromQL the cluster runs, not a copy.

The binary is found as `$PEAKGUARD_PROMETHEUS`, else `prometheus` on PATH, else the one `make setup`
puts in the venv (lab/scripts/fetch_prometheus.sh, from the distribution's package). The targets
are a file_sd file the caller rewrites as pods come and go (`set_targets`), each labelled with its
namespace and pod as the cluster's PodMonitor labels them. It scrapes and evaluates every second
(the cluster: every 5 s); `time_scale` shortens the rules' windows (see `infra.alerts.alert_rules`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from infra.alerts import alert_rules
from model_service.service_process import free_port

__all__ = ["Prometheus", "PrometheusError", "find_prometheus"]


class PrometheusError(RuntimeError):
    """Prometheus cannot be found, started or asked; the message says why and what to do."""


def find_prometheus() -> Path:
    candidates = [os.environ.get("PEAKGUARD_PROMETHEUS"), shutil.which("prometheus"),
                  str(Path(sys.prefix) / "opt" / "prometheus" / "bin" / "prometheus")]  # fmt: skip
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise PrometheusError(
        "no Prometheus binary: run `make setup` (it fetches the distribution's package into the venv), or "
        "install Prometheus and put it on PATH, or set PEAKGUARD_PROMETHEUS to the binary"
    )


@dataclass(frozen=True)
class Firing:
    """An alert Prometheus reports as firing."""

    name: str
    since: float
    """Unix time it became active (pending), as Prometheus reports `activeAt`."""
    labels: dict[str, str]
    annotations: dict[str, str]


class Prometheus:
    """`with Prometheus(folder, env=..., namespace=..., slo_seconds=..., time_scale=k) as prometheus:`."""

    def __init__(self, folder: Path, *, env: str, namespace: str, slo_seconds: float, time_scale: float = 1.0,
                 interval: float = 1.0, static_jobs: Mapping[str, str] | None = None) -> None:  # fmt: skip
        """`static_jobs`: more scrape jobs, name -> host:port, whose series keep their own labels (as
        kube-prometheus-stack scrapes kube-state-metrics, `honorLabels`)."""
        self.folder = folder.resolve()  # Prometheus resolves file_sd paths against its config's folder
        self.static_jobs = dict(static_jobs or {})
        self.namespace = namespace
        self.time_scale = time_scale
        self.interval = interval
        self.rules = alert_rules(env, namespace, slo_seconds, time_scale=time_scale)
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._targets = self.folder / "targets.json"
        self._binary = find_prometheus()

    def __enter__(self) -> Prometheus:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.set_targets([])
        (self.folder / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "peakguard.model-service",
                                                                           "rules": self.rules}]}))  # fmt: skip
        every = f"{self.interval:g}s"
        config = {
            "global": {"scrape_interval": every, "evaluation_interval": every, "scrape_timeout": every},
            "rule_files": [str(self.folder / "rules.yml")],
            "scrape_configs": [{
                "job_name": "model-service",
                "file_sd_configs": [{"files": [str(self._targets)], "refresh_interval": every}],
            }, *({"job_name": name, "honor_labels": True, "static_configs": [{"targets": [address]}]}
                 for name, address in self.static_jobs.items())],
        }  # fmt: skip
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = (self.folder / "prometheus.log").open("wb")
        self._process = subprocess.Popen(  # noqa: S603 (our binary, our arguments)
            [str(self._binary), f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1d"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited ({self._process.returncode}): {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise PrometheusError(f"prometheus was not ready within 30 s: {self.log_tail()}")

    def __exit__(self, *_: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def set_targets(self, pods: Sequence[tuple[str, str]]) -> None:
        """Scrape these (pod, base URL) from now on; written atomically (file_sd reads it whole)."""
        groups = [{"targets": [url.removeprefix("http://")], "labels": {"namespace": self.namespace, "pod": pod}}
                  for pod, url in pods]  # fmt: skip
        partial = self._targets.with_suffix(".partial")
        partial.write_text(json.dumps(groups))
        partial.replace(self._targets)

    def firing(self) -> list[Firing]:
        """The alerts firing now (not those still pending their `for:`)."""
        found = []
        for alert in self._get("/api/v1/alerts")["alerts"]:
            if alert.get("state") == "firing":
                since = _unix(alert.get("activeAt", ""))
                found.append(Firing(alert["labels"]["alertname"], since, alert["labels"], alert["annotations"]))
        return found

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        result: list[dict[str, Any]] = self._get("/api/v1/query", params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        result: list[dict[str, Any]] = self._get("/api/v1/query_range", params)["result"]
        return result

    def log_tail(self, lines: int = 20) -> str:
        path = self.folder / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"GET {path}: {exc}") from None
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"GET {path} {params}: {body.get('error', response.text[:300])}")
        return body["data"]


def _unix(stamp: str) -> float:
    import datetime

    if not stamp:
        return time.time()
    # Prometheus writes RFC 3339 with nanoseconds; Python's parser takes microseconds.
    trimmed = stamp.rstrip("Z").split(".")
    text = trimmed[0] + ("." + trimmed[1][:6] if len(trimmed) > 1 else "") + "+00:00"
    return datetime.datetime.fromisoformat(text).timestamp()
