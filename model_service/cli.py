"""`peakguard train` (and, as they land, serve, load and bench): the model service's commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["register_bench", "register_load", "register_serve", "register_train"]


def register_train(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train the full (MoE), light and pruned models and write a versioned artifact folder",
        description=(
            "Train the intent models on banking77 and write them, with JSON model cards, into a new "
            "folder OUT/<version>/: `full` (MiniLM-L6 upcycled to a Mixture of Experts), `light` "
            "(2 dense layers distilled from full, >= 76% fewer parameters) and `pruned` (half of every "
            "expert's channels, recovered for 2 epochs distilled from full). The out-of-scope hand-over "
            "threshold is chosen on validation data (banking77 held-out + CLINC150 oos_val); test numbers are "
            "only reported. About 20 minutes on 2 quiet CPU cores; --quick makes drill models (heads only) in "
            "under 2 minutes."
        ),
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder holding banking77/ (train.csv, test.csv) and clinc150/ (data_full.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="artifact root; the version folder is created in it (with --quick: the cache folder)",
    )
    parser.add_argument("--seed", type=int, default=13, help="seed for the split, initialisation and shuffling")
    parser.add_argument("--epochs-full", type=float, default=None,
                        help="passes over the training split (full; default 3)")  # fmt: skip
    parser.add_argument("--epochs-light", type=float, default=None,
                        help="passes for the distilled light model (default 3)")  # fmt: skip
    parser.add_argument("--sample-limit", type=int, default=None,
                        help="use at most N examples per split: a smoke run, not a usable model")  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "drill models in about a minute: full and light with only their heads trained on the frozen "
            "pretrained encoder (cards say recipe: quick), no pruned model; OUT/quick-<key>/ is the artifact "
            "root to serve, keyed by the data files' sha256 and the recipe, and reused while intact"
        ),
    )
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from model_service.artifacts import ArtifactError
    from model_service.datasets import DatasetError
    from model_service.training import TrainingSettings, run

    if args.quick:
        return _train_quick(args)
    defaults = TrainingSettings()
    settings = TrainingSettings(
        seed=args.seed,
        epochs_full=defaults.epochs_full if args.epochs_full is None else args.epochs_full,
        epochs_light=defaults.epochs_light if args.epochs_light is None else args.epochs_light,
        sample_limit=args.sample_limit,
    )
    try:
        run(args.data, args.out, settings, log=lambda line: print(line, flush=True))
    except (DatasetError, ArtifactError, FileNotFoundError) as exc:
        print(f"peakguard train: {exc}", file=sys.stderr)
        return 2
    return 0


def _train_quick(args: argparse.Namespace) -> int:
    import time

    from model_service.artifacts import ArtifactError
    from model_service.datasets import DatasetError
    from model_service.quick_models import QuickRecipe, prepare, summary

    fixed = [flag for flag, value in (("--epochs-full", args.epochs_full), ("--epochs-light", args.epochs_light),
                                      ("--sample-limit", args.sample_limit)) if value is not None]  # fmt: skip
    if fixed:
        print(
            f"peakguard train: {', '.join(fixed)} does not apply to --quick (its recipe is fixed: heads only, "
            "on all the data); leave it out, or drop --quick to train the full recipe",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    try:
        root = prepare(
            args.data, args.out, log=lambda line: print(line, flush=True), recipe=QuickRecipe(seed=args.seed)
        )
        line = summary(root)
    except (DatasetError, ArtifactError, FileNotFoundError) as exc:
        print(f"peakguard train --quick: {exc}", file=sys.stderr)
        return 2
    print(line)
    print(f"took {time.perf_counter() - started:.1f} s; serve them with: peakguard serve --artifacts {root}")
    return 0


KEEP_ALIVE_SECONDS = 75.0
"""Longer than an ALB's default idle timeout (60 s): AWS recommends that the target's keep-alive exceed
the load balancer's idle timeout, or the balancer may answer 502 (Elastic Load Balancing, "Edit
attributes for your Application Load Balancer", Connection idle timeout). uvicorn's own default is 5 s."""


