"""The Kubernetes side of a run as plain manifests: YAML files a reviewer reads and a validator checks.

`peakguard preview --env prod --k8s-yaml DIR` writes one file per object (what `pulumi up` would
apply through the Kubernetes provider) and, under `helm/`, each Helm release's chart, version and
values, so `helm template` can render them. Secret values are redacted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.offline import OfflineRun, Registration

__all__ = ["HelmReleaseValues", "Manifest", "helm_releases", "manifests", "write_yaml"]

_HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
_REDACTED = "<redacted: generated at pulumi up>"


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object as it would be applied."""

    body: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        namespace = self.body["metadata"].get("namespace")
        return str(namespace) if namespace else None

    def file_name(self) -> str:
        return f"{self.namespace or '_cluster'}/{_slug(self.kind)}-{_slug(self.name)}.yaml"


@dataclass(frozen=True)
class HelmReleaseValues:
    name: str
    namespace: str
    chart: str
    version: str
    repository: str
    values: Mapping[str, Any]


def _is_object(resource: Registration) -> bool:
    return resource.custom and resource.type.startswith("kubernetes:") and resource.type != _HELM_RELEASE


def _clean(value: Any) -> Any:
    # Wire format carries numbers as floats; Kubernetes schemas want integers where they are whole.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def manifests(run: OfflineRun) -> list[Manifest]:
    """The Kubernetes objects the run declared (Helm releases aside), in declaration order."""
    found = []
    for resource in run.resources:
        if not _is_object(resource):
            continue
        body = _clean(dict(resource.inputs))
        if body.get("kind") == "Secret":
            for key in ("data", "stringData"):
                if key in body:
                    body[key] = {name: _REDACTED for name in body[key]}
        head = {key: body.pop(key) for key in ("apiVersion", "kind", "metadata") if key in body}
        found.append(Manifest({**head, **body}))
    return found


def helm_releases(run: OfflineRun) -> list[HelmReleaseValues]:
    releases = []
    for resource in run.of_type(_HELM_RELEASE):
        inputs = _clean(dict(resource.inputs))
        releases.append(
            HelmReleaseValues(
                name=inputs["name"],
                namespace=inputs["namespace"],
                chart=inputs["chart"],
                version=inputs["version"],
                repository=inputs.get("repositoryOpts", {}).get("repo", ""),
                values=inputs.get("values", {}),
            )
        )
    return releases


def write_yaml(run: OfflineRun, directory: Path) -> list[Path]:
    """Write every object and every release's values under `directory`; returns the files written.

    Files are written whole or not at all (temporary name, then rename), so a failed export
    never leaves a truncated manifest behind.
    """
    written = []
    for manifest in manifests(run):
        written.append(_write(directory / manifest.file_name(), yaml.safe_dump(dict(manifest.body), sort_keys=False)))
    for release in helm_releases(run):
        header = (
            f"# helm template {release.name} {release.chart} --version {release.version} "
            f"--repo {release.repository} --namespace {release.namespace} -f {release.name}.values.yaml\n"
        )
        body = yaml.safe_dump(dict(release.values), sort_keys=False) if release.values else "{}\n"
        written.append(_write(directory / "helm" / f"{release.name}.values.yaml", header + body))
    return written


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-")
