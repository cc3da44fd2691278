"""Two `peakguard serve` settings side by side under 8x overload: `peakguard bench ab`.

A change to the service's settings (a batch cap, a budget) is kept only if it measures better, and
on a noisy machine "better" means measured side by side: variants A and B run as two processes
pinned to the same core, both with admission's budget from one unloaded p99, both under the same
8x rate, and their overload runs alternate (A B, then B A) so a noisy stretch hits both. Each
figure is the median over the rounds, with the ratio B/A of every round.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_service.load_generator import invalid_because, query_texts
from model_service.service_process import ServiceProcess, running_on, split_cores

__all__ = ["AbSettings", "render", "run"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class AbSettings:
    artifacts: Path
    b: tuple[tuple[str, Any], ...]
    """Variant B's serve settings (over the common ones)."""
    a: tuple[tuple[str, Any], ...] = ()
    """Variant A's serve settings (default: serve's defaults)."""
    version: str = ""
    data: Path | None = None
    sustainable_rps: float | None = None
    """The rate A sustains (e.g. `bench model`'s); None: a short search on A first."""
    overload_factor: float = 8.0
    seconds: float = 60.0
    """Length of each overload run."""
    rounds: int = 2
    unloaded_seconds: float = 60.0
    step_seconds: float = 6.0
    warm_seconds: float = 10.0
    """Each variant serves the sustainable rate this long before the first overload run."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.b:
            raise ValueError("variant B needs at least one serve setting (--b KEY=JSON)")
        if self.rounds < 1 or self.seconds <= 2 or self.unloaded_seconds <= 2:
            raise ValueError("rounds must be >= 1 and seconds, unloaded_seconds > 2")


def _breaker_reasons(result: dict[str, Any]) -> list[str]:
    """A run the breaker was open for was partly answered by the light model: not the variant's figure."""
    if any(result["breaker_open"].values()):
        return [f"breaker open (before, after: {result['breaker_open']}): the light model answered part of it"]
    return []


def _summary(runs: list[dict[str, Any]], unloaded_ms: float, sustainable: float) -> dict[str, Any]:
    p99s = [r["latency_ms"]["p99"] or float("inf") for r in runs]
    answered = [r["throughput_rps"] for r in runs]
    return {
        "p99_ms": statistics.median(p99s),
        "p99_ratio_to_unloaded": statistics.median(p99s) / unloaded_ms,
        "answered_rps": statistics.median(answered),
        "answered_share_of_sustainable": statistics.median(answered) / sustainable,
        "errors_5xx": sum(r["errors_5xx"] for r in runs),
        "answered_by": sorted({name for r in runs for name in r["answered_by"]}),
        "invalid_because": sorted({reason for r in runs for reason in r["invalid_because"]}),
    }