def register_serve(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the model service (HTTP) on trained artifacts",
        description=(
            "Serve POST /v1/intent, /healthz, /readyz, /metrics and the /admin API. Settings come from "
            "--config (JSON or YAML with the fields of model_service.server.ServiceSettings; durations in "
            "seconds), overridden by the flags. The admin token is read from $PEAKGUARD_ADMIN_TOKEN or the "
            "file named by $PEAKGUARD_ADMIN_TOKEN_FILE; without one the admin API is disabled. Tracing is "
            "exported over OTLP when $OTEL_EXPORTER_OTLP_ENDPOINT is set."
        ),
    )
    parser.add_argument("--config", type=Path, help="settings file (JSON or YAML)")
    parser.add_argument(
        "--artifacts", type=Path, help="artifact root written by peakguard train (required unless --config sets it)"
    )
    parser.add_argument("--version", help="model version folder to serve (default: the newest)")
    parser.add_argument(
        "--mode-file", type=Path, help="mounted mode ConfigMap: a directory holding mode.json, or the file"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in a pod)")
    parser.add_argument("--port", type=_port, default=8080, help="TCP port to listen on, 1-65535 (default 8080)")
    parser.add_argument(
        "--keep-alive",
        type=float,
        default=KEEP_ALIVE_SECONDS,
        metavar="SECONDS",
        help=(
            f"how long an idle client connection stays open (default {KEEP_ALIVE_SECONDS:g}). Behind a load "
            "balancer make it longer than the balancer's idle timeout (an ALB's is 60 s by default), so that the "
            "balancer closes idle connections, not the service: otherwise the balancer can send a request on a "
            "connection the service is closing and answer 502"
        ),
    )
    parser.add_argument(
        "--http",
        choices=("auto", "httptools", "h11"),
        default="auto",
        help="HTTP parser (default auto: httptools, the C parser, where installed; h11 is pure Python)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop (default auto: uvloop where installed)",
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from model_service.settings import SettingsError, load_settings

    if args.keep_alive <= 0:
        print(f"peakguard serve: --keep-alive must be > 0 seconds, got {args.keep_alive:g}", file=sys.stderr)
        return 2
    from model_service.artifacts import ArtifactError, check_servable

    try:
        settings = load_settings(args.config, artifacts=args.artifacts, version=args.version, mode_file=args.mode_file)
        # Before the port opens: a pod with no models must crash with the reason, not wait unready forever.
        check_servable(settings.artifacts, settings.version)
    except (SettingsError, ArtifactError) as exc:
        print(f"peakguard serve: {exc}", file=sys.stderr)
        return 2
    from model_service.server import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,
        timeout_keep_alive=args.keep_alive,
        http=args.http,
        loop=args.loop,
    )
    return 0


