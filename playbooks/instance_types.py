"""Render `project/vars/instance_types.yml`, the playbooks' copy of `infra.facts.INSTANCE_TYPES`.

Regenerate after changing the instance table in `infra/facts.py`:

    .venv/bin/python -m playbooks.instance_types          # rewrite the file
    .venv/bin/python -m playbooks.instance_types --check  # exit 1 if it is stale (what the test runs)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from infra.facts import INSTANCE_TYPES

__all__ = ["VARS_FILE", "instance_types", "main", "render"]

VARS_FILE = Path(__file__).resolve().parent / "project" / "vars" / "instance_types.yml"
"""Where the playbooks read it from (`vars_files` of every play)."""

REGENERATE = ".venv/bin/python -m playbooks.instance_types"

_HEADER = f"""\
---
# Generated from infra/facts.py by `{REGENERATE}`: do not edit by hand.
# Per EFA-capable GPU instance type: GPUs, EFA interfaces (one per network card, as the launch
# templates attach them), NVMe instance-store devices (striped into one RAID0 array) and the MIG
# profiles of its GPU (empty: no MIG). A type missing here is refused by the playbooks, not guessed.
"""


def instance_types() -> dict[str, dict[str, Any]]:
    """What a node of each type must show, keyed by instance type, in the table's order."""
    return {
        name: {
            "gpus": t.gpus,
            "gpu_model": t.gpu_model,
            "efa_interfaces": t.efa_interface_count,
            "nvme_volumes": t.nvme_volumes,
            "nvme_volume_gb": t.nvme_volume_gb,
            "mig_profiles": list(t.mig_profiles),
        }
        for name, t in INSTANCE_TYPES.items()
    }


def render() -> str:
    """The vars file's full text."""
    body = yaml.safe_dump(
        {"peakguard_instance_types": instance_types()}, sort_keys=False, default_flow_style=None, width=120
    )
    return _HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m playbooks.instance_types", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from infra/facts.py")
    args = parser.parse_args(argv)
    text = render()
    current = VARS_FILE.read_text() if VARS_FILE.exists() else ""
    if args.check:
        if current != text:
            print(f"{VARS_FILE} is stale against infra/facts.py; regenerate it: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        VARS_FILE.write_text(text)
        print(f"wrote {VARS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
