"""rebuild end to end: a new model version as a canary on a real pod, compared with the fleet
under traffic, promoted in normal mode; or, when the canary never serves it, rolled back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infra.targets import hold_parameter_name
from tests.model_service.conftest import write_tiny_artifacts
from tests.runbooks.e2e.conftest import NAMESPACE, World, _records, _wait

HOLD = {"runId": "dev-emergency-stop-20261125T100000Z-ab12", "runbook": "emergency-stop",
        "reason": "light model, shedding on", "since": "2026-11-25T10:00:00+00:00"}  # fmt: skip


def _statuses(world: World) -> list[dict[str, object]]:
    import httpx

    return [
        httpx.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {world.token}"}).json()
        for url in world.ready_pods()
    ]


def _canary_replicas(world: World) -> int:
    return int(world.store.get("deployments", NAMESPACE, "model-service-canary")["spec"].get("replicas") or 0)


def test_a_good_version_goes_out_through_the_canary_and_the_hold_is_lifted(world: World, artifacts: Path) -> None:
    world.ssm().put_parameter(Name=hold_parameter_name("dev"), Value=json.dumps(HOLD), Type="String", Overwrite=True)
    write_tiny_artifacts(artifacts, version="v2")  # uploaded to the artifact store

    done = world.peakguard("runbook", "run", "rebuild", "--env", "dev", "--kube-url", world.kube_url,
                           "--window", "2", "--version", "v2", "--canary-timeout", "90")  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert "canary as good as the fleet: " in done.stdout
    assert world.mode()["model_version"] == "v2"
    assert {s["version"] for s in _statuses(world) if str(s.get("version"))} == {"v2"}
    assert world.hold() is None
    assert "manual: pulumi up -s dev --yes (no Pulumi CLI on this machine)" in done.stdout
    # No Pulumi CLI here: the infrastructure change is a person's to make, and the run says so.
    assert "\nsucceeded, manual step pending: pulumi up -s dev --yes\n" in done.stdout
    records = _records(world)
    (left,) = [r for r in records if r["event"] == "step_left_to_operator"]
    assert (left["step"], left["command"]) == ("infra", "pulumi up -s dev --yes")
    (finished,) = [r for r in records if r["event"] == "run_finished"]
    assert finished["status"] == "succeeded-manual-pending"
    assert finished["pending"] == ["pulumi up -s dev --yes"]
    _wait(lambda: _canary_replicas(world) == 0, timeout=30)


def test_with_a_pulumi_cli_the_infra_step_runs_it_and_the_run_plainly_succeeds(
    world: World, artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in `pulumi` first on PATH (the seam is the CLI): it records how it was called and
    # changes nothing, so no test ever runs a real `pulumi up`.
    calls = tmp_path / "pulumi-calls"
    cli = tmp_path / "bin" / "pulumi"
    cli.parent.mkdir()
    cli.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{cli.parent}{os.pathsep}{os.environ['PATH']}")
    write_tiny_artifacts(artifacts, version="v4")  # artifacts are immutable: the module shares them

    done = world.peakguard("runbook", "run", "rebuild", "--env", "dev", "--kube-url", world.kube_url,
                           "--window", "2", "--version", "v4", "--canary-timeout", "90")  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert calls.read_text() == "up -s dev --yes\n"
    assert "\nsucceeded: every step applied and verified\n" in done.stdout
    assert "manual step pending" not in done.stdout
    assert not [r for r in _records(world) if r["event"] == "step_left_to_operator"]
    _wait(lambda: _canary_replicas(world) == 0, timeout=30)


def test_a_canary_that_never_serves_the_version_rolls_everything_back(world: World, artifacts: Path) -> None:
    world.ssm().put_parameter(Name=hold_parameter_name("dev"), Value=json.dumps(HOLD), Type="String", Overwrite=True)
    broken = artifacts / "v9"
    broken.mkdir()  # a version folder that was never fully uploaded: no manifest, no weights

    failed = world.peakguard("runbook", "run", "rebuild", "--env", "dev", "--kube-url", world.kube_url,
                             "--window", "2", "--version", "v9", "--canary-timeout", "20")  # fmt: skip

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "canary-up: verification inconclusive after 20 s" in failed.stdout
    records = _records(world)
    (finished,) = [r for r in records if r["event"] == "run_finished"]
    assert finished["status"] == "rolled-back"
    assert finished["rollback_seconds"] < 30
    canary_mode = json.loads(world.store.get("configmaps", NAMESPACE, "model-service-canary-mode")["data"]["mode.json"])
    assert canary_mode["model_version"] == ""
    assert world.mode()["model_version"] == "", "the fleet was never touched"
    assert world.hold() == HOLD, "the emergency's hold stands"
    _wait(lambda: _canary_replicas(world) == 0, timeout=30)
    print(f"\nrebuild: canary never served v9; rolled back in {finished['rollback_seconds']:.2f} s")


def test_after_an_emergency_the_canary_is_judged_against_the_slo_not_the_degraded_fleet(
    world: World, artifacts: Path
) -> None:
    """The fleet degraded by emergency-stop answers repeated queries from its answer table in about a
    millisecond; the canary runs normal mode (the model for every query) and must not be refused for
    being slower than that: it is held to the SLO."""
    import httpx

    degraded = {"model": "light", "precision": "int8", "shedding": True}
    for url in world.ready_pods():
        httpx.put(
            f"{url}/admin/mode", json=degraded, headers={"Authorization": f"Bearer {world.token}"}
        ).raise_for_status()
    write_tiny_artifacts(artifacts, version="v3")

    done = world.peakguard("runbook", "run", "rebuild", "--env", "dev", "--kube-url", world.kube_url,
                           "--window", "2", "--version", "v3", "--canary-timeout", "90")  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    (verified,) = [r for r in _records(world) if r["event"] == "step_verified" and r["step"] == "canary-up"]
    assert verified["gate"]["raw"]["judgedAgainst"].startswith(
        "the SLO: the fleet runs degraded on model-service-full-"
    )
    assert world.mode()["model"] == "full", "promoted in normal mode"
