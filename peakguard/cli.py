"""`peakguard`: one command whose subcommands the installed packages register.

Each package lists a `register(subparsers)` function under the `peakguard.commands` entry-point
group in pyproject.toml. This module imports none of them directly, so the command starts with
only what is installed (the model-service image has no Pulumi) and says which extra is missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any

__all__ = ["main"]


class _DefaultsShown(argparse.HelpFormatter):
    """Each option's default in its help, unless the help already says it (or there is none to say)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        quiet = (None, False, True, "", argparse.SUPPRESS)
        if (not action.option_strings or action.nargs == 0 or "default" in text or action.default in quiet
                or action.default == [] or not text):  # fmt: skip
            return action.help
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """The root's parser class: every subcommand's parser (their `add_parser`s inherit the class)
    shows defaults the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="peakguard",
        description=(
            "Keep the AI customer-service model alive through a traffic surge: provision its GPU "
            "cluster (Pulumi), run incident runbooks, check policies. `peakguard <command> --help` "
            "explains each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"peakguard {_version()}")
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


def _version() -> str:
    try:
        return version("peakguard")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _unavailable(
    commands: argparse._SubParsersAction[_Parser],
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
