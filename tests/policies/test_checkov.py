"""Checkov, the peer scanner, over the Kubernetes objects each stack exports (`peakguard preview
--k8s-yaml`): no finding fails, and every finding the workloads accept is skipped on the object
itself with its reason (infra/scanner_skips.py), never silently. Checkov runs from its own venv
(`make setup` puts it in .venv/opt/checkov: its pins clash with the project's)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.manifests import write_yaml
from infra.offline import OfflineRun
from tests.infra.conftest import PROJECT_DIR

CHECKOV = PROJECT_DIR / ".venv" / "opt" / "checkov" / "bin" / "checkov"


def _checkov(folder: Path) -> dict[str, Any]:
    assert CHECKOV.is_file(), f"{CHECKOV} is missing: run `make setup`"
    done = subprocess.run(
        [str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "--compact", "-o", "json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def _failed(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]]


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_checkov_finds_nothing_unreasoned_in_the_exported_objects(
    env: str, runs: dict[str, OfflineRun], tmp_path: Path
) -> None:
    write_yaml(runs[env], tmp_path)

    report = _checkov(tmp_path)

    assert _failed(report) == []
    assert report["summary"]["passed"] > 200, "Checkov read the objects"
    skipped = report["results"]["skipped_checks"]
    assert skipped, "the preflight gate's privileges are skipped with their reasons"
    comments = {(s["check_id"], s["resource"]): s["check_result"]["suppress_comment"] for s in skipped}
    assert [key for key, comment in comments.items() if comment in ("", "No comment provided")] == []


def test_a_privilege_without_its_reason_is_a_finding(runs: dict[str, OfflineRun], tmp_path: Path) -> None:
    # The scan is real: drop the gate's skips and its privileges are findings again.
    for path in write_yaml(runs["prod"], tmp_path):
        manifest = yaml.safe_load(path.read_text())
        if isinstance(manifest, dict) and manifest.get("kind") == "DaemonSet":
            annotations = manifest["metadata"]["annotations"]
            manifest["metadata"]["annotations"] = {k: v for k, v in annotations.items() if "checkov.io" not in k}
            path.write_text(yaml.safe_dump(manifest))

    report = _checkov(tmp_path)

    assert "CKV_K8S_16" in {check for check, _ in _failed(report)}, "a privileged container"
