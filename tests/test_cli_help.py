"""`peakguard --help` all the way down: every command and option explains itself, shows its
default, and marks what is required as required."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from peakguard.cli import build_parser, main

_QUIET = (None, False, True, "", argparse.SUPPRESS)


def _parsers(parser: argparse.ArgumentParser, path: str = "peakguard") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _commands(parser: argparse.ArgumentParser, path: str = "peakguard") -> Iterator[tuple[str, str | None]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helps.get(name)
                yield from _commands(sub, f"{path} {name}")


def test_every_command_and_option_has_help() -> None:
    parser = build_parser()
    assert [path for path, text in _commands(parser) if not text] == []
    bare = [
        f"{path} {action.option_strings or action.dest}"
        for path, sub in _parsers(parser)
        for action in sub._actions
        if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction) and not action.help
    ]
    assert bare == []


def test_every_default_is_shown() -> None:
    missing = []
    for path, sub in _parsers(build_parser()):
        shown = "".join(sub.format_help().split())  # wrapping may break a default anywhere, even at a hyphen
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.default in _QUIET or action.default == []:
                continue
            # The help names the default in its own words, or the formatter adds "(default: X)".
            if "default" not in (action.help or "") and f"(default:{action.default})".replace(" ", "") not in shown:
                missing.append(f"{path} {action.option_strings[0]}")
    assert missing == []


def test_required_options_are_marked_required() -> None:
    runbook = dict(_parsers(build_parser()))
    for path, option in (("peakguard runbook run rebuild", "--version"),
                         ("peakguard runbook plan rolling-upgrade", "--to"),
                         ("peakguard serve", "--port")):  # fmt: skip
        action = next(a for a in runbook[path]._actions if option in a.option_strings)
        assert action.required is (option != "--port"), (path, option)


def test_the_version_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("peakguard ")


def test_no_description_prints_a_doubled_percent() -> None:
    doubled = [path for path, sub in _parsers(build_parser()) if "%%" in sub.format_help()]
    assert doubled == []