def _port(value: str) -> int:
    """argparse type: a TCP port one can listen on."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def register_bench(commands: Any) -> None:
    parser = commands.add_parser(
        "bench",
        help="benchmarks: `peakguard bench model`, `bench profile`, `bench server`, `bench pruning`, `bench ab`, "
        "`bench refusal`, `bench peer`, `bench table`",
        description="Benchmarks that measure, print their figures and write JSON.",
    )
    kinds = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    model = kinds.add_parser(
        "model",
        help="the model and the service: INT8, distillation, pruning, batching, overload with and without admission",
        description=(
            "Measure, side by side in one run: latency at batch 32 of the full, light and pruned models in "
            "FP32 and INT8 (interleaved, medians); test accuracy from the model cards beside a TF-IDF baseline; "
            "then the real service (`peakguard serve`, pinned to one core, the load generator on another): "
            "unloaded p99, the highest rate it sustains with p99 within 3x of that, and 8x that rate with "
            "admission control on, with batches of one, shedding (how many queries the answer table knew were "
            "refused by admission first), and with admission control off. All of it --repetitions "
            "times (default 3); each figure is their median (min-max). A figure is INVALID, and meets no goal, when "
            "its generator sent late (send lag p99 over the load generator's 5 ms bar), its p99 rests on fewer than "
            "2000 answers, or a ratio compares runs another model or precision answered. Prints the seed's "
            "optimisation matrix beside ours and writes everything as JSON. About 35 minutes on 2 cores "
            "(--no-service: a few)."
        ),
    )
    _version_arguments(model)
    model.add_argument(
        "--data", type=Path, help="data folder with banking77/: the TF-IDF baseline and real query texts for the load"
    )
    model.add_argument("--json", type=Path, help="write the report here (atomically)")
    model.add_argument("--repeats", type=int, default=20, help="timed forwards per model variant and repetition")
    model.add_argument("--repetitions", type=_positive_int, default=3, help="whole runs, for median and min-max")
    model.add_argument("--no-service", action="store_true", help="models only: skip the HTTP service under load")
    model.add_argument(
        "--overload-seconds", type=float, default=120.0,
        help="length of each overload run (default 120: batches of one need it for 2000 answers)",
    )  # fmt: skip
    model.add_argument(
        "--unloaded-seconds", type=float, default=215.0,
        help="length of the unloaded run at 10 requests/s (default 215: 2000 answers)",
    )  # fmt: skip
    model.add_argument("--step-seconds", type=float, default=8.0, help="length of each sustainable-rate step")
    model.add_argument(
        "--peer", choices=("ray-serve",), default="",
        help="also serve the same model with this stack (ray-serve: Ray Serve's @serve.batch, from the bench extra) "
        "on the same core, held to the same SLO and latency budget (its queue bounded for it), and report both: "
        "sustainable rate, unloaded p99, goodput and 5xx under the same 8x load, p99 at an equal answered rate. "
        "About 10 more minutes per repetition",
    )  # fmt: skip
    _serve_setting_argument(model)
    model.set_defaults(handler=_bench_model)
    table = kinds.add_parser(
        "table",
        help="the README's Markdown table from a `bench model` JSON",
        description=(
            "Print the Markdown table the README's measured-performance section is built from: every figure of "
            "one `peakguard bench model --json` run as its median and min-max over the repetitions, with its "
            "goal and verdict and, where it is invalid, why. The table is regenerated from a run, never edited."
        ),
    )
    table.add_argument("report", type=Path, help="the JSON `peakguard bench model --json` wrote")
    table.add_argument(
        "--command", default="", help="the command that produced the report, quoted in the table's heading"
    )
    table.set_defaults(handler=_bench_table)
    profile = kinds.add_parser(
        "profile",
        help="where one batch's time goes: per part of every block and per operator, FP32 and INT8",
        description=(
            "Time one model's forward on a batch of real queries, FP32 and INT8 side by side: the tokenizer, each "
            "block's attention, MoE gating, dispatch and expert GEMMs, the rest of the block, the head and the "
            "embeddings (forward hooks; medians), and the operators that spend the most of their own CPU time "
            "(torch.profiler). Prints a table and writes JSON; rerun it before and after a change to the model."
        ),
    )
    _version_arguments(profile)
    profile.add_argument("--model", default="full", help="which model of the version (default full)")
    profile.add_argument("--batch", type=int, default=32, help="queries in the batch (default 32)")
    profile.add_argument("--repeats", type=int, default=20, help="timed forwards per precision (default 20)")
    profile.add_argument("--data", type=Path, help="data folder with banking77/ for real queries (default: samples)")
    profile.add_argument("--json", type=Path, help="write the report here (atomically)")
    profile.set_defaults(handler=_bench_profile)
    server = kinds.add_parser(
        "server",
        help="where the server's CPU goes under 8x overload (py-spy): event loop, HTTP, JSON, admission, model",
        description=(
            "Run the real service (admission on, pinned to one core) under 8x the rate it sustains, with py-spy "
            "sampling its Python stacks without pausing it, and split each thread's CPU time (as the kernel "
            "counted it) over what its samples were doing: event loop, HTTP parsing, FastAPI, JSON and validation, "
            "admission, answer table, batcher, tokenizer, model forward, metrics. Prints CPU seconds, share and "
            "CPU per request by category, and the busiest functions; writes JSON and py-spy's raw stacks (feed "
            "them to flamegraph.pl or speedscope). Without --sustainable the rate is found by a short search "
            "first (about a minute). Needs py-spy (the bench extra) and ptrace on the server (root or "
            "CAP_SYS_PTRACE), and 2 cores."
        ),
    )
    _version_arguments(server)
    server.add_argument("--data", type=Path, help="data folder with banking77/ for real queries (default: samples)")
    server.add_argument(
        "--sustainable", type=float, help="requests/s the service sustains (e.g. `bench model`'s); default: measure"
    )
    server.add_argument(
        "--budget-ms", type=float, help="admission's latency budget (default: twice the unloaded p99, measured)"
    )
    server.add_argument("--factor", type=float, default=8.0, help="overload as a multiple of sustainable (default 8)")
    server.add_argument("--seconds", type=float, default=30.0, help="length of the overload run (default 30)")
    server.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    server.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here (default: a temporary folder)")
    server.add_argument("--json", type=Path, help="write the report here (atomically)")
    _serve_setting_argument(server)
    server.set_defaults(handler=_bench_server)
    pruning = kinds.add_parser(
        "pruning",
        help="structured pruning's latency-vs-accuracy curve, each point fine-tuned to recover",
        description=(
            "Prune the trained full model at each --point (feed-forward channels kept per expert, attention heads "
            "kept per layer), give each a short recovery fine-tune on banking77's training split, measure its test "
            "accuracy, then time every point at batch 32 interleaved with the unpruned model. Prints the curve and "
            "whether the seed's row (>= 30% lower latency at <= 0.5 pt loss) is met. About 2 minutes per point "
            "on 2 cores."
        ),
    )
    _version_arguments(pruning)
    pruning.add_argument("--data", type=Path, required=True, help="data folder with banking77/")
    pruning.add_argument(
        "--point", action="append", dest="points", metavar="channels=SHARE[,heads=N]",
        help="a point of the curve (repeatable; default: channels 0.75, 0.5, 0.5 with 8 heads, 0.375 with 8, "
        "0.25 with 6)",
    )  # fmt: skip
    pruning.add_argument("--recovery-epochs", type=float, default=2.0,
                         help="fine-tune after pruning (default 2: the recipe that met the seed's row)")  # fmt: skip
    pruning.add_argument(
        "--distill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recover from the unpruned model's answers (its logits on the training split) as well as the labels, "
        "as the light model is trained (default on; --no-distill: the labels alone)",
    )
    pruning.add_argument(
        "--seed", type=int, default=13, help="the training run's seed (keeps its validation split out)"
    )
    pruning.add_argument("--repeats", type=_positive_int, default=20, help="timed forwards per model (default 20)")
    pruning.add_argument("--json", type=Path, help="write the report here (atomically)")
    pruning.set_defaults(handler=_bench_pruning)
    ab = kinds.add_parser(
        "ab",
        help="two serve settings side by side under 8x overload (alternating runs, one core)",
        description=(
            "Measure a change to `peakguard serve`'s settings before keeping it: variants A (serve's defaults, or "
            "--a) and B (--b) run as two processes pinned to the same core, with admission's budget from one "
            "unloaded p99 (twice it, as bench model) and the same 8x rate (A's sustainable rate, searched briefly, "
            "or --sustainable); their overload runs alternate, A B then B A. Prints each variant's median p99 (and "
            "its ratio to the unloaded p99), answered/s and 5xx, and B/A per round; a run whose p99 rests on fewer "
            "than 2000 answers or whose generator fell behind is INVALID."
        ),
    )
    _version_arguments(ab)
    ab.add_argument("--b", action="append", required=True, type=_serve_setting, metavar="KEY=JSON",
                    help="a serve setting of variant B (repeatable, at least one)")  # fmt: skip
    ab.add_argument("--a", action="append", default=[], type=_serve_setting, metavar="KEY=JSON",
                    help="a serve setting of variant A (repeatable; default serve's defaults)")  # fmt: skip
    ab.add_argument("--data", type=Path, help="data folder with banking77/ for real queries (default: samples)")
    ab.add_argument("--sustainable", type=float, help="requests/s A sustains; default: a short search")
    ab.add_argument("--seconds", type=float, default=60.0, help="length of each overload run (default 60)")
    ab.add_argument("--rounds", type=_positive_int, default=2, help="overload runs per variant (default 2)")
    ab.add_argument("--unloaded-seconds", type=float, default=60.0, help="unloaded run at 10/s (default 60)")
    ab.add_argument("--json", type=Path, help="write the report here (atomically)")
    ab.set_defaults(handler=_bench_ab)
    refusal = kinds.add_parser(
        "refusal",
        help="CPU one refusal costs the server, per HTTP parser and event loop",
        description=(
            "Put the model to sleep (a chaos slow layer holds one admitted batch through the burst, so admission "
            "refuses everything else), send a burst of requests, and take the server's CPU (/proc) less its idle CPU "
            "as the refusals' cost. Each server variant (httptools+uvloop, serve's default; h11+asyncio) runs in "
            "its own process on the same core, the load generator on another, and rounds alternate between "
            "them. A round where anything was answered, or the generator fell behind, is INVALID. Needs 2 cores."
        ),
    )
    _version_arguments(refusal)
    refusal.add_argument(
        "--variant", action="append", dest="variants", choices=("httptools+uvloop", "h11+asyncio"),
        help="a server variant to measure (repeatable; default both)",
    )  # fmt: skip
    refusal.add_argument("--rps", type=float, default=600.0, help="requests/s in each burst (default 600)")
    refusal.add_argument("--seconds", type=float, default=6.0, help="length of each burst (default 6, at most 7)")
    refusal.add_argument(
        "--idle-seconds", type=float, default=1.5, help="idle baseline before each burst (default 1.5)"
    )
    refusal.add_argument("--rounds", type=_positive_int, default=2, help="bursts per variant (default 2)")
    refusal.add_argument("--json", type=Path, help="write the report here (atomically)")
    refusal.set_defaults(handler=_bench_refusal)
    breaker = kinds.add_parser(
        "breaker",
        help="two circuit-breaker timings judged on the same 8x answers",
        description=(
            "Serve the bench's 8x (the sustainable rate, then 8 times it; admission on with the given budget) with the "
            "server's own breaker held shut, and replay every answer's latency through a breaker of each timing "
            "(the old 10 s window and 5 s trip; serve's default 5 s window and 10 s trip), both tripping over the "
            "SLO: when, or whether, each would have opened on the very same answers. Take the budget, SLO and "
            "sustainable rate from a `bench model --json` report. A run whose generator fell behind, or where "
            "anything but the full model answered, is INVALID. Needs 2 cores; about 2 minutes a run."
        ),
    )
    breaker.add_argument("--artifacts", type=Path, required=True, help="artifact root written by peakguard train")
    breaker.add_argument("--version", default="", help="version folder (default: the newest)")
    breaker.add_argument("--data", type=Path, help="data folder with banking77/: real query texts for the load")
    breaker.add_argument("--budget-ms", type=float, required=True, help="admission's latency budget, ms")
    breaker.add_argument("--slo-ms", type=float, required=True, help="the SLO p99 the breakers trip over, ms")
    breaker.add_argument("--sustainable-rps", type=float, required=True, help="the sustainable rate; 8x is 8 times it")
    breaker.add_argument("--runs", type=_positive_int, default=3, help="runs (default 3)")
    breaker.add_argument("--overload-seconds", type=float, default=60.0, help="length of each 8x stretch (default 60)")
    breaker.add_argument("--json", type=Path, help="write the report here (atomically)")
    breaker.set_defaults(handler=_bench_breaker)
    peer = kinds.add_parser(
        "peer",
        help="the Ray Serve peer against a recorded `bench model` run",
        description=(
            "Measure Ray Serve's @serve.batch (the bench extra) serving the same model version on the same core, held "
            "to the SLO, latency budget and rates of a recorded `peakguard bench model --json` run, with peakguard's "
            "own 8x and equal-rate runs made again beside the peer's: the peer's unloaded p99 and sustainable rate, "
            "8x with Ray's unbounded queue, then with its queue bounded for the budget (goodput, p99, 5xx), and p99 "
            "at an equal answered rate. What `bench model --peer ray-serve` does inside a run, without remeasuring "
            "everything else. About 15 minutes on 2 cores."
        ),
    )
    peer.add_argument("--artifacts", type=Path, required=True, help="artifact root holding the report's model version")
    peer.add_argument("--against", type=Path, required=True, metavar="REPORT", help="a `bench model --json` report")
    peer.add_argument("--repetition", type=_positive_int, default=1, help="which of its repetitions sets the rates")
    peer.add_argument("--data", type=Path, help="data folder with banking77/: real query texts for the load")
    peer.add_argument("--overload-seconds", type=float, default=120.0, help="length of each 8x run")
    peer.add_argument("--unloaded-seconds", type=float, default=215.0, help="length of the peer's unloaded run")
    peer.add_argument("--step-seconds", type=float, default=8.0, help="length of each sustainable-rate step")
    peer.add_argument("--json", type=Path, help="write the report here (atomically)")
    peer.set_defaults(handler=_bench_peer)


def _version_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", type=Path, required=True, help="artifact root written by peakguard train")
    parser.add_argument("--version", default="", help="version folder (default: the newest)")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        help="threads for the model timings, torch's and ONNX Runtime's (default: torch's, one per usable core); "
        "a serving process in the drill runs 1",
    )


def _serve_setting_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--serve-setting", action="append", default=[], type=_serve_setting, metavar="KEY=JSON", dest="serve_settings",
        help="a `peakguard serve` setting for the services the bench starts, its value as JSON "
        "(repeatable; e.g. batch_budget_share=0.5); the report records them",
    )  # fmt: skip


def _serve_setting(text: str) -> tuple[str, Any]:
    import dataclasses
    import json

    from model_service.server import ServiceSettings

    key, equals, value = text.partition("=")
    known = {f.name for f in dataclasses.fields(ServiceSettings)} - {"artifacts", "version", "admin_token"}
    if not equals or key not in known:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=JSON with KEY one of {', '.join(sorted(known))}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{key}: {value!r} is not JSON ({exc.msg}); e.g. {key}=0.5") from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _use_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _print_and_write(text: str, report: dict[str, Any], path: Path | None) -> int:
    """A bench's last words: its table, and its JSON where asked."""
    from model_service.reports import write_json

    print(text)
    if path:
        write_json(report, path)
        print(f"wrote {path}")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _measured(bench: str, measure: Callable[[], dict[str, Any]], render: Callable[[dict[str, Any]], str],
              path: Path | None) -> int:  # fmt: skip
    """Run one bench's measurement; a bad input or a service that would not start is named, exit 2."""
    from model_service.artifacts import ArtifactError
    from model_service.service_process import ServiceStartError

    try:
        report = measure()
    except (ArtifactError, FileNotFoundError, ValueError, RuntimeError, ServiceStartError) as exc:
        print(f"peakguard bench {bench}: {exc}", file=sys.stderr)
        return 2
    return _print_and_write(render(report), report, path)


