"""The Kubernetes objects exported as YAML: valid for Kubernetes 1.33, secrets redacted, CLI exit codes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import pytest
import yaml

from infra.manifests import helm_releases, manifests, write_yaml
from infra.offline import OfflineRun
from tests.infra.conftest import PROJECT_DIR

KUBERNETES_VERSION = "1.33"
CUSTOM_KINDS = {"ScaledObject", "PodMonitor", "PrometheusRule"}
PEAKGUARD = PROJECT_DIR / ".venv" / "bin" / "peakguard"


@pytest.fixture(scope="module")
def exported(runs: dict[str, OfflineRun], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("k8s-yaml")
    return directory, write_yaml(runs["prod"], directory)


def _objects(written: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in written:
        if path.parent.name == "helm":
            continue
        body = yaml.safe_load(path.read_text())
        assert isinstance(body, dict), path
        found.append((path, body))
    return found


def _peakguard(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [str(PEAKGUARD), *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=180
    )


def test_write_yaml_writes_one_file_per_object_and_per_release(
    runs: dict[str, OfflineRun], exported: tuple[Path, list[Path]]
) -> None:
    directory, written = exported
    run = runs["prod"]

    assert written
    assert all(path.is_file() and path.is_relative_to(directory) for path in written)
    assert len(set(written)) == len(written), "two objects were written to the same file"
    assert len(_objects(written)) == len(manifests(run))
    helm = {path.name for path in written if path.parent.name == "helm"}
    assert helm == {f"{release.name}.values.yaml" for release in helm_releases(run)}
    assert not list(directory.rglob(".*.partial"))


def test_built_in_objects_validate_against_kubernetes_1_33_strictly(exported: tuple[Path, list[Path]]) -> None:
    _, written = exported
    validated = set()
    for path, body in _objects(written):
        if body["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        validated.add(body["kind"])

    assert {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Ingress"} <= validated
    assert {"ConfigMap", "Secret", "ServiceAccount", "Namespace", "PriorityClass"} <= validated


@pytest.mark.parametrize("env", ["dev", "staging"])
def test_the_other_envs_objects_validate_too(env: str, runs: dict[str, OfflineRun]) -> None:
    version = runs[env].config.cluster.kubernetes_version
    for manifest in manifests(runs[env]):
        if manifest.kind in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(dict(manifest.body), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{env} {manifest.kind}/{manifest.name}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_custom_resources_have_no_schema_and_are_well_formed(exported: tuple[Path, list[Path]]) -> None:
    _, written = exported
    seen = set()
    for path, body in _objects(written):
        if body["kind"] not in CUSTOM_KINDS:
            continue
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
        assert "/" in body["apiVersion"], path.name
        assert body["metadata"]["name"], path.name
        assert body["metadata"]["namespace"], path.name
        assert isinstance(body["spec"], dict) and body["spec"], path.name
        seen.add(body["kind"])

    assert seen == CUSTOM_KINDS


def test_secret_values_are_redacted(runs: dict[str, OfflineRun], exported: tuple[Path, list[Path]]) -> None:
    _, written = exported
    (password,) = runs["prod"].of_type("random:index/randomPassword:RandomPassword")
    token = password.outputs["result"]
    secrets = [body for _, body in _objects(written) if body["kind"] == "Secret"]

    assert secrets
    for secret in secrets:
        values = {**secret.get("data", {}), **secret.get("stringData", {})}
        assert values
        assert all(value.startswith("<redacted") for value in values.values()), values
    assert len(token) >= 32
    assert not [path for path in written if token in path.read_text()]


def test_preview_cli_writes_the_yaml(tmp_path: Path) -> None:
    target = tmp_path / "k8s"
    result = _peakguard("preview", "--env", "prod", "--k8s-yaml", str(target))

    assert result.returncode == 0, result.stderr
    deployments = list(target.rglob("deployment-*.yaml"))
    assert deployments
    assert {yaml.safe_load(path.read_text())["kind"] for path in deployments} == {"Deployment"}
    assert f"under {target}" in result.stderr


def test_preview_cli_exits_3_when_the_folder_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    result = _peakguard("preview", "--env", "prod", "--k8s-yaml", str(blocker / "k8s"))

    assert result.returncode == 3, result.stderr
    assert "cannot write" in result.stderr
    assert str(blocker) in result.stderr
