"""`peakguard runbook list | plan | run | resume`: incident runbooks, planned, approved, journaled."""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runbooks.catalog import RUNBOOKS
from runbooks.engine.spec import REQUIRED, Runbook

__all__ = ["register"]

EXIT_SUCCEEDED, EXIT_ROLLED_BACK, EXIT_REFUSED, EXIT_ROLLBACK_FAILED = 0, 1, 2, 3


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "runbook",
        help="incident runbooks: list, plan, run, resume",
        description=(
            "Run an incident runbook against an environment. `plan` reads live state and prints what "
            "each step would change, changing nothing. `run` shows the plan, asks for approval in prod "
            "(or takes --yes), takes the environment's lock, applies and verifies step by step, and "
            "rolls back everything it did if a verification fails, times out, or the run is cancelled "
            "(Ctrl-C, SIGTERM). Every step is journaled; `resume RUN_ID` continues an interrupted run. "
            'Exit status: 0 succeeded (or "succeeded, manual step pending: <command>" when a step\'s change '
            "is a person's to make, e.g. `pulumi up` where no Pulumi CLI is installed), 1 rolled back or "
            "stopped, 2 refused before acting, "
            "3 rollback incomplete (the journal says what to undo by hand) or failed-forward (a step "
            "that cannot be taken back, such as replaced nodes, had finished: the reason says what stands)."
        ),
    )
    actions = parser.add_subparsers(dest="runbook_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the runbooks and what they do")
    listing.set_defaults(handler=_list)
    for action, text in (("plan", "show what a runbook would change, from live state"),
                         ("run", "plan, approve, then carry out a runbook")):  # fmt: skip
        sub = actions.add_parser(action, help=text, description=text)
        names = sub.add_subparsers(dest="runbook_name", metavar="RUNBOOK", required=True)
        for runbook in RUNBOOKS.values():
            one = names.add_parser(runbook.name, help=runbook.summary, description=runbook.summary)
            _environment_options(one)
            for param in runbook.params:
                required = param.default is REQUIRED
                default = "" if required or param.default is None else f" (default {param.default})"
                one.add_argument(f"--{param.name}", dest=f"param:{param.name}", default=None, required=required,
                                 metavar=param.name.upper().replace("-", "_") if not param.choices else None,
                                 choices=param.choices or None, help=param.help + default)  # fmt: skip
            if action == "run":
                _run_options(one)
            one.set_defaults(handler=_no_traceback(_plan if action == "plan" else _run))
    freeze = actions.add_parser(
        "freeze",
        help="set, show or lift an environment's change freeze (blocks every runbook)",
        description=(
            "The change freeze is set by a person (release week, an investigation) and blocks every "
            "runbook on the environment unless a run gives --override-freeze REASON. It is the SSM "
            "parameter /peakguard/<env>/change-freeze. With --reason: set it; with --lift: lift it; "
            "with neither: show it."
        ),
    )
    freeze.add_argument("--env", required=True, choices=("dev", "staging", "prod"), help="environment")
    freeze.add_argument("--region", default=None, help="AWS region of the env (default: AWS_REGION / profile)")
    what = freeze.add_mutually_exclusive_group()
    what.add_argument("--reason", help="set the freeze, saying why")
    what.add_argument("--lift", action="store_true", help="lift the freeze")
    freeze.add_argument("--operator", default=None, help="who sets it (default: user@host)")
    freeze.set_defaults(handler=_no_traceback(_freeze))
    resume = actions.add_parser("resume", help="continue an interrupted run from its journal")
    resume.add_argument("run_id", help="the run id (the journal's file name without .jsonl)")
    _environment_options(resume)
    resume.add_argument("--override-freeze", metavar="REASON", help="act despite a change freeze (journaled)")
    resume.add_argument("--break-lock", action="store_true", help="take the lock from a runner that is gone")
    resume.set_defaults(handler=_no_traceback(_resume))