def _bench_pruning(args: argparse.Namespace) -> int:
    from model_service.pruning_curve import DEFAULT_POINTS, PruningSettings, parse_point, render, run

    _use_threads(args.threads)

    def measure() -> dict[str, Any]:
        points = tuple(parse_point(text) for text in args.points) if args.points else DEFAULT_POINTS
        settings = PruningSettings(
            artifacts=args.artifacts, data=args.data, version=args.version, points=points,
            recovery_epochs=args.recovery_epochs, distill=args.distill, seed=args.seed, repeats=args.repeats,
        )  # fmt: skip
        return run(settings, log=_say)

    return _measured("pruning", measure, render, args.json)


def _bench_ab(args: argparse.Namespace) -> int:
    from model_service.setting_ab import AbSettings, render, run

    def measure() -> dict[str, Any]:
        settings = AbSettings(
            artifacts=args.artifacts, version=args.version, a=tuple(args.a), b=tuple(args.b), data=args.data,
            sustainable_rps=args.sustainable, seconds=args.seconds, rounds=args.rounds,
            unloaded_seconds=args.unloaded_seconds,
        )  # fmt: skip
        return run(settings, log=_say)

    return _measured("ab", measure, render, args.json)


def _bench_refusal(args: argparse.Namespace) -> int:
    from model_service.refusal_cost import VARIANTS, RefusalSettings, render, run

    def measure() -> dict[str, Any]:
        settings = RefusalSettings(
            artifacts=args.artifacts, version=args.version, variants=tuple(args.variants or VARIANTS), rps=args.rps,
            seconds=args.seconds, idle_seconds=args.idle_seconds, rounds=args.rounds,
        )  # fmt: skip
        return run(settings, log=_say)

    return _measured("refusal", measure, render, args.json)


