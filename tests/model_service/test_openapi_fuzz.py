"""schemathesis against a live `peakguard serve`: what `/openapi.json` says is what the service does,
for generated valid and invalid input, with the right admin token and a wrong one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from model_service.service_process import ServiceProcess
from tests.model_service.conftest import write_tiny_artifacts

TOKEN = "fuzz-admin-token"

# positive_data_acceptance expects every schema-valid body to be accepted; two rules a JSON schema
# cannot state are the service's to keep: batch_min <= batch_max, and a model_version that exists
# under the artifact root. Every other check runs, the response-schema ones among them.
EXCLUDED_CHECKS = "positive_data_acceptance"


def _fuzz(url: str, token: str, folder: Path, *, examples: int) -> dict[str, Any]:
    report = folder / f"schemathesis-{token}.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
        "--exclude-checks", EXCLUDED_CHECKS, "--max-examples", str(examples), "--seed", "7", "--workers", "1",
        "--header", f"Authorization: Bearer {token}", "--request-timeout", "10", "--no-color",
        "--report", "json", "--report-json-path", str(report), "--generation-database", "none",
    ]  # fmt: skip
    # In the test's folder: schemathesis keeps a .schemathesis/ cache in its working directory.
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, cwd=folder)
    assert report.is_file(), finished.stdout[-3000:] + finished.stderr[-3000:]
    result: dict[str, Any] = json.loads(report.read_text())
    result["output"] = finished.stdout[-6000:]
    return result


@pytest.mark.timeout(300)
def test_the_service_keeps_its_openapi_contract_under_generated_input(tmp_path: Path) -> None:
    folder = write_tiny_artifacts(tmp_path / "models")
    settings = {"artifacts": str(folder.parent), "max_chars": 200}
    with ServiceProcess(settings, admin_token=TOKEN, log_dir=tmp_path) as service:
        runs = [_fuzz(service.url, token, tmp_path, examples=150) for token in (TOKEN, "not-the-token")]
        log = service.log_tail(60)

    for run in runs:
        assert run["operations"]["tested"] == run["operations"]["selected"] == 7, run["output"]
        assert run["failures"] == [] and run["errors"] == [], run["output"]
    assert sum(run["test_cases"]["generated"] for run in runs) >= 1000
    assert "Traceback" not in log  # no 500 was hidden behind a documented status
