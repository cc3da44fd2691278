"""`peakguard policy check|rules` as CI runs them: real processes, real stack files."""

from __future__ import annotations

import json
import subprocess
import sys
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


def test_all_three_stacks_are_checked_in_one_process_and_pass() -> None:
    # How long it takes is `peakguard policy bench`'s to say, not a timed test's.
    done = _policy("check", "--all", "--strict-unknowns")

    assert done.returncode == 0, done.stdout + done.stderr
    for env in ("dev", "staging", "prod"):
        assert f"{env}: passed: " in done.stdout, done.stdout
    assert done.stdout.count(" 0 findings ") == 3


def test_several_stacks_write_one_report_each_where_output_says(tmp_path: Path) -> None:
    done = _policy("check", "--env", "dev", "--env", "prod", "--format", "sarif", "--output",
                   str(tmp_path / "policy-{env}.sarif"))  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["policy-dev.sarif", "policy-prod.sarif"]
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["dev", "prod"]


def test_one_output_file_for_several_stacks_is_refused_before_any_work(tmp_path: Path) -> None:
    done = _policy("check", "--all", "--format", "sarif", "--output", str(tmp_path / "policy.sarif"))

    assert done.returncode == 2
    assert "put {env} in it" in done.stderr
    assert not list(tmp_path.iterdir())


def test_a_stack_file_goes_with_one_stack_only() -> None:
    done = _policy("check", "--env", "dev", "--env", "prod", "--stack-file", str(BAD_STACK))

    assert done.returncode == 2
    assert "--stack-file names one stack" in done.stderr


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
