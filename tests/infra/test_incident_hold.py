"""`pulumi up` refuses while a runbook's incident hold is set; `pulumi preview` warns (under mocks)."""

from __future__ import annotations

import json

import pulumi
import pytest

from infra.offline import run_offline
from infra.targets import freeze_parameter_name, hold_parameter_name
from tests.infra.conftest import PROJECT_DIR

HOLD = {
    hold_parameter_name("prod"): json.dumps(
        {"runId": "prod-emergency-stop-20261125T100000Z-ab12", "runbook": "emergency-stop",
         "reason": "light model, shedding on", "since": "2026-11-25T10:00:00+00:00"}
    )
}  # fmt: skip


def test_up_refuses_naming_the_run_that_holds_it() -> None:
    with pytest.raises(pulumi.RunError) as refused:
        run_offline("prod", project_dir=PROJECT_DIR, ssm_parameters=HOLD)

    message = str(refused.value)
    assert "prod-emergency-stop-20261125T100000Z-ab12" in message
    assert "emergency-stop" in message
    assert f"aws ssm delete-parameter --name {hold_parameter_name('prod')}" in message


def test_preview_warns_and_still_shows_the_plan() -> None:
    run = run_offline("prod", project_dir=PROJECT_DIR, ssm_parameters=HOLD, preview=True)

    assert any("prod-emergency-stop-20261125T100000Z-ab12" in message for message in run.messages)
    assert run.of_type("aws:eks/cluster:Cluster")


def test_a_hold_in_another_env_or_a_freeze_does_not_block_up() -> None:
    # The freeze blocks runbooks, not deploys; another env's hold is not this env's business.
    others = {hold_parameter_name("staging"): HOLD[hold_parameter_name("prod")], freeze_parameter_name("prod"): "x"}
    run = run_offline("prod", project_dir=PROJECT_DIR, ssm_parameters=others)
    assert run.of_type("aws:eks/cluster:Cluster")
