"""The HTTP service: FastAPI on uvicorn.

FastAPI + uvicorn: the mainstream asyncio stack, with the event loop free for admission decisions
while the models run on their own threads. Endpoints:

- `POST /v1/intent` `{"text": ...}` -> intent, confidence, hand-over flag, which model answered;
- `GET /healthz` (the process lives), `GET /readyz` (weights loaded and warm-up done);
- `GET /metrics` (Prometheus);
- `GET /admin/status`, `PUT /admin/mode` (bearer token; runbooks push modes here);
  `PUT /admin/chaos` (a slow layer), only where the `chaos` setting is on (drills).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from model_service import api
from model_service.admission import AdmissionController
from model_service.answer_cache import AnswerCache, CachedAnswer
from model_service.artifacts import newest_version, versions
from model_service.batcher import BatchStats, DynamicBatcher
from model_service.breaker import BreakerSettings, CircuitBreaker
from model_service.metrics import Outcome, ServedBy, ServiceMetrics
from model_service.modes import MODE_FILE, ModeError, ModeStore, OperatingMode, Override
from model_service.query import BadRequestError, body_cap, check_headers, parse
from model_service.runtime import BatchTimings, ModelRuntime, Prediction
from model_service.tracing import Tracing

__all__ = ["Service", "ServiceSettings", "create_app"]

log = logging.getLogger("peakguard.server")


@dataclass(frozen=True)
class ServiceSettings:
    artifacts: Path
    """Artifact root (what `peakguard train --out` wrote); holds one folder per version."""
    version: str = ""
    """Version folder to serve; empty means the newest."""
    mode_file: Path | None = None
    """The mounted mode ConfigMap: a directory (holding mode.json) or the file itself."""
    admin_token: str = field(default="", repr=False)
    """Bearer token for /admin; empty disables the admin API. Never logged."""
    initial_mode: OperatingMode = field(default_factory=OperatingMode)
    max_chars: int = 2000
    """Longest accepted query in characters; longer is 422. A body longer than such a query could
    need (`query.body_cap`) is 413, as soon as its Content-Length says so or its bytes exceed it."""
    latency_budget: float = 0.5
    """Seconds a request may wait for and spend in its batch before admission refuses it."""
    max_queue: int = 2048
    admission: bool = True
    """Admission control on (the default) or off (only to show, in benchmarks, what it prevents)."""
    batch_budget_share: float | None = None
    """Share of the latency budget one batch may take: batches are capped at the size admission's
    cost model says runs that fast (`AdmissionController.batch_cap`, e.g. 0.5). None: only the mode's
    batch_max."""
    max_wait: float = 0.005
    """Longest a request waits for batch-mates when the queue is short, in seconds."""
    token_budget: int = 4096
    """Most tokens (summed over requests) in one batch."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    """The circuit breaker; thresholds left out are set from `latency_budget` (breaker.py says why)."""
    layer_sample_every: int = 20
    mode_poll_interval: float = 1.0
    """Seconds between reads of the mode file."""
    device: str = "auto"
    """Where the models run: cpu, cuda, cuda:N, or auto (cuda when torch sees a GPU)."""
    chaos: bool = False
    """Accept `PUT /admin/chaos` (a slow layer, for drills). Off in the image's pods: a drill's lab
    turns it on for its own processes."""

    def __post_init__(self) -> None:
        if not isinstance(self.chaos, bool):  # a settings file's "false" must not turn it on
            raise ValueError(f"chaos must be true or false, got {self.chaos!r}")
        if self.batch_budget_share is not None and not 0.0 < self.batch_budget_share <= 1.0:
            raise ValueError(f"batch_budget_share must be in (0, 1] or null (no cap), got {self.batch_budget_share}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if self.latency_budget <= 0:
            raise ValueError(f"latency_budget must be > 0 seconds, got {self.latency_budget}")
        object.__setattr__(self, "breaker", self.breaker.for_budget(self.latency_budget))


@dataclass
class _Job:
    ids: list[int]
    mode: OperatingMode


@dataclass
class _Answer:
    prediction: Prediction
    timings: BatchTimings


@dataclass(frozen=True)
class _Reply:
    """A response to POST /v1/intent and how metrics.py's contract counts it."""

    response: Response
    outcome: Outcome
    served_by: ServedBy = "none"
    reason: str = ""
    """Why it is not an answer: errors_total's kind, or shed_total's status."""


