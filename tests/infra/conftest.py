"""Runs of the Pulumi program under Pulumi's mocks, shared by the infra tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.offline import OfflineRun, load_stack_file, run_offline

PROJECT_DIR = Path(__file__).resolve().parents[2]
ENVS = ("dev", "staging", "prod")


@pytest.fixture(scope="session")
def project_dir() -> Path:
    return PROJECT_DIR


@pytest.fixture(scope="session")
def runs() -> dict[str, OfflineRun]:
    """The program run once per real stack file."""
    return {env: run_offline(env, project_dir=PROJECT_DIR) for env in ENVS}


@pytest.fixture(params=ENVS)
def run(request: pytest.FixtureRequest, runs: dict[str, OfflineRun]) -> OfflineRun:
    """Each environment's run in turn."""
    return runs[request.param]


def stack_values(env: str) -> dict[str, Any]:
    """A private, editable copy of a real stack file's config map."""
    return copy.deepcopy(load_stack_file(PROJECT_DIR, env))


@pytest.fixture
def run_changed() -> Callable[..., OfflineRun]:
    """Run the program for `env` after `edit` changed a copy of its stack config."""

    def _run(env: str, edit: Callable[[dict[str, Any]], None]) -> OfflineRun:
        values = stack_values(env)
        edit(values)
        return run_offline(env, project_dir=PROJECT_DIR, overrides=values)

    return _run
