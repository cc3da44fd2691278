"""The peer of `peakguard bench model --peer ray-serve`: the same model behind Ray Serve.

Ray Serve's `@serve.batch` is the anchor for dynamic batching in Python, so it is what a user would
otherwise pick. The peer answers the same `POST /v1/intent` as `peakguard serve`, with the same
model, precision, padding and post-processing (`ModelRuntime.infer`), so the two differ only in
the serving stack: Ray's proxy and replica processes and its batcher against peakguard's one
process with admission control.

Backpressure is Ray's own: `max_ongoing_requests` at the replica and `max_queued_requests` at the
proxy, refused with 503 and Retry-After (Ray's `BackpressureConfig`). Ray's default queue is
unbounded; the bench bounds it for the same latency budget peakguard's admission holds (Little's
law: the requests the peer answers within the budget when saturated; `queue_bound`).

Run as `python -m model_service.ray_peer --config peer.json --port P --cpus 0`; Ray itself comes
from the `bench` extra and is never in the service image.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import httpx

from model_service.service_process import ServiceProcess

__all__ = ["PeerSettings", "RayServeProcess", "main", "queue_bound"]

ROUTE = "/v1/intent"


@dataclass(frozen=True)
class PeerSettings:
    """What the peer serves and how Ray batches and bounds it (the peer's config file, as JSON)."""

    artifacts: str
    """Artifact root (what `peakguard train --out` wrote)."""
    version: str = ""
    """Version folder to serve; empty means the newest."""
    batch_max: int = 128
    """`@serve.batch(max_batch_size=...)`: peakguard's default largest batch."""
    batch_wait: float = 0.005
    """`@serve.batch(batch_wait_timeout_s=...)`: peakguard's batcher's longest wait for more."""
    max_ongoing: int = 128
    """Requests the replica holds at once (Ray's `max_ongoing_requests`); a batch is never larger."""
    max_queued: int = -1
    """Requests the proxy queues beyond those (Ray's `max_queued_requests`); -1 is Ray's unbounded default."""
    retry_after: float = 1.0
    """Seconds in the Retry-After of a refusal, as peakguard sends one."""
    max_chars: int = 1000
    """Longest text accepted, as peakguard's `max_chars`."""

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be >= 1, got {value}"
            for name, value in (("batch_max", self.batch_max), ("max_ongoing", self.max_ongoing))
            if value < 1
        ]
        if self.max_queued != -1 and self.max_queued < 1:
            problems.append(f"max_queued must be -1 (unbounded) or >= 1, got {self.max_queued}")
        if self.batch_wait < 0:
            problems.append(f"batch_wait must be >= 0 seconds, got {self.batch_wait}")
        if problems:
            raise ValueError("peer settings: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> PeerSettings:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(raw) - known):
            raise ValueError(f"peer settings: unknown setting {unknown[0]!r}; settings: {', '.join(sorted(known))}")
        return cls(**raw)


def queue_bound(budget_s: float, capacity_rps: float) -> int:
    """Requests the peer may hold (at the replica and in the proxy's queue) so the last one admitted
    is answered within `budget_s`: what it drains in that time at `capacity_rps`, the rate it answers
    at when saturated (Little's law, L = lambda x W, with the queue full)."""
    if budget_s <= 0 or capacity_rps <= 0:
        raise ValueError(f"queue_bound needs a positive budget and rate, got {budget_s} s and {capacity_rps} rps")
    return max(2, math.floor(budget_s * capacity_rps))


def _deployment(settings: PeerSettings) -> Any:
    """The Serve application: one replica on one CPU, the runtime's batch path under `@serve.batch`."""
    from ray import serve
    from ray.serve.config import BackpressureConfig
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(
        num_replicas=1,
        ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=settings.max_ongoing,
        max_queued_requests=settings.max_queued,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=settings.retry_after),
        logging_config={"enable_access_log": False},  # as `peakguard serve`: no line per request
    )
    class IntentPeer:
        def __init__(self, config: PeerSettings) -> None:
            import torch

            from model_service.artifacts import newest_version
            from model_service.modes import OperatingMode
            from model_service.runtime import ModelRuntime

            torch.set_num_threads(1)  # one core, as `peakguard serve` pinned to one core sizes its pool
            root = Path(config.artifacts)
            self.runtime = ModelRuntime(root, config.version or newest_version(root), device="cpu")
            self.runtime.warm_up()
            self.mode = OperatingMode()
            self.max_chars = config.max_chars

        # A batch never holds more than the replica's ongoing requests (Ray warns when asked to).
        @serve.batch(max_batch_size=min(settings.batch_max, settings.max_ongoing),
                     batch_wait_timeout_s=settings.batch_wait)  # fmt: skip
        async def answer(self, texts: list[str]) -> list[dict[str, Any]]:
            sequences = [self.runtime.encoder.ids(text) for text in texts]
            # Off the replica's event loop, as peakguard's model thread: requests keep arriving
            # and queue for the next batch while this one runs.
            predictions, _ = await asyncio.to_thread(self.runtime.infer, sequences, self.mode)
            return [
                {"intent": p.intent, "confidence": p.confidence, "handover": p.handover, "served_by": "model",
                 "model": p.model, "precision": p.precision, "version": p.version}
                for p in predictions
            ]  # fmt: skip

        async def __call__(self, request: Request) -> JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"error": "the body is not JSON"}, status_code=400)
            text = body.get("text") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text.strip() or len(text) > self.max_chars:
                return JSONResponse({"error": f"text must be a non-empty string of <= {self.max_chars} characters"},
                                    status_code=400)  # fmt: skip
            return JSONResponse(await self.answer(text))

    return IntentPeer.bind(settings)  # type: ignore[attr-defined]  # serve.deployment returns a Deployment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_service.ray_peer",
        description="Serve the intent model with Ray Serve (the peer of `peakguard bench model --peer ray-serve`) "
        "until SIGTERM or SIGINT, then shut Ray down.",
    )
    parser.add_argument("--config", type=Path, required=True, help="peer settings as JSON (PeerSettings' fields)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address Ray's HTTP proxy listens on (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, required=True, help="port Ray's HTTP proxy listens on")
    parser.add_argument("--cpus", default="", help="cores to pin Ray and every process it starts to, e.g. 0 or 0,1")
    args = parser.parse_args(argv)
    try:
        settings = PeerSettings.from_mapping(json.loads(args.config.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: --config {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.cpus:
        # Before Ray starts: every process it forks (GCS, raylet, proxy, replica) inherits the cores.
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a benchmark

    import ray
    from ray import serve

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="ray-peer-") as temp:
        ray.init(num_cpus=cores, include_dashboard=False, _temp_dir=temp, configure_logging=False,
                 log_to_driver=True)  # fmt: skip
        try:
            serve.start(http_options={"host": args.host, "port": args.port})
            serve.run(_deployment(settings), name="peakguard-peer", route_prefix=ROUTE)
            print(f"ray-peer ready on http://{args.host}:{args.port}{ROUTE} with {asdict(settings)}", flush=True)
            stop.wait()
        finally:
            serve.shutdown()
            ray.shutdown()
    return 0


class RayServeProcess(ServiceProcess):
    """The peer in a child process, started, ready-checked and stopped as `ServiceProcess` does
    `peakguard serve`; ready once it has answered a query. Its SIGTERM handler runs serve.shutdown
    and ray.shutdown; Ray's agents can outlive that on a busy core, so its session goes too."""

    name = "the Ray Serve peer (python -m model_service.ray_peer)"
    own_session = True

    def command(self, config: Path) -> list[str]:
        command = [sys.executable, "-m", "model_service.ray_peer", "--config", str(config), "--host", self.host,
                   "--port", str(self.port)]  # fmt: skip
        if self.cpus:
            command += ["--cpus", ",".join(str(cpu) for cpu in sorted(self.cpus))]
        return command

    def is_ready(self, client: httpx.Client) -> bool:
        return client.post(ROUTE, json={"text": "my card has not arrived"}, timeout=30).status_code == 200

    def status(self) -> dict[str, Any]:
        """The peer has no breaker and no admin API: its breaker is reported as absent (None)."""
        return {"breaker": {"open": None}, "peer": "ray-serve"}

    def set_mode(self, **fields: Any) -> dict[str, Any]:
        raise NotImplementedError("the Ray Serve peer has no operating modes; restart it with other PeerSettings")


if __name__ == "__main__":
    raise SystemExit(main())
