"""The service port over real HTTP: timeouts and refusals become clear errors; windows of the pods'
own metrics give rates and quantiles the way PromQL would."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runbooks.errors import RunbookError, TransientError
from runbooks.service import ModelServiceClient, Window

METRICS_BEFORE = """\
peakguard_request_seconds_bucket{outcome="model",le="0.1"} 10
peakguard_request_seconds_bucket{outcome="model",le="0.5"} 10
peakguard_request_seconds_bucket{outcome="model",le="+Inf"} 10
peakguard_request_seconds_count{outcome="model"} 10
peakguard_request_seconds_count{outcome="shed"} 0
peakguard_errors_total{kind="inference"} 0
peakguard_shed_total{status="429"} 0
"""
METRICS_AFTER = """\
peakguard_request_seconds_bucket{outcome="model",le="0.1"} 100
peakguard_request_seconds_bucket{outcome="model",le="0.5"} 110
peakguard_request_seconds_bucket{outcome="model",le="+Inf"} 110
peakguard_request_seconds_count{outcome="model"} 110
peakguard_request_seconds_count{outcome="shed"} 10
peakguard_errors_total{kind="inference"} 2
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


def test_a_window_is_the_difference_of_two_scrapes(pod: _Pod) -> None:
    window = ModelServiceClient(token="t").window([pod.url], 0.0, sleep=lambda _: None)

    assert (window.requests, window.answered, window.errors, window.shed) == (110.0, 100.0, 2.0, 10.0)
    assert window.error_rate == pytest.approx(2 / 110)
    # 90 of 100 answers under 0.1 s, the rest under 0.5 s: p99 interpolates inside (0.1, 0.5].
    p99 = window.quantile(0.99)
    assert p99 is not None
    assert 0.1 < p99 <= 0.5
    assert window.quantile(0.5) == pytest.approx(0.1 * 50 / 90)


def test_a_window_without_answers_has_no_quantile_and_no_error_rate() -> None:
    empty = Window(seconds=1.0, requests=0, answered=0, errors=0, shed=0, buckets={})
    assert empty.quantile(0.99) is None
    assert empty.error_rate is None
