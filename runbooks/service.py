"""The service port: each model-service pod's admin API and metrics, over HTTP.

A mounted ConfigMap reaches pods only after the kubelet syncs it (a minute or more), so a mode
change is also pushed to every ready pod's admin API and confirmed there. Latency and error
gates are read from the pods' own Prometheus metrics, two scrapes a window apart: what the
service measured, not an estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from runbooks.errors import RunbookError, TransientError

__all__ = ["ModelServiceClient", "Scrape", "Window"]

_ANSWERED_EXCLUDES = ("shed", "error")
"""Outcome labels of requests that got no answer; the rest (model, cache) were answered."""


@dataclass(frozen=True)
class Scrape:
    """The counters of one pod's /metrics that the gates use."""

    buckets: Mapping[float, float]
    """Cumulative count of answered requests at or under each latency bound (seconds)."""
    answered: float
    requests: float
    errors: float
    shed: float


@dataclass(frozen=True)
class Window:
    """What happened between two scrapes, summed over pods."""

    seconds: float
    requests: float
    answered: float
    errors: float
    shed: float
    buckets: Mapping[float, float]

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def quantile(self, q: float) -> float | None:
        """Like PromQL's histogram_quantile: linear within the bucket; None without answers."""
        if self.answered <= 0:
            return None
        rank = q * self.answered
        previous_bound, previous_count = 0.0, 0.0
        for bound in sorted(self.buckets):
            count = self.buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    return previous_bound
                share = (rank - previous_count) / (count - previous_count) if count > previous_count else 1.0
                return previous_bound + (bound - previous_bound) * share
            previous_bound, previous_count = bound, count
        return previous_bound


class ModelServiceClient:
    def __init__(self, *, token: str, timeout: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self._token = token
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def status(self, base_url: str) -> dict[str, Any]:
        response = self._request("GET", f"{base_url}/admin/status")
        body: dict[str, Any] = response.json()
        return body

    def push_mode(self, base_url: str, mode: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the mode to one pod; returns the mode it now runs."""
        response = self._request("PUT", f"{base_url}/admin/mode", json=dict(mode))
        body: dict[str, Any] = response.json()["mode"]
        return body

    def scrape(self, base_url: str) -> Scrape:
        text = self._request("GET", f"{base_url}/metrics", auth=False).text
        buckets: dict[float, float] = {}
        answered = requests = errors = shed = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "peakguard_request_seconds_bucket":
                    if labels.get("outcome") not in _ANSWERED_EXCLUDES:
                        bound = float(labels["le"])
                        buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name == "peakguard_request_seconds_count":
                    requests += sample.value
                    if labels.get("outcome") not in _ANSWERED_EXCLUDES:
                        answered += sample.value
                elif sample.name == "peakguard_errors_total":
                    errors += sample.value
                elif sample.name == "peakguard_shed_total":
                    shed += sample.value
        return Scrape(buckets=buckets, answered=answered, requests=requests, errors=errors, shed=shed)

    def window(
        self, base_urls: Sequence[str], seconds: float, *, sleep: Callable[[float], None] = time.sleep
    ) -> Window:
        """Scrape every pod, wait, scrape again: the requests, errors and latencies in between."""
        if not base_urls:
            raise RunbookError("no ready model-service pods to measure")
        started = time.monotonic()
        first = {url: self.scrape(url) for url in base_urls}
        sleep(seconds)
        second = {url: self.scrape(url) for url in base_urls}
        elapsed = time.monotonic() - started
        buckets: dict[float, float] = {}
        totals = {"requests": 0.0, "answered": 0.0, "errors": 0.0, "shed": 0.0}
        for url in base_urls:
            before, after = first[url], second[url]
            if after.requests < before.requests:
                before = Scrape({}, 0.0, 0.0, 0.0, 0.0)  # the pod restarted: its counters began again
            for key in totals:
                totals[key] += getattr(after, key) - getattr(before, key)
            for bound, count in after.buckets.items():
                buckets[bound] = buckets.get(bound, 0.0) + count - before.buckets.get(bound, 0.0)
        return Window(seconds=elapsed, buckets=buckets, **totals)

    def _request(self, method: str, url: str, *, auth: bool = True, json: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token}"} if auth else {}
        try:
            response = self._http.request(method, url, headers=headers, json=json)
        except httpx.TimeoutException:
            raise TransientError(f"{method} {url}: timed out") from None
        except httpx.HTTPError as exc:
            raise TransientError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if response.status_code == 401:
            raise RunbookError(f"{method} {url}: 401, the admin token was refused; check the admin Secret")
        if response.status_code in (429, 502, 503, 504):
            raise TransientError(f"{method} {url}: {response.status_code}")
        if response.status_code >= 400:
            raise RunbookError(f"{method} {url}: {response.status_code}: {response.text[:300]}")
        return response
