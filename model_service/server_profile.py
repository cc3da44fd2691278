"""Where the server's CPU goes under 8x overload: `peakguard bench server`.

The real service (`peakguard serve`, admission on, pinned to one core) takes eight times the rate it
sustains from the load generator on another core, while py-spy samples its Python stacks without
pausing it (`--nonblocking`). Each sample is put in one category by its innermost frame that names
one (the event loop, HTTP parsing, FastAPI, JSON and validation, admission, the answer table, the
circuit breaker, the batcher, the tokenizer, the model's forward, metrics); the categories' shares of each thread's
samples then divide that thread's CPU time as the kernel counted it (`/proc/<pid>/task/<tid>/stat`),
so the figures are CPU seconds, not just sample counts, and CPU per request follows.

The run's figures are refused (`invalid_because`) when the generator fell behind (the load
generator's one bar), when py-spy took too few samples or failed on too many, or when the server
was not the one thing its core ran.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_service.load_generator import invalid_because, query_texts
from model_service.service_process import ServiceProcess, cpu_seconds, running_on, split_cores

__all__ = [
    "CATEGORIES",
    "ProfileRun",
    "ServerProfileSettings",
    "attribute",
    "category",
    "parse_raw",
    "render",
    "run",
    "thread_cpu_seconds",
]

Log = Callable[[str], None]

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (category, substrings of a py-spy frame "function (package/file.py:line)"); the innermost frame
    # that contains one decides. Order matters only within one frame.
    (
        "model forward",
        (
            "model_service/classifier.py",
            "model_service/moe.py",
            "model_service/attention.py",
            "model_service/onnx_int8.py",
            "torch/",
            "onnxruntime/",
        ),
    ),
    ("tokenizer", ("model_service/pretrained.py", "tokenizers/")),
    ("batcher", ("model_service/batcher.py",)),
    ("admission", ("model_service/admission.py", "_AdmissionGate")),
    ("answer table", ("model_service/answer_cache.py",)),
    ("circuit breaker", ("model_service/breaker.py",)),
    ("metrics", ("prometheus_client/", "model_service/metrics.py")),
    ("JSON and validation", ("json/", "orjson", "pydantic", "fastapi/encoders.py", "fastapi/_compat")),
    ("FastAPI and Starlette", ("fastapi/", "starlette/")),
    ("HTTP parsing and writing", ("uvicorn/", "httptools", "h11/")),
    ("event loop", ("asyncio/", "uvloop/", "selectors.py")),
    ("service code", ("model_service/",)),
)
OTHER = "other"

MIN_SAMPLES = 500
"""Fewer non-idle samples than this in the window and the shares are not reported."""
MAX_ERROR_SHARE = 0.05
"""py-spy failing on more than this share of its samples (a stack it could not read) voids the run."""

_LINE = re.compile(r"^thread \((?P<tid>\d+)\): (?P<name>[^;]*)(?:;(?P<stack>.*))? (?P<count>\d+)$")
_SUMMARY = re.compile(r"Samples: (?P<samples>\d+) Errors: (?P<errors>\d+)")


@dataclass(frozen=True)
class ServerProfileSettings:
    artifacts: Path
    """An artifact root (`peakguard train --out`)."""
    version: str = ""
    """The version folder (default: the newest)."""
    data: Path | None = None
    """A folder with banking77/ for real query texts; default: the load generator's sample queries."""
    sustainable_rps: float | None = None
    """The rate the service sustains (e.g. from `bench model`); None: measured here, briefly."""
    budget_ms: float | None = None
    """Admission's latency budget; None: twice the unloaded p99 measured here (as `bench model`)."""
    overload_factor: float = 8.0
    seconds: float = 30.0
    """Length of the overload run; py-spy samples all of it but its first and last second."""
    rate: int = 100
    """py-spy samples per second."""
    unloaded_seconds: float = 20.0
    step_seconds: float = 4.0
    seed: int = 0
    serve_settings: tuple[tuple[str, Any], ...] = ()
    """More `peakguard serve` settings for the services it starts (e.g. batch_budget_share)."""

    def __post_init__(self) -> None:
        if self.seconds < 5:
            raise ValueError(f"seconds must be at least 5 (1 s warm-up, 1 s tail), got {self.seconds}")
        if not 1 <= self.rate <= 1000:
            raise ValueError(f"rate must be 1-1000 samples per second, got {self.rate}")
        if self.overload_factor <= 0 or (self.sustainable_rps is not None and self.sustainable_rps <= 0):
            raise ValueError("overload_factor and sustainable_rps must be > 0")


def category(frames: Sequence[str]) -> str:
    """The category of one stack (outermost frame first): that of its innermost frame naming one."""
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return OTHER


@dataclass(frozen=True)
class ProfileRun:
    """py-spy's raw output, read: samples per thread id and per (thread id, category)."""

    thread_names: dict[int, str]
    samples: Counter[int]
    by_category: Counter[tuple[int, str]]
    leaves: Counter[str]
    """Samples per innermost frame: where the CPU is spent, by function."""


