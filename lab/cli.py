"""`peakguard lab up`: the lab in the foreground, for trying runbooks by hand against it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "lab",
        help="stand up the local lab (AWS in moto, the Kubernetes API, model-service pods) and keep it up",
        description=(
            "Stand up, on this machine, an environment the runbooks cannot tell from a small real one, "
            "seeded from the Pulumi program's objects for --env: AWS in moto's server, the Kubernetes API "
            "with played controllers, one real `peakguard serve` process per pod, and a least-outstanding-"
            "requests load balancer in front of the Ready pods. It prints the commands that reach it and "
            "stays up until Ctrl-C or SIGTERM, then stops every process and port it started."
        ),
    )
    actions = parser.add_subparsers(dest="lab_action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="stand the lab up and keep it up until Ctrl-C")
    up.add_argument("--env", default="dev", choices=("dev", "staging", "prod"), help="stack config to seed from")
    up.add_argument("--artifacts", type=Path, required=True,
                    help="model versions the pods serve (what `peakguard train --out` wrote)")  # fmt: skip
    up.add_argument("--replicas", type=int, default=1, help="Ready full-model replicas to start with (default 1)")
    up.add_argument("--max-pods", type=int, default=4, help="pods beyond this stay Pending (each is a process)")
    for name, default, what in (("aws-port", 0, "moto"), ("kube-port", 0, "the Kubernetes API"),
                                ("proxy-port", 0, "the load balancer")):  # fmt: skip
        up.add_argument(f"--{name}", type=int, default=default, help=f"port of {what} on 127.0.0.1 (0: a free one)")
    up.set_defaults(handler=_up)


def _up(args: argparse.Namespace) -> int:
    from lab.lab import Lab, LabError, LabSettings

    # moto's server logs every request it serves (werkzeug); that is noise on the user's terminal.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    if not args.artifacts.is_dir():
        print(f"peakguard lab: --artifacts {args.artifacts} is not a folder of model versions "
              "(make one with `peakguard train --out DIR`)", file=sys.stderr)  # fmt: skip
        return 2
    with tempfile.TemporaryDirectory(prefix="peakguard-lab-") as workdir, _sigterm_as_interrupt():
        settings = LabSettings(artifacts=args.artifacts, workdir=Path(workdir), env=args.env, replicas=args.replicas,
                               max_pods=args.max_pods, aws_port=args.aws_port, kube_port=args.kube_port,
                               proxy_port=args.proxy_port)  # fmt: skip
        try:
            with Lab(settings) as lab:
                exports = " ".join(f"{key}={value}" for key, value in sorted(lab.aws_env.items()))
                print(
                    f"lab up for {args.env}: {len(lab.ready_backends())} Ready replica(s)\n"
                    f"  AWS (moto):       {lab.aws_env['AWS_ENDPOINT_URL']}\n"
                    f"  Kubernetes API:   {lab.kube_url}\n"
                    f"  load balancer:    {lab.proxy_url}/v1/intent\n"
                    f"in another shell:\n"
                    f"  export {exports}\n"
                    f"  peakguard runbook plan emergency-stop --env {args.env} --kube-url {lab.kube_url}\n"
                    f"Ctrl-C takes it down.",
                    flush=True,
                )
                threading.Event().wait()
        except KeyboardInterrupt:
            print("lab down: every process and port it started is stopped", file=sys.stderr)
            return 0
        except LabError as exc:
            print(f"peakguard lab: {exc}", file=sys.stderr)
            return 2
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM takes the lab down as Ctrl-C does (the `with Lab` block cleans up either way)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
