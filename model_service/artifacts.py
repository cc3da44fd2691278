"""Trained models on disk: weights in safetensors, and a JSON model card beside them.

A training run writes one versioned folder, `<out>/<version>/`, holding `<name>.safetensors` and
`<name>.json` per model and a `manifest.json`. The folder is built under a temporary name and
renamed into place only when complete, so a crash never leaves a half-written version that a
server could load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from model_service.classifier import ClassifierConfig, IntentClassifier

__all__ = [
    "ArtifactError",
    "ModelCard",
    "check_servable",
    "load_model",
    "newest_version",
    "read_manifest",
    "versions",
    "write_version",
]

MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """A model folder or file is missing or inconsistent; the message names it."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    """full, light, pruned, ..."""
    version: str
    created: str
    """UTC ISO-8601 time of the training run."""
    config: ClassifierConfig
    intents: tuple[str, ...]
    """Label names by index."""
    handover_threshold: float
    """Below this in-scope score (`model_service.handover.score` of the logits) a human takes the query."""
    parameters: int
    metrics: Mapping[str, Any] = field(default_factory=dict)
    """Accuracy on each split, out-of-scope recall, timings: what the run measured."""
    dataset: Mapping[str, Any] = field(default_factory=dict)
    """Which data, which split, which seed."""
    training: Mapping[str, Any] = field(default_factory=dict)
    """How it was trained (epochs, learning rate, teacher for distillation)."""
    weights_sha256: str = ""

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        raw["intents"] = list(self.intents)
        return json.dumps(raw, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str) -> ModelCard:
        try:
            raw = json.loads(text)
            raw["config"] = ClassifierConfig(**raw["config"])
            raw["intents"] = tuple(raw["intents"])
            card = cls(**raw)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{source}: not a peakguard model card ({exc})") from None
        if len(card.intents) != card.config.num_labels:
            raise ArtifactError(f"{source}: {len(card.intents)} intents but the model has {card.config.num_labels}")
        return card


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_version(out: Path, version: str, models: Sequence[tuple[IntentClassifier, ModelCard]]) -> Path:
    """Write every model and its card into `<out>/<version>/` atomically; returns that folder."""
    target = out / version
    if target.exists():
        raise ArtifactError(f"{target}: version already exists; artifacts are immutable, pick a new version")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=out))
    try:
        entries = []
        for model, card in models:
            weights = staging / f"{card.name}.safetensors"
            state = {key: value.contiguous() for key, value in model.state_dict().items()}
            save_file(state, str(weights), metadata={"name": card.name, "version": version})
            card = dataclasses.replace(card, weights_sha256=_sha256(weights), parameters=model.parameter_count())
            (staging / f"{card.name}.json").write_text(card.to_json())
            entries.append({"name": card.name, "weights": weights.name, "sha256": card.weights_sha256})
        (staging / MANIFEST).write_text(json.dumps({"version": version, "models": entries}, indent=2) + "\n")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def versions(root: Path) -> list[str]:
    """The version folders under an artifact root, oldest first (names are UTC timestamps, so they sort)."""
    return sorted(manifest.parent.name for manifest in root.glob(f"*/{MANIFEST}"))


def newest_version(root: Path) -> str:
    """The newest version folder under an artifact root."""
    versions_ = versions(root)
    if not versions_:
        raise ArtifactError(f"no model versions under {root}; run peakguard train --out {root} first")
    return versions_[-1]


def check_servable(root: Path, version: str = "", names: Sequence[str] = ("full", "light")) -> str:
    """The version `peakguard serve` would load from `root` (the newest when `version` is empty),
    once its folder, manifest and the models' cards and weights files are there and the cards
    parse; else an ArtifactError naming what is missing. Cheap: the weights are hashed and loaded
    later, and a failure there is reported on /readyz."""
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such folder; --artifacts is the folder peakguard train --out wrote")
    if version and version not in versions(root):
        listing = ", ".join(versions(root)[-5:]) or "none"
        raise ArtifactError(f"{root}: no model version {version!r} (newest: {listing})")
    version = version or newest_version(root)
    folder = root / version
    read_manifest(folder)
    for name in names:
        card_path, weights_path = folder / f"{name}.json", folder / f"{name}.safetensors"
        if not weights_path.is_file():
            raise ArtifactError(f"{weights_path}: missing; serve needs the {', '.join(names)} models")
        if not card_path.is_file():
            raise ArtifactError(f"{card_path}: missing; serve needs the {', '.join(names)} models")
        ModelCard.from_json(card_path.read_text(), source=str(card_path))
    return version


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {folder} is not a model version folder (peakguard train writes them)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def load_model(folder: Path, name: str) -> tuple[IntentClassifier, ModelCard]:
    """Load model `name` from a version folder, checking its weights against the card's hash."""
    card_path, weights_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    for path in (card_path, weights_path):
        if not path.is_file():
            available = sorted(p.stem for p in folder.glob("*.safetensors"))
            raise ArtifactError(f"{path}: missing; models in {folder}: {', '.join(available) or 'none'}")
    card = ModelCard.from_json(card_path.read_text(), source=str(card_path))
    if card.weights_sha256 and _sha256(weights_path) != card.weights_sha256:
        raise ArtifactError(f"{weights_path}: sha256 differs from its model card; the file is corrupt or replaced")
    model = IntentClassifier(card.config)
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as exc:
        raise ArtifactError(f"{weights_path}: weights do not fit the card's config ({exc})") from None
    return model.eval(), card
