"""emergency-stop end to end, in the local environment of `tests/runbooks/e2e/conftest.py`."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from infra.offline import run_offline
from infra.targets import TargetsDocument, hold_parameter_name, parameter_name
from runbooks.ports.lease_lock import LEASE_NAME
from tests.runbooks.e2e.conftest import NAMESPACE, PROJECT_DIR, World, _records

# --- Cases ------------------------------------------------------------------------------------


def test_plan_shows_every_change_and_changes_nothing(world: World) -> None:
    hpa, sizes, mode = world.hpa(), world.sizes(), world.mode()

    planned = world.runbook("plan", "--qps", "10", "--replica-rps", "10")

    assert planned.returncode == 0, planned.stderr
    # 10 qps / 10 per replica = 1, with 30% headroom 2; one node of 4 GPUs holds them: no new nodes.
    assert '{"max": 6, "min": 1} -> {"max": 6, "min": 2}' in planned.stdout
    assert "gpu-node-groups: raise the full pool's node groups' desired size to fit those replicas\n     no change" in (
        planned.stdout
    )
    assert "mode" in planned.stdout
    assert "plan " in planned.stdout
    assert (world.hpa(), world.sizes(), world.mode(), world.hold()) == (hpa, sizes, mode, None)
    assert not list((world.journal_dir).glob("*.jsonl")), "a plan writes no run journal"


def test_run_raises_capacity_and_holds_pulumi_up(world: World) -> None:
    # Capacity only: the mode stays as it is, so nothing is degraded and no trigger re-check is due.
    done = world.runbook("run", *CAPACITY_ONLY)

    assert done.returncode == 0, done.stdout + done.stderr
    assert world.hpa() == {"min": 2, "max": 6}
    assert len(world.ready_pods()) == 2, "the run waited until the new replica was Ready"
    assert "new replicas Ready: 1 >= 1" in done.stdout
    hold = world.hold()
    assert hold is not None
    assert hold["runbook"] == "emergency-stop"
    journal = next(world.journal_dir.glob("*.jsonl"))
    assert hold["runId"] == journal.stem
    events = [json.loads(line)["event"] for line in journal.read_text().splitlines()]
    assert events[0] == "run_started"
    assert events[-2:] == ["run_finished", "lock_released"]
    assert "step_skipped" in events  # the mode step: already as planned
    assert "succeeded" in done.stdout
    # The Pulumi program now refuses to deploy over it, naming the run.
    with pytest.raises(Exception, match=journal.stem):
        run_offline("dev", project_dir=PROJECT_DIR, ssm_parameters={hold_parameter_name("dev"): json.dumps(hold)})


def test_when_the_incident_is_over_it_stops_before_degrading_and_puts_everything_back(world: World) -> None:
    # The service is healthy (p99 far under its 1 s SLO) and the traffic is a small share of what
    # the fleet carried before the run (40 requests/s against 100): switching to the light model is
    # not justified.
    before = (world.hpa(), world.sizes(), world.mode())
    modes_before = {json.dumps(mode, sort_keys=True) for mode in world.pod_modes()}

    stopped = world.runbook("run", "--qps", "10", "--replica-rps", "100", "--capacity-timeout", "60")

    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "trigger no longer holds before mode" in stopped.stdout
    assert (world.hpa(), world.sizes(), world.mode()) == before
    # The replica added meanwhile stays until the HPA scales down (its 10-minute window); every
    # pod still runs the mode from before.
    assert {json.dumps(mode, sort_keys=True) for mode in world.pod_modes()} == modes_before
    assert world.hold() is None
    journal = next(world.journal_dir.glob("*.jsonl"))
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    (finished,) = [r for r in records if r["event"] == "run_finished"]
    assert finished["status"] == "stopped"
    assert finished["rollback_seconds"] < 30
    restored = [r["step"] for r in records if r["event"] == "rollback_step_done"]
    assert restored == ["hpa-bounds", "incident-hold"]
    print(f"\nemergency-stop stopped and rolled back in {finished['rollback_seconds']:.2f} s")


def test_a_second_runner_is_refused_while_the_lease_is_held(world: World) -> None:
    world.store.create("leases", NAMESPACE, {"metadata": {"name": LEASE_NAME}, "spec": {
        "holderIdentity": "carol@laptop", "leaseDurationSeconds": 300,
        "acquireTime": _now(), "renewTime": _now()}})  # fmt: skip

    refused = world.runbook("run", *CAPACITY_ONLY)

    assert refused.returncode == 2
    assert "held by carol@laptop" in refused.stderr
    assert world.hpa() == {"min": 1, "max": 6}


def test_a_change_freeze_blocks_it_unless_overridden_with_a_reason(world: World) -> None:
    world.ssm().put_parameter(Name="/peakguard/dev/change-freeze", Value="release week", Type="String")
    args = CAPACITY_ONLY

    refused = world.runbook("run", *args)
    assert refused.returncode == 2
    assert "change freeze (release week" in refused.stderr
    assert world.hpa() == {"min": 1, "max": 6}

    done = world.runbook("run", *args, "--override-freeze", "Singles' Day surge, approved by the IC")
    assert done.returncode == 0, done.stdout + done.stderr
    (journal,) = [p for p in world.journal_dir.glob("*.jsonl") if "freeze_overridden" in p.read_text()]
    assert "Singles' Day surge, approved by the IC" in journal.read_text()


def test_prod_without_yes_refuses_when_no_one_can_confirm(world: World) -> None:
    prod = TargetsDocument.from_dict({**world.targets.to_dict(), "env": "prod"})
    world.ssm().put_parameter(Name=parameter_name("prod"), Value=prod.to_json(), Type="String", Overwrite=True)

    refused = world.runbook("run", "--qps", "10", "--replica-rps", "10", env="prod")

    assert refused.returncode == 2
    assert "prod needs approval" in refused.stderr
    assert "--yes" in refused.stderr
    assert world.hpa() == {"min": 1, "max": 6}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


CAPACITY_ONLY = ("--qps", "10", "--replica-rps", "10", "--model", "full", "--precision", "fp32", "--shedding", "off",
                 "--capacity-timeout", "60")  # fmt: skip


def test_a_forbidden_api_call_is_reported_clearly_and_what_was_done_is_rolled_back(world: World) -> None:
    from lab.kube_api import ApiStatus

    world.store.faults[("PATCH", "horizontalpodautoscalers")] = ApiStatus(
        403, "Forbidden", 'horizontalpodautoscalers.autoscaling "model-service-full" is forbidden: User "runner" '
        'cannot patch resource "horizontalpodautoscalers"'
    )  # fmt: skip

    failed = world.runbook("run", *CAPACITY_ONLY)

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "forbidden (403)" in failed.stdout
    skipped = [r for r in _records(world) if r["event"] == "rollback_step_done" and r.get("skipped")]
    assert [r["step"] for r in skipped] == ["hpa-bounds"], "the refused patch changed nothing to restore"
    assert "lacks RBAC" in failed.stdout
    assert world.hold() is None, "the hold set by the first step was rolled back"
    assert world.hpa() == {"min": 1, "max": 6}


def test_when_rollback_itself_fails_the_journal_says_what_to_undo_by_hand(world: World) -> None:
    from lab.kube_api import ApiStatus

    # Once the HPA is raised, new replicas crash and the API starts refusing HPA patches: the
    # capacity never arrives, and restoring the HPA fails too.
    def break_after_hpa(event: str, plural: str, obj: dict[str, Any]) -> None:
        if plural == "horizontalpodautoscalers" and event == "MODIFIED" and obj["spec"]["minReplicas"] == 2:
            world.store.faults[("PATCH", "horizontalpodautoscalers")] = ApiStatus(403, "Forbidden", "RBAC changed")
            world.crash["new pods"] = True

    world.store.listeners.append(break_after_hpa)
    failed = world.runbook("run", *CAPACITY_ONLY[:-1], "6")

    assert failed.returncode == 3, failed.stdout + failed.stderr
    undo = {r["step"]: r["undo"] for r in _records(world) if r["event"] == "rollback_step_failed"}
    # The object, the field and the value, and the command that sets them.
    assert undo["hpa-bounds"] == (
        "hpa-bounds: HorizontalPodAutoscaler peakguard/model-service-full: spec.minReplicas=1 spec.maxReplicas=6: "
        "kubectl -n peakguard patch hpa model-service-full --type merge -p "
        '\'{"spec": {"minReplicas": 1, "maxReplicas": 6}}\''
    )
    assert "rollback incomplete" in failed.stdout
    assert "left to undo by hand: hpa-bounds: HorizontalPodAutoscaler peakguard/model-service-full" in failed.stdout
    assert world.hold() is None, "the other steps were still restored"
    assert world.hpa() == {"min": 2, "max": 6}, "as the journal says: left for a person to undo"


def test_new_replicas_that_really_break_fail_verification_and_everything_rolls_back_within_30_s(
    world: World,
) -> None:
    world.crash["new pods"] = True  # each new replica's process is killed before it is Ready

    failed = world.runbook("run", *CAPACITY_ONLY[:-1], "6")

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "hpa-bounds: verification fail after 6 s: new replicas Ready: 0.5 < 1" in failed.stdout
    records = _records(world)
    (finished,) = [r for r in records if r["event"] == "run_finished"]
    assert finished["status"] == "rolled-back"
    assert finished["rollback_seconds"] < 30
    assert world.hpa() == {"min": 1, "max": 6}
    assert world.hold() is None
    print(f"\nnew replicas crashed; emergency-stop rolled back in {finished['rollback_seconds']:.2f} s")


def test_a_conflict_and_a_blip_of_503s_are_retried_and_the_run_succeeds(world: World) -> None:
    from lab.kube_api import ApiStatus

    conflict = ApiStatus(
        409, "Conflict", 'Operation cannot be fulfilled on horizontalpodautoscalers "model-service-full"'
    )
    world.store.faults[("PATCH", "horizontalpodautoscalers")] = [conflict]
    world.store.faults[("GET", "horizontalpodautoscalers")] = [ApiStatus(503, "ServiceUnavailable", "etcd leader")]

    done = world.runbook("run", *CAPACITY_ONLY)

    assert done.returncode == 0, done.stdout + done.stderr
    assert world.hpa() == {"min": 2, "max": 6}
    assert world.store.faults[("PATCH", "horizontalpodautoscalers")] == [], "the conflict was met and retried"


def test_an_api_that_keeps_answering_503_fails_the_step_with_the_status_and_rolls_back(world: World) -> None:
    from lab.kube_api import ApiStatus

    world.store.faults[("PATCH", "horizontalpodautoscalers")] = ApiStatus(503, "ServiceUnavailable", "etcd leader")

    failed = world.runbook("run", *CAPACITY_ONLY)

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "patch HPA peakguard/model-service-full to min 2 max 6: 503" in failed.stdout
    # The last word is that the runner gave up, not a promise of a retry that never came.
    assert "(gave up after 3 attempts)" in failed.stdout
    assert "retrying" not in failed.stdout
    assert world.hold() is None
    assert world.hpa() == {"min": 1, "max": 6}


def test_the_freeze_command_sets_shows_and_lifts_the_freeze_runbooks_obey(world: World) -> None:
    frozen = world.peakguard("runbook", "freeze", "--env", "dev", "--reason", "release week", "--operator", "dana")
    assert frozen.returncode == 0, frozen.stderr
    assert "dev: frozen: release week (set by dana at" in frozen.stdout

    refused = world.runbook("run", *CAPACITY_ONLY)
    assert refused.returncode == 2
    assert "change freeze (release week" in refused.stderr

    lifted = world.peakguard("runbook", "freeze", "--env", "dev", "--lift")
    assert lifted.returncode == 0, lifted.stderr
    assert "dev: not frozen" in lifted.stdout
    assert world.peakguard("runbook", "freeze", "--env", "dev").stdout.strip() == "dev: not frozen"
