"""The least-outstanding-requests proxy, over real HTTP: httpx in front, small aiohttp targets behind.

Each target runs on 127.0.0.1 in its own thread and event loop, answers every request with a JSON
echo of what it got, sleeps `delay` seconds (or `?sleep=` seconds) first, and counts what it got.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp.web
import httpx
import pytest

from lab.lor_proxy import Backend, LorProxy

_TIMEOUT = httpx.Timeout(10.0)


# --- Targets --------------------------------------------------------------------------------------


class _Target:
    """A tiny model-service stand-in: echoes the request as JSON after a delay, counts requests."""

    def __init__(self, pod: str, *, delay: float = 0.0) -> None:
        self.pod = pod
        self.delay = delay
        self.received = 0
        self.in_flight = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"target-{pod}", daemon=True)
        self._runner: aiohttp.web.AppRunner | None = None

    @property
    def backend(self) -> Backend:
        return (self.pod, self.url)

    def __enter__(self) -> _Target:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> str:
        app = aiohttp.web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = aiohttp.web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        await _cancel_the_rest()

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.received += 1
        self.in_flight += 1
        try:
            await asyncio.sleep(float(request.query.get("sleep", self.delay)))
            echo = {
                "pod": self.pod,
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "body": (await request.read()).decode(),
                "headers": {name.lower(): value for name, value in request.headers.items()},
                "peer_port": request.transport.get_extra_info("peername")[1] if request.transport else None,
            }
            response = aiohttp.web.json_response(echo, status=int(request.query.get("status", "200")))
            response.headers["X-Served-By"] = self.pod
            response.headers.add("Set-Cookie", "a=1")
            response.headers.add("Set-Cookie", "b=2")
            return response
        finally:
            self.in_flight -= 1


async def _cancel_the_rest() -> None:
    """Cancel and await this loop's other tasks, so that closing it leaves none pending."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=1.0)


@pytest.fixture
def targets() -> Iterator[list[_Target]]:
    with _Target("pod-a") as a, _Target("pod-b") as b, _Target("pod-c") as c:
        yield [a, b, c]


def _wait_for(condition: Any, *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)