@dataclass(frozen=True)
class _Early:
    """A refusal sent before the body is read."""

    status: int
    body: dict[str, str]
    headers: dict[str, str]
    shedding: bool
    """The mode sheds to the answer table: the refused body is still read, to count a lost hit."""


_ADMITTED = "peakguard.admitted"
"""ASGI scope state key: (when admission admitted the request, its estimated wait)."""


class _AdmissionGate:
    """Pure ASGI, in front of FastAPI: POST /v1/intent is checked and admitted or refused before
    routing, before the body is read, before any JSON. The order of one request (query.py): the
    headers here (content type, declared length), admission here, then (in `Service._answer`) the
    body read under its cap, parse and validation, the answer table, the batcher."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/intent":
            await self.app(scope, receive, send)
            return
        started = time.time()
        cap = self.service.body_cap
        content_type, content_length = _body_headers(scope)
        refusal = self.service.refuse_headers(content_type, content_length, started) or self.service.refuse_unread(
            started, scope.setdefault("state", {})
        )
        if refusal is None:
            await self.app(scope, _capped(receive, cap), send)
            return
        # In shedding mode the refused body is read (before answering: once the response is sent the
        # server hands out no more of the request) to count whether the answer table had it.
        unread = await _read_body(receive, cap) if refusal.shedding else None
        body = json.dumps(refusal.body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(name.encode(), value.encode()) for name, value in refusal.headers.items()]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if unread:
            self.service.answer_table_would_have(unread)


def _body_headers(scope: dict[str, Any]) -> tuple[str | None, str | None]:
    """(Content-Type, Content-Length) of the request, the last of repeats; None where absent. Only the
    two are decoded: this runs for every request, the refused seven in eight at 8x included."""
    content_type = content_length = None
    for name, value in scope.get("headers", ()):
        if name == b"content-type":  # ASGI servers give header names in lower case
            content_type = value.decode("latin-1")
        elif name == b"content-length":
            content_length = value.decode("latin-1")
    return content_type, content_length


def _capped(receive: Any, cap: int) -> Any:
    """`receive`, refusing (413) as soon as the body's bytes so far exceed `cap`: a body declared
    short, or sent chunked, is never held whole past its cap."""
    seen = 0

    async def capped() -> dict[str, Any]:
        nonlocal seen
        message: dict[str, Any] = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise BadRequestError(413, f"body over {cap} bytes; the limit is {cap} bytes")
        return message

    return capped


async def _read_body(receive: Any, cap: int) -> bytes:
    """The body, or b"" once it runs past `cap` bytes (or the client goes)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > cap:
            return b""
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error(
    status: int, message: str, outcome: Outcome, reason: str, *, headers: dict[str, str] | None = None
) -> _Reply:
    return _Reply(JSONResponse({"error": message}, status_code=status, headers=headers), outcome, reason=reason)


def _crash(request: Request, exc: Exception, reason: str, what: str) -> _Reply:
    """A 500 for an unexpected exception, logged with its traceback under a request id that the
    caller gets too (its X-Request-Id, or a new one), so a report of the 500 finds its log line."""
    request_id = request.headers.get("x-request-id", "")[:64] or secrets.token_hex(8)
    log.error("%s (request %s)", what, request_id, exc_info=exc)
    body = {"error": f"{what}: {type(exc).__name__}", "request_id": request_id}
    return _Reply(JSONResponse(body, status_code=500, headers={"X-Request-Id": request_id}), "server_error",
                  reason=reason)  # fmt: skip


