"""Reading the service's settings: a JSON or YAML file, flags on top, the admin token from the
environment (never from the file, so it is not committed with it)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from model_service.breaker import BreakerSettings
from model_service.modes import ModeError, OperatingMode
from model_service.server import ServiceSettings

__all__ = ["SettingsError", "load_settings"]


class SettingsError(ValueError):
    """A settings file or value is wrong; the message names it."""


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read ({exc.strerror})") from None
    import yaml

    try:
        raw = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({exc})") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: must hold a mapping of setting names to values")
    return raw


def _admin_token() -> str:
    if token := os.environ.get("PEAKGUARD_ADMIN_TOKEN", ""):
        return token
    if file := os.environ.get("PEAKGUARD_ADMIN_TOKEN_FILE", ""):
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"PEAKGUARD_ADMIN_TOKEN_FILE={file}: cannot read ({exc.strerror})") from None
    return ""


def load_settings(path: Path | None = None, **overrides: Any) -> ServiceSettings:
    raw = _read(path) if path else {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    source = str(path) if path else "settings"
    fields = {f.name: f for f in dataclasses.fields(ServiceSettings)}
    unknown = sorted(set(raw) - set(fields) - {"admin_token"})
    if unknown:
        raise SettingsError(f"{source}: unknown setting {unknown[0]!r}; settings: {', '.join(sorted(fields))}")
    if "admin_token" in raw:
        raise SettingsError(f"{source}: admin_token does not belong in a file; set PEAKGUARD_ADMIN_TOKEN(_FILE)")
    if "artifacts" not in raw:
        raise SettingsError(f"{source}: artifacts is required (the folder peakguard train wrote)")
    try:
        if "initial_mode" in raw:
            raw["initial_mode"] = OperatingMode.from_mapping(raw["initial_mode"], source=f"{source}: initial_mode")
        if "breaker" in raw:
            raw["breaker"] = BreakerSettings(**raw["breaker"])
        for key in ("artifacts", "mode_file"):
            if raw.get(key) is not None:
                raw[key] = Path(raw[key])
        return ServiceSettings(**raw, admin_token=_admin_token())
    except ModeError as exc:
        raise SettingsError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{source}: {exc}") from None
