"""`infra/` run the way `pulumi up` runs it: as a directory, with config in PULUMI_CONFIG."""

from __future__ import annotations

import json
import runpy
from typing import Any

import pulumi
import pytest

from infra.offline import _AwsAnswers, _engine_form, _RecordingMonitor, run_offline
from tests.infra.conftest import PROJECT_DIR, stack_values


def _run_main(env: str, values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> _RecordingMonitor:
    # The language host hands a program its config as JSON text in PULUMI_CONFIG.
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({key: _engine_form(value) for key, value in values.items()}))
    pulumi.runtime.set_all_config({})
    answers = _AwsAnswers(values["aws:region"])
    monitor = _RecordingMonitor(answers)
    pulumi.runtime.set_mocks(answers, project="peakguard", stack=env, preview=False, monitor=monitor)

    @pulumi.runtime.test
    def program() -> None:
        runpy.run_path(str(PROJECT_DIR / "infra"), run_name="__main__")

    program()
    return monitor


def test_main_registers_what_the_offline_run_records_and_exports_the_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = _run_main("staging", stack_values("staging"), monkeypatch)
    offline = run_offline("staging", project_dir=PROJECT_DIR)

    registered = sorted((request.type, request.name) for request, _ in monitor.requests.values())
    assert registered == sorted((r.type, r.name) for r in offline.resources)
    stack = pulumi.runtime.settings.get_root_resource()
    assert {"clusterName", "targets", "targetsParameter", "modelBucket"} <= set(stack.outputs)  # type: ignore[union-attr]


def test_main_refuses_bad_config_with_the_key_and_no_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    values = stack_values("prod")
    values["peakguard:gpuPools"]["full"]["gds"] = True

    with pytest.raises(pulumi.RunError) as error:
        _run_main("prod", values, monkeypatch)

    message = str(error.value)
    assert message.startswith("invalid stack config for prod: peakguard:gpuPools.full.gds")
    assert "amiFamily: ubuntu" in message and "nvidia-fs" in message


def test_main_refuses_a_misspelled_key_instead_of_ignoring_it(monkeypatch: pytest.MonkeyPatch) -> None:
    values = stack_values("dev")
    values["peakguard:gpuPool"] = values.pop("peakguard:gpuPools")

    with pytest.raises(pulumi.RunError, match="peakguard:gpuPool: is not a known key; did you mean 'gpuPools'"):
        _run_main("dev", values, monkeypatch)
