"""A project's stack files, found and read as `pulumi` reads them, without Pulumi: the offline
preview, the policy check and the capacity planner all start here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra import stack_yaml
from infra.config import ConfigError

__all__ = ["find_project_dir", "load_stack_file"]


def find_project_dir(start: Path | None = None) -> Path:
    """The directory holding Pulumi.yaml: `start` or its nearest parent that has one."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "Pulumi.yaml").is_file():
            return candidate
    raise ConfigError(f"no Pulumi.yaml in {here} or its parents; run from the peakguard checkout or pass --project-dir")


def load_stack_file(project_dir: Path, env: str, path: Path | None = None) -> dict[str, Any]:
    """The `config:` map of `Pulumi.<env>.yaml` (or of `path`, a proposed stack file), decoded."""
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"{path}: no such stack file")
    else:
        path = project_dir / f"Pulumi.{env}.yaml"
    if not path.is_file():
        available = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml"))
        raise ConfigError(f"{path}: no such stack file; stacks here: {', '.join(available) or 'none'}")
    try:
        document = stack_yaml.load(path) or {}
    except stack_yaml.StackYamlError as exc:
        raise ConfigError(str(exc)) from None
    config = document.get("config", {}) if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: 'config' must be a mapping of keys to values")
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            raise ConfigError(f"{path}: {key} is a secret; secrets cannot be decrypted offline")
    return config
