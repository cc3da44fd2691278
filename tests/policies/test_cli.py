"""`peakguard policy check|rules` as CI runs them: real processes, real stack files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.infra.conftest import PROJECT_DIR

BAD_STACK = Path(__file__).parent / "stacks" / "Pulumi.bad-prod.yaml"


def _policy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peakguard", "policy", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_offline_check_of_all_three_stacks_passes_in_under_30_s() -> None:
    started = time.monotonic()
    for env in ("dev", "staging", "prod"):
        done = _policy("check", "--env", env, "--strict-unknowns")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{env}: passed: " in done.stdout and " 0 findings " in done.stdout
    seconds = time.monotonic() - started
    print(f"\noffline policy check of dev, staging and prod (three processes): {seconds:.1f} s")
    assert seconds < 30


def test_a_deliberately_bad_stack_file_fails_with_the_expected_violations(tmp_path: Path) -> None:
    done = _policy("check", "--env", "prod", "--stack-file", str(BAD_STACK))
    assert done.returncode == 1, done.stdout + done.stderr
    blocking = [line for line in done.stdout.splitlines() if line.startswith("[mandatory violation]")]
    assert [line.split()[2] for line in blocking] == ["AVAIL-003", "SAFE-003"]
    assert "prod-gpu-mig-us-west-2a-blue" in blocking[0] and "prod-model-service-full-pdb" in blocking[1]

    sarif = tmp_path / "policy.sarif"
    done = _policy(
        "check", "--env", "prod", "--stack-file", str(BAD_STACK), "--format", "sarif", "--output", str(sarif)
    )
    assert done.returncode == 1
    assert done.stdout.startswith("prod: FAILED: ")
    (run,) = json.loads(sarif.read_text())["runs"]
    assert {r["ruleId"] for r in run["results"]} == {"AVAIL-003", "SAFE-003"}
    uri = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "tests/policies/stacks/Pulumi.bad-prod.yaml"


def test_a_policy_config_can_make_the_bad_stack_advisory(tmp_path: Path) -> None:
    config = tmp_path / "policy-config.json"
    config.write_text(json.dumps({"all": "advisory"}))
    done = _policy("check", "--env", "prod", "--stack-file", str(BAD_STACK), "--policy-config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[advisory violation] AVAIL-003" in done.stdout

    config.write_text(json.dumps({"serv-009": "advisory"}))
    done = _policy("check", "--env", "prod", "--policy-config", str(config))
    assert done.returncode == 2
    assert "names no policy of the pack: serv-009" in done.stderr


def test_an_invalid_stack_file_is_refused_before_any_rule_runs(tmp_path: Path) -> None:
    done = _policy("check", "--env", "prod", "--stack-file", str(tmp_path / "Pulumi.nope.yaml"))
    assert done.returncode == 2
    assert "Pulumi.nope.yaml: no such stack file" in done.stderr


def test_the_readme_rule_table_is_the_rules_metadata() -> None:
    done = _policy("rules")
    assert done.returncode == 0
    readme = (PROJECT_DIR / "README.md").read_text()
    assert done.stdout in readme, "README's rule table is stale: paste `peakguard policy rules` over it"
    rows = json.loads(_policy("rules", "--format", "json").stdout)
    assert len(rows) == len(done.stdout.splitlines()) - 2
    assert all(row["rationale"] and row["resourceTypes"] for row in rows)


def test_help_explains_the_exit_status() -> None:
    done = _policy("check", "--help")
    assert "Exit status: 0 no mandatory violation" in " ".join(done.stdout.split())
