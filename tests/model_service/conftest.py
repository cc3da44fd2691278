"""Shared fixtures: the real data sets and a tiny model the tests can afford to build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