def _bench_breaker(args: argparse.Namespace) -> int:
    from model_service.breaker_replay import BreakerReplaySettings, render, run

    def measure() -> dict[str, Any]:
        settings = BreakerReplaySettings(
            artifacts=args.artifacts, version=args.version, data=args.data, latency_budget=args.budget_ms / 1000,
            slo=args.slo_ms / 1000, sustainable_rps=args.sustainable_rps, runs=args.runs,
            overload_seconds=args.overload_seconds,
        )  # fmt: skip
        return run(settings, log=_say)

    return _measured("breaker", measure, render, args.json)


def _bench_peer(args: argparse.Namespace) -> int:
    import json

    from model_service.load_generator import query_texts
    from model_service.peer_comparison import render, run_against

    def measure() -> dict[str, Any]:
        try:
            recorded = json.loads(args.against.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--against {args.against}: not a readable `bench model` JSON report ({exc})") from None
        return run_against(
            recorded, args.artifacts, texts=query_texts(args.data), repetition=args.repetition,
            unloaded_seconds=args.unloaded_seconds, step_seconds=args.step_seconds,
            overload_seconds=args.overload_seconds, log=_say,
        )  # fmt: skip

    return _measured("peer", measure, render, args.json)


def _bench_server(args: argparse.Namespace) -> int:
    from model_service.server_profile import ServerProfileSettings, render, run

    def measure() -> dict[str, Any]:
        settings = ServerProfileSettings(
            artifacts=args.artifacts, version=args.version, data=args.data, sustainable_rps=args.sustainable,
            budget_ms=args.budget_ms, overload_factor=args.factor, seconds=args.seconds, rate=args.rate,
            serve_settings=tuple(args.serve_settings),
        )  # fmt: skip
        return run(settings, log=_say, raw_out=args.raw)

    return _measured("server", measure, render, args.json)


def _bench_model(args: argparse.Namespace) -> int:
    from model_service.artifacts import ArtifactError
    from model_service.benchmark import BenchSettings, render, run
    from model_service.service_process import ServiceStartError

    settings = BenchSettings(
        artifacts=args.artifacts, version=args.version, data=args.data, repeats=args.repeats,
        repetitions=args.repetitions, service=not args.no_service, overload_seconds=args.overload_seconds,
        unloaded_seconds=args.unloaded_seconds, step_seconds=args.step_seconds,
        serve_settings=tuple(args.serve_settings), peer=args.peer,
    )  # fmt: skip
    _use_threads(args.threads)

    kept: list[int] = []

    def keep(partial: dict[str, Any]) -> None:
        if args.json:
            from model_service.reports import write_json

            write_json(partial, args.json)  # atomic: a run that dies later keeps its finished repetitions
            kept.append(len(partial["repetitions"]))

    try:
        report = run(settings, log=lambda line: print(line, flush=True), on_repetition=keep)
    except (ArtifactError, FileNotFoundError, ServiceStartError, RuntimeError, ValueError) as exc:
        saved = f"; the {kept[-1]} repetition(s) before it are in {args.json}" if kept else ""
        print(f"peakguard bench model: {exc}{saved}", file=sys.stderr)
        return 2
    return _print_and_write(render(report), report, args.json)


def _bench_table(args: argparse.Namespace) -> int:
    import json

    from model_service.benchmark import markdown

    try:
        report = json.loads(args.report.read_text())
        print(markdown(report, command=args.command or f"peakguard bench model ... --json {args.report.name}"))
    except (OSError, ValueError, KeyError) as exc:
        print(f"peakguard bench table: {args.report} is not a `bench model` report ({exc!r})", file=sys.stderr)
        return 2
    return 0


def _bench_profile(args: argparse.Namespace) -> int:
    from model_service.artifacts import ArtifactError
    from model_service.batch_profile import ProfileSettings, render, run

    _use_threads(args.threads)
    try:
        settings = ProfileSettings(
            artifacts=args.artifacts, version=args.version, model=args.model, batch=args.batch,
            repeats=args.repeats, data=args.data,
        )  # fmt: skip
        report = run(settings, log=lambda line: print(line, flush=True))
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"peakguard bench profile: {exc}", file=sys.stderr)
        return 2
    return _print_and_write(render(report), report, args.json)


