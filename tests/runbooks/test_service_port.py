"""The service port over real HTTP: timeouts and refusals become clear errors; windows of the pods'
own metrics give rates and quantiles the way PromQL would."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runbooks import deadlines
from runbooks.errors import RunbookError, TransientError
from runbooks.ports.service import OUTCOME_LABELS, ModelServiceClient, Window

METRICS_BEFORE = """\
peakguard_request_seconds_bucket{outcome="answered",served_by="model",le="0.1"} 10
peakguard_request_seconds_bucket{outcome="answered",served_by="model",le="0.5"} 10
peakguard_request_seconds_bucket{outcome="answered",served_by="model",le="+Inf"} 10
peakguard_request_seconds_count{outcome="answered",served_by="model"} 10
peakguard_request_seconds_count{outcome="answered",served_by="cache"} 0
peakguard_request_seconds_count{outcome="shed",served_by="none"} 0
peakguard_request_seconds_count{outcome="client_error",served_by="none"} 0
peakguard_request_seconds_count{outcome="server_error",served_by="none"} 0
peakguard_errors_total{kind="inference"} 0
peakguard_shed_total{status="429"} 0
"""
METRICS_AFTER = """\
peakguard_request_seconds_bucket{outcome="answered",served_by="model",le="0.1"} 90
peakguard_request_seconds_bucket{outcome="answered",served_by="model",le="0.5"} 100
peakguard_request_seconds_bucket{outcome="answered",served_by="model",le="+Inf"} 100
peakguard_request_seconds_bucket{outcome="answered",served_by="cache",le="0.1"} 10
peakguard_request_seconds_bucket{outcome="answered",served_by="cache",le="0.5"} 10
peakguard_request_seconds_bucket{outcome="answered",served_by="cache",le="+Inf"} 10
peakguard_request_seconds_bucket{outcome="shed",served_by="none",le="0.1"} 10
peakguard_request_seconds_bucket{outcome="shed",served_by="none",le="+Inf"} 10
peakguard_request_seconds_count{outcome="answered",served_by="model"} 100
peakguard_request_seconds_count{outcome="answered",served_by="cache"} 10
peakguard_request_seconds_count{outcome="shed",served_by="none"} 10
peakguard_request_seconds_count{outcome="client_error",served_by="none"} 25
peakguard_request_seconds_count{outcome="server_error",served_by="none"} 2
peakguard_errors_total{kind="inference"} 2
peakguard_errors_total{kind="http_400"} 25
peakguard_shed_total{status="429"} 10
"""


class _Pod:
    def __init__(self) -> None:
        self.delay = 0.0
        self.status = 200
        self.scrapes = 0
        pod = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(pod.delay)
                if self.path == "/metrics":
                    body = (METRICS_BEFORE if pod.scrapes == 0 else METRICS_AFTER).encode()
                    pod.scrapes += 1
                else:
                    body = b'{"mode": {}}'
                self.send_response(pod.status)
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_GET  # noqa: N815

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def pod() -> Iterator[_Pod]:
    served = _Pod()
    yield served
    served.server.shutdown()
    served.server.server_close()


def test_a_pod_that_does_not_answer_in_time_is_a_transient_timeout(pod: _Pod) -> None:
    pod.delay = 1.0
    with pytest.raises(TransientError, match=r"/admin/status: timed out"):
        ModelServiceClient(token="t", timeout=0.2).status(pod.url)


def test_a_refused_token_says_to_check_the_secret(pod: _Pod) -> None:
    pod.status = 401
    with pytest.raises(RunbookError, match="admin token was refused"):
        ModelServiceClient(token="wrong").push_mode(pod.url, {"model": "light"})


def test_a_pod_that_is_gone_is_transient(pod: _Pod) -> None:
    url = pod.url
    pod.server.shutdown()
    pod.server.server_close()
    with pytest.raises(TransientError):
        ModelServiceClient(token="t", timeout=1).status(url)


def test_a_window_is_the_difference_of_two_scrapes_read_by_the_metrics_contract(pod: _Pod) -> None:
    window = ModelServiceClient(token="t").window([pod.url], 0.0, sleep=lambda _: None)

    # 137 responses: 100 answered by the model and 10 from the cache, 10 shed, 25 client errors, 2 server errors.
    assert (window.requests, window.answered, window.shed) == (137.0, 100.0, 10.0)
    assert (window.server_errors, window.client_errors) == (2.0, 25.0)
    # Server errors over every response; the callers' 400s are not the service failing.
    assert window.error_rate == pytest.approx(2 / 137)
    assert window.shed_rate == pytest.approx(10 / 137)
    # Answered latency only (model and cache; the sheds' own latencies are not in it): 90 of the 100 new
    # answers under 0.1 s, 10 in (0.1, 0.5], so p99 interpolates inside that bucket.
    p99 = window.quantile(0.99)
    assert p99 is not None
    assert 0.1 < p99 <= 0.5
    assert window.p99_resolved


def test_the_outcome_labels_are_the_model_services_own() -> None:
    """runbooks may not import model_service; this pins the two sides of one contract together."""
    from model_service.metrics import OUTCOMES

    assert set(OUTCOME_LABELS) == set(OUTCOMES)


def test_a_pod_of_another_metrics_contract_is_refused_not_misread(pod: _Pod) -> None:
    global METRICS_BEFORE
    old = METRICS_BEFORE
    METRICS_BEFORE = 'peakguard_request_seconds_count{outcome="model"} 10\n'
    try:
        with pytest.raises(RunbookError, match=r"outcome 'model' is not one of answered"):
            ModelServiceClient(token="t").scrape(pod.url)
    finally:
        METRICS_BEFORE = old


def test_a_window_lengthens_until_its_p99_is_resolved(pod: _Pod) -> None:
    """10 answers in the first wait are too few for a p99; the window goes on to the next scrape."""
    waits: list[float] = []
    window = ModelServiceClient(token="t").window([pod.url], 1.0, sleep=waits.append, min_answers=100,
                                                  max_seconds=5.0)  # fmt: skip
    assert window.answered == 100
    assert waits == [1.0]  # the first second gave 100 answers (the fixture's second scrape)

    pod.scrapes = 0
    waits.clear()
    capped = ModelServiceClient(token="t").window([pod.url], 1.0, sleep=waits.append, min_answers=10_000,
                                                  max_seconds=3.0)  # fmt: skip
    assert waits == [1.0, 1.0, 1.0], "it gives up at max_seconds"
    assert capped.answered < 10_000


def test_a_window_never_outlasts_the_deadline(pod: _Pod) -> None:
    waits: list[float] = []
    with deadlines.until(2.5, what="a test step"):
        ModelServiceClient(token="t").window([pod.url], 10.0, sleep=waits.append)
    assert len(waits) == 1
    assert waits[0] <= 1.5, "one second is kept for the second scrape"


def test_a_window_without_answers_has_no_quantile_and_no_error_rate() -> None:
    empty = Window(seconds=1.0, requests=0, answered=0, shed=0, server_errors=0, client_errors=0, buckets={})
    assert empty.quantile(0.99) is None
    assert empty.error_rate is None
