"""What one refusal costs the server: `peakguard bench refusal`.

At 8x the service refuses about seven requests in eight, on the core its model runs on, so the CPU
a refusal takes is taken from answers. To see that CPU alone, the model is put to sleep: a chaos
slow layer holds one admitted batch (asleep, no CPU) for as long as the burst, so admission refuses everything
else, and the server's CPU during a burst of requests, less what it spends idle, is the refusals'.

Each server variant (HTTP parser and event loop, `peakguard serve --http/--loop`) runs in its own
process, pinned to the same core; rounds alternate between them so a noisy stretch of the machine
hits both. A round is refused (`invalid_because`) when anything but a refusal came back, or the
generator fell behind.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from model_service.load_generator import SAMPLE_QUERIES, SHED_STATUSES, LoadSpec, invalid_because, run_load_sync
from model_service.service_process import ServiceProcess, cpu_seconds, running_on, split_cores

__all__ = ["VARIANTS", "RefusalSettings", "render", "run"]

Log = Callable[[str], None]

VARIANTS: dict[str, tuple[str, ...]] = {
    "httptools+uvloop": ("--http", "httptools", "--loop", "uvloop"),
    "h11+asyncio": ("--http", "h11", "--loop", "asyncio"),
}
"""Server variants by name: the `peakguard serve` options that make them. The first is serve's default."""

MAX_ASLEEP_SECONDS = 10.0
"""The chaos slow layer's longest delay: a round (idle baseline, burst, margin) fits inside it."""
MARGIN_SECONDS = 1.5
"""The sleeping batch outlasts the burst by this much (the burst's last requests are still open)."""
WARM_SECONDS = 0.3
"""The slow layer while admission's cost model learns that batches are slow (8 batches)."""


@dataclass(frozen=True)
class RefusalSettings:
    artifacts: Path
    version: str = ""
    variants: tuple[str, ...] = tuple(VARIANTS)
    rps: float = 600.0
    seconds: float = 6.0
    """Length of each burst; it and the idle baseline must fit in one sleeping batch."""
    idle_seconds: float = 1.5
    """Length of the idle baseline taken before each burst."""
    rounds: int = 2
    seed: int = 0

    @property
    def asleep_seconds(self) -> float:
        """How long the one admitted batch sleeps in each round."""
        return self.idle_seconds + self.seconds + MARGIN_SECONDS

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"unknown server variant {unknown or '(none)'}; variants: {', '.join(VARIANTS)}")
        if self.seconds <= 0 or self.idle_seconds <= 0 or self.asleep_seconds > MAX_ASLEEP_SECONDS:
            raise ValueError(
                f"seconds ({self.seconds}) and idle_seconds ({self.idle_seconds}) must be > 0 and together at most "
                f"{MAX_ASLEEP_SECONDS - MARGIN_SECONDS:g}: both run inside one sleeping batch"
            )
        if self.rps <= 0 or self.rounds < 1:
            raise ValueError(f"rps must be > 0 and rounds >= 1 (got {self.rps}, {self.rounds})")


def _asleep(service: ServiceProcess, seconds: float, log: Log) -> threading.Thread:
    """Teach admission that batches are slow, then hold one admitted batch asleep; returns the
    thread waiting for that batch's answer."""
    headers = {"Authorization": f"Bearer {service.admin_token}"}
    with httpx.Client(base_url=service.url, timeout=30) as client:
        if service.status()["admission"]["throughput_rps"] is None:  # once per service: it remembers
            reply = client.put("/admin/chaos", json={"slow_layer": {"layer": "head", "seconds": WARM_SECONDS}},
                               headers=headers)  # fmt: skip
            reply.raise_for_status()
            for _ in range(8):  # admission's min_batches: until then only the hard queue bound refuses
                client.post("/v1/intent", json={"text": "my card has not arrived"}).raise_for_status()
        client.put("/admin/chaos", json={"slow_layer": {"layer": "head", "seconds": seconds}},
                   headers=headers).raise_for_status()  # fmt: skip

    def ask() -> None:
        with httpx.Client(base_url=service.url, timeout=seconds + 20) as client:
            client.post("/v1/intent", json={"text": "where is my card"})

    sleeper = threading.Thread(target=ask, daemon=True)
    sleeper.start()
    deadline = time.monotonic() + 5
    while service.status()["queue"]["full"]["in_flight"] == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sleeping batch did not start; log:\n{service.log_tail()}")
        time.sleep(0.02)
    log("  the model is asleep in one admitted batch")
    return sleeper


