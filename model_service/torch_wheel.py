"""Refuse, before installing, a torch that would arrive as the multi-GB CUDA build.

`python -m model_service.torch_wheel` asks pip which torch build `torch==<pin>` resolves to (a
dry run, nothing installed) and exits 1 with the fix if pip would pull NVIDIA's CUDA packages on
a machine that has no use for them. Standard library only: it runs before torch exists. Set
PEAKGUARD_ALLOW_CUDA_TORCH=1 on GPU hosts that want the CUDA build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TORCH_PIN = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def resolve(pin: str = TORCH_PIN) -> list[tuple[str, str]]:
    """(name, version) of everything pip would install for `pin`."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        subprocess.run(  # noqa: S603 (our own interpreter running pip with fixed arguments)
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), pin],
            check=True,
        )  # fmt: skip
        plan = json.loads(report.read_text())
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in plan.get("install", [])]


def cuda_packages(plan: list[tuple[str, str]]) -> list[str]:
    """The NVIDIA CUDA runtime packages in a resolved plan (what makes the CUDA build several GB)."""
    return sorted(f"{name}=={version}" for name, version in plan if name.lower().startswith(("nvidia-", "triton")))


def main() -> int:
    if os.environ.get("PEAKGUARD_ALLOW_CUDA_TORCH") == "1":
        return 0
    extra = cuda_packages(resolve())
    if not extra:
        return 0
    print(
        f"{TORCH_PIN} would install the CUDA build, with {len(extra)} NVIDIA packages of several GB "
        f"({', '.join(extra[:3])}, ...).\nUse the CPU wheels: PIP_EXTRA_INDEX_URL={CPU_INDEX} make setup\n"
        "(or, on a GPU host that wants CUDA: PEAKGUARD_ALLOW_CUDA_TORCH=1 make setup)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
