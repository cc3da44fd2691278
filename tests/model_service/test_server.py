"""The model service over real HTTP: a uvicorn server on 127.0.0.1 and a real client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from model_service.admission import Decision
from model_service.server import Service, ServiceSettings, _AdmissionGate
from tests.model_service.conftest import TINY_INTENTS, TOKEN, Running, write_tiny_artifacts
from tests.model_service.conftest import ask as _ask

INTENTS = TINY_INTENTS


def test_round_trip_answers_with_intent_confidence_and_model(running: Running) -> None:
    with running.client() as client:
        reply = _ask(client)

    assert reply.status_code == 200
    body = reply.json()
    assert body["intent"] in INTENTS
    assert 0.0 < body["confidence"] <= 1.0
    assert (body["model"], body["precision"], body["version"], body["served_by"]) == ("full", "fp32", "v1", "model")
    assert body["handover"] is False


def test_health_and_readiness(running: Running) -> None:
    with running.client() as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["version"] == "v1"


def test_concurrent_requests_are_batched_and_all_answered(running: Running) -> None:
    texts = [f"question number {i} about my card" for i in range(40)]
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def ask(text: str) -> None:
        with running.client() as client:
            reply = _ask(client, text)
        with lock:
            results.append(reply)

    threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r.status_code for r in results] == [200] * 40
    with running.client() as client:
        metrics = client.get("/metrics").text
    count_line = next(line for line in metrics.splitlines() if line.startswith("peakguard_batch_size_count"))
    assert float(count_line.split()[-1]) < 41, "at least some requests shared a batch"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"\xff\xfe{}", 400, "body is not UTF-8"),
        (b"{text: hi}", 400, "body is not JSON"),
        (b'["hi"]', 422, 'a "text" field'),
        (b'{"query": "hi"}', 422, 'a "text" field'),
        (b'{"text": 42}', 422, '"text" must be a string, got int'),
        (b'{"text": "   "}', 422, '"text" is empty'),
        (json.dumps({"text": "x" * 201}).encode(), 422, "201 characters; the limit is 200"),
        (b"[" * 1100 + b"]" * 1100, 400, "nested deeper than the parser goes"),  # was a 500 (RecursionError)
        (b'{"text": "\\ud800 card"}', 400, "lone surrogate (U+D800)"),  # was a 500 (the tokenizer's TypeError)
    ],
)
def test_bad_input_gets_a_clear_4xx_and_harms_nobody(running: Running, body: bytes, status: int, message: str) -> None:
    with running.client() as client:
        reply = client.post("/v1/intent", content=body, headers={"content-type": "application/json"})
        after = _ask(client)

    assert reply.status_code == status
    assert message in reply.json()["error"]
    assert after.status_code == 200


def test_admin_api_needs_the_bearer_token(running: Running) -> None:
    with running.client() as client:
        assert client.get("/admin/status").status_code == 401
        assert client.get("/admin/status", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/admin/status", headers={"authorization": TOKEN}).status_code == 401
        status = client.get("/admin/status", headers={"authorization": f"Bearer {TOKEN}"})
    assert status.status_code == 200
    assert status.json()["ready"] is True
    assert TOKEN not in status.text


def test_mode_switch_through_the_admin_api_applies_to_the_next_request(running: Running) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    with running.client() as client:
        switched = client.put("/admin/mode", json={"model": "light", "precision": "int8"}, headers=auth)
        reply = _ask(client)
        refused = client.put("/admin/mode", json={"precision": "fp8"}, headers=auth)
        still = _ask(client)

    assert switched.status_code == 200
    assert (reply.json()["model"], reply.json()["precision"]) == ("light", "int8")
    assert refused.status_code == 422
    assert "precision='fp8'" in refused.json()["error"]
    assert (still.json()["model"], still.json()["precision"]) == ("light", "int8")


def test_mode_switch_through_the_watched_file(running: Running, tmp_path: Path) -> None:
    (tmp_path / "mode" / "mode.json").write_text(json.dumps({"model": "light"}))
    deadline = time.monotonic() + 5
    with running.client() as client:
        while _ask(client).json()["model"] != "light":
            assert time.monotonic() < deadline, "the mode file was not applied"
            time.sleep(0.05)
        status = client.get("/admin/status", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert status["modes"]["source"].startswith("file ")


def test_a_disabled_admin_api_says_why(tmp_path: Path) -> None:
    write_tiny_artifacts(tmp_path / "models")
    service = Service(ServiceSettings(artifacts=tmp_path / "models"))

    request = SimpleNamespace(headers={"authorization": "Bearer anything"})

    refusal = service.authorised(request)  # type: ignore[arg-type]
    assert refusal is not None and refusal.status_code == 403
    assert b"no admin token configured" in refusal.body


def test_overload_is_refused_at_once_with_retry_after(running: Running) -> None:
    admission = running.service.admission
    admission.latency_budget = 0.001
    for _ in range(8):
        admission.observe(batch_size=1, seconds=1.0)  # one request per second
    for batcher in running.service.batchers.values():
        batcher.in_flight = 1  # a batch is running: an idle replica would admit (admission.py)

    with running.client() as client:
        started = time.monotonic()
        reply = _ask(client)
        elapsed = time.monotonic() - started
        metrics = client.get("/metrics").text

    assert reply.status_code == 429
    assert int(reply.headers["retry-after"]) >= 1
    assert "over the 0.00 s budget" in reply.json()["error"]
    assert elapsed < 0.5
    assert 'peakguard_shed_total{status="429"} 1.0' in metrics


def test_shedding_answers_repeat_simple_queries_from_the_answer_table(running: Running) -> None:
    running.service.cache.min_confidence = 0.0
    auth = {"authorization": f"Bearer {TOKEN}"}
    with running.client() as client:
        first = _ask(client, "Where is my card?")
        client.put("/admin/mode", json={"shedding": True}, headers=auth)
        repeat = _ask(client, "where is my CARD")
        other = _ask(client, "a different question entirely")

    assert first.json()["served_by"] == "model"
    assert repeat.json()["served_by"] == "cache"
    assert repeat.json()["intent"] == first.json()["intent"]
    assert other.json()["served_by"] == "model"


def test_the_breaker_switches_to_light_and_back(running: Running) -> None:
    with running.client() as client:
        running.service._on_breaker(True, 2.0)
        degraded = _ask(client)
        running.service._on_breaker(False, 0.1)
        recovered = _ask(client)
        metrics = client.get("/metrics").text

    assert degraded.json()["model"] == "light"
    assert recovered.json()["model"] == "full"
    assert 'peakguard_breaker_switches_total{to="light"} 1.0' in metrics


def test_metrics_expose_stages_layers_and_mode(running: Running) -> None:
    with running.client() as client:
        for _ in range(3):
            _ask(client)
        metrics = client.get("/metrics").text

    for stage in ("queue", "batch", "model", "post"):
        assert f'peakguard_stage_seconds_count{{stage="{stage}"}}' in metrics
    assert 'peakguard_layer_seconds_count{layer="block0",model="full"}' in metrics
    assert 'peakguard_layer_seconds_count{layer="head",model="full"}' in metrics
    assert 'peakguard_mode{model="full",precision="fp32",shedding="false"} 1.0' in metrics
    assert "peakguard_ready 1.0" in metrics
    # The rest of the contract (every outcome, the invariants) is in test_metrics_contract.py.
    assert 'peakguard_request_seconds_count{outcome="answered",served_by="model"} 3.0' in metrics


def test_spans_join_the_callers_trace_stage_by_stage(running: Running) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with running.client() as client:
        _ask(client, traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
    running.service.tracing.flush()

    spans = running.spans.get_finished_spans()
    names = {span.name for span in spans}
    assert {"POST /v1/intent", "queue", "batch", "model", "post"} <= names
    request = next(s for s in spans if s.name == "POST /v1/intent")
    assert format(request.context.trace_id, "032x") == trace_id
    assert request.attributes is not None
    assert (request.attributes["peakguard.outcome"], request.attributes["peakguard.served_by"]) == ("answered", "model")
    for span in spans:
        if span.name in ("queue", "batch", "model", "post"):
            assert span.parent is not None and span.parent.span_id == request.context.span_id


def _overloaded(service: Service) -> None:
    service.admission.latency_budget = 0.001
    for _ in range(8):
        service.admission.observe(batch_size=1, seconds=1.0)
    for batcher in service.batchers.values():
        batcher.in_flight = 1


def test_the_gate_refuses_before_routing_and_before_the_body_is_read(running: Running) -> None:
    _overloaded(running.service)
    sent: list[dict[str, Any]] = []

    async def inner_app(*_args: object) -> None:
        raise AssertionError("a refused request reached FastAPI")

    async def receive() -> dict[str, Any]:
        raise AssertionError("a refused request's body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gate = _AdmissionGate(inner_app, running.service)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/intent",
        "headers": [(b"content-type", b"application/json")],
    }
    asyncio.run(gate(scope, receive, send))

    start, body = sent
    assert start["status"] == 429
    assert dict(start["headers"])[b"retry-after"] >= b"1"
    assert b"over the 0.00 s budget" in body["body"]


def test_an_admitted_request_is_decided_once(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    decide = running.service.admission.decide
    calls: list[int] = []

    def counted(**kwargs: Any) -> Any:
        calls.append(1)
        return decide(**kwargs)

    monkeypatch.setattr(running.service.admission, "decide", counted)
    with running.client() as client:
        assert _ask(client).status_code == 200

    assert len(calls) == 1


def test_each_model_answer_calibrates_admission_with_its_estimate_and_its_real_time(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    admission = running.service.admission
    observed: list[tuple[float, float]] = []
    monkeypatch.setattr(admission, "observe_answer", lambda estimated, seconds: observed.append((estimated, seconds)))
    estimates = iter([0.125, 0.25])

    def decide(**kwargs: Any) -> Decision:
        return Decision(admit=True, estimated_wait=next(estimates))

    monkeypatch.setattr(admission, "decide", decide)
    monkeypatch.setattr(type(admission), "estimating", property(lambda self: True))
    running.service.cache.min_confidence = 0.0
    auth = {"authorization": f"Bearer {TOKEN}"}
    with running.client() as client:
        started = time.monotonic()
        assert _ask(client, "Where is my card?").json()["served_by"] == "model"
        assert _ask(client, "has my transfer gone through").json()["served_by"] == "model"
        elapsed = time.monotonic() - started
        client.put("/admin/mode", json={"shedding": True}, headers=auth)
        monkeypatch.setattr(admission, "decide", lambda **kwargs: Decision(admit=True))
        assert _ask(client, "where is my CARD").json()["served_by"] == "cache"  # no model time to learn from

    assert [estimated for estimated, _ in observed] == [0.125, 0.25]
    assert all(0 < seconds <= elapsed for _, seconds in observed)


def test_a_cold_pods_answers_do_not_calibrate_admission(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before its cost model has batches, every estimate is 0: a cold pod's slow first answers
    would read as overruns of their whole latency and narrow admission for minutes."""
    admission = running.service.admission
    observed: list[tuple[float, float]] = []
    monkeypatch.setattr(admission, "observe_answer", lambda estimated, seconds: observed.append((estimated, seconds)))
    monkeypatch.setattr(type(admission), "estimating", property(lambda self: False))
    with running.client() as client:
        assert _ask(client, "Where is my card?").json()["served_by"] == "model"

    assert observed == []