def run(settings: AbSettings, *, log: Log = print) -> dict[str, Any]:
    from model_service import benchmark
    from model_service.artifacts import newest_version

    folder = settings.artifacts / (settings.version or newest_version(settings.artifacts))
    texts = query_texts(settings.data)
    server_cpus, generator_cpus = split_cores("bench ab")
    base = {"artifacts": str(folder.parent), "version": folder.name}
    variants = {"A": dict(settings.a), "B": dict(settings.b)}
    report: dict[str, Any] = {
        "version": folder.name,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "cores": {"servers": sorted(server_cpus), "load generator": sorted(generator_cpus)},
    }
    services: dict[str, ServiceProcess] = {}
    with running_on(generator_cpus):
        try:
            with ServiceProcess(base | variants["A"] | {"admission": False}, cpus=server_cpus) as plain:
                rate = f"{benchmark.UNLOADED_RPS:g}/s"
                log(f"unloaded p99 (A, admission off): {settings.unloaded_seconds:.0f} s at {rate}")
                unloaded, unloaded_run = benchmark.unloaded_p99(plain.url, texts, seconds=settings.unloaded_seconds)
            budget = 2 * unloaded
            report |= {"unloaded_p99_ms": unloaded * 1000, "unloaded_answers": unloaded_run["completed_ok"],
                       "latency_budget_ms": budget * 1000,
                       # a p99 from fewer than 2000 answers is not quotable, nor is a ratio to it
                       "unloaded_invalid_because": invalid_because(unloaded_run)}  # fmt: skip
            for name, own_settings in variants.items():
                services[name] = ServiceProcess(
                    base | {"admission": True, "latency_budget": budget} | own_settings, cpus=server_cpus
                )
                services[name].start()
            sustainable = settings.sustainable_rps
            if sustainable is None:
                log("sustainable rate of A (a short search)")
                sustainable, steps = benchmark.sustainable_rate(
                    services["A"].url, texts, slo=3 * unloaded, start_rps=10.0, step_seconds=settings.step_seconds,
                    seed=settings.seed, log=log,
                )  # fmt: skip
                report["ramp"] = steps
            rps = settings.overload_factor * sustainable
            report |= {"sustainable_rps": sustainable, "overload_rps": rps}
            # Both variants start their overload warm: admission's cost model learns from batches that
            # run, and a cold one admits up to the hard queue bound (seen: B cold at 8x, p99 10 s, the
            # breaker opened and the light model answered the next round).
            for name, service in services.items():
                log(f"warm-up, {name}: {sustainable:.1f} requests/s for {settings.warm_seconds:.0f} s")
                benchmark.measure_run(service, sustainable, settings.warm_seconds, texts, settings.seed, timeout=10)
            runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
            for index in range(settings.rounds):
                for name in ("A", "B") if index % 2 == 0 else ("B", "A"):
                    log(f"round {index + 1}, {name}: {rps:.0f} requests/s for {settings.seconds:.0f} s")
                    result = benchmark.measure_run(
                        services[name], rps, settings.seconds, texts, settings.seed + index, timeout=10
                    )
                    result["invalid_because"] = invalid_because(result) + _breaker_reasons(result)
                    log(f"  p99 {result['latency_ms']['p99']} ms, {result['throughput_rps']:.1f} answered/s")
                    runs[name].append(result)
        finally:
            for service in services.values():
                service.stop()
    report["runs"] = runs
    report["variants"] = {
        name: {"serve_settings": variants[name]} | _summary(runs[name], unloaded * 1000, sustainable)
        for name in ("A", "B")
    }
    report["b_over_a"] = [
        {"p99": b["latency_ms"]["p99"] / a["latency_ms"]["p99"], "answered": b["throughput_rps"] / a["throughput_rps"]}
        for a, b in zip(runs["A"], runs["B"], strict=True)
        if a["latency_ms"]["p99"] and b["latency_ms"]["p99"] and a["throughput_rps"]
    ]
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"A/B under {report['overload_rps']:.0f} requests/s ({report['settings']['overload_factor']:g}x "
        f"{report['sustainable_rps']:.1f}), {report['settings']['rounds']} rounds of "
        f"{report['settings']['seconds']:g} s alternating; unloaded p99 {report['unloaded_p99_ms']:.1f} ms "
        f"({report['unloaded_answers']} answers), budget {report['latency_budget_ms']:.0f} ms",
    ]
    if report["unloaded_invalid_because"]:
        lines.append("unloaded p99, and every ratio to it, INVALID: " + "; ".join(report["unloaded_invalid_because"]))
    lines.append("")
    for name, entry in report["variants"].items():
        verdict = "  INVALID: " + "; ".join(entry["invalid_because"]) if entry["invalid_because"] else ""
        lines.append(
            f"{name} {entry['serve_settings'] or '(serve defaults)'}: p99 {entry['p99_ms']:.0f} ms "
            f"({entry['p99_ratio_to_unloaded']:.2f}x unloaded), {entry['answered_rps']:.1f} answered/s "
            f"({100 * entry['answered_share_of_sustainable']:.0f}% of sustainable), 5xx {entry['errors_5xx']}, "
            f"answered by {entry['answered_by']}{verdict}"
        )
    lines += [
        "",
        "B/A per round: " + ", ".join(f"p99 {r['p99']:.2f}, answered {r['answered']:.2f}" for r in report["b_over_a"]),
    ]
    return "\n".join(lines)
