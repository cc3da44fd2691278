"""`peakguard preview`: the offline plan, as an operator runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.infra.conftest import PROJECT_DIR


def _peakguard(*args: str, cwd: Path = PROJECT_DIR) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "peakguard", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_prod_preview_prints_tables_per_component_in_under_30_seconds() -> None:
    started = time.monotonic()
    result = _peakguard("preview", "--env", "prod")
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert elapsed < 30, f"preview took {elapsed:.1f} s"
    out = result.stdout
    assert "env prod" in out and "nothing was created" in out
    for title in (
        "Network prod",
        "Cluster prod",
        "GpuNodeGroups prod-gpu",
        "GpuPool prod-gpu-full",
        "GpuPool prod-gpu-mig",
        "Storage prod-storage",
    ):
        assert title in out, title
    assert "p5.48xlarge, EFA 1 efa + 31 efa-only, IMDSv2 hop 1" in out
    gpu_rows = [line for line in out.splitlines() if "gpu-full-us-west-2" in line and "8x H100" in line]
    assert len(gpu_rows) == 3
    assert all("1+31" in row and "1/1/5" in row and "33%" in row for row in gpu_rows)
    assert "us-west-2a" in out and "us-west-2b" in out and "us-west-2c" in out
    assert "min/desired/max 1/1/5 (desired ignored), max unavailable 33%" in out
    assert "PERSISTENT_2 4800 GiB, 1000 MB/s/TiB, EFA on, in us-west-2a" in out
    print(f"peakguard preview --env prod: {elapsed:.1f} s")


def test_json_format_lists_every_resource_with_its_inputs() -> None:
    result = _peakguard("preview", "--env", "dev", "--format", "json")

    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    types = {r["type"] for r in plan["resources"]}
    assert {"aws:eks/cluster:Cluster", "aws:eks/nodeGroup:NodeGroup", "aws:ec2/launchTemplate:LaunchTemplate"} <= types
    assert plan["outputs"]["targets"]["env"] == "dev"


@pytest.fixture
def broken_project(tmp_path: Path) -> Path:
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml"):
        shutil.copy(PROJECT_DIR / name, tmp_path / name)
    text = (
        (tmp_path / "Pulumi.prod.yaml")
        .read_text()
        .replace("maxUnavailablePercentage: 33", "maxUnavailablePercentage: 50")
    )
    (tmp_path / "Pulumi.prod.yaml").write_text(text)
    return tmp_path


def test_invalid_config_exits_2_naming_the_key_the_value_and_the_limit(broken_project: Path) -> None:
    result = _peakguard("preview", "--env", "prod", "--project-dir", str(broken_project))

    assert result.returncode == 2
    assert "peakguard:gpuPools.full.maxUnavailablePercentage" in result.stderr
    assert "must be <= 33" in result.stderr and "got 50" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_proposed_stack_file_is_previewed_as_the_env_and_its_error_is_one_line(broken_project: Path) -> None:
    proposed = broken_project / "Pulumi.prod.yaml"
    env = {**os.environ, "COLUMNS": "40", "NO_COLOR": "1"}  # a narrow terminal must not split the key path
    result = subprocess.run(
        [sys.executable, "-m", "peakguard", "preview", "--env", "prod", "--stack-file", str(proposed)],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "peakguard:gpuPools.full.maxUnavailablePercentage: must be <= 33" in line and "got 50" in line


def test_project_dir_is_found_from_a_subdirectory() -> None:
    result = _peakguard("preview", "--env", "dev", "--format", "json", cwd=PROJECT_DIR / "infra")

    assert result.returncode == 0, result.stderr


def test_a_missing_stack_file_names_the_stacks_that_exist(tmp_path: Path) -> None:
    shutil.copy(PROJECT_DIR / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(PROJECT_DIR / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")

    result = _peakguard("preview", "--env", "staging", "--project-dir", str(tmp_path))

    assert result.returncode == 2
    assert "Pulumi.staging.yaml: no such stack file; stacks here: dev" in result.stderr


def test_help_explains_the_command_and_its_exit_codes() -> None:
    top = _peakguard("--help")
    preview = _peakguard("preview", "--help")

    assert top.returncode == 0 and "preview" in top.stdout
    assert preview.returncode == 0
    assert "Exit status" in preview.stdout and "--env" in preview.stdout and "mock" in preview.stdout


def test_an_unknown_env_is_a_usage_error() -> None:
    result = _peakguard("preview", "--env", "qa")

    assert result.returncode == 2
    assert "invalid choice: 'qa'" in result.stderr