def _round(
    service: ServiceProcess, settings: RefusalSettings, texts: Sequence[str], seed: int, log: Log
) -> dict[str, Any]:
    assert service.pid is not None
    sleeper = _asleep(service, settings.asleep_seconds, log)
    idle_start = cpu_seconds(service.pid)
    time.sleep(settings.idle_seconds)
    idle = cpu_seconds(service.pid) - idle_start
    spec = LoadSpec(url=f"{service.url}/v1/intent", rps=settings.rps, duration=settings.seconds, texts=texts,
                    timeout=5, seed=seed)  # fmt: skip
    started = cpu_seconds(service.pid)
    load = run_load_sync(spec).to_dict()
    busy = cpu_seconds(service.pid) - started
    sleeper.join(timeout=settings.asleep_seconds + 20)
    refused = sum(load["status_counts"].get(str(code), 0) for code in SHED_STATUSES)
    background = idle / settings.idle_seconds * settings.seconds
    reasons = invalid_because(load, min_samples=0)
    if refused < load["sent"]:
        reasons.append(
            f"{load['sent'] - refused} of {load['sent']} requests were not refused: the CPU is not refusals' alone"
        )
    return {
        "sent": load["sent"],
        "refused": refused,
        "status_counts": load["status_counts"],
        "cpu_seconds": busy,
        "idle_cpu_seconds_per_second": idle / settings.idle_seconds,
        "cpu_us_per_refusal": 1e6 * max(0.0, busy - background) / max(1, refused),
        "send_lag_p99_ms": load["send_lag_ms"]["p99"],
        "invalid_because": reasons,
    }


def run(settings: RefusalSettings, *, log: Log = print) -> dict[str, Any]:
    """Rounds alternating between the variants; per variant each round and the median CPU per refusal."""
    from model_service.artifacts import newest_version

    folder = settings.artifacts / (settings.version or newest_version(settings.artifacts))
    server_cpus, generator_cpus = split_cores("bench refusal")
    base = {"artifacts": str(folder.parent), "version": folder.name, "admission": True, "latency_budget": 0.2,
            "chaos": True}  # fmt: skip
    report: dict[str, Any] = {
        "version": folder.name,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "cores": {"server": sorted(server_cpus), "load generator": sorted(generator_cpus)},
        "variants": {name: {"serve_options": list(VARIANTS[name]), "rounds": []} for name in settings.variants},
    }
    services: dict[str, ServiceProcess] = {}
    with running_on(generator_cpus):
        try:
            for name in settings.variants:
                services[name] = ServiceProcess(base, cpus=server_cpus, server_args=VARIANTS[name])
                services[name].start()
            for index in range(settings.rounds):
                for name in settings.variants:
                    burst = f"{settings.rps:g} requests/s for {settings.seconds:g} s"
                    log(f"round {index + 1} of {settings.rounds}, {name}: {burst}")
                    result = _round(services[name], settings, SAMPLE_QUERIES, settings.seed + index, log)
                    log(f"  {result['cpu_us_per_refusal']:.0f} us of CPU per refusal ({result['refused']} refused)")
                    report["variants"][name]["rounds"].append(result)
        finally:
            for service in services.values():
                service.stop()
    for entry in report["variants"].values():
        rounds = entry["rounds"]
        figures = [r["cpu_us_per_refusal"] for r in rounds]
        entry["cpu_us_per_refusal"] = {"median": statistics.median(figures), "min": min(figures), "max": max(figures)}
        entry["invalid_because"] = sorted({reason for r in rounds for reason in r["invalid_because"]})
    return report


def render(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"CPU per refusal, version {report['version']}: {settings['rps']:g} requests/s for {settings['seconds']:g} s "
        f"while the model sleeps, {settings['rounds']} rounds per variant (median, min-max)",
        "",
    ]
    for name, entry in report["variants"].items():
        figure = entry["cpu_us_per_refusal"]
        verdict = "  INVALID: " + "; ".join(entry["invalid_because"]) if entry["invalid_because"] else ""
        lines.append(f"{name:18} {figure['median']:6.0f} us ({figure['min']:.0f}-{figure['max']:.0f}){verdict}")
    return "\n".join(lines)
