"""`peakguard bench refusal`: one real, short run against the real server, and its settings. The
figures are the command's, never asserted here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model_service.refusal_cost import RefusalSettings, render, run
from peakguard.cli import main
from tests.model_service.conftest import write_tiny_artifacts


def test_a_real_run_refuses_every_request_while_the_model_sleeps_and_prices_each(tmp_path: Path) -> None:
    write_tiny_artifacts(tmp_path / "models")
    settings = RefusalSettings(
        artifacts=tmp_path / "models", variants=("httptools+uvloop", "h11+asyncio"), rps=150, seconds=2,
        idle_seconds=0.5, rounds=1,
    )  # fmt: skip

    report = run(settings, log=lambda _: None)

    for name in ("httptools+uvloop", "h11+asyncio"):
        (round_,) = report["variants"][name]["rounds"]
        assert round_["sent"] > 100
        # Nothing but refusals came back: the CPU measured is theirs.
        assert round_["refused"] == round_["sent"]
        assert set(round_["status_counts"]) == {"429"}
        assert round_["cpu_seconds"] > 0
        assert report["variants"][name]["cpu_us_per_refusal"]["median"] > 0
    assert report["variants"]["h11+asyncio"]["serve_options"] == ["--http", "h11", "--loop", "asyncio"]
    assert "us (" in render(report)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"variants": ("nginx",)}, "unknown server variant"),
        ({"seconds": 8.0}, "together at most 8.5"),
        ({"idle_seconds": 0.0}, "must be > 0"),
        ({"rounds": 0}, "rounds >= 1"),
    ],
)
def test_bad_settings_are_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RefusalSettings(artifacts=Path("models"), **changes)


def test_the_command_names_a_folder_without_models(tmp_path: Path, capsys: Any) -> None:
    assert main(["bench", "refusal", "--artifacts", str(tmp_path / "nothing")]) == 2
    assert "peakguard bench refusal:" in capsys.readouterr().err
