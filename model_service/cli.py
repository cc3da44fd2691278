"""`peakguard train` (and, as they land, serve, load and bench): the model service's commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register_train"]


def register_train(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train the full (MoE), light and pruned models and write a versioned artifact folder",
        description=(
            "Train the intent models on banking77 and write them, with JSON model cards, into a new "
            "folder OUT/<version>/: `full` (MiniLM-L6 upcycled to a Mixture of Experts), `light` "
            "(2 dense layers distilled from full, >= 76%% fewer parameters) and `pruned` (full minus its "
            "lowest-weight feature dimensions). The out-of-scope hand-over threshold is chosen on "
            "validation data (banking77 held-out + CLINC150 oos_val); test numbers are only reported. "
            "About 10 minutes on 2 CPU cores."
        ),
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder holding banking77/ (train.csv, test.csv) and clinc150/ (data_full.json)",
    )
    parser.add_argument("--out", type=Path, required=True, help="artifact root; the version folder is created in it")
    parser.add_argument("--seed", type=int, default=13, help="seed for the split, initialisation and shuffling")
    parser.add_argument("--epochs-full", type=float, default=2.0, help="passes over the training split (full)")
    parser.add_argument("--epochs-light", type=float, default=3.0, help="passes for the distilled light model")
    parser.add_argument("--sample-limit", type=int, default=None,
                        help="use at most N examples per split: a smoke run, not a usable model")  # fmt: skip
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from model_service.artifacts import ArtifactError
    from model_service.datasets import DatasetError
    from model_service.training import TrainingSettings, run

    settings = TrainingSettings(
        seed=args.seed, epochs_full=args.epochs_full, epochs_light=args.epochs_light, sample_limit=args.sample_limit
    )
    try:
        run(args.data, args.out, settings, log=lambda line: print(line, flush=True))
    except (DatasetError, ArtifactError, FileNotFoundError) as exc:
        print(f"peakguard train: {exc}", file=sys.stderr)
        return 2
    return 0


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
    parser.add_argument("--artifacts", type=Path, help="artifact root written by peakguard train")
    parser.add_argument("--version", help="model version folder to serve (default: the newest)")
    parser.add_argument(
        "--mode-file", type=Path, help="mounted mode ConfigMap: a directory holding mode.json, or the file"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in a pod)")
    parser.add_argument("--port", type=int, default=8080)
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from model_service.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config, artifacts=args.artifacts, version=args.version, mode_file=args.mode_file)
    except SettingsError as exc:
        print(f"peakguard serve: {exc}", file=sys.stderr)
        return 2
    from model_service.server import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=False)
    return 0
