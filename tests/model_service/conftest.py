"""Shared fixtures: the real data sets and a tiny model the tests can afford to build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from model_service.artifacts import ModelCard, write_version
from model_service.classifier import ClassifierConfig, IntentClassifier

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The public data sets (not committed: see the README). CI points PEAKGUARD_DATA at them."""
    folder = Path(os.environ.get("PEAKGUARD_DATA", PROJECT_DIR.parent / "shared" / "data"))
    missing = [name for name in ("banking77/train.csv", "clinc150/data_full.json") if not (folder / name).is_file()]
    assert not missing, f"data sets missing under {folder}: {missing}; set PEAKGUARD_DATA (README: Data)"
    return folder


def tiny_config(**changes: object) -> ClassifierConfig:
    config = ClassifierConfig(
        num_labels=5, vocab_size=100, hidden=24, attention_dim=24, heads=4, layers=2, intermediate=48,
        max_positions=32, num_experts=8, top_k=2, dropout=0.0,
    )  # fmt: skip
    return config.replace(**changes)


@pytest.fixture
def tiny_model() -> IntentClassifier:
    torch.manual_seed(3)
    return IntentClassifier(tiny_config()).eval()


TINY_INTENTS = ("card_arrival", "top_up", "exchange_rate", "lost_card", "refund")


def write_tiny_artifacts(root: Path, version: str = "v1", names: tuple[str, ...] = ("full", "light")) -> Path:
    """A version folder of tiny untrained models over the real MiniLM vocabulary, as `peakguard
    train` lays it out (full has experts, the others are dense), that never hand over."""
    torch.manual_seed(11)
    models = []
    for name in names:
        model = IntentClassifier(tiny_config(vocab_size=30522, num_experts=8 if name == "full" else 0)).eval()
        card = ModelCard(
            name=name, version=version, created="2026-11-25T00:00:00+00:00", config=model.config,
            intents=TINY_INTENTS, handover_threshold=-1e9, parameters=model.parameter_count(),
            metrics={"test_accuracy": 0.9, "test_accuracy_int8": 0.89, "oos_test_recall": 0.9},
        )  # fmt: skip
        models.append((model, card))
    return write_version(root, version, models)
