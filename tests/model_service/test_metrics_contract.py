"""The metrics contract of POST /v1/intent (model_service/metrics.py), over real HTTP: every
response counted once in peakguard_request_seconds under the right outcome, and the detail counters
(errors by kind, sheds by status, cache answers) adding up to it."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_service.metrics import OUTCOMES, SERVED_BY, ServiceMetrics
from model_service.server import ServiceSettings
from tests.model_service.conftest import TOKEN, Running, ask, serving


@dataclass
class Counts:
    """What one scrape of /metrics says about POST /v1/intent."""

    responses: Counter[tuple[str, str]] = field(default_factory=Counter)
    """peakguard_request_seconds_count by (outcome, served_by)."""
    errors: Counter[str] = field(default_factory=Counter)
    shed: Counter[str] = field(default_factory=Counter)
    cache_answers: float = 0.0
    in_flight: float = 0.0

    def of(self, *outcomes: str) -> float:
        return sum(n for (outcome, _), n in self.responses.items() if outcome in outcomes)

    def nonzero(self) -> dict[tuple[str, str], float]:
        return {labels: n for labels, n in self.responses.items() if n}


def _scrape(client: httpx.Client) -> Counts:
    counts = Counts()
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "peakguard_request_seconds_count":
                counts.responses[labels["outcome"], labels["served_by"]] += sample.value
            elif sample.name == "peakguard_errors_total":
                counts.errors[labels["kind"]] += sample.value
            elif sample.name == "peakguard_shed_total":
                counts.shed[labels["status"]] += sample.value
            elif sample.name == "peakguard_cache_answers_total":
                counts.cache_answers += sample.value
            elif sample.name == "peakguard_in_flight_requests":
                counts.in_flight = sample.value
    return counts


def _assert_invariants(counts: Counts) -> None:
    for outcome, served_by in counts.responses:
        assert outcome in OUTCOMES, outcome
        assert served_by in SERVED_BY, served_by
        assert (served_by == "none") == (outcome != "answered"), (outcome, served_by)
    assert sum(counts.errors.values()) == counts.of("client_error", "server_error")
    assert sum(counts.shed.values()) == counts.of("shed")
    assert counts.cache_answers == counts.responses["answered", "cache"]
    assert counts.in_flight == 0


def _post(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/v1/intent", content=body, headers={"content-type": "application/json"})


def test_every_response_is_counted_once_under_its_outcome(
    running: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service = running.service
    assert service.runtime is not None
    service.cache.min_confidence = 0.0

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("injected")

    with running.client() as client:
        before = _scrape(client)
        answered = ask(client, "where is my card")
        client.put("/admin/mode", json={"shedding": True}, headers={"authorization": f"Bearer {TOKEN}"})
        cached = ask(client, "Where is my CARD?")
        not_json = _post(client, b"{text: hi}")
        no_text = _post(client, b'{"query": "hi"}')
        too_long = _post(client, json.dumps({"text": "x" * 201}).encode())
        with monkeypatch.context() as patch:
            patch.setattr(service.runtime, "infer", boom)
            inference = ask(client, "inference breaks on this one")
        with monkeypatch.context() as patch:
            patch.setattr(service.runtime.encoder, "ids", boom)
            with caplog.at_level(logging.ERROR, logger="peakguard.server"):
                unhandled = ask(client, "the encoder breaks on this one")
        with monkeypatch.context() as patch:
            patch.setattr(service, "runtime", None)  # as before the weights are loaded
            warming_up = ask(client, "asked before the model is loaded")
        service.admission.latency_budget = 0.001
        for _ in range(8):
            service.admission.observe(batch_size=1, seconds=1.0)
        for batcher in service.batchers.values():
            batcher.in_flight = 1  # a batch is running: an idle replica would admit (admission.py)
        shed = ask(client, "asked while overloaded")
        after = _scrape(client)

    replies = (answered, cached, not_json, no_text, too_long, inference, unhandled, warming_up, shed)
    statuses = [reply.status_code for reply in replies]
    assert statuses == [200, 200, 400, 422, 422, 500, 500, 503, 429]
    assert (answered.json()["served_by"], cached.json()["served_by"]) == ("model", "cache")
    request_id = unhandled.headers["x-request-id"]
    assert unhandled.json() == {"error": "unhandled error answering POST /v1/intent: RuntimeError",
                                "request_id": request_id}  # fmt: skip
    assert unhandled.headers["content-type"] == "application/json"
    assert "Retry-After" in warming_up.headers and "not ready: warming up" in warming_up.json()["error"]
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("unhandled error")]
    assert f"(request {request_id})" in logged.getMessage()
    assert logged.levelno == logging.ERROR and logged.exc_info is not None
    assert isinstance(logged.exc_info[1], RuntimeError)

    assert before.nonzero() == {}
    assert after.nonzero() == {
        ("answered", "model"): 1,
        ("answered", "cache"): 1,
        ("client_error", "none"): 3,
        ("server_error", "none"): 3,
        ("shed", "none"): 1,
    }
    assert sum(after.responses.values()) == len(replies)
    assert +after.errors == {
        "http_400": 1,
        "http_422": 2,
        "inference": 1,
        "unhandled": 1,
        "not_ready": 1,
    }
    assert +after.shed == {"429": 1}
    _assert_invariants(after)


def test_a_service_that_failed_to_load_counts_its_503s_as_server_errors_not_sheds(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()  # no version to load
    settings = ServiceSettings(artifacts=tmp_path / "models")
    with serving(settings, ready=False) as running, running.client() as client:
        deadline = time.monotonic() + 10
        while "error" not in client.get("/readyz").json():
            assert time.monotonic() < deadline, "the load did not fail"
            time.sleep(0.05)
        reply = ask(client)
        counts = _scrape(client)

    assert reply.status_code == 503
    assert reply.json()["error"].startswith("not ready: ")
    assert counts.nonzero() == {("server_error", "none"): 1}
    assert +counts.errors == {"not_ready": 1}
    _assert_invariants(counts)


def test_every_valid_series_exists_from_the_start_and_nothing_else() -> None:
    families = {f.name: f for f in ServiceMetrics().registry.collect()}
    labels = {
        (s.labels["outcome"], s.labels["served_by"])
        for s in families["peakguard_request_seconds"].samples
        if s.name == "peakguard_request_seconds_count"
    }
    assert labels == {
        ("answered", "model"), ("answered", "cache"), ("shed", "none"), ("client_error", "none"),
        ("server_error", "none"),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("outcome", "served_by", "reason"),
    [("answered", "none", ""), ("server_error", "model", "inference"), ("answered", "model", "http_400"),
     ("shed", "none", ""), ("client_error", "none", "")],
)  # fmt: skip
def test_observe_response_refuses_what_would_break_the_invariants(outcome: str, served_by: str, reason: str) -> None:
    metrics = ServiceMetrics()
    with pytest.raises(ValueError, match=repr(outcome)):
        metrics.observe_response(outcome=outcome, served_by=served_by, seconds=0.1, reason=reason)  # type: ignore[arg-type]


def test_a_caller_that_hangs_up_mid_body_is_a_client_error_not_a_server_error(running: Running) -> None:
    """A client timing out while sending its body is the client's doing: it must not page anyone."""
    host, port = running.url.removeprefix("http://").split(":")
    with running.client() as client:
        before = _scrape(client)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(b"POST /v1/intent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"text\": \"half a bo")  # fmt: skip
        deadline = time.monotonic() + 10
        while (after := _scrape(client)).nonzero() == before.nonzero() and time.monotonic() < deadline:
            time.sleep(0.05)

    assert after.nonzero() == {("client_error", "none"): 1}
    assert +after.errors == {"client_disconnected": 1}
    _assert_invariants(after)
