"""chaos-drill: run one of the environment's fault experiments and stop it the moment the service
breaks its SLO (the seed's monthly chaos drills, issue 21).

The experiments are AWS Fault Injection Service templates the Pulumi program declares
(`infra/chaos.py`: a zone's GPU instances stopped, a zone's subnets cut off, a third of the model
pods deleted), each with stop conditions on the ALB target group's 5xx and p99 alarms, which FIS
watches itself. This runbook adds the service's own view, the gate every runbook verifies against
(p99 against the SLO, server errors, refusals, from the pods' metrics): it starts the experiment,
reads that gate every window until the experiment ends, and at the first failed reading stops it
(the rollback stops it: FIS then restarts the instances or restores the network ACLs its actions
changed). Readings that cannot judge (no traffic to judge by, FIS not answering) are tolerated for
30 s, then stop it too: a fault nobody can see must not go on.

It refuses to start while the service is outside its SLO (the trigger, checked again just before
the start) or while another experiment of the same template is active, and while its runner lives
it holds the runbook lock for the experiment's length: no other runbook changes the service under
a drill; a real incident during one breaks the gate, which stops the drill and frees the lock. A
runner killed mid-drill lets the lock lapse (30 s) with the fault still running, until FIS's own
alarms stop it or `peakguard runbook resume` takes the drill back.
"""

from __future__ import annotations

import time
from typing import Any

from runbooks.engine.spec import REQUIRED, Context, Ended, Param, Runbook, Step, Watch
from runbooks.errors import RunbookError, TransientError
from runbooks.library.service_gates import ports_of, within_slo, within_slo_of
from runbooks.ports.fault_experiments import RUN_TAG, FaultExperiments

__all__ = ["LIST_RETRIES", "RUNBOOK"]

LIST_RETRIES = 10
"""Seconds a rollback looks again for this run's experiment when FIS does not list it."""
_ENDED_WELL = ("completed",)


def _experiments(context: Context) -> FaultExperiments:
    return ports_of(context).cloud.fault_experiments()


def _template_id(context: Context) -> str:
    """The template the plan pinned (a `pulumi up` that replaced it since must not make a resume start a
    second experiment, or a rollback look for this run's under another id); while planning, the
    targets document's."""
    if pinned := context.basis.get("template"):
        return str(pinned)
    declared = ports_of(context).targets.chaos_experiments
    name = context.params["experiment"]
    if name not in declared:
        known = ", ".join(sorted(declared)) or (
            "none (the stack declares no chaos: set peakguard:kubernetes.modelService.chaos and `pulumi up`)"
        )
        raise RunbookError(f"--experiment {name!r} is not one of this environment's experiments: {known}")
    return declared[name]


def describe(context: Context) -> dict[str, Any]:
    """The plan's basis: the template the drill will run, as FIS holds it."""
    template_id = _template_id(context)
    template = _experiments(context).template(template_id)
    return {
        "experiment": context.params["experiment"],
        "template": template_id,
        "description": template.get("description", ""),
        "actions": sorted(action.get("actionId", "?") for action in template.get("actions", {}).values()),
        "stopConditions": [c.get("value") or c.get("source") for c in template.get("stopConditions", [])],
    }


def _observe(context: Context) -> dict[str, list[str]]:
    """The template's active experiments, whoever started them: a drill starts only onto none."""
    found = _experiments(context).of_template(_template_id(context))
    return {"active": sorted(e.id for e in found if e.active)}


def _desired(context: Context, before: dict[str, list[str]]) -> dict[str, list[str]]:
    if before["active"]:
        raise RunbookError(
            f"experiment(s) {', '.join(before['active'])} of {context.params['experiment']} are already active: "
            "one fault at a time; wait for them to end or stop them (aws fis stop-experiment --id ...)"
        )
    return {"active": ["started by this run"]}


def _start(context: Context, target: Any) -> None:
    experiments, template_id = _experiments(context), _template_id(context)
    if experiments.of_run(template_id, context.run_id):
        return  # a resumed run: its experiment was started already (and is watched again)
    started = experiments.start(template_id, run_id=context.run_id)
    context.note(f"started FIS experiment {started.id} ({started.status}) from template {template_id}")


