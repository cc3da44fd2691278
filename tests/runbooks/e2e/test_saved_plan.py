"""`peakguard runbook run --plan DIGEST`: a plan saved by `plan`, run later, in the local environment
of `tests/runbooks/e2e/conftest.py`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from runbooks.engine.planning import APPROVAL_TTL
from tests.runbooks.e2e.conftest import World, _records

# Capacity only, as in test_emergency_stop: nothing is degraded, so no trigger re-check is due.
CAPACITY_ONLY = ("--qps", "10", "--replica-rps", "10", "--model", "full", "--precision", "fp32", "--shedding", "off",
                 "--capacity-timeout", "60")  # fmt: skip


def test_a_saved_plan_is_refused_once_its_approval_expired_and_runs_as_saved_while_in_date(world: World) -> None:
    planned = world.runbook("plan", *CAPACITY_ONLY)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    saved = re.search(r"plan ([0-9a-f]{12}) saved: (\S+)", planned.stdout)
    assert saved is not None, planned.stdout
    short, path = saved.group(1), Path(saved.group(2))
    plan = json.loads(path.read_text())
    assert plan["digest"].startswith(short)

    # The approval runs from when the plan read the live state, not from when the run approves it:
    # a plan saved 16 minutes ago is stale however fresh its approval.
    path.write_text(json.dumps(plan | {"madeAt": time.time() - APPROVAL_TTL - 60}))
    refused = world.runbook("run", *CAPACITY_ONLY, "--plan", short)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "approval expired; make a new plan" in refused.stderr
    assert world.hpa() == {"min": 1, "max": 6}
    assert not list(world.journal_dir.glob("*.jsonl")), "refused before a run journal was written"

    path.write_text(json.dumps(plan))
    done = world.runbook("run", *CAPACITY_ONLY, "--plan", short)
    assert done.returncode == 0, done.stdout + done.stderr
    assert world.hpa() == {"min": 2, "max": 6}
    (started,) = [r for r in _records(world) if r["event"] == "run_started"]
    # The saved plan itself, not a new one made at run time with the same changes.
    assert (started["plan"]["digest"], started["plan"]["madeAt"]) == (plan["digest"], plan["madeAt"])
    assert started["approval"]["expiresAt"] == plan["madeAt"] + APPROVAL_TTL
