"""Where one batch's time goes, for the next person who changes the model: per part of every block
(attention, the MoE's gating, its dispatch and its expert GEMMs, the rest: norms and residuals),
the tokenizer, the head and the embeddings, and per operator; FP32 and INT8 side by side, on the
same batch of real queries.

Parts are timed with forward hooks on the model's own modules (the runtime's layer histogram does
the same), as medians over repetitions. The MoE's dispatch is what its forward spends outside the
router and the experts (sorting slots by expert, gathering, `index_add_`). Hooks cost Python time
per call; the report gives the unhooked forward beside the hooked one, so that cost is visible.
Operators come from `torch.profiler` over the same forwards, by their own (self) CPU time.

INT8 by parts is torch's dynamic quantization (hooks need torch modules); the INT8 the service
runs on CPU is ONNX Runtime's (`model_service.onnx_int8`), given beside it whole and by ONNX
operator type from ORT's own profiler.

The server under load (event loop, JSON, admission, batcher, model thread) is not profiled here.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_service import machine, onnx_int8
from model_service.artifacts import ArtifactError, load_model, newest_version
from model_service.classifier import IntentClassifier
from model_service.load_generator import query_texts
from model_service.moe import MixtureOfExperts
from model_service.pretrained import TextEncoder
from model_service.quantization import quantize_int8

__all__ = ["ProfileSettings", "render", "run"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class ProfileSettings:
    artifacts: Path
    """An artifact root (`peakguard train --out`)."""
    version: str = ""
    """The version folder (default: the newest)."""
    model: str = "full"
    batch: int = 32
    repeats: int = 20
    """Timed forwards per precision (after one warm-up)."""
    data: Path | None = None
    """A folder with banking77/ for real query texts; default: the load generator's sample queries."""
    top_ops: int = 12

    def __post_init__(self) -> None:
        if self.batch < 1 or self.repeats < 1 or self.top_ops < 1:
            raise ValueError(
                f"batch, repeats and top_ops must be at least 1 (got {self.batch}, {self.repeats}, {self.top_ops})"
            )


def run(settings: ProfileSettings, *, log: Log = print) -> dict[str, Any]:
    """The profile, JSON-able: the tokenizer's time for the batch, then per precision the forward's
    median with and without hooks, each part's median and share, and the top operators."""
    root = settings.artifacts
    if not root.is_dir():
        raise ArtifactError(f"--artifacts {root} is not a folder of model versions (peakguard train --out)")
    version = settings.version or newest_version(root)
    model, card = load_model(root / version, settings.model)
    texts = query_texts(settings.data)
    batch_texts = [texts[i % len(texts)] for i in range(settings.batch)]
    encoder = TextEncoder()
    tokenizer_s = _median(lambda: encoder(batch_texts), settings.repeats)
    encoded = encoder(batch_texts)
    ids, mask = encoded.input_ids, encoded.attention_mask
    log(f"{settings.model} model {version}: batch {settings.batch} x {ids.shape[1]} tokens, {settings.repeats} repeats")
    precisions: dict[str, Any] = {}
    variants: list[tuple[str, nn.Module]] = [("fp32", model.eval()), ("int8", quantize_int8(model, backend="torch"))]
    for precision, module in variants:
        with torch.inference_mode():
            module(ids, mask)  # warm-up: first calls allocate and pick kernels
            plain = _median(partial(module, ids, mask), settings.repeats)
            parts, hooked = _parts(module, ids, mask, settings.repeats)
            ops = _operators(module, ids, mask, settings.repeats, settings.top_ops)
        precisions[precision] = {
            "forward_ms": round(plain * 1000, 3),
            "forward_hooked_ms": round(hooked * 1000, 3),
            "parts_ms": {name: round(seconds * 1000, 3) for name, seconds in parts.items()},
            "parts_share": {name: round(seconds / hooked, 4) if hooked else None for name, seconds in parts.items()},
            "top_operators": ops,
        }
        log(f"{precision}: forward {plain * 1000:.2f} ms ({hooked * 1000:.2f} ms with hooks)")
    served = onnx_int8.build(model, key=card.weights_sha256)
    with torch.inference_mode():
        served(ids, mask)
        served_s = _median(partial(served, ids, mask), settings.repeats)
    operators = onnx_int8.operator_times(served, ids, mask, settings.repeats)
    log(f"int8 (onnxruntime, served): forward {served_s * 1000:.2f} ms")
    return {
        "model": settings.model,
        "version": version,
        "parameters": card.parameters,
        "batch": settings.batch,
        "tokens": int(ids.shape[1]),
        "repeats": settings.repeats,
        "threads": torch.get_num_threads(),
        "machine": machine.describe(),
        "tokenizer_ms": round(tokenizer_s * 1000, 3),
        "precisions": precisions,
        "int8_onnxruntime": {
            "forward_ms": round(served_s * 1000, 3),
            "operators_ms": dict(list(operators.items())[: settings.top_ops]),
        },
    }


