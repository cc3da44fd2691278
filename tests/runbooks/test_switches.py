"""The change freeze and the incident hold, against SSM served by moto on 127.0.0.1 (real boto3)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest

from infra.targets import freeze_parameter_name, hold_parameter_name
from lab.aws import CREDENTIALS, moto_server
from runbooks.errors import RunbookError
from runbooks.ports.switches import SsmSwitches


@pytest.fixture(scope="module")
def ssm() -> Iterator[Any]:
    with moto_server() as url:
        yield boto3.client("ssm", endpoint_url=url, region_name="us-west-2", **CREDENTIALS)


@pytest.fixture
def env() -> str:
    # Each test its own environment: parameters never leak between tests.
    return f"t{uuid.uuid4().hex[:8]}"


def test_no_parameter_means_no_freeze_and_no_hold(ssm: Any, env: str) -> None:
    switches = SsmSwitches(ssm, env=env)
    assert switches.freeze_reason() is None
    assert switches.hold() is None


def test_a_freeze_names_its_reason_and_who_set_it_until_cleared(ssm: Any, env: str) -> None:
    switches = SsmSwitches(ssm, env=env)
    switches.set_freeze(reason="Singles' Day: no changes", by="alice")

    reason = switches.freeze_reason()
    assert reason is not None
    assert "Singles' Day: no changes" in reason
    assert "alice" in reason
    assert ssm.get_parameter(Name=freeze_parameter_name(env))["Parameter"]["Value"].startswith("{")

    switches.clear_freeze()
    assert switches.freeze_reason() is None
    switches.clear_freeze()  # clearing twice is fine


def test_a_freeze_set_by_hand_as_plain_text_still_freezes(ssm: Any, env: str) -> None:
    ssm.put_parameter(Name=freeze_parameter_name(env), Value="release week", Type="String")
    reason = SsmSwitches(ssm, env=env).freeze_reason()
    assert reason is not None
    assert "release week" in reason


def test_the_hold_names_the_run_and_only_that_run_clears_it(ssm: Any, env: str) -> None:
    switches = SsmSwitches(ssm, env=env)
    switches.set_hold(run_id="run-1", runbook="emergency-stop", reason="light model, shedding on")

    hold = switches.hold()
    assert hold is not None
    assert hold["runId"] == "run-1"
    assert hold["runbook"] == "emergency-stop"
    with pytest.raises(RunbookError, match="already set by run run-1"):
        switches.set_hold(run_id="run-2", runbook="emergency-stop", reason="again")

    switches.clear_hold(run_id="run-2")
    assert switches.hold() is not None, "another run's clear must not lift the hold"
    switches.clear_hold(run_id="run-1")
    assert switches.hold() is None
    assert hold_parameter_name(env) == f"/peakguard/{env}/incident-hold"


def test_access_denied_is_a_clear_error_naming_the_permissions(ssm: Any, env: str) -> None:
    denied = boto3.client(
        "ssm",
        endpoint_url=ssm.meta.endpoint_url,
        region_name="us-west-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    def refuse(**_: Any) -> None:
        raise denied.exceptions.ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
            "GetParameter",
        )

    denied.get_parameter = refuse
    with pytest.raises(RunbookError, match=r"ssm:GetParameter"):
        SsmSwitches(denied, env=env).freeze_reason()
