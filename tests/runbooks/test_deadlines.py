"""Every call ends by its step's deadline: the real Kubernetes client and real boto3 against an
endpoint that accepts connections and never answers (a hung API server), and the engine's wiring."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from runbooks import deadlines
from runbooks.deadlines import DeadlineExceededError
from runbooks.errors import RunbookError, TransientError
from runbooks.ports.aws_clients import READ_TIMEOUTS, BoundedClient
from runbooks.ports.cloud import AwsCloud
from runbooks.ports.cluster import KubernetesCluster
from tests.runbooks.conftest import EngineFactory, World, approved_plan, of_event, setter, toy_runbook


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """A server that accepts every connection, reads what it is sent, and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for connection in held:
        connection.close()
    server.close()


def test_a_kubernetes_call_to_a_hung_api_ends_by_the_deadline(hung_endpoint: str) -> None:
    cluster = KubernetesCluster.from_url(hung_endpoint)
    started = time.monotonic()
    with deadlines.until(2.0, what="step hpa-bounds (timeout 2 s)"), pytest.raises(TransientError, match="read HPA"):
        cluster.hpa_bounds("peakguard", "model-service-full")
    assert time.monotonic() - started < 2.0 + 1.0

    # Past the deadline no call is made at all.
    with deadlines.until(0.0, what="step hpa-bounds (timeout 2 s)"), pytest.raises(DeadlineExceededError) as late:
        cluster.hpa_bounds("peakguard", "model-service-full")
    assert "step hpa-bounds (timeout 2 s): out of time before Kubernetes GET" in str(late.value)


def test_an_aws_call_to_a_hung_endpoint_ends_by_the_deadline(
    hung_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"AWS_ENDPOINT_URL": hung_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-west-2"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    cloud = AwsCloud(boto3.Session(), env="dev")
    started = time.monotonic()
    with deadlines.until(3.0, what="step gpu-node-groups (timeout 3 s)"), pytest.raises(TransientError):
        cloud.node_group_size("peakguard-dev", "gpu-full-us-west-2a-blue")
    elapsed = time.monotonic() - started
    # boto3's defaults (60 s read, 3 legacy attempts) took about 3 minutes here.
    assert elapsed < 3.0 + 1.0, f"{elapsed:.1f} s"


def test_an_aws_call_gets_the_largest_timeout_that_fits_twice_in_what_is_left() -> None:
    client = BoundedClient(boto3.Session(region_name="us-west-2"), "eks")

    def read_timeout() -> float:
        operation = client.describe_nodegroup
        timeout: float = operation.__self__.meta.config.read_timeout
        return timeout

    assert read_timeout() == READ_TIMEOUTS[-1], "no deadline: the top tier"
    with deadlines.until(5.0, what="a step"):
        assert read_timeout() == 2.0
    with deadlines.until(0.3, what="a step"):
        assert read_timeout() == READ_TIMEOUTS[0]
    config = client.describe_nodegroup.__self__.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}


def test_a_region_missing_is_said_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(RunbookError, match="no AWS region: pass --region, or set AWS_REGION"):
        AwsCloud(boto3.Session(), env="dev").targets()


def test_an_inner_deadline_never_outlasts_the_outer_one() -> None:
    with deadlines.until(1.0, what="outer"):
        with deadlines.until(60.0, what="inner"):
            left = deadlines.remaining()
            assert left is not None
            assert left <= 1.0
            assert deadlines.call_timeout(10.0, doing="a call") <= 1.0
        assert deadlines.call_timeout(0.5, doing="a call") == 0.5
    assert deadlines.remaining() is None


def test_a_step_whose_calls_outlast_its_timeout_fails_on_time_and_is_rolled_back(
    engine_for: EngineFactory, world: World
) -> None:
    """A step that keeps calling a slow API: each call is bounded by what is left, and once the
    step's time is up the next call is refused, so the step fails at its timeout, not later."""

    def slow_calls(_: Any) -> None:
        while True:
            time.sleep(min(0.2, deadlines.call_timeout(5.0, doing="PATCH a slow API")))

    world.before_apply["b"] = slow_calls
    runbook = toy_runbook(setter("a", "a", to=5), setter("b", "b", to="on", timeout=1.0))
    engine = engine_for(runbook)
    started = time.monotonic()
    outcome = engine.run(*approved_plan(engine))

    assert outcome.status == "rolled-back"
    assert "step b (timeout 1 s): out of time before PATCH a slow API" in outcome.reason
    assert time.monotonic() - started < 1.0 + 2.0
    assert world.values["a"] == 2
    (rollback,) = of_event(outcome.journal, "rollback_started")
    assert rollback["steps"] == ["b", "a"]


def test_the_heartbeat_thread_keeps_its_own_caps_outside_a_steps_deadline() -> None:
    seen: list[float | None] = []
    with deadlines.until(0.5, what="a step"):
        thread = threading.Thread(target=lambda: seen.append(deadlines.remaining()))
        thread.start()
        thread.join()
    assert seen == [None]
