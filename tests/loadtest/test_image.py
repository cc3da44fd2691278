"""The load worker's Dockerfile, read as text (no Docker engine here): hadolint, the load extra alone
(no torch, no Pulumi), and the numeric user the Job's pods run as."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from loadtest.job import WORKER_UID, WorkerPods, job_manifest
from tests.infra.conftest import PROJECT_DIR
from tests.model_service.test_image import hadolint

DOCKERFILE = PROJECT_DIR / "loadtest" / "Dockerfile"
CODE = "\n".join(line for line in re.sub(r"\\\n", "", DOCKERFILE.read_text()).splitlines() if not line.startswith("#"))


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    result = hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_installs_the_load_extra_alone_which_has_no_torch_or_pulumi() -> None:
    assert re.findall(r'pip install "\.\[([a-z,]+)\]"', CODE) == ["load"]
    extras = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [dep for dep in extras["load"] if dep.startswith(("torch", "pulumi", "peakguard["))]
    assert "find_spec('torch') is None" in CODE, "the build fails if anything pulled torch in"


def test_the_jobs_pods_run_as_the_images_numeric_user() -> None:
    assert re.findall(r"^USER (\S+)$", CODE, re.MULTILINE) == [f"{WORKER_UID}:{WORKER_UID}"]
    pod = job_manifest("run", WorkerPods(image="x"), workers=1, env={}, deadline_seconds=60)["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (WORKER_UID, WORKER_UID)
