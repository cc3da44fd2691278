"""INT8 inference: dynamic quantization of the Linear layers on CPU, int8 weight-only on CUDA.

On CPU two backends: ONNX Runtime's quantized kernels (the default, `model_service.onnx_int8`:
measured faster here), and `torch.ao.quantization.quantize_dynamic` with the x86/fbgemm engine set
explicitly (the default engine varies by build, and the wrong one is much slower), kept so the
benchmark can show the two side by side. Measured here, torchao's int8 path ran 10-40x slower
than FP32 on CPU, so it is not used there. Embeddings stay FP32: they are
the largest tensor but a lookup, not a matmul. On CUDA, torchao's int8 weight-only quantization
where it is installed; otherwise a clear refusal naming what is missing, never a silent FP32 run.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
from torch import nn

__all__ = ["QuantizationUnavailableError", "quantize_int8"]

_CPU_ENGINES = ("x86", "fbgemm")

CpuBackend = Literal["onnxruntime", "torch"]


class QuantizationUnavailableError(RuntimeError):
    """INT8 was asked for on a stack that cannot provide it; the message says what is missing."""


def _cpu_engine() -> str:
    supported = torch.backends.quantized.supported_engines
    for engine in _CPU_ENGINES:
        if engine in supported:
            return engine
    raise QuantizationUnavailableError(
        f"this torch build has no x86/fbgemm quantized engine (it has: {', '.join(supported)}); "
        "INT8 on CPU needs an x86-64 build of torch"
    )


def quantize_int8(
    model: nn.Module, *, device: str = "cpu", backend: CpuBackend = "onnxruntime", key: str = ""
) -> nn.Module:
    """An INT8 copy of `model` (in eval mode) for `device`; the original is left untouched.

    `backend` chooses the CPU path; `key` (the weights' sha256) lets the ONNX Runtime path reuse
    a graph it built before."""
    if device == "cpu" and backend == "onnxruntime":
        try:
            from model_service import onnx_int8
        except ImportError as exc:
            raise QuantizationUnavailableError(
                f"INT8 on CPU runs in ONNX Runtime: pip install 'peakguard[model]' ({exc})"
            ) from None
        # No copy: the export traces in eval mode and leaves the model as it was (torch.onnx's default).
        return onnx_int8.build(model, key=key)
    if backend not in ("onnxruntime", "torch"):
        raise QuantizationUnavailableError(f"no INT8 backend {backend!r}; use onnxruntime or torch")
    model = copy.deepcopy(model).eval()
    if device == "cpu":
        torch.backends.quantized.engine = _cpu_engine()
        with warnings.catch_warnings():
            # torch 2.13 marks eager-mode quantization deprecated in favour of torchao, whose CPU
            # int8 path is far slower here; the API still works and is the right tool on CPU.
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    if device.startswith("cuda"):
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_  # type: ignore[import-not-found]
        except ImportError as exc:
            raise QuantizationUnavailableError(
                f"INT8 on {device} needs torchao's int8 weight-only quantization: pip install torchao "
                f"matching torch {torch.__version__} ({exc})"
            ) from None
        model = model.to(device)
        quantize_(model, Int8WeightOnlyConfig())
        return model
    raise QuantizationUnavailableError(f"no INT8 path for device {device!r}; use cpu or cuda")
