"""JSON reports (benchmarks, load runs), written so a half-written file is never left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_json"]


def write_json(report: dict[str, Any], path: Path) -> None:
    """Atomically: a half-written report is never left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(partial, path)