def test_a_shed_the_answer_table_could_have_answered_is_counted(running: Running) -> None:
    running.service.cache.min_confidence = 0.0
    auth = {"authorization": f"Bearer {TOKEN}"}
    with running.client() as client:
        assert _ask(client, "Where is my card?").json()["served_by"] == "model"
        client.put("/admin/mode", json={"shedding": True}, headers=auth)
        _overloaded(running.service)
        hit = _ask(client, "where is my CARD")
        miss = _ask(client, "a different question entirely")
        metrics = client.get("/metrics").text

    assert hit.status_code == miss.status_code == 429  # admission comes before the answer table
    assert "peakguard_answer_table_hits_lost_total 1.0" in metrics
    assert 'peakguard_shed_total{status="429"} 2.0' in metrics


def test_batches_are_capped_at_the_size_that_runs_in_half_the_budget(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = running.service
    monkeypatch.setattr(service, "settings", dataclasses.replace(service.settings, batch_budget_share=0.5))
    admission = service.admission
    admission.latency_budget = 0.2
    for size in (2, 4, 8, 16, 2, 4, 8, 16):
        admission.observe(size, 0.02 + 0.02 * size)  # a = 20 ms, b = 20 ms: 4 requests fit in 100 ms
    # The tiny model's real batches take a few ms; frozen, the cost model keeps the cap at 4.
    monkeypatch.setattr(admission, "observe", lambda size, seconds: None)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    replies: list[int] = []

    def ask(client: httpx.Client, text: str) -> None:
        replies.append(_ask(client, text).status_code)

    with running.client() as client:
        # Batches wait (max_wait) for 16: uncapped, twelve requests at once would share one or two.
        assert client.put("/admin/mode", json={"batch_min": 16}, headers=admin).status_code == 200
        assert service.batch_bounds() == (4, 4)
        status = client.get("/admin/status", headers=admin).json()
        threads = [threading.Thread(target=ask, args=(client, f"card question {i}")) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = client.get("/metrics").text

    assert status["admission"]["batch_cap"] == 4
    sizes = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
             if line.startswith("peakguard_batch_size_")}  # fmt: skip
    answered = replies.count(200)
    assert answered >= 5
    assert sizes["peakguard_batch_size_count"] >= -(-answered // 4)
    assert sizes['peakguard_batch_size_bucket{le="4.0"}'] == sizes["peakguard_batch_size_count"]


def test_without_a_budget_share_batches_are_bounded_by_the_mode_alone(running: Running) -> None:
    admission = running.service.admission
    for size in (2, 4, 8, 16, 2, 4, 8, 16):
        admission.observe(size, 0.02 + 0.02 * size)

    assert running.service.settings.batch_budget_share is None  # the default, until measured to pay
    assert running.service.batch_bounds() == (1, 128)


def test_the_headers_are_checked_before_admission_and_counted_as_the_callers(running: Running) -> None:
    _overloaded(running.service)  # admission would refuse anything that reached it
    with running.client() as client:
        plain = client.post("/v1/intent", content=b'{"text": "hi"}', headers={"content-type": "text/plain"})
        big = client.post("/v1/intent", content=b" " * 3000, headers={"content-type": "application/json"})
        metrics = client.get("/metrics").text

    assert plain.status_code == 415 and "send application/json" in plain.json()["error"]
    assert big.status_code == 413 and "body of 3000 bytes; the limit is 2224 bytes" in big.json()["error"]
    assert 'peakguard_errors_total{kind="http_415"} 1.0' in metrics
    assert 'peakguard_request_seconds_count{outcome="client_error",served_by="none"} 2.0' in metrics
    assert "peakguard_shed_total{" not in metrics  # neither reached admission


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_cap(running: Running) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b" " * 1000

    with running.client() as client:
        reply = client.post("/v1/intent", content=chunks(), headers={"content-type": "application/json"})
    with running.client() as client:
        after = _ask(client)

    assert reply.status_code == 413 and "the limit is 2224 bytes" in reply.json()["error"]
    assert after.status_code == 200


def test_a_mode_names_a_version_from_the_artifact_root_never_a_path(running: Running) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    with running.client() as client:
        for version, message in (("/abs/path", "never a path"), ("../v1", "never a path"),
                                 ("v1/../../etc", "never a path"), ("v9", "'v9' is not a version under")):  # fmt: skip
            reply = client.put("/admin/mode", json={"model_version": version}, headers=auth)
            assert reply.status_code == 422 and message in reply.json()["error"], (version, reply.text)
        deep = client.put("/admin/mode", content=b"[" * 1100 + b"]" * 1100,
                          headers=auth | {"content-type": "application/json"})  # fmt: skip
        plain = client.put("/admin/mode", content=b'{"shedding": true}', headers=auth | {"content-type": "text/plain"})
        known = client.put("/admin/mode", json={"model_version": "v1"}, headers=auth)
        answer = _ask(client)

    assert deep.status_code == 400 and "nested deeper" in deep.json()["error"]
    assert plain.status_code == 415
    assert known.status_code == 200 and answer.json()["version"] == "v1"