def _median(call: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _labels(module: nn.Module) -> dict[nn.Module, str]:
    """The modules timed, by the part they are: each block's attention, its MoE (or dense feed-forward),
    the MoE's router and experts, the block itself; the head."""
    if not isinstance(module, IntentClassifier):
        raise ArtifactError(f"cannot profile a {type(module).__name__}: expected an IntentClassifier")
    labels: dict[nn.Module, str] = {module.head: "head"}
    for index, block in enumerate(module.block_list):
        prefix = f"block{index}"
        labels[block] = f"{prefix}.block"
        labels[block.attention] = f"{prefix}.attention"
        labels[block.feed_forward] = f"{prefix}.feed_forward"
        if isinstance(block.feed_forward, MixtureOfExperts):
            labels[block.feed_forward.router] = f"{prefix}.gating"
            for expert in block.feed_forward.experts:
                labels[expert] = f"{prefix}.experts"
    return labels


def _parts(module: nn.Module, ids: torch.Tensor, mask: torch.Tensor, repeats: int) -> tuple[dict[str, float], float]:
    """Median seconds per part over `repeats` hooked forwards, and the hooked forward's median.
    Nested parts are made exclusive: a block's `rest` is the block minus its attention and
    feed-forward; an MoE's `dispatch` is the MoE minus its gating and experts; `embeddings and
    other` is the forward minus the blocks and the head."""
    labels = _labels(module)
    started: dict[nn.Module, float] = {}
    spent: dict[str, float] = defaultdict(float)

    def before(part: nn.Module, _inputs: object) -> None:
        started[part] = time.perf_counter()

    def after(part: nn.Module, _inputs: object, _output: object) -> None:
        spent[labels[part]] += time.perf_counter() - started.pop(part)

    handles = []
    for part in labels:
        handles.append(part.register_forward_pre_hook(before))
        handles.append(part.register_forward_hook(after))
    samples: list[dict[str, float]] = []
    totals: list[float] = []
    try:
        for _ in range(repeats):
            spent.clear()
            began = time.perf_counter()
            module(ids, mask)
            totals.append(time.perf_counter() - began)
            samples.append(_exclusive(dict(spent), totals[-1]))
    finally:
        for handle in handles:
            handle.remove()
    names = list(samples[0])
    return {name: statistics.median(sample[name] for sample in samples) for name in names}, statistics.median(totals)


def _exclusive(spent: dict[str, float], total: float) -> dict[str, float]:
    """Inclusive module times -> exclusive parts that add up to the forward."""
    parts: dict[str, float] = {}
    blocks = sorted({name.split(".")[0] for name in spent if name.startswith("block")}, key=lambda b: int(b[5:]))
    for block in blocks:
        attention = spent.get(f"{block}.attention", 0.0)
        feed_forward = spent.get(f"{block}.feed_forward", 0.0)
        parts[f"{block}.attention"] = attention
        if f"{block}.gating" in spent:
            gating, experts = spent[f"{block}.gating"], spent.get(f"{block}.experts", 0.0)
            parts[f"{block}.gating"] = gating
            parts[f"{block}.dispatch"] = max(0.0, feed_forward - gating - experts)
            parts[f"{block}.experts"] = experts
        else:
            parts[f"{block}.feed_forward"] = feed_forward
        parts[f"{block}.rest"] = max(0.0, spent.get(f"{block}.block", 0.0) - attention - feed_forward)
    parts["head"] = spent.get("head", 0.0)
    in_blocks = sum(spent.get(f"{block}.block", 0.0) for block in blocks)
    parts["embeddings and other"] = max(0.0, total - in_blocks - parts["head"])
    return parts


def _operators(
    module: nn.Module, ids: torch.Tensor, mask: torch.Tensor, repeats: int, top: int
) -> list[dict[str, Any]]:
    """The operators that spend the most of their own CPU time over `repeats` forwards."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            module(ids, mask)
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    return [
        {
            "operator": event.key,
            "calls_per_forward": round(event.count / repeats, 1),
            "self_ms_per_forward": round(event.self_cpu_time_total / 1000 / repeats, 3),
            "self_share": round(event.self_cpu_time_total / total, 4),
        }
        for event in events[:top]
    ]


def render(report: dict[str, Any]) -> str:
    """Parts side by side (FP32 | INT8), then each precision's top operators."""
    fp32, int8 = report["precisions"]["fp32"], report["precisions"]["int8"]
    served = report["int8_onnxruntime"]
    lines = [
        f"{report['model']} model {report['version']} ({report['parameters']:,} parameters), batch {report['batch']} x "
        f"{report['tokens']} tokens, {report['threads']} threads, medians of {report['repeats']}",
        f"tokenizer (the batch's {report['batch']} texts): {report['tokenizer_ms']:.2f} ms",
        f"forward: FP32 {fp32['forward_ms']:.2f} ms, INT8 (torch) {int8['forward_ms']:.2f} ms "
        f"(with the profile's hooks: {fp32['forward_hooked_ms']:.2f} / {int8['forward_hooked_ms']:.2f} ms), "
        f"INT8 (onnxruntime, served) {served['forward_ms']:.2f} ms",
        f"{'part':24} {'FP32 ms':>9} {'share':>6}   {'INT8 ms':>9} {'share':>6}",
    ]
    for name, seconds in fp32["parts_ms"].items():
        other = int8["parts_ms"].get(name)
        lines.append(
            f"{name:24} {seconds:9.3f} {fp32['parts_share'][name]:6.1%}   "
            + ("-" if other is None else f"{other:9.3f} {int8['parts_share'][name]:6.1%}")
        )
    for precision in ("fp32", "int8"):
        lines.append(f"top operators, {precision.upper()} (own CPU time per forward):")
        for op in report["precisions"][precision]["top_operators"]:
            lines.append(
                f"  {op['operator']:50} {op['self_ms_per_forward']:9.3f} ms {op['self_share']:6.1%}  "
                f"x{op['calls_per_forward']:g}"
            )
    lines.append("INT8 in onnxruntime (served on CPU), kernel time per forward by operator type:")
    for op, ms in served["operators_ms"].items():
        lines.append(f"  {op:50} {ms:9.3f} ms {ms / served['forward_ms']:6.1%}")
    return "\n".join(lines)