def _stop(context: Context, before: Any) -> None:
    """Stop every experiment this run started, and wait until FIS says each has ended (it undoes its
    actions while `stopping`: restarting instances can take minutes, hence `--stop-wait`)."""
    experiments, template_id = _experiments(context), _template_id(context)
    found = experiments.of_run(template_id, context.run_id)
    for _ in range(LIST_RETRIES):
        if found:
            break
        # Not listed: none was started (the start failed), or FIS does not list it yet. Look again.
        time.sleep(1.0)
        found = experiments.of_run(template_id, context.run_id)
    if not found:
        context.note(f"no experiment of template {template_id} tagged {RUN_TAG}={context.run_id} in FIS: none started")
    wait = float(context.params["stop-wait"])
    deadline = time.monotonic() + wait
    for experiment in found:
        if not experiment.active:
            continue
        context.note(f"stopping FIS experiment {experiment.id} ({experiment.status})")
        state = experiments.stop(experiment.id)
        while state.active:
            if time.monotonic() >= deadline:
                raise RunbookError(
                    f"FIS experiment {experiment.id} still {state.status} {wait:g} s after it was stopped: FIS is "
                    "still undoing its actions, or cannot; see it in the FIS console, and what its actions changed"
                )
            time.sleep(1.0)
            state = experiments.get(experiment.id)
        context.note(f"FIS experiment {experiment.id} {state.status}")


def _over(context: Context) -> Ended | None:
    found = _experiments(context).of_run(_template_id(context), context.run_id)
    if not found:
        # Counted as a reading that cannot judge: a listing that lags the start is forgiven for a
        # while, an experiment really gone ends the drill after the watch's blind_for.
        raise TransientError("this run's experiment is not listed by FIS")
    experiment = found[0]
    if experiment.active:
        return None
    if experiment.status in _ENDED_WELL:
        return Ended(True, f"experiment {experiment.id} completed")
    why = f": {experiment.reason}" if experiment.reason else ""
    return Ended(False, f"experiment {experiment.id} {experiment.status}{why} (FIS stops one whose stop condition "
                        "alarms)")  # fmt: skip


def _undo(context: Context, before: Any) -> str:
    template_id = _template_id(context)
    return (
        f"FIS experiments of template {template_id} tagged {RUN_TAG}={context.run_id}: stop each still running: "
        f"aws fis list-experiments --experiment-template-id {template_id}, then aws fis stop-experiment --id <id>"
    )


RUNBOOK = Runbook(
    name="chaos-drill",
    summary="run one of the environment's FIS fault experiments; stop it the moment the service breaks its SLO",
    params=(
        Param(
            "experiment",
            "which experiment (the targets document's chaosExperiments; `pulumi up` declares them)",
            default=REQUIRED,
        ),
        Param(
            "timeout",
            "seconds the experiment may run before it is stopped as overdue",
            kind=float,
            default=1800.0,
            minimum=60.0,
            maximum=43_200.0,
        ),
        Param(
            "stop-wait",
            "seconds a rollback waits for FIS to finish undoing a stopped experiment (restarting instances "
            "takes minutes)",
            kind=float,
            default=600.0,
            minimum=10.0,
            maximum=3600.0,
        ),
        Param(
            "tolerate",
            "the SLO the drill holds the service to: normal (1%% refused at most) or degraded (5%%)",
            default="normal",
            choices=("normal", "degraded"),
        ),
    ),
    steps=(
        Step(
            "experiment",
            "start the FIS experiment; watch the service's SLO until it ends, stop it at the first breach",
            _observe,
            _desired,
            _start,
            restore=_stop,
            watch=Watch(within_slo_of("tolerate"), _over, blind_for=30.0),
            timeout="timeout",
            retries=3,
            destructive=True,
            undo=_undo,
        ),
    ),
    trigger=within_slo("normal"),
    health=within_slo("normal"),
    recovery_timeout=300.0,
    basis=describe,
)
