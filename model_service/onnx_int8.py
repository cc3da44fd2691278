"""INT8 on CPU through ONNX Runtime: the classifier exported to ONNX, its MatMuls quantized
dynamically (weights INT8 per output channel, activations per batch), run in an ORT session.

Why not torch's own dynamic quantization (still available as `backend="torch"`): on this AVX2
machine ORT's u8s8 GEMMs ran the experts' shapes (115 x 384 -> 1536) 2.5x faster than torch's
FP32 GEMM where fbgemm's ran them 1.7x, and the whole full model at batch 32 1.9-2.05x against
torch's 1.55-1.7x (`peakguard bench model` keeps the two side by side). torch stays the training
and GPU path; this is the CPU serving path only, built from the same weights.

The build, measured here on the full model (72M parameters, one thread): export 4 s, quantize
2 s, session 1 s. It is done once per weights file and format and kept in a cache folder
(`PEAKGUARD_INT8_CACHE`, default ~/.cache/peakguard/int8), written atomically; a folder that
cannot be written means building in a temporary one each time, never a failed start.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FORMAT", "OnnxInt8Classifier", "build", "cache_folder", "gemms_as_matmuls", "operator_times"]

log = logging.getLogger("peakguard.onnx_int8")

FORMAT = "1"
"""Part of the cache key: change it when the export, the rewrite or the quantization changes."""

_OPSET = 17


def cache_folder() -> Path:
    return Path(os.environ.get("PEAKGUARD_INT8_CACHE") or Path.home() / ".cache" / "peakguard" / "int8")


def _export(model: nn.Module, path: Path) -> None:
    ids = torch.ones(2, 8, dtype=torch.long)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0  # padding in the example, so the traced graph keeps the masked paths
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which cannot yet trace
        # the MoE's data-dependent token counts; this one records them as NonZero and Gather.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, mask),
            str(path),
            dynamo=False,
            opset_version=_OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
            },
        )


def gemms_as_matmuls(graph: object) -> int:
    """Rewrite `Gemm(x, W, b, transB=1)` with a constant W as `MatMul(x, W^T) + b`; returns how many.

    The exporter writes a Linear on 2-D input (every expert, the router, the head) as Gemm, and
    shares identical weights through an Identity node. ORT's dynamic quantization quantizes a Gemm
    whose weight is an initializer, but skips one fed by an Identity, and upcycled experts start as
    identical copies (the drill's quick models still are). Measured on the quick full model with
    only the experts' `up` weights made distinct: without this rewrite 42 of 127 GEMMs stayed FP32
    and INT8 ran 1.56x FP32, with it 1.87x. The rewrite follows each Identity to its initializer."""
    from onnx import helper, numpy_helper

    initializers = {tensor.name: tensor for tensor in graph.initializer}  # type: ignore[attr-defined]
    alias = {
        node.output[0]: node.input[0]
        for node in graph.node  # type: ignore[attr-defined]
        if node.op_type == "Identity" and node.input[0] in initializers
    }
    nodes, rewritten = [], 0
    for node in graph.node:  # type: ignore[attr-defined]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = alias.get(node.input[1], node.input[1]) if node.op_type == "Gemm" else ""
        plain = attributes.get("transA", 0) == 0 and attributes.get("alpha", 1.0) == attributes.get("beta", 1.0) == 1.0
        if not (weight in initializers and attributes.get("transB", 0) == 1 and plain):
            nodes.append(node)
            continue
        transposed = f"{weight}_transposed"
        if transposed not in initializers:
            array = np.ascontiguousarray(numpy_helper.to_array(initializers[weight]).T)
            initializers[transposed] = numpy_helper.from_array(array, transposed)
            graph.initializer.append(initializers[transposed])  # type: ignore[attr-defined]
        output = node.output[0]
        if len(node.input) > 2:
            product = f"{output}_product"
            nodes.append(helper.make_node("MatMul", [node.input[0], transposed], [product], name=f"{node.name}_matmul"))
            nodes.append(helper.make_node("Add", [product, node.input[2]], [output], name=f"{node.name}_bias"))
        else:
            nodes.append(helper.make_node("MatMul", [node.input[0], transposed], [output], name=f"{node.name}_matmul"))
        rewritten += 1
    del graph.node[:]  # type: ignore[attr-defined]
    graph.node.extend(nodes)  # type: ignore[attr-defined]
    used = {name for node in graph.node for name in node.input}  # type: ignore[attr-defined]
    kept = [tensor for tensor in graph.initializer if tensor.name in used]  # type: ignore[attr-defined]
    del graph.initializer[:]  # type: ignore[attr-defined]
    graph.initializer.extend(kept)  # type: ignore[attr-defined]
    return rewritten


def _quantize(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    gemms_as_matmuls(model.graph)
    # MatMuls only: embeddings stay FP32 (a lookup, not a GEMM), as on the torch path. Per-channel
    # weights: per-tensor scales cost the quick full model 3 of 32 answers on one batch, per-channel none.
    quantize_dynamic(
        model,  # in memory: the rewritten graph is not written out and read back
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul"],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _build_into(model: nn.Module, target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="peakguard-int8-") as scratch:
        exported = Path(scratch) / "model.onnx"
        _export(model, exported)
        quantized = Path(scratch) / "model.int8.onnx"
        _quantize(exported, quantized)
        os.replace(quantized, target)


def build(model: nn.Module, *, key: str = "", threads: int | None = None) -> OnnxInt8Classifier:
    """The INT8 ORT session for `model` on CPU (traced in eval mode; the model keeps its own mode). With
    `key` (the weights' sha256) the quantized graph is cached under `cache_folder()`; without it,
    built in a temporary folder."""
    started = time.perf_counter()
    if key:
        folder = cache_folder()
        import onnxruntime

        path = folder / f"{key}-f{FORMAT}-torch{torch.__version__}-ort{onnxruntime.__version__}.int8.onnx"
        if path.is_file():
            return OnnxInt8Classifier(path, threads=threads)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkstemp(prefix=".building-", suffix=".onnx", dir=folder)[1])
        except OSError as exc:
            log.warning("INT8 cache %s is not writable (%s); building in a temporary folder", folder, exc)
        else:
            try:
                _build_into(model, staging)
                os.replace(staging, path)  # atomic: a concurrent reader sees the whole file or none
            finally:
                staging.unlink(missing_ok=True)
            log.info("built INT8 graph %s in %.1f s", path.name, time.perf_counter() - started)
            return OnnxInt8Classifier(path, threads=threads)
    with tempfile.TemporaryDirectory(prefix="peakguard-int8-") as scratch:
        path = Path(scratch) / "model.int8.onnx"
        _build_into(model, path)
        classifier = OnnxInt8Classifier(path, threads=threads)  # the session holds the graph in memory
    log.info("built INT8 graph (uncached) in %.1f s", time.perf_counter() - started)
    return classifier


class OnnxInt8Classifier(nn.Module):
    """An ORT session behind the classifier's call signature: token ids and mask in, logits out."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = path
        self.threads = threads or torch.get_num_threads()
        self._session = ort.InferenceSession(str(path), _options(self.threads), providers=["CPUExecutionProvider"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        (logits,) = self._session.run(["logits"], _feed(input_ids, attention_mask))
        return torch.from_numpy(logits)


def operator_times(
    classifier: OnnxInt8Classifier, input_ids: torch.Tensor, attention_mask: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Milliseconds per forward by ONNX operator type (ORT's own profiler, kernel time), most first.

    A second session with profiling on, over the same graph and threads (profiling the serving
    session would write a trace of every batch it ever runs); its first run is the warm-up and
    is left out."""
    import json

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="peakguard-ort-profile-") as scratch:
        options = _options(classifier.threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        session = ort.InferenceSession(str(classifier.path), options, providers=["CPUExecutionProvider"])
        feed = _feed(input_ids, attention_mask)
        for _ in range(repeats + 1):
            session.run(["logits"], feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    warmed = runs[0][1] if runs else 0
    spent: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= warmed:
            op = event["args"]["op_name"]
            spent[op] = spent.get(op, 0.0) + event["dur"]
    return {op: round(us / 1000 / repeats, 3) for op, us in sorted(spent.items(), key=lambda kv: -kv[1])}


def _options(threads: int) -> Any:  # an onnxruntime.SessionOptions (the package has no type stubs)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ORT's workers spin between runs by default: on a serving process they would take the core
    # from the event loop and from the FP32 model's threads (measured: torch's FP32 forward 40%
    # slower beside a spinning idle session).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _feed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
    return {
        "input_ids": input_ids.cpu().to(torch.long).numpy(),
        "attention_mask": attention_mask.cpu().to(torch.long).numpy(),
    }
