"""The serve settings file: what it accepts, what it refuses, and where the admin token comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_service.settings import SettingsError, load_settings


def _write(tmp_path: Path, text: str, name: str = "serve.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_yaml_file_with_nested_mode_and_breaker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEAKGUARD_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("PEAKGUARD_ADMIN_TOKEN_FILE", raising=False)
    path = _write(tmp_path, "artifacts: /models\nlatency_budget: 0.2\ndevice: cpu\n"
                            "initial_mode: {model: light, precision: int8}\nbreaker: {trip_above: 0.8}\n")  # fmt: skip

    settings = load_settings(path)

    assert settings.artifacts == Path("/models") and settings.latency_budget == 0.2 and settings.device == "cpu"
    assert settings.initial_mode.model == "light" and settings.initial_mode.precision == "int8"
    assert settings.breaker.trip_above == 0.8
    assert settings.admin_token == ""  # no token: the admin API stays off


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"artifacts": "/a", "version": "v1"}', "serve.json")
    settings = load_settings(path, artifacts=Path("/b"), version=None)
    assert settings.artifacts == Path("/b") and settings.version == "v1"


def test_the_token_comes_from_a_file_named_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEAKGUARD_ADMIN_TOKEN", raising=False)
    (tmp_path / "token").write_text("from-a-secret\n")
    monkeypatch.setenv("PEAKGUARD_ADMIN_TOKEN_FILE", str(tmp_path / "token"))
    settings = load_settings(artifacts=Path("/m"))
    assert settings.admin_token == "from-a-secret"
    assert "from-a-secret" not in repr(settings)  # never logged with the settings


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("artifacts: /m\nlatency_budgett: 1\n", "unknown setting 'latency_budgett'"),
        ("artifacts: /m\nadmin_token: hunter2\n", "admin_token does not belong in a file"),
        ("latency_budget: 1\n", "artifacts is required"),
        ("artifacts: /m\ndevice: gpu\n", "device 'gpu' is not one of auto, cpu, cuda"),
        ("artifacts: /m\nchaos: 'false'\n", "chaos must be true or false, got 'false'"),
        ("artifacts: /m\ninitial_mode: {model: huge}\n", "model"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("artifacts: [unclosed\n", "not valid yaml"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(_write(tmp_path, text))


def test_an_unreadable_token_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEAKGUARD_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("PEAKGUARD_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=r"PEAKGUARD_ADMIN_TOKEN_FILE=.*cannot read"):
        load_settings(artifacts=Path("/m"))
