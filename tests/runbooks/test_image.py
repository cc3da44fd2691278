"""The runbooks Dockerfile: hadolint, and what the CronJob relies on. No Docker engine runs here,
so the image is never built in CI; these tests read the Dockerfile as text."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.infra.conftest import PROJECT_DIR
from tests.model_service.test_image import hadolint

DOCKERFILE = PROJECT_DIR / "runbooks" / "Dockerfile"
TEXT = DOCKERFILE.read_text()
INSTRUCTIONS = re.sub(r"\\\n", "", TEXT)
CODE = "\n".join(line for line in INSTRUCTIONS.splitlines() if not line.startswith("#"))


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    result = hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_installs_the_runbooks_and_forecast_extras_and_no_pulumi() -> None:
    (install,) = re.findall(r'pip install "\.\[([a-z,]+)\]"', CODE)
    assert set(install.split(",")) == {"runbooks", "forecast"}
    extras = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(dep.startswith("pulumi") for name in ("runbooks", "forecast") for dep in extras[name])


def test_torch_is_the_cpu_build_installed_before_the_project() -> None:
    torch = CODE.index("--index-url https://download.pytorch.org/whl/cpu")
    assert torch < CODE.index('pip install ".[runbooks,forecast]"')
    assert "torch.version.cuda is None" in CODE, "the build fails if the project install replaced it"


def test_it_runs_as_a_numeric_non_root_user() -> None:
    # A number, so that the CronJob's runAsNonRoot can be verified (tests/infra/test_predictive_scale_job.py).
    assert re.findall(r"^USER (\S+)$", CODE, re.MULTILINE) == ["10001:10001"]
