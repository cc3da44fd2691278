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

from runbooks import deadlines
from runbooks.deadlines import call_timeout
from runbooks.errors import RunbookError, TransientError

__all__ = ["MIN_ANSWERS", "OUTCOME_LABELS", "ModelServiceClient", "Scrape", "Window"]

OUTCOME_LABELS = ("answered", "shed", "client_error", "server_error")
"""The `outcome` label of `peakguard_request_seconds`: model_service/metrics.py owns the contract
(every response counted once, under one of these); this package may not import it, so a test holds
the two together."""
MIN_ANSWERS = 100
"""Answers a window needs before its p99 means anything: with fewer, the 99th percentile is the
slowest one or two requests (a window lengthens until it has them, see `window`)."""


@dataclass(frozen=True)
class Scrape:
    """The counters of one pod's /metrics that the gates use."""

    buckets: Mapping[float, float]
    """Cumulative count of answered requests at or under each latency bound (seconds)."""
    requests: float
    """Every response, whatever its outcome."""
    answered: float
    shed: float
    """Refused by admission control (429/503 with Retry-After): what clients see as refusals."""
    server_errors: float
    client_errors: float
    """Requests the callers got wrong: no gate or alert counts them against the service."""


@dataclass(frozen=True)
class Window:
    """What happened between two scrapes, summed over pods."""

    seconds: float
    requests: float
    answered: float
    shed: float
    server_errors: float
    client_errors: float
    buckets: Mapping[float, float]

    @property
    def error_rate(self) -> float | None:
        """Server errors over every response; client errors are the callers'."""
        return self.server_errors / self.requests if self.requests > 0 else None

    @property
    def shed_rate(self) -> float | None:
        """Refusals over every response."""
        return self.shed / self.requests if self.requests > 0 else None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def p99_resolved(self) -> bool:
        return self.answered >= MIN_ANSWERS

    def summary(self) -> dict[str, Any]:
        """What a gate reports beside its verdict: the sample counts behind the figures."""
        return {"seconds": round(self.seconds, 2), "requests": self.requests, "answered": self.answered,
                "shed": self.shed, "serverErrors": self.server_errors, "clientErrors": self.client_errors}  # fmt: skip

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
        self._timeout = timeout
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
        counts = dict.fromkeys(OUTCOME_LABELS, 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                outcome = sample.labels.get("outcome")
                if sample.name == "peakguard_request_seconds_bucket" and outcome == "answered":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name == "peakguard_request_seconds_count" and outcome is not None:
                    if outcome not in counts:
                        raise RunbookError(
                            f"{base_url}/metrics: outcome {outcome!r} is not one of {', '.join(OUTCOME_LABELS)}; "
                            "the pod runs a model service of another metrics contract (an older image?)"
                        )
                    counts[outcome] += sample.value
        return Scrape(buckets=buckets, requests=sum(counts.values()), answered=counts["answered"],
                      shed=counts["shed"], server_errors=counts["server_error"],
                      client_errors=counts["client_error"])  # fmt: skip

    def window(
        self,
        base_urls: Sequence[str],
        seconds: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        min_answers: int = 0,
        max_seconds: float | None = None,
    ) -> Window:
        """Scrape every pod, wait, scrape again: the requests, errors and latencies in between.

        The window lasts `seconds`, and longer while it has fewer than `min_answers` answers, up to
        `max_seconds`; never past the current deadline (`runbooks.deadlines`)."""
        if not base_urls:
            raise RunbookError("no ready model-service pods to measure")
        started = time.monotonic()
        longest = max(seconds, max_seconds or seconds)
        first = {url: self.scrape(url) for url in base_urls}
        waited = 0.0
        while True:
            step = seconds if waited == 0 else min(seconds, longest - waited)
            left = deadlines.remaining()
            if left is not None:
                # Leave time for the second scrape of every pod within the deadline.
                step = max(0.0, min(step, left - 1.0))
            sleep(step)
            waited += step
            second = {url: self.scrape(url) for url in base_urls}
            window = _difference(first, second, time.monotonic() - started)
            # No request at all in a whole wait: waiting longer will not make a p99 (a quiet service).
            if window.answered >= min_answers or waited >= longest or step == 0 or window.requests == 0:
                return window

    def _request(self, method: str, url: str, *, auth: bool = True, json: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token}"} if auth else {}
        timeout = call_timeout(self._timeout, doing=f"{method} {url}")
        try:
            response = self._http.request(method, url, headers=headers, json=json, timeout=timeout)
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


def _difference(first: Mapping[str, Scrape], second: Mapping[str, Scrape], seconds: float) -> Window:
    buckets: dict[float, float] = {}
    totals = dict.fromkeys(("requests", "answered", "shed", "server_errors", "client_errors"), 0.0)
    for url, after in second.items():
        before = first[url]
        if after.requests < before.requests:
            before = Scrape({}, 0.0, 0.0, 0.0, 0.0, 0.0)  # the pod restarted: its counters began again
        for key in totals:
            totals[key] += getattr(after, key) - getattr(before, key)
        for bound, count in after.buckets.items():
            buckets[bound] = buckets.get(bound, 0.0) + count - before.buckets.get(bound, 0.0)
    return Window(seconds=seconds, buckets=buckets, **totals)
