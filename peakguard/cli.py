"""`peakguard`: one command whose subcommands the installed packages register.

Each package lists a `register(subparsers)` function under the `peakguard.commands` entry-point
group in pyproject.toml. This module imports none of them directly, so the command starts with
only what is installed (the model-service image has no Pulumi) and says which extra is missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peakguard",
        description=(
            "Keep the AI customer-service model alive through a traffic surge: provision its GPU "
            "cluster (Pulumi), run incident runbooks, check policies. `peakguard <command> --help` "
            "explains each command."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in sorted(entry_points(group="peakguard.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:
            # A package whose extra is not installed still shows up, and says how to get it.
            _unavailable(commands, entry.name, entry.value.split(".", 1)[0], exc)
            continue
        register(commands)
    return parser


def _unavailable(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    package: str,
    exc: ImportError,
) -> None:
    extra = {"model_service": "model"}.get(package, package)
    message = f"`peakguard {name}` needs the [{extra}] extra: pip install 'peakguard[{extra}]' ({exc})"
    parser = commands.add_parser(name, help=f"(unavailable: needs peakguard[{extra}])")

    def fail(_: argparse.Namespace) -> int:
        print(message, file=sys.stderr)
        return 1

    parser.set_defaults(handler=fail)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
