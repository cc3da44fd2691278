"""Latency against accuracy for structured pruning: `peakguard bench pruning`.

The seed's row says structured pruning cut latency by 32% at a 0.5-point accuracy cost. Each point
of the curve prunes the trained full model (feed-forward channels and attention heads, see
`pruning`), gives it a short recovery fine-tune on banking77's training split (on the labels, or
distilled from the unpruned model's answers with `distill`), and measures its
test accuracy; then every point's latency at batch 32 is timed interleaved with the unpruned
model's, so the ratios are side by side. The seed's row is met when some point is at least 30%
faster at no more than 0.5 points lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_service import machine
from model_service.artifacts import load_model, newest_version
from model_service.benchmark import median_latencies
from model_service.classifier import IntentClassifier
from model_service.datasets import load_banking77
from model_service.pretrained import TextEncoder
from model_service.pruning import prune_channels, prune_heads
from model_service.training import TrainingSettings, accuracy, fit, predict

__all__ = ["Point", "PruningSettings", "parse_point", "render", "run"]

Log = Callable[[str], None]

SEED_ROW = {"latency_reduction": 0.30, "max_accuracy_loss_pts": 0.5}
"""The seed's structured-pruning row, as a goal: >= 30% lower latency at <= 0.5 point loss."""


@dataclass(frozen=True)
class Point:
    channels: float = 1.0
    """Share of each feed-forward layer's inner channels kept."""
    heads: int | None = None
    """Attention heads kept per layer (None: all)."""

    @property
    def name(self) -> str:
        return f"channels={self.channels:g},heads={self.heads if self.heads is not None else 'all'}"


_POINT = re.compile(r"^channels=(?P<channels>[0-9.]+)(?:,heads=(?P<heads>\d+))?$")


def parse_point(text: str) -> Point:
    """`channels=0.5,heads=8` (heads optional) -> Point."""
    match = _POINT.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a point: write channels=SHARE[,heads=N], e.g. channels=0.5,heads=8")
    channels = float(match["channels"])
    if not 0 < channels <= 1:
        raise ValueError(f"{text!r}: the channel share must be in (0, 1]")
    return Point(channels, int(match["heads"]) if match["heads"] else None)


DEFAULT_POINTS = (
    Point(0.75),
    Point(0.5),
    Point(0.5, heads=8),
    Point(0.375, heads=8),
    Point(0.25, heads=6),
)


@dataclass(frozen=True)
class PruningSettings:
    artifacts: Path
    data: Path
    """A folder with banking77/: recovery fine-tunes on its training split, accuracy is its test split."""
    version: str = ""
    points: tuple[Point, ...] = DEFAULT_POINTS
    recovery_epochs: float = 2.0
    """Passes over the training split after pruning (the full model trains for 3); 2 with `distill` met
    the seed's row (docs/bench/pruning-distill-20261207.json), half an epoch on the labels did not."""
    distill: bool = True
    """Recover from the unpruned model's answers too (its logits on the training split, as the light
    model learns from the full one), not from the labels alone."""
    batch: int = 32
    repeats: int = 20
    seed: int = 13
    """The training run's seed: the same validation split stays out of the recovery fine-tune."""
    sample_limit: int | None = None
    """Use at most this many training and test examples (tests only; never for a reported curve)."""

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("give at least one point (channels=SHARE[,heads=N])")
        if self.recovery_epochs < 0 or self.batch < 1 or self.repeats < 1:
            raise ValueError("recovery_epochs must be >= 0, batch and repeats >= 1")


def _pruned(model: IntentClassifier, point: Point) -> IntentClassifier:
    config = model.config
    if point.channels < 1:
        model = prune_channels(model, max(1, round(point.channels * config.intermediate)))
    if point.heads is not None and point.heads < config.heads:
        model = prune_heads(model, point.heads)
    return model


