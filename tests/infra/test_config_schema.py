"""`peakguard config schema`: the JSON Schema editors use for Pulumi.<env>.yaml, generated from the
loader's own model, so the two cannot drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from infra import stack_yaml
from infra.config import json_schema
from peakguard.cli import main
from tests.infra.conftest import ENVS, PROJECT_DIR


def _validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _stack_file(env: str) -> dict[str, Any]:
    document: dict[str, Any] = stack_yaml.load(PROJECT_DIR / f"Pulumi.{env}.yaml")
    return document


@pytest.mark.parametrize("env", ENVS)
def test_every_real_stack_file_is_valid_under_the_schema(env: str) -> None:
    errors = sorted(_validator().iter_errors(_stack_file(env)), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("peakguard:gpuPools", "full", "expectedPeakNode"), 11, id="misspelt-key"),
        pytest.param(("peakguard:gpuPools", "full", "instanceType"), "banana.huge", id="not-an-instance-type"),
        pytest.param(("peakguard:gpuPools", "full", "maxUnavailablePercentage"), 0, id="below-range"),
        pytest.param(("peakguard:network", "natGateways"), "perAZ", id="not-a-choice"),
        pytest.param(("peakguard:cluster", "kubernetesVersion"), "1.99", id="not-an-eks-version"),
        pytest.param(("peakguard:kubernetes", "modelService", "cpu"), "four", id="not-a-quantity"),
    ],
)
def test_the_schema_flags_what_an_editor_should(path: tuple[str, ...], value: Any) -> None:
    document = _stack_file("prod")
    node = document["config"]
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = value
    assert list(_validator().iter_errors(document)), f"{'.'.join(path)}={value!r} passed the schema"


def test_keys_are_described_for_the_editor() -> None:
    schema = json_schema()
    pool = schema["$defs"]["_PoolDoc"]["properties"]
    assert "EFA-capable" in pool["instanceType"]["description"]
    assert pool["rootVolumeGiB"]["default"] == 200


def test_the_command_writes_it_atomically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "schemas" / "pulumi-stack.json"
    assert main(["config", "schema", "--output", str(target)]) == 0
    assert json.loads(target.read_text()) == json_schema()
    assert [p.name for p in target.parent.iterdir()] == ["pulumi-stack.json"]  # no staging file left

    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_an_unwritable_output_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (blocker := tmp_path / "file").write_text("")
    assert main(["config", "schema", "--output", str(blocker / "schema.json")]) == 3
    assert "cannot write" in capsys.readouterr().err


def test_the_schema_file_is_readable_by_the_editor(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    assert main(["config", "schema", "--output", str(target)]) == 0
    assert target.stat().st_mode & 0o777 == 0o644


def test_every_default_is_valid_under_its_own_schema() -> None:
    schema = json_schema()
    for definition in schema["$defs"].values():
        for name, field in definition.get("properties", {}).items():
            if field.get("default") is None or "$ref" in field:
                continue
            validator = jsonschema.Draft202012Validator({**field, "$defs": schema["$defs"]})
            assert not list(validator.iter_errors(field["default"])), f"{name}: default {field['default']!r}"
