"""Training end to end on a sample, the hand-over threshold, and artifacts on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from model_service import training
from model_service.artifacts import ArtifactError, ModelCard, load_model, read_manifest, write_version
from model_service.classifier import IntentClassifier
from model_service.training import TrainingSettings, run
from tests.model_service.conftest import tiny_config


def _card(model: IntentClassifier, name: str = "full") -> ModelCard:
    return ModelCard(
        name=name, version="v1", created="2026-11-25T00:00:00+00:00", config=model.config,
        intents=tuple(f"intent{i}" for i in range(model.config.num_labels)), handover_threshold=0.3,
        parameters=0, metrics={"test_accuracy": 0.5},
    )  # fmt: skip


def test_version_round_trips_weights_and_card(tmp_path: Path, tiny_model: IntentClassifier) -> None:
    folder = write_version(tmp_path, "v1", [(tiny_model, _card(tiny_model))])

    model, card = load_model(folder, "full")

    assert read_manifest(folder)["models"][0]["name"] == "full"
    assert card.parameters == tiny_model.parameter_count()
    assert card.handover_threshold == 0.3
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids, torch.ones_like(ids)), tiny_model(ids, torch.ones_like(ids)))


def test_versions_are_immutable_and_failed_writes_leave_nothing(tmp_path: Path, tiny_model: IntentClassifier) -> None:
    write_version(tmp_path, "v1", [(tiny_model, _card(tiny_model))])
    with pytest.raises(ArtifactError, match="version already exists"):
        write_version(tmp_path, "v1", [(tiny_model, _card(tiny_model))])

    broken = _card(tiny_model)
    object.__setattr__(broken, "metrics", {"not": object()})  # not JSON: the write fails midway
    with pytest.raises(TypeError):
        write_version(tmp_path, "v2", [(tiny_model, broken)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_a_tampered_weights_file_is_refused(tmp_path: Path, tiny_model: IntentClassifier) -> None:
    folder = write_version(tmp_path, "v1", [(tiny_model, _card(tiny_model))])
    IntentClassifier(tiny_config())  # a different random model
    other = write_version(tmp_path, "v2", [(IntentClassifier(tiny_config()), _card(tiny_model))])
    (folder / "full.safetensors").write_bytes((other / "full.safetensors").read_bytes())

    with pytest.raises(ArtifactError, match="sha256 differs from its model card"):
        load_model(folder, "full")


def test_a_missing_model_names_those_present(tmp_path: Path, tiny_model: IntentClassifier) -> None:
    folder = write_version(tmp_path, "v1", [(tiny_model, _card(tiny_model))])

    with pytest.raises(ArtifactError, match=r"models in .*: full"):
        load_model(folder, "light")


def test_training_writes_full_light_and_pruned_with_cards(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted: list[tuple[int, int, bool]] = []  # (layers, channels, distilled) of each model trained
    real_fit = training.fit

    def fit(model: IntentClassifier, *args: Any, teacher_logits: torch.Tensor | None = None, **kwargs: Any) -> float:
        fitted.append((model.config.layers, model.config.intermediate, teacher_logits is not None))
        return real_fit(model, *args, teacher_logits=teacher_logits, **kwargs)

    monkeypatch.setattr(training, "fit", fit)
    folder = run(
        data_dir, tmp_path, TrainingSettings(sample_limit=48, epochs_full=0.7, epochs_light=0.7), log=lambda _: None
    )

    manifest = read_manifest(folder)
    assert [m["name"] for m in manifest["models"]] == ["full", "light", "pruned"]
    cards = {m["name"]: json.loads((folder / f"{m['name']}.json").read_text()) for m in manifest["models"]}
    full, light, pruned = cards["full"], cards["light"], cards["pruned"]
    assert full["config"]["num_experts"] == 8 and light["config"]["num_experts"] == 0
    assert 1 - light["parameters"] / full["parameters"] >= 0.76
    assert pruned["config"]["intermediate"] == full["config"]["intermediate"] // 2
    assert pruned["training"]["channels_kept"] == pruned["config"]["intermediate"]
    assert pruned["training"]["teacher"] == "full" and pruned["training"]["epochs"] > 0
    width = full["config"]["intermediate"]
    assert fitted == [(6, width, False), (2, width, True), (6, width // 2, True)], "the pruned model recovers distilled"
    for card in cards.values():
        assert set(card["metrics"]) >= {"validation_accuracy", "test_accuracy", "test_accuracy_int8", "oos_test_recall"}
        assert math.isfinite(card["handover_threshold"])
        assert 0.0 <= card["metrics"]["oos_validation_recall"] <= 1.0
        assert card["dataset"]["name"] == "banking77"
        assert len(card["intents"]) == 77
        model, _ = load_model(folder, card["name"])
        assert model.config.hidden == card["config"]["hidden"]


def test_one_seed_trains_the_same_full_model_twice(tmp_path: Path, data_dir: Path) -> None:
    settings = TrainingSettings(seed=5, sample_limit=32, epochs_full=0.3, epochs_light=0.3, epochs_pruned=0.3)
    first = run(data_dir, tmp_path / "a", settings, log=lambda _: None)
    torch.manual_seed(12345)  # whatever the process did before must not matter
    second = run(data_dir, tmp_path / "b", settings, log=lambda _: None)

    (a, _), (b, _) = load_model(first, "full"), load_model(second, "full")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
