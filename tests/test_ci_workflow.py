"""The PR workflow and its data fetcher: actionlint (with shellcheck on every `run:` script) passes,
the jobs run what the README says CI runs, the policy matrix covers every stack, and
`.ci/fetch_data` fetches and verifies the data sets from a local mirror and refuses a corrupt one."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_service.torch_wheel import CPU_INDEX

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
PR_WORKFLOW = WORKFLOWS / "pr.yml"
FETCH_DATA = REPO / ".ci" / "fetch_data"
# The venv's own bin (not resolved: the venv's python is a symlink to the base interpreter).
VENV_BIN = Path(sys.executable).parent
DATA_FILES = (
    "banking77/train.csv",
    "banking77/test.csv",
    "banking77/categories.json",
    "clinc150/data_full.json",
    "nab/elb_request_count_8c0756.csv",
    "nab/nyc_taxi.csv",
)


def _tool(name: str) -> str:
    path = VENV_BIN / name
    assert path.is_file(), f"{name} is not in {VENV_BIN}: install the dev extra (make setup)"
    return str(path)


def _env(**extra: str) -> dict[str, str]:
    """The environment with the venv's bin first on PATH, so actionlint finds its shellcheck."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(extra)
    return env


def _workflow() -> dict[str, Any]:
    loaded = yaml.safe_load(PR_WORKFLOW.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _job(name: str) -> dict[str, Any]:
    jobs = _workflow()["jobs"]
    assert name in jobs, f"no job {name!r} in {PR_WORKFLOW.name}: {sorted(jobs)}"
    job: dict[str, Any] = jobs[name]
    return job


def _runs(job: dict[str, Any]) -> list[str]:
    return [str(step["run"]).strip() for step in job["steps"] if "run" in step]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# actionlint and shellcheck


def test_actionlint_passes_on_every_workflow() -> None:
    workflows = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
    assert PR_WORKFLOW in workflows
    result = subprocess.run(
        [_tool("actionlint"), "-no-color", "-oneline", *map(str, workflows)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"actionlint:\n{result.stdout}{result.stderr}"


def test_actionlint_checks_run_scripts_with_shellcheck(tmp_path: Path) -> None:
    """The check above is only as good as its shellcheck: an unquoted variable must be reported."""
    _tool("shellcheck")
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo $FOO\n")
    result = subprocess.run(
        [_tool("actionlint"), "-no-color", "-oneline", str(bad)],
        env=_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "SC2086" in result.stdout


def test_fetch_data_passes_shellcheck() -> None:
    assert os.access(FETCH_DATA, os.X_OK), f"{FETCH_DATA} is not executable"
    result = subprocess.run(
        [_tool("shellcheck"), str(FETCH_DATA)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# What the jobs run


def test_tests_job_fetches_the_data_then_runs_ci_run() -> None:
    job = _job("tests")
    assert job["runs-on"] == "ubuntu-latest"
    assert job["timeout-minutes"] == 90
    runs = _runs(job)
    assert ".ci/run" in runs, runs
    fetch = [i for i, run in enumerate(runs) if run.startswith(".ci/fetch_data")]
    assert fetch, runs
    assert fetch[0] < runs.index(".ci/run")
    # The data goes where the tests read it: the directory fetch_data is given is PEAKGUARD_DATA.
    ci_run = next(step for step in job["steps"] if str(step.get("run", "")).strip() == ".ci/run")
    assert ci_run["env"]["PEAKGUARD_DATA"] == "${{ runner.temp }}/data"
    assert runs[fetch[0]] == '.ci/fetch_data "$RUNNER_TEMP/data"'


def test_every_job_installs_torch_from_the_cpu_index() -> None:
    """make setup refuses the CUDA torch; the workflow's extra index is the one the check names."""
    assert _workflow()["env"]["PIP_EXTRA_INDEX_URL"] == CPU_INDEX
    for name in ("tests", "policy", "preview"):
        assert "PIP_INDEX_URL" not in _job(name).get("env", {}), name


def test_policy_and_preview_matrices_cover_every_stack() -> None:
    stacks = {path.name.split(".")[1] for path in REPO.glob("Pulumi.*.yaml")}
    assert stacks >= {"dev", "staging", "prod"}
    for name in ("policy", "preview"):
        assert set(_job(name)["strategy"]["matrix"]["env"]) == stacks, name


def test_policy_job_annotates_and_uploads_reports() -> None:
    job = _job("policy")
    assert job["permissions"]["security-events"] == "write"
    runs = _runs(job)
    assert runs[0] == "make setup"
    check = ".venv/bin/peakguard policy check --env ${{ matrix.env }}"
    assert f"{check} --format github" in runs
    assert f"{check} --format sarif --output policy-${{{{ matrix.env }}}}.sarif" in runs
    assert f"{check} --format junit --output policy-${{{{ matrix.env }}}}.xml" in runs
    scan = next(run for run in runs if "checkov" in run)
    assert "--k8s-yaml k8s-${{ matrix.env }}" in scan
    assert ".venv/opt/checkov/bin/checkov -d k8s-${{ matrix.env }} --framework kubernetes" in scan
    uses = {step["uses"].split("@")[0]: step for step in job["steps"] if "uses" in step}
    sarif = uses["github/codeql-action/upload-sarif"]
    assert sarif["with"]["category"] == "policy-${{ matrix.env }}"
    assert sarif["if"].startswith("${{ always()")
    assert uses["actions/upload-artifact"]["with"]["path"] == "policy-${{ matrix.env }}.xml"


def test_preview_job_runs_only_with_credentials_and_after_setup() -> None:
    workflow = _workflow()
    assert workflow["permissions"] == {"contents": "read"}
    job = _job("preview")
    assert "vars.AWS_ROLE_ARN" in job["if"] and "secrets." not in job["if"]
    assert job["permissions"]["id-token"] == "write"
    steps = job["steps"]
    names = [step.get("uses", "").split("@")[0] or step.get("run", "").strip() for step in steps]
    assert names.index("make setup") < names.index("pulumi/actions")
    pulumi = steps[names.index("pulumi/actions")]
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["policyPacks"] == "policies"
    assert pulumi["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"


# .ci/fetch_data against a local mirror


@pytest.fixture(scope="module")
def source_data() -> Path:
    """The data sets the suite already reads (CI fetches them first), the mirror's originals."""
    folder = Path(os.environ.get("PEAKGUARD_DATA", REPO.parent / "shared" / "data"))
    missing = [name for name in DATA_FILES if not (folder / name).is_file()]
    assert not missing, f"data sets missing under {folder}: {missing}; run .ci/fetch_data"
    return folder


class _Mirror:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                mirror.requests.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def mirror(tmp_path: Path, source_data: Path) -> Iterator[_Mirror]:
    root = tmp_path / "mirror"
    for name in DATA_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_data / name, root / name)
    served = _Mirror(root)
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()
    thread.join(timeout=5)


def _fetch(mirror: _Mirror, dest: Path) -> subprocess.CompletedProcess[str]:
    env = _env(PEAKGUARD_DATA_MIRROR=mirror.url, no_proxy="127.0.0.1", NO_PROXY="127.0.0.1")
    return subprocess.run(
        [str(FETCH_DATA), str(dest)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_fetch_data_fetches_every_file_with_its_checksum(mirror: _Mirror, source_data: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    result = _fetch(mirror, dest)
    assert result.returncode == 0, result.stdout + result.stderr
    fetched = sorted(str(path.relative_to(dest)) for path in dest.rglob("*") if path.is_file())
    assert fetched == sorted(DATA_FILES)  # every file, and no temporary file left behind
    for name in DATA_FILES:
        assert _sha256(dest / name) == _sha256(source_data / name), name
    assert sorted(mirror.requests) == sorted(f"/{name}" for name in DATA_FILES)

    # A second run keeps the verified files and asks the mirror for nothing.
    mirror.requests.clear()
    again = _fetch(mirror, dest)
    assert again.returncode == 0, again.stdout + again.stderr
    assert mirror.requests == []
    assert again.stdout.count("already present") == len(DATA_FILES)


def test_fetch_data_replaces_a_stale_local_file(mirror: _Mirror, source_data: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    stale = dest / "clinc150" / "data_full.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    result = _fetch(mirror, dest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _sha256(stale) == _sha256(source_data / "clinc150" / "data_full.json")


def test_fetch_data_refuses_a_corrupt_mirror_file(mirror: _Mirror, source_data: Path, tmp_path: Path) -> None:
    corrupt = mirror.root / "nab" / "nyc_taxi.csv"
    corrupt.write_bytes(corrupt.read_bytes() + b"2015-02-01 00:00:00,1\n")
    dest = tmp_path / "data"
    result = _fetch(mirror, dest)
    assert result.returncode == 1, result.stdout + result.stderr
    expected, got = _sha256(source_data / "nab" / "nyc_taxi.csv"), _sha256(corrupt)
    assert "nab/nyc_taxi.csv" in result.stderr
    assert f"expected sha256 {expected}, got {got}" in result.stderr
    assert not (dest / "nab" / "nyc_taxi.csv").exists()
    assert not list((dest / "nab").glob("nyc_taxi.csv.*")), "the partial download was left behind"


def test_fetch_data_fails_on_a_missing_mirror_file(mirror: _Mirror, tmp_path: Path) -> None:
    (mirror.root / "banking77" / "categories.json").unlink()
    result = _fetch(mirror, tmp_path / "data")
    assert result.returncode == 1
    assert "could not download banking77/categories.json" in result.stderr