def run(settings: PruningSettings, *, log: Log = print) -> dict[str, Any]:
    folder = settings.artifacts / (settings.version or newest_version(settings.artifacts))
    full, card = load_model(folder, "full")
    data = load_banking77(settings.data / "banking77", seed=settings.seed)
    if tuple(card.intents) != tuple(data.intents):
        raise ValueError(
            f"{folder}: the full model answers {len(card.intents)} intents, not banking77's {len(data.intents)} in its "
            "order; give the artifacts `peakguard train --data` wrote"
        )
    train, test = data.train, data.test
    if (limit := settings.sample_limit) is not None:
        train = type(train)(train.texts[:limit], train.labels[:limit])
        test = type(test)(test.texts[:limit], test.labels[:limit])
    encoder = TextEncoder()
    training = TrainingSettings(seed=settings.seed)
    base_accuracy = accuracy(predict(full, test.texts, encoder), test.labels)
    log(f"full: {full.parameter_count() / 1e6:.1f}M parameters, test accuracy {base_accuracy:.4f}")
    teacher = None
    if settings.distill and settings.recovery_epochs > 0:
        log("the unpruned model's logits on the training split, to distil from")
        teacher = predict(full, train.texts, encoder)
    variants: dict[str, nn.Module] = {"full": full}
    rows: list[dict[str, Any]] = []
    for point in settings.points:
        model = _pruned(full, point)
        size = f"{model.parameter_count() / 1e6:.1f}M parameters"
        how = "distilled from the unpruned model" if teacher is not None else "on the labels"
        log(f"{point.name}: {size}; recovery {settings.recovery_epochs:g} epochs {how}")
        seconds = 0.0
        if settings.recovery_epochs > 0:
            seconds = fit(model, train, encoder, training, epochs=settings.recovery_epochs, lr=training.lr_full,
                          teacher_logits=teacher, log=log)  # fmt: skip
        score = accuracy(predict(model, test.texts, encoder), test.labels)
        log(f"  test accuracy {score:.4f} ({100 * (score - base_accuracy):+.2f} pt)")
        variants[point.name] = model.eval()
        rows.append({
            "point": point.name, "channels_kept": model.config.intermediate, "heads_kept": model.config.heads,
            "parameters": model.parameter_count(), "accuracy": score,
            "accuracy_loss_pts": 100 * (base_accuracy - score), "recovery_seconds": round(seconds, 3),
        })  # fmt: skip
    texts = list(test.texts)
    encoded = encoder([texts[i % len(texts)] for i in range(settings.batch)])
    log(f"timing {len(variants)} models at batch {settings.batch}, {settings.repeats} interleaved repetitions")
    latency = median_latencies(variants, (encoded.input_ids, encoded.attention_mask), settings.repeats)
    for row in rows:
        row["latency_ms"] = 1000 * latency[row["point"]]
        row["latency_reduction"] = 1 - latency[row["point"]] / latency["full"]
        row["meets_seed_row"] = (
            row["latency_reduction"] >= SEED_ROW["latency_reduction"]
            and row["accuracy_loss_pts"] <= SEED_ROW["max_accuracy_loss_pts"]
        )
    return {
        "version": folder.name,
        "model_card_test_accuracy": card.metrics.get("test_accuracy"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()}
        | {"points": [p.name for p in settings.points]},
        "threads": torch.get_num_threads(),
        "machine": machine.describe(),
        "test_queries": len(test.texts),
        "full": {"parameters": full.parameter_count(), "accuracy": base_accuracy, "latency_ms": 1000 * latency["full"]},
        "curve": rows,
        "seed_row": SEED_ROW | {"met": any(row["meets_seed_row"] for row in rows)},
    }


def render(report: dict[str, Any]) -> str:
    full = report["full"]
    lines = [
        f"structured pruning, version {report['version']}: batch {report['settings']['batch']}, "
        f"{report['threads']} threads, {report['test_queries']} test queries, recovery "
        f"{report['settings']['recovery_epochs']:g} epochs"
        f"{', distilled from the unpruned model' if report['settings'].get('distill') else ''}",
        f"{'model':32} {'params':>7} {'latency':>9} {'vs full':>8} {'accuracy':>9} {'loss':>8}",
        f"{'full':32} {full['parameters'] / 1e6:6.1f}M {full['latency_ms']:7.1f}ms {'':>8} "
        f"{100 * full['accuracy']:8.2f}%",
    ]
    for row in report["curve"]:
        lines.append(
            f"{row['point']:32} {row['parameters'] / 1e6:6.1f}M {row['latency_ms']:7.1f}ms "
            f"{-100 * row['latency_reduction']:+7.1f}% {100 * row['accuracy']:8.2f}% {row['accuracy_loss_pts']:+6.2f}pt"
        )
    seed = report["seed_row"]
    lines.append(
        f"the seed's row (>= {100 * seed['latency_reduction']:.0f}% lower latency at <= "
        f"{seed['max_accuracy_loss_pts']} pt): {'met' if seed['met'] else 'missed'}"
    )
    return "\n".join(lines)
