"""The machine a figure was measured on, as far as it decides the figure.

INT8's gain over FP32 is set by the CPU's integer dot-product instructions more than by our code:
on AVX2 without VNNI the u8s8 GEMM multiplies in 16-bit pairs (and saturates, hence
`reduce_range`), with AVX-512 VNNI or AMX it runs native 8-bit dot products. The team's machines
have been both (an AVX2 Xeon, then an AVX-512 VNNI EPYC), so a ratio is only read beside the
instruction sets it ran on.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["INT8_INSTRUCTION_SETS", "describe", "summary"]

INT8_INSTRUCTION_SETS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
"""The `/proc/cpuinfo` flags that decide which INT8 GEMM kernels ORT and fbgemm can pick (x86's
`flags`; on Arm, such as Graviton, the dot-product and int8-matmul `Features`)."""


def _cpuinfo(path: Path) -> tuple[str, set[str]]:
    try:
        text = path.read_text()
    except OSError:
        return platform.processor() or "unknown", set()
    model, flags = "unknown", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def describe(*, cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPUs this process may use, the CPU's model and INT8 instruction sets, torch's kernel level
    and the library versions that run the models."""
    model, flags = _cpuinfo(cpuinfo)
    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "int8_instruction_sets": [name for name in INT8_INSTRUCTION_SETS if name in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # What a GPU pool's capacity plan matches a bench against: a CPU figure says nothing of an H100.
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "processor": platform.machine(),
    }


def summary(machine: dict[str, Any]) -> str:
    """One line for a report's header: `2 CPUs (AMD EPYC; INT8: avx2 avx512_vnni), torch 2.13.0+cpu,
    2 model threads`. Reports written before the CPU was recorded say so."""
    if "cpu_model" in machine:
        sets = " ".join(machine["int8_instruction_sets"]) or "none of " + " ".join(INT8_INSTRUCTION_SETS)
        cpu = f" ({machine['cpu_model']}; INT8 instructions: {sets})"
    else:
        cpu = " (CPU model and instructions not recorded)"
    return f"{machine['cpus']} CPUs{cpu}, torch {machine['torch']}, {machine['torch_threads']} model threads"