class Service:
    """Everything one model-service process holds, wired together."""

    def __init__(self, settings: ServiceSettings, *, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.body_cap = body_cap(settings.max_chars)
        """Bytes a query's body may take (query.body_cap)."""
        self.metrics = ServiceMetrics()
        self.tracing = tracing or Tracing()
        self.modes = ModeStore(settings.initial_mode, version_problem=self._version_problem)
        self.admission = AdmissionController(
            latency_budget=settings.latency_budget, max_queue=settings.max_queue, enabled=settings.admission
        )
        self.cache = AnswerCache()
        self.breaker = CircuitBreaker(settings.breaker, on_switch=self._on_breaker)
        trip = settings.breaker.trip_above or 0.0
        if settings.admission and trip <= settings.latency_budget:
            log.warning("the breaker trips at p99 %.3f s, not above the %.3f s latency budget admission holds: it "
                        "will open on surges admission is handling", trip, settings.latency_budget)  # fmt: skip
        self.runtime: ModelRuntime | None = None
        self.load_error: str | None = None
        self.batchers: dict[str, DynamicBatcher[_Job, _Answer]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.modes.subscribe(self._on_mode)
        self._on_mode(self.modes.mode)

    # --- lifecycle ---------------------------------------------------------------------------

    def _version_problem(self, version: str) -> str | None:
        """Why a mode may not switch to `version`: the artifact root has no such version folder."""
        known = versions(self.settings.artifacts)
        if version in known:
            return None
        listing = ", ".join(known[-5:]) or "none"
        return f"model_version {version!r} is not a version under {self.settings.artifacts} (newest: {listing})"

    def version_to_serve(self) -> str:
        return self.settings.version or newest_version(self.settings.artifacts)

    def load(self) -> None:
        """Load weights and warm up (blocking; run off the event loop)."""
        try:
            runtime = ModelRuntime(
                self.settings.artifacts,
                self.version_to_serve(),
                layer_sample_every=self.settings.layer_sample_every,
                device=self.settings.device,
                chaos=self.settings.chaos,
                on_layer_time=lambda model, layer, s: self.metrics.layer_seconds.labels(model, layer).observe(s),
            )
            runtime.warm_up()
        except Exception as exc:  # noqa: BLE001 (reported on /readyz and in the log, never a crash loop)
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model load failed: %s", self.load_error)
            return
        self.runtime = runtime
        self.metrics.ready.set(1)
        log.info("ready: serving model version %s", runtime.version)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name in ("full", "light"):
            batcher: DynamicBatcher[_Job, _Answer] = DynamicBatcher(
                self._handle_batch,
                bounds=self.batch_bounds,
                max_wait=self.settings.max_wait,
                token_budget=self.settings.token_budget,
                name=name,
                on_batch=self._on_batch,
            )
            batcher.start()
            self.batchers[name] = batcher
        self._tasks.append(loop.create_task(self._load_in_background()))
        if self.settings.mode_file is not None:
            self._tasks.append(loop.create_task(self._watch_mode_file()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for batcher in self.batchers.values():
            await batcher.stop()
        self.tracing.shutdown()

    async def _load_in_background(self) -> None:
        await asyncio.to_thread(self.load)

    async def _watch_mode_file(self) -> None:
        assert self.settings.mode_file is not None
        path = self.settings.mode_file
        path = path / MODE_FILE if path.is_dir() or path.suffix != ".json" else path
        while True:
            await asyncio.to_thread(self.modes.reload_file, path)
            await asyncio.sleep(self.settings.mode_poll_interval)

    # --- what modes, batches and the breaker change -----------------------------------------

    def _on_mode(self, mode: OperatingMode) -> None:
        self.metrics.set_mode(mode.model, mode.precision, mode.shedding)
        if self.runtime is not None and mode.model_version and mode.model_version != self.runtime.version:
            threading.Thread(target=self.runtime.switch_version, args=(mode.model_version,), daemon=True).start()

    def _on_breaker(self, opened: bool, p99: float) -> None:
        self.metrics.breaker_open.set(1 if opened else 0)
        self.metrics.breaker_switches.labels(to="light" if opened else "full").inc()
        self.modes.set_override(
            Override("light", f"p99 {p99:.3f} s over {self.settings.breaker.trip_above} s") if opened else None
        )

    def _on_batch(self, stats: BatchStats) -> None:
        self.admission.observe(stats.size, stats.seconds)
        self.metrics.batch_size.observe(stats.size)
        for wait in stats.queue_waits:
            self.metrics.stage_seconds.labels("queue").observe(wait)

    def _handle_batch(self, jobs: Sequence[_Job]) -> list[_Answer]:
        assert self.runtime is not None
        # One batch, one mode: the newest mode of the batch's requests.
        predictions, timings = self.runtime.infer([job.ids for job in jobs], jobs[-1].mode)
        for stage, seconds in (("batch", timings.batch), ("model", timings.model), ("post", timings.post)):
            self.metrics.stage_seconds.labels(stage).observe(seconds)
        return [_Answer(p, timings) for p in predictions]

    # --- one request ------------------------------------------------------------------------

    async def answer(self, request: Request) -> Response:
        """Answer one POST /v1/intent and count its response once (metrics.py's contract), whatever
        happens inside: an unexpected exception becomes a counted JSON 500, not Starlette's bare one."""
        started = time.time()
        trace = self.tracing.start(request.headers, started)
        self.metrics.in_flight.inc()
        try:
            try:
                reply = await self._answer(request, started, trace)
            except Exception as exc:  # noqa: BLE001 (logged with its traceback by _crash)
                reply = _crash(request, exc, "unhandled", "unhandled error answering POST /v1/intent")
            end = time.time()
            if reply.served_by == "model" and (admitted := request.scope.get("state", {}).get(_ADMITTED)):
                admitted_at, estimated = admitted
                self.admission.observe_answer(estimated, end - admitted_at)
            self.metrics.observe_response(
                outcome=reply.outcome, served_by=reply.served_by, seconds=end - started, reason=reply.reason
            )
            if trace is not None:
                trace.finish(end, outcome=reply.outcome, served_by=reply.served_by)
            return reply.response
        finally:
            self.metrics.in_flight.dec()

    def batch_cap(self) -> int:
        """The most requests one batch takes now: the mode's batch_max, capped by the latency budget."""
        batch_max = self.modes.mode.batch_max
        if (share := self.settings.batch_budget_share) is None:
            return batch_max
        return self.admission.batch_cap(batch_max, share=share)

    def batch_bounds(self) -> tuple[int, int]:
        """(batch_min, batch_max) for the next batch, read by the batchers before each one."""
        cap = self.batch_cap()
        return min(self.modes.mode.batch_min, cap), cap

    def refuse_unread(self, started: float, state: dict[str, Any]) -> _Early | None:
        """Admission before anything reads the body: at 8x the service refuses seven requests in
        eight, and a refusal that went through routing, body reading and JSON parsing took the core
        the model needs. None admits; the decision is the only one the request gets. An admitted
        request carries its estimate in `state` (the ASGI scope's) so that its answer can calibrate
        admission (`AdmissionController.observe_answer`)."""
        runtime = self.runtime
        if runtime is None:
            return None  # the full path says why it is not ready
        mode = self.modes.mode
        batcher = self.batchers[mode.model]
        decision = self.admission.decide(queued=batcher.depth, in_flight=batcher.in_flight, batch_max=self.batch_cap())
        if decision.admit:
            if self.admission.estimating:  # a cold pod's estimates are 0: nothing to calibrate
                state[_ADMITTED] = (started, decision.estimated_wait)
            return None
        message = f"overloaded: {decision.reason}; retry after {decision.retry_after} s"
        self.metrics.observe_response(
            outcome="shed", served_by="none", seconds=time.time() - started, reason=str(decision.status)
        )
        return _Early(decision.status, {"error": message}, {"retry-after": str(decision.retry_after)}, mode.shedding)

    def refuse_headers(self, content_type: str | None, content_length: str | None, started: float) -> _Early | None:
        """A 415 or 413 on the headers alone (query.check_headers), counted as a client error; None
        lets the request on to admission."""
        try:
            check_headers(content_type, content_length, cap=self.body_cap)
        except BadRequestError as exc:
            self.metrics.observe_response(outcome="client_error", served_by="none", seconds=time.time() - started,
                                          reason=f"http_{exc.status}")  # fmt: skip
            return _Early(exc.status, {"error": str(exc)}, {}, False)
        return None

    def answer_table_would_have(self, body: bytes) -> None:
        """Count a refused request the answer table could have answered (shedding mode only): the
        price of admitting before parsing, measured rather than guessed."""
        with contextlib.suppress(BadRequestError):
            if self.cache.lookup(parse(body, self.settings.max_chars)) is not None:
                self.metrics.answer_table_hits_lost.inc()

    async def _answer(self, request: Request, started: float, trace: Any) -> _Reply:
        try:
            text = parse(await request.body(), self.settings.max_chars)
        except BadRequestError as exc:
            return _error(exc.status, str(exc), "client_error", f"http_{exc.status}")
        except ClientDisconnect:
            # The caller hung up mid-body (its own timeout): its doing, and no one reads this reply.
            return _error(499, "client disconnected", "client_error", "client_disconnected")
        runtime = self.runtime
        if runtime is None:
            # Not ready is the server's failure, not admission's choice: a server error, though it
            # carries Retry-After too.
            reason = self.load_error or "warming up"
            return _error(503, f"not ready: {reason}", "server_error", "not_ready", headers={"Retry-After": "5"})

        mode = self.modes.mode
        if mode.shedding and (cached := self.cache.lookup(text)) is not None:
            return self._reply("cache", cached.intent, cached.confidence, False, mode, runtime.version)

        batcher = self.batchers[mode.model]
        self.metrics.queue_depth.set(sum(b.depth for b in self.batchers.values()))
        # Admission was decided once, before the body was read (_AdmissionGate, refuse_unread).

        ids = runtime.encoder.ids(text)
        queued = time.time()
        try:
            answer = await batcher.submit(_Job(ids, mode), cost=len(ids))
        except Exception as exc:  # noqa: BLE001 (logged with its traceback by _crash)
            return _crash(request, exc, "inference", "inference failed")

        prediction, timings = answer.prediction, answer.timings
        if trace is not None:
            trace.stage("queue", queued, timings.started)
            trace.stage("batch", timings.started, timings.started + timings.batch)
            trace.stage("model", timings.started + timings.batch, timings.started + timings.batch + timings.model)
            post = timings.started + timings.batch + timings.model
            trace.stage("post", post, post + timings.post)
        if not prediction.handover:
            self.cache.remember(text, CachedAnswer(prediction.intent, prediction.confidence))
        latency = time.time() - started
        self.breaker.record(latency)
        return self._reply(
            "model", prediction.intent, prediction.confidence, prediction.handover,
            mode, prediction.version, model=prediction.model, precision=prediction.precision,
        )  # fmt: skip

    @staticmethod
    def _reply(served_by: ServedBy, intent: str, confidence: float, handover: bool, mode: OperatingMode,
               version: str, *, model: str | None = None, precision: str | None = None) -> _Reply:  # fmt: skip
        body = {
            "intent": intent,
            "confidence": confidence,
            "handover": handover,
            "served_by": served_by,
            "model": model or mode.model,
            "precision": precision or mode.precision,
            "version": version,
        }
        return _Reply(JSONResponse(body), "answered", served_by)

    # --- admin --------------------------------------------------------------------------------

    def authorised(self, request: Request) -> Response | None:
        """None if the bearer token matches; else the 401/403 to send. Constant-time compare."""
        if not self.settings.admin_token:
            return JSONResponse({"error": "the admin API is disabled: no admin token configured"}, status_code=403)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.settings.admin_token.encode()):
            return JSONResponse(
                {"error": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return None

    def status(self) -> dict[str, Any]:
        runtime = self.runtime
        return {
            "ready": runtime is not None and runtime.ready,
            "load_error": self.load_error,
            "version": runtime.version if runtime else None,
            "version_error": runtime.last_error if runtime else None,
            "mode": self.modes.mode.to_dict(),
            "modes": self.modes.status(),
            "breaker": {"open": self.breaker.open, "p99": self.breaker.p99()},
            "admission": {
                "enabled": self.admission.enabled,
                "throughput_rps": self.admission.throughput,
                "latency_budget": self.admission.latency_budget,
                "latency_margin": self.admission.margin,
                "batch_cap": self.batch_cap(),
            },
            "queue": {name: {"depth": b.depth, "in_flight": b.in_flight} for name, b in self.batchers.items()},
            "cache_entries": len(self.cache),
            "chaos": {"slow_layers": runtime.slowed, "slow_down": runtime.slowed_down}
            if runtime and self.settings.chaos
            else None,
            "handover_threshold": {m: runtime.card(m).handover_threshold for m in ("full", "light")}
            if runtime
            else None,
        }


ADMIN_BODY_CAP = 64 * 1024
"""Bytes an admin call's body may take: a mode or chaos document is a few hundred."""


async def _admin_document(request: Request) -> Any:
    """An admin call's JSON document, read under `ADMIN_BODY_CAP`; BadRequestError (400, 413, 415)
    when the body is not one."""
    check_headers(request.headers.get("content-type"), request.headers.get("content-length"), cap=ADMIN_BODY_CAP)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > ADMIN_BODY_CAP:
            raise BadRequestError(413, f"body over {ADMIN_BODY_CAP} bytes; the limit is {ADMIN_BODY_CAP} bytes")
    try:
        return json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(400, f"body is not JSON ({exc})") from None
    except RecursionError:
        raise BadRequestError(400, "body is JSON nested deeper than the parser goes") from None


def create_app(settings: ServiceSettings, *, tracing: Tracing | None = None) -> FastAPI:
    service = Service(settings, tracing=tracing)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="peakguard model service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(_AdmissionGate, service=service)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            document.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "$PEAKGUARD_ADMIN_TOKEN"}
            }
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document

    @app.post("/v1/intent", **api.intent_docs(settings.max_chars))
    async def intent(request: Request) -> Response:
        return await service.answer(request)

    @app.get("/healthz", summary="Alive: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", **api.readyz_docs())
    async def readyz() -> Response:
        ready = service.runtime is not None and service.runtime.ready
        body = {"ready": ready, "version": service.runtime.version if service.runtime else None}
        if service.load_error:
            body["error"] = service.load_error
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses=api.text_responses("the Prometheus text exposition format"))  # fmt: skip
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/admin/status", summary="What the service runs now, and why", response_model=None,
             openapi_extra={"security": api.SECURITY},
             responses={200: {"description": "mode, breaker, admission, queues, version",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                        **api.ADMIN_RESPONSES})  # fmt: skip
    async def admin_status(request: Request) -> Response:
        if (refusal := service.authorised(request)) is not None:
            return refusal
        return JSONResponse(service.status())

    @app.put("/admin/mode", summary="Switch the operating mode (runbooks push modes here)", response_model=None,
             openapi_extra={"security": api.SECURITY, **api.json_body(api.MODE_DOCUMENT)},
             responses={200: {"model": api.ModeReply, "description": "the mode now"}, **api.BAD_BODY,
                        **api.ADMIN_RESPONSES})  # fmt: skip
    async def admin_mode(request: Request) -> Response:
        if (refusal := service.authorised(request)) is not None:
            return refusal
        try:
            service.modes.apply(await _admin_document(request), source="admin API")
        except BadRequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except ModeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"mode": service.modes.mode.to_dict(), "revision": service.modes.status()["revision"]})

    @app.put("/admin/chaos", summary="Slow a layer, or every layer, of every model (drills; the chaos setting only)",
             response_model=None, openapi_extra={"security": api.SECURITY, **api.json_body(api.CHAOS_DOCUMENT)},
             responses={200: {"model": api.ChaosReply, "description": "the slowed layers now"}, **api.BAD_BODY,
                        **api.ADMIN_RESPONSES,
                        503: {"model": api.ErrorBody, "description": "the models are not loaded yet"}})  # fmt: skip
    async def admin_chaos(request: Request) -> Response:
        """`{"slow_layer": {"layer": "block1", "seconds": 0.05}}` slows that layer of every model on this
        process; `{"slow_down": {"factor": 4}}` makes every layer take 4 times its time (a cold replica);
        null ends either. Only with the `chaos` setting (drills)."""
        if (refusal := service.authorised(request)) is not None:
            return refusal
        if not settings.chaos:
            return JSONResponse({"error": "chaos is off for this process (setting chaos: true turns it on)"}, 403)
        if service.runtime is None:
            return JSONResponse({"error": "the models are not loaded yet"}, status_code=503)
        try:
            raw = await _admin_document(request)
            if not isinstance(raw, dict) or not raw or set(raw) - {"slow_layer", "slow_down"}:
                raise KeyError("slow_layer or slow_down, nothing else")
            if "slow_layer" in raw:
                slow = raw["slow_layer"]
                if slow is None:
                    service.runtime.slow_layer(None)
                else:
                    service.runtime.slow_layer(str(slow["layer"]), float(slow["seconds"]))
            if "slow_down" in raw:
                down = raw["slow_down"]
                service.runtime.slow_down(1.0 if down is None else float(down["factor"]))
        except BadRequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except (KeyError, TypeError) as exc:
            return JSONResponse(
                {"error": f'body must be {{"slow_layer": {{"layer": ..., "seconds": ...}} or null}} and/or '
                          f'{{"slow_down": {{"factor": ...}} or null}} ({exc!r})'}, 422
            )  # fmt: skip
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"slow_layers": service.runtime.slowed, "slow_down": service.runtime.slowed_down})

    return app