def _environment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, choices=("dev", "staging", "prod"), help="environment to act on")
    parser.add_argument("--region", default=None, help="AWS region of the env (default: AWS_REGION / profile)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    parser.add_argument("--kube-url", default=None, help="a Kubernetes API URL instead of a kubeconfig (local drill)")
    parser.add_argument(
        "--journal-dir",
        type=Path,
        default=None,
        help="where run journals go (default: $PEAKGUARD_JOURNAL_DIR or ~/.local/state/peakguard/runs)",
    )
    parser.add_argument("--operator", default=None, help="who is running this (default: user@host)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of traffic each measurement covers")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true", help="approve the plan without asking (prod asks otherwise)")
    parser.add_argument(
        "--plan",
        metavar="DIGEST",
        default=None,
        help="run a plan saved by `plan` (by digest or its first 12 characters), if still current",
    )
    parser.add_argument("--override-freeze", metavar="REASON", help="act despite a change freeze (journaled)")
    parser.add_argument("--break-lock", action="store_true", help="take the lock from a runner that is gone")
    parser.add_argument(
        "--stand-aside",
        action="store_true",
        help="for scheduled runs (the predictive-scale CronJob): a change freeze, the lock held by another runner, "
        "an incident hold or live state that moved since the plan ends this run with exit 0, journaled as refused, "
        "instead of an error",
    )


# --- Handlers --------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    for runbook in RUNBOOKS.values():
        print(f"{runbook.name:18} {runbook.summary}")
        for step in runbook.steps:
            print(f"  - {step.name}: {step.summary}")
    return EXIT_SUCCEEDED


def _plan(args: argparse.Namespace) -> int:
    from runbooks.engine.planning import make_plan
    from runbooks.errors import RunbookError

    runbook = RUNBOOKS[args.runbook_name]
    try:
        context = _context(args, runbook)
        plan = make_plan(runbook, context)
    except RunbookError as exc:
        return _refused(exc)
    _print_plan(plan, runbook)
    saved = _journal_dir(args) / "plans" / f"{plan.digest}.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(plan.to_dict(), indent=2, default=str))
    print(f"\nplan {plan.digest[:12]} saved: {saved}")
    print(f"run it: peakguard runbook run {runbook.name} --env {args.env} --plan {plan.digest[:12]}")
    return EXIT_SUCCEEDED


def _run(args: argparse.Namespace) -> int:
    from runbooks.engine.planning import Plan, make_plan
    from runbooks.errors import (
        ApprovalError,
        FreezeActiveError,
        LiveStateChangedError,
        LockHeldError,
        RunbookError,
        StandAsideError,
    )

    runbook = RUNBOOKS[args.runbook_name]
    journaled = False
    try:
        context = _context(args, runbook)
        if args.plan:
            plan = Plan.from_dict(_saved_plan(args, args.plan))
            if plan.runbook != runbook.name or plan.env != args.env or dict(plan.params) != dict(context.params):
                raise ApprovalError(f"saved plan {plan.digest[:12]} is for other parameters; make a new plan")
        else:
            plan = make_plan(runbook, context)
        _print_plan(plan, runbook)
        approval = _approve(args, runbook, plan)
        engine = _engine(args, runbook, context)
        journaled = True  # from here the engine journals a refusal itself
        outcome = engine.run(plan, approval, override_freeze=args.override_freeze, break_lock=args.break_lock)
    # A scheduled run whose state moved between its plan and its lock (an incident's hold, another
    # runner's change) acts next cycle, on a new plan.
    except (FreezeActiveError, LockHeldError, StandAsideError, LiveStateChangedError) as exc:
        if not args.stand_aside:
            return _refused(exc)
        if not journaled:
            _journal_refusal(args, runbook.name, exc)
        print(f"peakguard runbook: {runbook.name} stood aside this run: {exc}")
        return EXIT_SUCCEEDED
    except RunbookError as exc:
        return _refused(exc)
    status = _summary(outcome)
    if outcome.status in ("succeeded", "succeeded-manual-pending") and runbook.epilogue is not None:
        print("\n" + runbook.epilogue(engine.context))
    return status


def _freeze(args: argparse.Namespace) -> int:
    import boto3

    from runbooks.errors import RunbookError
    from runbooks.ports.aws_clients import BoundedClient
    from runbooks.ports.switches import SsmSwitches

    session = boto3.Session(region_name=args.region) if args.region else boto3.Session()
    switches = SsmSwitches(BoundedClient(session, "ssm"), env=args.env)
    try:
        if args.reason:
            switches.set_freeze(reason=args.reason, by=_operator(args))
        elif args.lift:
            switches.clear_freeze()
        reason = switches.freeze_reason()
    except RunbookError as exc:
        return _refused(exc)
    print(f"{args.env}: frozen: {reason}" if reason else f"{args.env}: not frozen")
    return EXIT_SUCCEEDED


def _resume(args: argparse.Namespace) -> int:
    from runbooks.engine.journal import Journal
    from runbooks.errors import RunbookError

    try:
        journal = Journal.open(_journal_dir(args), args.run_id)
        started = journal.last("run_started")
        if started is None or started["runbook"] not in RUNBOOKS:
            raise RunbookError(f"{journal.path}: not a journal of a known runbook")
        runbook = RUNBOOKS[started["runbook"]]
        if started["env"] != args.env:
            raise RunbookError(f"run {args.run_id} acted on {started['env']}, not {args.env}")
        context = _context(args, runbook, params=started["plan"]["params"])
        outcome = _engine(args, runbook, context).resume(
            journal, override_freeze=args.override_freeze, break_lock=args.break_lock
        )
    except RunbookError as exc:
        return _refused(exc)
    return _summary(outcome)


# --- Pieces ----------------------------------------------------------------------------


def _no_traceback(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """At 3 a.m. a stack trace is noise: say what failed in one line, keep the trace in a file.

    The engine itself catches everything once it has acted (and rolls back); what reaches here
    failed before a run began, or is a defect of ours, which the saved trace lets us fix."""

    @functools.wraps(handler)
    def handle(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except KeyboardInterrupt:
            print("peakguard runbook: interrupted; if a run had begun, its journal says what it did "
                  "(`peakguard runbook resume RUN_ID` finishes it)", file=sys.stderr)  # fmt: skip
            return EXIT_REFUSED
        except Exception as exc:  # noqa: BLE001 (the last line of defence: one line, the trace kept)
            saved = _save_trace(args)
            where = "if a run had begun, its journal says what it did (`peakguard runbook resume RUN_ID`)"
            print(f"peakguard runbook: unexpected {type(exc).__name__}: {exc}\n  the trace is in {saved}; {where}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_REFUSED

    return handle


def _save_trace(args: argparse.Namespace) -> Path | str:
    import tempfile
    import time
    import traceback

    text = traceback.format_exc()
    try:
        folder = _journal_dir(args)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"error-{time.strftime('%Y%m%dT%H%M%S')}.txt"
        path.write_text(text)
        return path
    except OSError:
        handle, name = tempfile.mkstemp(prefix="peakguard-error-", suffix=".txt")
        with open(handle, "w") as file:
            file.write(text)
        return name


def _journal_dir(args: argparse.Namespace) -> Path:
    from runbooks.engine.journal import default_journal_dir

    return Path(args.journal_dir) if args.journal_dir else default_journal_dir()


def _operator(args: argparse.Namespace) -> str:
    return args.operator or f"{getpass.getuser()}@{socket.gethostname()}"


def _context(args: argparse.Namespace, runbook: Runbook, *, params: dict[str, Any] | None = None) -> Any:
    from runbooks.engine.spec import Context

    raw = params if params is not None else {
        key.removeprefix("param:"): value for key, value in vars(args).items()
        if key.startswith("param:") and value is not None
    }  # fmt: skip
    parsed = runbook.parse_params(raw)
    return Context(env=args.env, params=parsed, ports=_ports(args))


def _ports(args: argparse.Namespace) -> Any:
    import boto3

    from runbooks.ports import Ports
    from runbooks.ports.cloud import AwsCloud
    from runbooks.ports.cluster import KubernetesCluster
    from runbooks.ports.node_work import AnsiblePlaybooks
    from runbooks.ports.service import ModelServiceClient

    session = boto3.Session(region_name=args.region) if args.region else boto3.Session()
    cloud = AwsCloud(session, env=args.env)
    targets = cloud.targets()
    if args.kube_url:
        cluster = KubernetesCluster.from_url(args.kube_url)
    elif _in_a_pod(args):
        cluster = KubernetesCluster.in_cluster()
    else:
        cluster = KubernetesCluster.from_kubeconfig(args.kubeconfig, args.context)
    service_target = targets.model_service
    token = ""
    if service_target is not None:
        token = cluster.secret_value(service_target.namespace, service_target.admin_token_secret, "token")
    playbooks = AnsiblePlaybooks(env=targets.env, region=targets.cluster.region)
    return Ports(targets=targets, cluster=cluster, cloud=cloud, service=ModelServiceClient(token=token),
                 window_seconds=args.window, playbooks=playbooks)  # fmt: skip


def _in_a_pod(args: argparse.Namespace) -> bool:
    """In a pod (the predictive-scale CronJob) with no kubeconfig named or found: the pod's own
    service account, as kubectl does."""
    named = args.kubeconfig or args.context or os.environ.get("KUBECONFIG")
    return not named and "KUBERNETES_SERVICE_HOST" in os.environ and not (Path.home() / ".kube" / "config").exists()


def _engine(args: argparse.Namespace, runbook: Runbook, context: Any) -> Any:
    from runbooks.engine.run import Engine

    ports = context.ports
    lock = ports.cluster.lease_lock(env=args.env, namespace=ports.namespace)
    return Engine(runbook=runbook, context=context, journal_dir=_journal_dir(args), lock=lock,
                  freeze=ports.cloud.switches, operator=_operator(args), report=_progress)  # fmt: skip


def _approve(args: argparse.Namespace, runbook: Runbook, plan: Any) -> Any:
    from runbooks.engine.planning import Approval
    from runbooks.errors import ApprovalError

    operator = _operator(args)
    if args.env != "prod" or not runbook.prod_needs_approval:
        return Approval.of(plan, approved_by=operator, how="not required")
    if args.yes:
        return Approval.of(plan, approved_by=operator, how="--yes")
    if not sys.stdin.isatty():
        raise ApprovalError("prod needs approval: run it in a terminal to confirm, or pass --yes")
    answer = input(f"\nApprove plan {plan.digest[:12]} on prod? Type its first 8 characters to confirm: ").strip()
    if answer != plan.digest[:8]:
        raise ApprovalError(f"not approved ({answer!r} is not {plan.digest[:8]}); nothing was changed")
    return Approval.of(plan, approved_by=operator, how="interactive")


def _saved_plan(args: argparse.Namespace, digest: str) -> dict[str, Any]:
    from runbooks.errors import ApprovalError

    folder = _journal_dir(args) / "plans"
    matches = sorted(folder.glob(f"{digest}*.json")) if folder.is_dir() else []
    if len(matches) != 1:
        raise ApprovalError(f"no single saved plan {digest!r} in {folder}; make one with `peakguard runbook plan`")
    raw: dict[str, Any] = json.loads(matches[0].read_text())
    return raw


def _print_plan(plan: Any, runbook: Runbook) -> None:
    print(f"plan {plan.digest[:12]}: {plan.runbook} on {plan.env}, parameters {dict(plan.params)}")
    if plan.basis:
        print(f"  based on: {_short(dict(plan.basis), 400)}")
    for number, step in enumerate(plan.steps, 1):
        change = "no change" if not step.changes else f"{_short(step.before)} -> {_short(step.after)}"
        print(f"  {number}. {step.name}: {step.summary}\n     {change}")
        if runbook.explain is not None:
            for line in runbook.explain(step.name, step.after):
                print(f"     {line}")


def _progress(record: dict[str, Any]) -> None:
    event = record["event"]
    detail = {k: v for k, v in record.items() if k not in ("at", "event", "plan", "approval")}
    if event == "step_note":
        print(f"[{record['at'][11:23]}]   {detail['text']}")
        return
    if event in ("step_verified", "run_verified") and "gate" in detail:
        gate = detail["gate"]
        print(f"[{record['at'][11:23]}] {event} {detail.get('step', '')}: {gate['verdict']} — {gate['reason']}")
        return
    print(f"[{record['at'][11:23]}] {event} {_short(detail, 160)}")


def _summary(outcome: Any) -> int:
    rollback = "" if outcome.rollback_seconds is None else f", rolled back in {outcome.rollback_seconds:.1f} s"
    if outcome.status == "succeeded-manual-pending":
        # Not a plain "succeeded": the change is not made until someone runs these.
        headline = "succeeded, manual step pending: " + "; ".join(outcome.pending)
    else:
        headline = f"{outcome.status}: {outcome.reason}"
    print(f"\n{headline}\n  took {outcome.seconds:.1f} s{rollback}; journal {outcome.journal}")
    return {
        "succeeded": EXIT_SUCCEEDED,
        "succeeded-manual-pending": EXIT_SUCCEEDED,
        "rolled-back": EXIT_ROLLED_BACK,
        "stopped": EXIT_ROLLED_BACK,
    }.get(outcome.status, EXIT_ROLLBACK_FAILED)


def _journal_refusal(args: argparse.Namespace, runbook: str, exc: Exception) -> None:
    """A journal of one record for a run refused before the engine had one: the cycle a scheduled
    runbook stood aside is on record like any other."""
    from runbooks.engine.journal import Journal, new_run_id

    journal = Journal.create(_journal_dir(args), new_run_id(args.env, runbook))
    journal.write("run_refused", runbook=runbook, env=args.env, reason=str(exc), stood_aside=True)


def _refused(exc: Exception) -> int:
    print(f"peakguard runbook: {exc}", file=sys.stderr)
    return EXIT_REFUSED


def _short(value: Any, limit: int = 110) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
