"""`peakguard bench pruning`: the curve's mechanics on a tiny model and a slice of the real data.
The curve itself is the command's, never asserted here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from model_service.artifacts import ModelCard, write_version
from model_service.classifier import IntentClassifier
from model_service.datasets import load_banking77
from model_service.pruning_curve import SEED_ROW, Point, PruningSettings, parse_point, render, run
from peakguard.cli import main
from tests.model_service.conftest import tiny_config, write_tiny_artifacts


def _tiny_banking77_model(root: Path, data_dir: Path) -> None:
    """A tiny untrained full model over banking77's intents and the real vocabulary."""
    intents = load_banking77(data_dir / "banking77").intents
    torch.manual_seed(2)
    model = IntentClassifier(tiny_config(vocab_size=30522, num_labels=len(intents))).eval()
    card = ModelCard(
        name="full", version="v1", created="2026-12-06T00:00:00+00:00", config=model.config, intents=intents,
        handover_threshold=-1e9, parameters=model.parameter_count(), metrics={"test_accuracy": 0.0},
    )  # fmt: skip
    write_version(root, "v1", [(model, card)])


def test_each_point_is_pruned_fine_tuned_scored_and_timed_against_the_full_model(
    tmp_path: Path, data_dir: Path
) -> None:
    _tiny_banking77_model(tmp_path / "models", data_dir)
    settings = PruningSettings(
        artifacts=tmp_path / "models", data=data_dir, points=(Point(0.5), Point(0.25, heads=2)),
        recovery_epochs=1.0, repeats=3, sample_limit=64,
    )  # fmt: skip

    report = run(settings, log=lambda _: None)

    first, second = report["curve"]
    assert (first["channels_kept"], first["heads_kept"]) == (24, 4)
    assert (second["channels_kept"], second["heads_kept"]) == (12, 2)
    assert report["full"]["parameters"] > first["parameters"] > second["parameters"]
    # it was fine-tuned, not only cut: one step of even this tiny model takes well over the 1 ms the report keeps
    assert first["recovery_seconds"] > 0
    for row in report["curve"]:
        assert row["latency_ms"] > 0
        assert row["meets_seed_row"] == (
            row["latency_reduction"] >= SEED_ROW["latency_reduction"]
            and row["accuracy_loss_pts"] <= SEED_ROW["max_accuracy_loss_pts"]
        )
    assert report["seed_row"]["met"] == any(row["meets_seed_row"] for row in report["curve"])
    assert ("met" if report["seed_row"]["met"] else "missed") in render(report).splitlines()[-1]


def test_with_distill_each_point_recovers_from_the_unpruned_model_s_logits(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_service import pruning_curve

    _tiny_banking77_model(tmp_path / "models", data_dir)
    seen: list[Any] = []
    real_fit = pruning_curve.fit

    def spying_fit(*args: Any, **kwargs: Any) -> float:
        seen.append(kwargs.get("teacher_logits"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(pruning_curve, "fit", spying_fit)
    settings = PruningSettings(
        artifacts=tmp_path / "models", data=data_dir, points=(Point(0.5), Point(0.25)), recovery_epochs=1.0,
        repeats=2, sample_limit=64, distill=True,
    )  # fmt: skip

    report = run(settings, log=lambda _: None)

    assert len(seen) == 2 and all(t is not None for t in seen)
    assert seen[0] is seen[1], "the unpruned model's logits, computed once, not a pruned point's"
    assert tuple(seen[0].shape) == (64, 77), "one row of logits per training example, one column per intent"
    assert "distilled from the unpruned model" in render(report).splitlines()[0]
    labels_only = run(PruningSettings(**{**vars(settings), "distill": False}), log=lambda _: None)
    assert seen[2] is None and "distilled" not in render(labels_only)


@pytest.mark.parametrize(
    ("text", "point"),
    [("channels=0.5", Point(0.5)), ("channels=0.375,heads=8", Point(0.375, 8)), (" channels=1 ", Point(1.0))],
)
def test_a_point_is_read_from_its_text(text: str, point: Point) -> None:
    assert parse_point(text) == point


@pytest.mark.parametrize(
    ("text", "message"),
    [("heads=8", "is not a point"), ("channels=half", "is not a point"), ("channels=1.5", "must be in")],
)
def test_a_bad_point_is_named_with_the_form_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_point(text)


def test_the_command_names_a_bad_point(tmp_path: Path, data_dir: Path, capsys: Any) -> None:
    write_tiny_artifacts(tmp_path / "models")
    code = main(["bench", "pruning", "--artifacts", str(tmp_path / "models"), "--data", str(data_dir),
                 "--point", "heads=3"])  # fmt: skip
    assert code == 2
    assert "channels=SHARE[,heads=N]" in capsys.readouterr().err


def test_a_model_of_other_intents_is_refused_by_name(tmp_path: Path, data_dir: Path) -> None:
    write_tiny_artifacts(tmp_path / "models")  # five intents, not banking77's 77
    with pytest.raises(ValueError, match="answers 5 intents, not banking77's 77"):
        run(PruningSettings(artifacts=tmp_path / "models", data=data_dir), log=lambda _: None)
