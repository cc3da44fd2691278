"""What the drill refuses before it measures anything, and what it finds on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.drill import DrillError, DrillSettings
from tests.infra.conftest import PROJECT_DIR


def _settings(tmp_path: Path, **changes: object) -> DrillSettings:
    return DrillSettings(data=tmp_path / "data", out=Path("out"), cache=Path("cache"), **changes)  # type: ignore[arg-type]


def test_outside_the_checkout_it_finds_the_program_it_runs_from_and_makes_folders_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no Pulumi.yaml here or above

    settings = _settings(tmp_path)

    assert settings.project_dir == PROJECT_DIR.resolve()
    assert settings.out == tmp_path.resolve() / "out" and settings.cache == tmp_path.resolve() / "cache"


def test_a_project_dir_without_the_program_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(DrillError, match=r"no Pulumi.yaml in .* run the drill from the peakguard checkout"):
        _settings(tmp_path, project_dir=tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fault": "gpu-fire"}, "--fault 'gpu-fire' is not one of replica, node, zone, slow-layer, cold, bad-step"),
        ({"fault": "bad-step", "autopilot": False}, "bad-step breaks a step of the autopilot's rebuild"),
        ({"max_pods": 2}, "max-pods must be at least 3"),
        ({"surge_seconds": 0}, "surge-seconds must be positive"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_fix(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(DrillError, match=message):
        _settings(tmp_path, **changes)


def test_a_new_run_starts_without_the_last_run_s_pods_and_keeps_its_journals(tmp_path: Path) -> None:
    from lab.drill import _clear_scratch

    (tmp_path / "lab" / "pods" / "spare-127.0.0.3").mkdir(parents=True)
    (tmp_path / "lab" / "pods" / "spare-127.0.0.3" / "mode.json").write_text('{"model": "light"}')
    (tmp_path / "prometheus" / "data").mkdir(parents=True)
    (tmp_path / "journal").mkdir()
    (tmp_path / "journal" / "dev-rebuild-1.jsonl").write_text("{}\n")

    _clear_scratch(tmp_path)

    assert not (tmp_path / "lab").exists() and not (tmp_path / "prometheus").exists()
    assert (tmp_path / "journal" / "dev-rebuild-1.jsonl").read_text() == "{}\n"