def _dead_url() -> str:
    """A 127.0.0.1 URL nobody listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- Forwarding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_forwards_method_path_query_headers_body_and_status(targets: list[_Target], method: str) -> None:
    a = targets[0]
    with LorProxy(lambda: [a.backend]) as proxy, httpx.Client(timeout=_TIMEOUT) as http:
        body = b"" if method in ("GET", "DELETE") else '{"q": "héllo"}'.encode()
        response = http.request(
            method,
            f"{proxy.url}/v1/embed/x%20y?status=201&b=two",
            content=body,
            headers={"X-Test": "kept", "Connection": "keep-alive, X-Hop", "X-Hop": "dropped"},
        )

    assert response.status_code == 201
    echo = response.json()
    assert echo["pod"] == "pod-a"
    assert echo["method"] == method
    assert echo["path"] == "/v1/embed/x y"
    assert echo["query"] == "status=201&b=two"
    assert echo["body"] == body.decode()
    assert echo["headers"]["x-test"] == "kept"
    assert "x-hop" not in echo["headers"]
    assert echo["headers"]["host"] == proxy.url.removeprefix("http://")  # kept, as an ALB keeps it
    assert echo["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert response.headers["X-Served-By"] == "pod-a"
    assert response.headers.get_list("Set-Cookie") == ["a=1", "b=2"]
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert proxy.served() == {"pod-a": 1}


def test_no_ready_targets_answers_503_at_once() -> None:
    with LorProxy(lambda: []) as proxy, httpx.Client(timeout=_TIMEOUT) as http:
        started = time.monotonic()
        response = http.post(f"{proxy.url}/v1/embed", content=b"x")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json() == {"error": "no ready targets"}
    assert elapsed < 0.5
    assert proxy.served() == {}
    assert proxy.errors() == {"503 no ready targets": 1}


def test_refused_connection_answers_502_naming_the_pod() -> None:
    with LorProxy(lambda: [("pod-dead", _dead_url())]) as proxy, httpx.Client(timeout=_TIMEOUT) as http:
        response = http.get(f"{proxy.url}/healthz")

    assert response.status_code == 502
    assert "pod-dead" in response.json()["error"]
    assert proxy.served() == {"pod-dead": 1}
    assert proxy.outstanding() == {"pod-dead": 0}
    assert proxy.errors() == {"502 ClientConnectorError": 1}


def test_target_slower_than_the_timeout_answers_504_naming_the_pod(targets: list[_Target]) -> None:
    slow = targets[0]
    slow.delay = 3.0
    with (
        LorProxy(lambda: [slow.backend], request_timeout=0.3) as proxy,
        httpx.Client(timeout=_TIMEOUT) as http,
    ):
        started = time.monotonic()
        response = http.get(f"{proxy.url}/v1/embed")
        elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert "pod-a" in response.json()["error"]
    assert elapsed < 2.0
    assert proxy.served() == {"pod-a": 1}
    assert proxy.errors() == {"504 TimeoutError": 1}


@pytest.mark.parametrize(("idle_timeout", "reused"), [(0.3, False), (60.0, True)])
def test_a_target_connection_idle_past_the_idle_timeout_is_closed(
    targets: list[_Target], idle_timeout: float, reused: bool
) -> None:
    # As the ALB's idle timeout: the proxy, not the target, should be the one to close idle
    # connections, so the target's keep-alive must be longer (the pods' --keep-alive).
    with (
        LorProxy(lambda: [targets[0].backend], idle_timeout=idle_timeout) as proxy,
        httpx.Client(timeout=_TIMEOUT) as http,
    ):
        first = http.get(f"{proxy.url}/one").json()["peer_port"]
        time.sleep(1.0)
        second = http.get(f"{proxy.url}/two").json()["peer_port"]

    assert (first == second) is reused
    assert proxy.errors() == {}


# --- Routing --------------------------------------------------------------------------------------


def test_idle_targets_share_sequential_requests_in_turn(targets: list[_Target]) -> None:
    with LorProxy(lambda: [t.backend for t in targets]) as proxy, httpx.Client(timeout=_TIMEOUT) as http:
        pods = [http.get(f"{proxy.url}/x").json()["pod"] for _ in range(9)]

    assert sorted(pods) == ["pod-a"] * 3 + ["pod-b"] * 3 + ["pod-c"] * 3
    assert proxy.served() == {"pod-a": 3, "pod-b": 3, "pod-c": 3}


def test_under_load_the_fast_target_serves_most_and_nothing_stays_outstanding(targets: list[_Target]) -> None:
    slow, fast = targets[0], targets[1]
    slow.delay, fast.delay = 0.3, 0.005
    total, clients = 60, 10
    numbers = iter(range(total))
    numbers_lock = threading.Lock()
    statuses: list[int] = []

    def client(http: httpx.Client, url: str) -> None:
        while True:
            with numbers_lock:
                if next(numbers, None) is None:
                    return
            statuses.append(http.get(f"{url}/v1/embed").status_code)

    with (
        LorProxy(lambda: [slow.backend, fast.backend]) as proxy,
        httpx.Client(timeout=_TIMEOUT, limits=httpx.Limits(max_connections=clients)) as http,
        concurrent.futures.ThreadPoolExecutor(clients) as pool,
    ):
        for done in [pool.submit(client, http, proxy.url) for _ in range(clients)]:
            done.result(timeout=15)
        served, outstanding = proxy.served(), proxy.outstanding()

    assert statuses == [200] * total
    assert served == {"pod-a": slow.received, "pod-b": fast.received}
    assert slow.received + fast.received == total
    # Round robin would split 30/30; least outstanding sends the slow pod only what keeps its
    # queue level with the fast one's, which drains 60 times quicker.
    round_robin_share = total // 2
    assert slow.received < round_robin_share / 2, served
    assert fast.received >= 3 * slow.received, served
    assert outstanding == {"pod-a": 0, "pod-b": 0}


# --- Registration ---------------------------------------------------------------------------------


def test_a_deregistered_target_gets_no_new_requests_but_finishes_its_own(targets: list[_Target]) -> None:
    a, b = targets[0], targets[1]
    interval = 0.1
    listed = [a.backend]
    with (
        LorProxy(lambda: list(listed), refresh_interval=interval) as proxy,
        httpx.Client(timeout=_TIMEOUT) as http,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        long_request = pool.submit(http.get, f"{proxy.url}/long?sleep=1.0")
        _wait_for(lambda: a.in_flight == 1)

        # Swap a for b: within about two refresh intervals, requests stop reaching a.
        listed[:] = [b.backend]
        swapped = time.monotonic()
        while http.get(f"{proxy.url}/short").json()["pod"] != "pod-b":
            assert time.monotonic() - swapped < 2 * interval + 0.2, "a still gets new requests"
        assert time.monotonic() - swapped < 2 * interval + 0.2

        # Were a still registered, it would take some of these (b would be busier than a).
        busy = [pool.submit(http.get, f"{proxy.url}/busy?sleep=0.2") for _ in range(3)]
        assert [done.result(timeout=5).json()["pod"] for done in busy] == ["pod-b"] * 3
        assert proxy.outstanding()["pod-a"] == 1

        finished = long_request.result(timeout=5)
        assert finished.status_code == 200
        assert finished.json()["pod"] == "pod-a"
        assert a.in_flight == 0
        assert proxy.outstanding() == {"pod-a": 0, "pod-b": 0}
        assert proxy.served()["pod-a"] == a.received


def test_a_failing_source_keeps_the_targets_listed_before(
    targets: list[_Target], caplog: pytest.LogCaptureFixture
) -> None:
    a = targets[0]
    calls = 0

    def flaky() -> list[Backend]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("kube API unreachable")
        return [a.backend]

    with (
        caplog.at_level(logging.WARNING, logger="lab.lor_proxy"),
        LorProxy(flaky, refresh_interval=0.05) as proxy,
        httpx.Client(timeout=_TIMEOUT) as http,
    ):
        _wait_for(lambda: calls >= 3)
        response = http.get(f"{proxy.url}/x")

    assert response.status_code == 200
    assert response.json()["pod"] == "pod-a"
    assert any("kube API unreachable" in record.getMessage() for record in caplog.records)


# --- Lifecycle ------------------------------------------------------------------------------------


def test_exit_cancels_requests_in_flight_promptly_and_cleanly(
    targets: list[_Target], caplog: pytest.LogCaptureFixture
) -> None:
    slow = targets[0]
    slow.delay = 5.0
    with (
        caplog.at_level(logging.WARNING),
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        httpx.Client(timeout=_TIMEOUT) as http,
    ):
        proxy = LorProxy(lambda: [slow.backend])
        with proxy:
            pending = pool.submit(http.get, f"{proxy.url}/v1/embed")
            _wait_for(lambda: slow.in_flight == 1)
            started = time.monotonic()
        stopped_in = time.monotonic() - started

        with pytest.raises(httpx.HTTPError):
            pending.result(timeout=5).raise_for_status()

    assert stopped_in < 2.0
    assert proxy.outstanding() == {"pod-a": 0}
    assert not [record for record in caplog.records if "nclosed" in record.getMessage()]


def test_rejects_non_positive_intervals() -> None:
    with pytest.raises(ValueError, match="refresh_interval must be > 0 seconds, got 0"):
        LorProxy(lambda: [], refresh_interval=0)
    with pytest.raises(ValueError, match="request_timeout must be > 0 seconds, got -1"):
        LorProxy(lambda: [], request_timeout=-1)
    with pytest.raises(ValueError, match="idle_timeout must be > 0 seconds, got 0"):
        LorProxy(lambda: [], idle_timeout=0)
