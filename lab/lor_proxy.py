"""An HTTP reverse proxy on 127.0.0.1 that plays an AWS ALB target group, for tests and the local drill.

It stands in front of the local model-service processes the way the ALB stands in front of the
pods, so that evicting or breaking a pod really affects traffic. What is played, each as the ALB
documentation describes it:

- routing `least_outstanding_requests`: each request goes to the target with the fewest requests
  in flight; ties are broken round-robin among the tied targets, so idle targets share the load;
- registration follows readiness: `backends()` (the caller derives the ready targets from
  EndpointSlices) is polled every `refresh_interval` seconds; a target no longer listed gets no
  new requests, but the requests it already has finish (deregistration delay, without a limit);
- the connection idle timeout (`idle_timeout`, the ALB's `idle_timeout.timeout_seconds`): a
  connection to a target idle this long is closed by the proxy; a target that closes idle
  connections sooner races it, and a request sent on a connection the target is closing gets 502,
  as AWS documents for the ALB;
- no registered target: 503 at once; a target that refuses or drops the connection: 502; a
  target that does not answer within `request_timeout`: 504 — each with a JSON body
  `{"error": ...}` that names the target, where there is one;
- requests pass through with method, path, query, headers (except hop-by-hop ones; `Host` kept,
  `X-Forwarded-For/-Proto/-Port` added) and body; responses with status, headers (except
  hop-by-hop ones and `Content-Length`, recomputed) and body, bytes as the target sent them.

Not played: health checks of its own (readiness is the caller's), slow start, stickiness, HTTP/2,
WebSockets, streaming (request and response bodies are buffered), connection limits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Sequence

import aiohttp
import aiohttp.web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["Backend", "LorProxy"]

logger = logging.getLogger(__name__)

Backend = tuple[str, str]
"""A target: (pod name, base URL such as "http://127.0.0.2:8080")."""

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
     "trailers", "transfer-encoding", "upgrade"}
)  # fmt: skip
"""Headers that belong to one connection (RFC 9110 7.6.1), never forwarded."""

_SHUTDOWN_GRACE = 0.1
"""Seconds requests still in flight on `__exit__` get before they are cancelled: a stopped proxy is
gone, as a deleted load balancer is, and tests should not wait for slow targets."""


def _error(status: int, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response({"error": message}, status=status)


def _forwardable(headers: CIMultiDictProxy[str], *, drop: frozenset[str]) -> CIMultiDict[str]:
    """The headers minus hop-by-hop ones, those the `Connection` header names, and `drop`."""
    named = {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}
    return CIMultiDict(
        (name, value) for name, value in headers.items() if name.lower() not in _HOP_BY_HOP | named | drop
    )


class LorProxy:
    """The proxy, served on 127.0.0.1 (port 0 = a free port) from its own thread and event loop.

    Use as a context manager; `url` is set on entry. `outstanding()` and `served()` may be read
    from any thread.
    """

    def __init__(
        self,
        backends: Callable[[], Sequence[Backend]],
        *,
        refresh_interval: float = 0.5,
        request_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        port: int = 0,
    ) -> None:
        if refresh_interval <= 0:
            raise ValueError(f"refresh_interval must be > 0 seconds, got {refresh_interval}")
        if request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {request_timeout}")
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout}")
        self._idle_timeout = idle_timeout
        self._backends_source = backends
        self._refresh_interval = refresh_interval
        self._request_timeout = request_timeout
        self._port = port
        self.url = ""
        # Counters are changed on the loop thread and read from others, hence the lock.
        self._lock = threading.Lock()
        self._outstanding: dict[str, int] = {}
        self._served: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._targets: list[Backend] = []
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lor-proxy", daemon=True)
        # backends() may block (it reads the Kubernetes API): it runs here, never on the loop.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lor-proxy-refresh")
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._listen_port = port

    def __enter__(self) -> LorProxy:
        self._thread.start()
        try:
            self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            self._loop.close()

    def outstanding(self) -> dict[str, int]:
        """Requests in flight now, by pod (every pod ever routed to, 0 when idle)."""
        with self._lock:
            return dict(self._outstanding)

    def served(self) -> dict[str, int]:
        """Requests answered so far, by pod, whatever the status (502 and 504 included)."""
        with self._lock:
            return dict(self._served)

    def errors(self) -> dict[str, int]:
        """The proxy's own error answers so far, by status and cause ("502 ServerDisconnectedError"):
        what an ALB's access log says in its error reason, so that a 502 can be told from a 504."""
        with self._lock:
            return dict(self._errors)

    def _count_error(self, cause: str) -> None:
        with self._lock:
            self._errors[cause] = self._errors.get(cause, 0) + 1

    # --- Lifecycle (on the loop thread) ---------------------------------------------------------

    async def _start(self) -> str:
        # The target's bytes pass through untouched: no decompression either way, no cookie jar
        # (Set-Cookie belongs to the client), no default headers added, no connection limit.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._request_timeout),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=self._idle_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        await self._refresh()  # so that the first request already sees the targets
        app = aiohttp.web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = aiohttp.web.AppRunner(
            app, access_log=None, auto_decompress=False, shutdown_timeout=_SHUTDOWN_GRACE
        )
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._refresher = asyncio.create_task(self._refresh_forever())
        self._listen_port = int(self._runner.addresses[0][1])
        return f"http://127.0.0.1:{self._listen_port}"

    async def _stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        # Whatever the server left (handlers past the grace, their connections) is cancelled and
        # awaited here, so that closing the loop leaves no task pending.
        rest = asyncio.all_tasks() - {asyncio.current_task()}
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=1.0)

    # --- Registration ---------------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            await self._refresh()

    async def _refresh(self) -> None:
        try:
            listed = await self._loop.run_in_executor(self._executor, self._backends_source)
            targets = list(dict((str(pod), str(url).rstrip("/")) for pod, url in listed).items())
        except Exception as error:  # noqa: BLE001 (a failing source must not stop the proxy)
            logger.warning("backends() failed, keeping the %d targets listed before: %s", len(self._targets), error)
            return
        self._targets = targets

    def _pick(self) -> Backend | None:
        """The target with the fewest requests in flight; ties in turn, so idle targets share."""
        targets = self._targets
        if not targets:
            return None
        with self._lock:
            fewest = min(self._outstanding.get(pod, 0) for pod, _ in targets)
            tied = [target for target in targets if self._outstanding.get(target[0], 0) == fewest]
            chosen = tied[next(self._turn) % len(tied)]
            self._outstanding[chosen[0]] = fewest + 1
        return chosen

    # --- Forwarding -----------------------------------------------------------------------------

    async def _forward(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        target = self._pick()
        if target is None:
            self._count_error("503 no ready targets")
            return _error(503, "no ready targets")
        pod, base = target
        try:
            response = await self._send(request, pod=pod, base=base)
        finally:
            with self._lock:
                self._outstanding[pod] -= 1
        with self._lock:
            self._served[pod] = self._served.get(pod, 0) + 1
        return response

    async def _send(self, request: aiohttp.web.Request, *, pod: str, base: str) -> aiohttp.web.Response:
        assert self._session is not None
        headers = _forwardable(request.headers, drop=frozenset({"content-length"}))
        peer = request.remote or ""
        forwarded_for = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Port"] = str(self._listen_port)
        body = await request.read()
        url = URL(base + request.raw_path, encoded=True)
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                content = await upstream.read()
                answer_headers = _forwardable(upstream.headers, drop=frozenset({"content-length"}))
                return aiohttp.web.Response(
                    status=upstream.status, reason=upstream.reason, headers=answer_headers, body=content
                )
        except TimeoutError:
            self._count_error("504 TimeoutError")
            return _error(504, f"target {pod} ({base}) did not answer within {self._request_timeout} s")
        except aiohttp.ClientError as error:
            self._count_error(f"502 {type(error).__name__}")
            return _error(502, f"target {pod} ({base}) failed: {type(error).__name__}: {error}")