def parse_raw(text: str) -> ProfileRun:
    """Read `py-spy record --format raw --threads` output (one "thread (tid): name;frames count" a line)."""
    names: dict[int, str] = {}
    samples: Counter[int] = Counter()
    by_category: Counter[tuple[int, str]] = Counter()
    leaves: Counter[str] = Counter()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"py-spy raw line {number} is not 'thread (tid): name;frames count': {line[:120]!r}")
        tid, count = int(match["tid"]), int(match["count"])
        frames = match["stack"].split(";") if match["stack"] else []
        names[tid] = match["name"]
        samples[tid] += count
        by_category[tid, category(frames)] += count
        leaves[frames[-1] if frames else "(no Python frame)"] += count
    return ProfileRun(names, samples, by_category, leaves)


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) each thread of `pid` has used so far, as the kernel counts them."""
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds[int(task.name)] = cpu_seconds(pid, int(task.name))
        except OSError:
            continue  # the thread ended between listing and reading
    return seconds


def _role(name: str) -> str:
    if name == "MainThread":
        return "event loop thread"
    if name.startswith("infer-"):
        return "model thread"
    return "other threads"


def attribute(run: ProfileRun, cpu: dict[int, float]) -> dict[str, Any]:
    """Each thread's CPU seconds split over categories by its samples' shares; the totals by category
    and by thread role. A thread with CPU but no samples (native, or idle to py-spy) stays unsplit."""
    by_category: dict[str, float] = {}
    by_role: dict[str, float] = {}
    unsampled = 0.0
    for tid, seconds in cpu.items():
        role = _role(run.thread_names.get(tid, ""))
        by_role[role] = by_role.get(role, 0.0) + seconds
        total = run.samples.get(tid, 0)
        if total == 0:
            unsampled += seconds
            continue
        for (owner, name), count in run.by_category.items():
            if owner == tid:
                by_category[name] = by_category.get(name, 0.0) + seconds * count / total
    if unsampled:
        by_category["threads py-spy did not sample"] = unsampled

    def largest_first(table: dict[str, float]) -> dict[str, float]:
        return dict(sorted(table.items(), key=lambda item: -item[1]))

    return {"by_category": largest_first(by_category), "by_role": largest_first(by_role)}


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: pip install 'peakguard[bench]' (it is in the bench extra)")
    return found


def _sampled(pid: int, seconds: float, rate: int, raw: Path) -> tuple[dict[int, float], dict[str, int], str]:
    """py-spy on `pid` for `seconds`, and each thread's CPU over exactly that window."""
    before = thread_cpu_seconds(pid)
    spy = subprocess.run(  # noqa: S603 (our own py-spy on our own child)
        [_py_spy(), "record", "--pid", str(pid), "--duration", str(round(seconds)), "--rate", str(rate),
         "--format", "raw", "--threads", "--nonblocking", "--output", str(raw)],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    after = thread_cpu_seconds(pid)
    said = spy.stdout + spy.stderr
    if spy.returncode != 0 or not raw.exists():
        raise RuntimeError(
            f"py-spy exited with {spy.returncode}: {said.strip()[-500:]}\n"
            "It needs to read the server's memory: run as the same user with ptrace allowed "
            "(root, or CAP_SYS_PTRACE in a container, or kernel.yama.ptrace_scope <= 1)"
        )
    summary = _SUMMARY.search(said)
    counts = {k: int(v) for k, v in summary.groupdict().items()} if summary else {"samples": 0, "errors": 0}
    cpu = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    return cpu, counts, said


def run(settings: ServerProfileSettings, *, log: Log = print, raw_out: Path | None = None) -> dict[str, Any]:
    """The profile, JSON-able: CPU seconds by category and by thread, per request, the top functions,
    and the run's conditions (rate, what answered, breaker, generator lag, samples)."""
    from model_service import benchmark
    from model_service.artifacts import newest_version

    folder = settings.artifacts / (settings.version or newest_version(settings.artifacts))
    texts = query_texts(settings.data)
    server_cpus, generator_cpus = split_cores("bench server")
    base = {"artifacts": str(folder.parent), "version": folder.name, **dict(settings.serve_settings)}
    report: dict[str, Any] = {
        "version": folder.name,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "cores": {"server (every thread)": sorted(server_cpus), "load generator and py-spy": sorted(generator_cpus)},
    }
    with running_on(generator_cpus):
        budget_ms = settings.budget_ms
        if budget_ms is None:
            with ServiceProcess(base | {"admission": False}, cpus=server_cpus) as unprotected:
                log(f"unloaded p99 (sets admission's budget): {settings.unloaded_seconds:.0f} s")
                unloaded, _ = benchmark.unloaded_p99(unprotected.url, texts, seconds=settings.unloaded_seconds)
            budget_ms = 2000 * unloaded
            report["unloaded_p99_ms"] = unloaded * 1000
        report["latency_budget_ms"] = budget_ms
        with ServiceProcess(
            base | {"admission": True, "latency_budget": budget_ms / 1000}, cpus=server_cpus
        ) as service:
            sustainable = settings.sustainable_rps
            if sustainable is None:
                log("sustainable rate (a short search; `bench model` confirms it for 2000 answers)")
                sustainable, steps = benchmark.sustainable_rate(
                    service.url, texts, slo=1.5 * budget_ms / 1000, start_rps=10.0,
                    step_seconds=settings.step_seconds, seed=settings.seed, log=log,
                )  # fmt: skip
                report["ramp"] = steps
            rps = settings.overload_factor * sustainable
            report |= {"sustainable_rps": sustainable, "overload_rps": rps}
            log(f"overload: {rps:.0f} requests/s for {settings.seconds:.0f} s, py-spy at {settings.rate} Hz")
            assert service.pid is not None
            sampled: dict[str, Any] = {}
            raw = raw_out or Path(tempfile.mkdtemp(prefix="peakguard-pyspy-")) / "server.raw.txt"

            def sample() -> None:
                time.sleep(1.0)  # the load run's warm-up (measure_run: 1 s of a run this long)
                try:
                    sampled["result"] = _sampled(service.pid or 0, settings.seconds - 2, settings.rate, raw)
                except Exception as error:  # noqa: BLE001 (carried to the caller's thread, raised there)
                    sampled["error"] = error

            spy = threading.Thread(target=sample, name="py-spy", daemon=True)
            spy.start()
            load = benchmark.measure_run(service, rps, settings.seconds, texts, settings.seed, timeout=10)
            spy.join(timeout=120)
            report["admission_after"] = service.status()["admission"]
            if "error" in sampled:
                raise sampled["error"]
    cpu, counts, _ = sampled["result"]
    profile = parse_raw(raw.read_text())
    figures = attribute(profile, cpu)
    window = settings.seconds - 2
    total_cpu = sum(cpu.values())
    report |= {
        "load": load,
        "py_spy": counts | {"rate": settings.rate, "seconds": window, "raw": str(raw)},
        "cpu_seconds": total_cpu,
        "cpu_busy_share": total_cpu / window,
        "cpu_seconds_by_category": figures["by_category"],
        "cpu_seconds_by_thread": figures["by_role"],
        "cpu_ms_per_request_by_category": {
            # requests arriving in the sampled window, at the measured arrival rate
            name: 1000 * seconds / max(1.0, load["sent_rps"] * window)
            for name, seconds in figures["by_category"].items()
        },
        "requests_in_window": load["sent_rps"] * window,
        "top_functions": [
            {"frame": frame, "share": count / max(1, profile.leaves.total())}
            for frame, count in profile.leaves.most_common(15)
        ],
    }
    reasons = invalid_because(load, min_samples=0)
    if profile.leaves.total() < MIN_SAMPLES:
        reasons.append(f"{profile.leaves.total()} non-idle samples < {MIN_SAMPLES}: lengthen --seconds or raise --rate")
    if counts["samples"] and counts["errors"] > MAX_ERROR_SHARE * counts["samples"]:
        reasons.append(f"py-spy failed on {counts['errors']} of {counts['samples']} samples")
    report["invalid_because"] = reasons
    return report


def render(report: dict[str, Any]) -> str:
    load = report["load"]
    lines = [
        f"server profile, version {report['version']}: {report['overload_rps']:.0f} requests/s "
        f"({report['settings']['overload_factor']:g}x {report['sustainable_rps']:.1f}) for "
        f"{report['settings']['seconds']:g} s; admission budget {report['latency_budget_ms']:.0f} ms, batch cap "
        f"{report['admission_after'].get('batch_cap')} at the end",
        f"  answered {load['throughput_rps']:.1f}/s by {load['answered_by']}, shed {load['shed']}, "
        f"5xx {load['errors_5xx']}, p99 {load['latency_ms']['p99']} ms, breaker open {load['breaker_open']}, "
        f"generator send lag p99 {load['send_lag_ms']['p99']} ms",
        f"  server CPU {report['cpu_seconds']:.1f} s in {report['py_spy']['seconds']:g} s "
        f"({100 * report['cpu_busy_share']:.0f}% of its core); py-spy {report['py_spy']['samples']} samples, "
        f"{report['py_spy']['errors']} errors",
        "",
        f"{'category':32} {'CPU s':>7} {'share':>6} {'ms/request':>10}",
    ]
    total = max(report["cpu_seconds"], 1e-9)
    for name, seconds in report["cpu_seconds_by_category"].items():
        per = report["cpu_ms_per_request_by_category"][name]
        lines.append(f"{name:32} {seconds:7.2f} {100 * seconds / total:5.1f}% {per:10.3f}")
    lines += ["", "by thread: " + ", ".join(f"{k} {v:.2f} s" for k, v in report["cpu_seconds_by_thread"].items())]
    lines += ["", "innermost frames (share of samples):"]
    lines += [f"  {100 * row['share']:5.1f}%  {row['frame']}" for row in report["top_functions"][:10]]
    if report["invalid_because"]:
        lines += ["", "INVALID: " + "; ".join(report["invalid_because"])]
    return "\n".join(lines)