def register_load(commands: Any) -> None:
    parser = commands.add_parser(
        "load",
        help="drive open-loop (Poisson) load at a URL for a bounded time and report latency and sheds",
        description=(
            'Send POST {"text": ...} requests to URL at a Poisson rate of RPS for DURATION seconds, whatever '
            "the server does (open loop), then report throughput, p50/p95/p99 latency measured from each "
            "request's scheduled send time (no coordinated omission), how late the generator sent, and "
            "status, shed (429/503 with Retry-After), 5xx and transport-error counts. Stops by itself after "
            "DURATION + TIMEOUT seconds."
        ),
    )
    parser.add_argument("--url", required=True, help="endpoint, e.g. http://127.0.0.1:8080/v1/intent")
    parser.add_argument("--rps", type=float, required=True, help="mean arrival rate, requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds of arrivals")
    parser.add_argument("--json", type=Path, help="also write the report here (atomically)")
    texts = parser.add_mutually_exclusive_group()
    texts.add_argument("--texts", type=Path, help="file with one query per line")
    texts.add_argument("--data", type=Path, help="data folder: use banking77's test queries")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request before it counts as failed")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds at the start sent but not reported")
    parser.add_argument("--max-in-flight", type=int, default=4096, help="open requests at most (bounds memory)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the arrival schedule and the text choice")
    parser.set_defaults(handler=_load)


def _load(args: argparse.Namespace) -> int:
    import json

    from model_service.datasets import DatasetError, load_banking77
    from model_service.load_generator import SAMPLE_QUERIES, LoadSpec, run_load_sync
    from model_service.reports import write_json

    try:
        if args.texts:
            texts: Sequence[str] = [line for line in args.texts.read_text().splitlines() if line.strip()]
            if not texts:
                raise ValueError(f"{args.texts} holds no queries: write one per line, or leave out --texts")
        elif args.data:
            texts = load_banking77(args.data / "banking77").test.texts
        else:
            texts = SAMPLE_QUERIES
        spec = LoadSpec(url=args.url, rps=args.rps, duration=args.duration, texts=texts, timeout=args.timeout,
                        seed=args.seed, max_in_flight=args.max_in_flight, warmup=args.warmup)  # fmt: skip
    except (OSError, DatasetError, ValueError) as exc:
        print(f"peakguard load: {exc}", file=sys.stderr)
        return 2
    report = run_load_sync(spec).to_dict()
    latency, lag = report["latency_ms"], report["send_lag_ms"]
    print(
        f"sent {report['sent']} ({report['sent_rps']:.1f}/s), answered {report['completed_ok']} "
        f"({report['throughput_rps']:.1f}/s); latency ms p50 {latency['p50']} p95 {latency['p95']} "
        f"p99 {latency['p99']}; shed {report['shed']}, 5xx {report['errors_5xx']}, "
        f"transport errors {report['transport_errors']}, dropped by the generator "
        f"{report['dropped_by_generator']}; send lag p99 {lag['p99']} ms"
    )
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    else:
        print(json.dumps(report, indent=2))
    return 0
