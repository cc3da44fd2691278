"""rolling-upgrade: move each GPU group's nodes to the generation the stack config declared, a
third at most at a time, with a health gate after every batch and the batch rolled back on a
failure.

Blue/green, not EKS's UpdateNodegroupVersion (README, "Rolling upgrades", says why): the new image
is declared first (`peakguard:gpuPools.<pool>.next` in the stack file, then `pulumi up`), which adds
an empty node group of the other generation beside each serving one. This runbook then fills it
and empties the old one, one pool and AZ at a time (`runbooks/nodes/node_upgrade.py`, rule in
`runbooks/nodes/node_batches.py`):

1. surge a batch of new nodes and wait until they are Ready and preflighted (startup taint gone);
2. cordon as many old nodes (marked with this run), drain them through the Eviction API within the
   drain deadline, then the service gate (p99 within the SLO, errors under 1%);
3. remove the drained nodes one by one; next batch.

A failed gate, a drain that reaches its deadline or new nodes that never serve stop the run: the
batch in flight is rolled back (our cordons lifted, its surged nodes drained and removed) and the
service gate must pass again; batches already finished keep their new nodes (they passed their
gates), and a run that fails after the last batch ends `failed-forward`, not `rolled-back`. A longer
drain deadline is an explicit `--drain-timeout`, journaled with the plan. At the end the runbook
prints the stack-config change that makes the new generation the serving one. The incident hold
stands while nodes move, so a `pulumi up` cannot change the groups under the run.

`--to driver-<version>` is the second path, for a change that needs no new node: the NVIDIA driver
of nodes whose driver is the host's (Ubuntu AMIs that ship it; `runbooks/nodes/driver_fleet.py` says
which nodes qualify and refuses the others before anything changes). Each serving group's nodes
are taken out a third at most at a time, changed by `playbooks/project/gpu_driver_upgrade.yml`,
preflighted again and put back, with the same gate (`runbooks/nodes/in_place_upgrade.py`). Groups under
3 nodes are refused: in place they could only lose capacity.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from infra.targets import NodeGroupTarget
from runbooks.engine.spec import Context, Param, Runbook, Step
from runbooks.errors import RunbookError
from runbooks.library.service_gates import ports_of, within_slo
from runbooks.nodes.driver_fleet import DriverFleet, driver_of, refusals
from runbooks.nodes.fleet import GenerationPair, PortsFleet, generation_pairs
from runbooks.nodes.in_place_upgrade import upgrade_in_place
from runbooks.nodes.node_batches import planned_batches
from runbooks.nodes.node_upgrade import RoundLog, upgrade_group
from runbooks.ports.cluster import CORDON_MARK

__all__ = ["RUNBOOK"]

_SERVICE = within_slo("normal")


def _selected(context: Context) -> list[GenerationPair]:
    names = [name.strip() for name in str(context.params["nodegroup"]).split(",") if name.strip()]
    return generation_pairs(ports_of(context).targets, names)


def _capacity_short(context: Context, pools: set[str]) -> str | None:
    """Which Deployments on the pools being moved have fewer Ready pods than they want: replicas
    that never become Ready add no errors and no latency, only missing capacity."""
    ports = ports_of(context)
    service = ports.model_service
    short = []
    for variant, pool in sorted(service.pools.items()):
        if pool not in pools or variant not in service.deployments:
            continue
        wanted, ready = ports.cluster.replicas(service.namespace, service.deployments[variant])
        if ready < wanted:
            short.append(f"{service.deployments[variant]} {ready}/{wanted} Ready")
    return "; ".join(short) or None


def _gate(context: Context, pools: set[str]) -> Callable[[], str | None]:
    """The batch gate: the service within its SLO and every replica on the pools Ready."""

    def gate() -> str | None:
        # Pods evicted by the batch restart elsewhere: give the service its settle time before judging.
        ports = ports_of(context)
        started = time.monotonic()
        while True:
            waited = time.monotonic() - started
            verdict = _SERVICE.judge(context)
            short = _capacity_short(context, pools)
            if verdict.verdict == "pass" and short is None:
                context.note(f"gate passed: {verdict.reason}; every replica Ready")
                return None
            if waited >= float(context.params["gate-timeout"]):
                problem = f"{verdict.verdict}: {verdict.reason}" + (f"; capacity short: {short}" if short else "")
                context.note(f"gate failed after {waited:.0f} s: {problem}")
                return problem
            ports.sleep(RUNBOOK.poll_interval)

    return gate


def _fleet(context: Context, pairs: list[GenerationPair]) -> PortsFleet:
    params = context.params
    return PortsFleet(
        ports_of(context),
        pairs,
        run_id=context.run_id,
        gate=_gate(context, {pair.pool for pair in pairs}),
        drain_seconds=float(params["drain-timeout"]),
        wait_seconds=float(params["node-timeout"]),
        poll_seconds=float(params["poll"]),
        note=context.note,
    )


def _observe(context: Context) -> Any:
    if _driver_version(context) is not None:
        return {"groups": []}  # an in-place change: `upgrade-drivers` does it
    pairs = _selected(context)
    fleet = _fleet(context, pairs)
    groups = []
    for pair in pairs:
        view = fleet.view(pair.key)
        groups.append({
            "group": pair.key,
            "from": pair.serving.name,
            "to": pair.incoming.name,
            "old": [n.name for n in view.old],
            "new": [n.name for n in view.new],
        })  # fmt: skip
    return {"groups": groups}


def _image_matches(image: dict[str, str | None], to: str) -> bool:
    return image.get(_image_key(to)) == to


def _desired(context: Context, before: Any) -> Any:
    to = str(context.params["to"])
    if _driver_version(context) is not None:
        return before
    ports = ports_of(context)
    for pair in _selected(context):
        image = ports.cloud.node_group_image(ports.targets.cluster.name, pair.incoming.name)
        if not _image_matches(image, to):
            declared = image.get(_image_key(to))
            raise RunbookError(
                f"--to {to}: {pair.incoming.name} (the incoming generation of {pair.key}) is declared at "
                f"{declared or 'no pinned image'}. Set `peakguard:gpuPools.{pair.pool}.next` to {to} in "
                f"Pulumi.{context.env}.yaml and run `pulumi up -s {context.env}`, or pass --to {declared}"
            )
    groups = []
    for group in before["groups"]:
        old = group["old"]
        groups.append({
            "group": group["group"],
            "from": group["from"],
            "to": group["to"],
            "nodes": len(old),
            "batches": [list(drained) for _, drained in planned_batches(len(old), old)],
        })  # fmt: skip
    return {"to": to, "groups": groups}


@contextlib.contextmanager
def _holding_pulumi(context: Context, what: str) -> Iterator[None]:
    """The incident hold for as long as nodes move: a `pulumi up` half-way (say, the stack-config
    switch to the new generation applied early) would change the groups under the run. Lifted once
    the move ends, done or stopped with its round rolled back; a run killed mid-move keeps it until
    `resume` finishes the move or its rollback (the step's restore lifts it too)."""
    switches = ports_of(context).cloud.switches
    switches.set_hold(run_id=context.run_id, runbook="rolling-upgrade", reason=what)
    context.note(f"incident hold set: `pulumi up` refuses until {what} is done")
    try:
        yield
    finally:
        _lift_our_hold(context)
        context.note("incident hold lifted")


def _lift_our_hold(context: Context) -> None:
    if context.run_id:
        ports_of(context).cloud.switches.clear_hold(run_id=context.run_id)


def _apply(context: Context, target: Any) -> None:
    pairs = {pair.key: pair for pair in _selected(context)}
    fleet = _fleet(context, list(pairs.values()))
    with _holding_pulumi(context, f"nodes move to {target['to']}"):
        _each_group(
            context,
            fleet,
            target,
            upgrade_group,
            lambda log: (
                f"done in {log.rounds} round(s): {len(log.removed)} old node(s) replaced by {len(log.surged)} new"
            ),
        )


def _each_group(
    context: Context,
    fleet: Any,
    target: Any,
    upgrade: Callable[[str, Any, RoundLog], Any],
    done: Callable[[RoundLog], str],
) -> None:
    """Move the target's groups one after the other, each through `upgrade` (blue/green or in place)."""
    for group in target["groups"]:
        fleet.begin(group["group"])
        log = RoundLog()
        try:
            upgrade(group["group"], fleet, log)
        finally:
            # What an operator changed mid-run, and what the rollback left as they set it.
            for event in log.events:
                context.note(f"{group['group']}: {event}")
        context.note(f"{group['group']}: {done(log)}")


def _restore(context: Context, before: Any) -> None:
    """What a stop leaves to undo: the batch in flight was rolled back by the group's own loop;
    here, any node still carrying this run's cordon (a run killed mid-batch) is uncordoned.
    Finished batches keep their new nodes: they passed their gates."""
    if not context.run_id:
        return
    pairs = _selected(context)
    fleet = _fleet(context, pairs)
    for pair in pairs:
        for node in fleet.nodes(pair.key):
            if node.unschedulable and fleet.marked(node.name):
                fleet.uncordon(node.name)
    _lift_our_hold(context)


# --- In place: the NVIDIA driver ------------------------------------------------------------

_DRIVER = re.compile(r"driver-(\d+\.\d+\.\d+)")
"""All three parts: nodes are compared by what GPU feature discovery and nvidia-smi print (570.133.20)."""


def _driver_version(context: Context) -> str | None:
    """The driver `--to driver-<version>` asks for; None for an AMI release or id."""
    to = str(context.params["to"])
    if not to.startswith("driver"):
        return None
    match = _DRIVER.fullmatch(to)
    if match is None:
        raise RunbookError(f"--to {to}: write a driver as driver-<major.minor.patch>, e.g. driver-570.133.20")
    return match.group(1)


def _serving_groups(context: Context) -> tuple[list[NodeGroupTarget], bool]:
    """The serving GPU node groups `--nodegroup` names (pools or groups), and whether it named any."""
    targets = ports_of(context).targets
    serving = [g for g in targets.node_groups if g.generation is not None and g.serving]
    names = {name.strip() for name in str(context.params["nodegroup"]).split(",") if name.strip()}
    if not names:
        return serving, False
    unknown = sorted(names - {g.pool for g in serving} - {g.name for g in serving})
    if unknown:
        raise RunbookError(
            f"--nodegroup {', '.join(unknown)}: not a GPU pool or serving node group of {targets.env}. "
            f"Serving groups: {', '.join(g.name for g in serving)}"
        )
    return [g for g in serving if {g.pool, g.name} & names], True


def _driver_fleet(context: Context, groups: list[NodeGroupTarget], version: str) -> DriverFleet:
    ports = ports_of(context)
    params = context.params
    return DriverFleet(
        ports,
        groups,
        version=version,
        playbooks=ports.playbooks,
        run_id=context.run_id,
        gate=_gate(context, {group.pool for group in groups}),
        drain_seconds=float(params["drain-timeout"]),
        wait_seconds=float(params["node-timeout"]),
        poll_seconds=float(params["poll"]),
        note=context.note,
    )


def _observe_drivers(context: Context) -> Any:
    version = _driver_version(context)
    if version is None:
        return {"groups": []}  # a new AMI: `move-nodes` does it
    groups, _ = _serving_groups(context)
    fleet = _driver_fleet(context, groups, version)
    groups_seen = []
    for group in groups:
        nodes = fleet.nodes(group.name)
        drivers = {n.name: driver_of(n.labels) or "unknown" for n in nodes}
        seen: dict[str, Any] = {"group": group.name, "drivers": drivers}
        # A rollback compares this with the plan: a cordon left by an interrupted batch must show.
        cordoned = sorted(n.name for n in nodes if n.unschedulable)
        if cordoned:
            seen["cordoned"] = cordoned
        groups_seen.append(seen)
    return {"groups": groups_seen}


def _desired_drivers(context: Context, before: Any) -> Any:
    version = _driver_version(context)
    if version is None:
        return before
    groups, named = _serving_groups(context)
    fleet = _driver_fleet(context, groups, version)
    chosen: list[tuple[NodeGroupTarget, list[str]]] = []
    skipped: list[tuple[NodeGroupTarget, list[str]]] = []
    for group in groups:
        nodes = fleet.nodes(group.name)
        refused = refusals(nodes, version)
        if refused and (named or len(refused) < len(nodes)):
            raise RunbookError(f"--to driver-{version}: {group.name} cannot be changed in place: " + "; ".join(refused))
        (skipped if refused else chosen).append((group, refused))
    if not chosen:
        reasons = "; ".join(refused[0] for _, refused in skipped if refused)
        raise RunbookError(
            f"--to driver-{version}: no serving GPU group of {context.env} has host drivers to change in place "
            f"({reasons or 'no GPU nodes'})"
        )
    planned = []
    for group, _ in chosen:
        drivers = next(g["drivers"] for g in before["groups"] if g["group"] == group.name)
        old = sorted(node for node, running in drivers.items() if running != version)
        if old and len(drivers) < 3:
            raise RunbookError(
                f"{group.name} has {len(drivers)} node(s): a group under 3 changes only by surging, and a driver "
                "change in place would take its capacity down. Bake the driver into an AMI and move the group to it "
                f"(`next: {{amiId: ...}}`, then --to ami-...), or scale the group to 3 nodes first"
            )
        if old:
            planned.append({"group": group.name, "nodes": len(drivers), "from": sorted({drivers[n] for n in old}),
                            "batches": [list(b) for _, b in planned_batches(len(drivers), old)]})  # fmt: skip
    if not planned:
        return before  # every node already runs it
    return {"to": f"driver-{version}", "groups": planned,
            "skipped": [group.name for group, _ in skipped]}  # fmt: skip


def _apply_drivers(context: Context, target: Any) -> None:
    version = _driver_version(context)
    assert version is not None
    groups, _ = _serving_groups(context)
    fleet = _driver_fleet(context, [g for g in groups if g.name in {t["group"] for t in target["groups"]}], version)
    with _holding_pulumi(context, f"nodes move to driver {version}"):
        _each_group(
            context,
            fleet,
            target,
            upgrade_in_place,
            lambda log: f"done in {log.rounds} batch(es): {len(log.changed)} node(s) at driver {version}",
        )


def _restore_drivers(context: Context, before: Any) -> None:
    """A node still carrying this run's own cordon (a run killed mid-batch) is put back if its
    change had not begun, else held; held nodes carry another mark and stay out."""
    version = _driver_version(context)
    if version is None or not context.run_id:
        return
    groups, _ = _serving_groups(context)
    fleet = _driver_fleet(context, groups, version)
    for group in groups:
        fleet.begin(group.name)  # our plain cordons lifted; a node given its startup taint back is held
    _lift_our_hold(context)


def _undo_nodes(context: Context, before: Any) -> str:
    """What a person lifts by hand when a stop could not: this run's own cordons. Finished batches
    keep their new nodes (they passed their gates); a node marked `<run> held: why` stays out until
    someone has looked at it."""
    groups = ", ".join(group["group"] for group in before.get("groups", [])) or "the selected groups"
    run = context.run_id or "<run id>"
    return (
        f"Nodes of {groups}: spec.unschedulable=false on each node whose annotation {CORDON_MARK} is exactly "
        f"{run} (list them: kubectl get nodes -o custom-columns=NAME:.metadata.name,BY:.metadata.annotations."
        f"peakguard\\.io/cordoned-by | grep ' {run}$'; then kubectl uncordon NODE and kubectl annotate node NODE "
        f"{CORDON_MARK}-); nodes marked '{run} held: ...' stay cordoned until their driver or preflight is checked"
    )


def _explain(step: str, target: Any) -> list[str]:
    if step == "upgrade-drivers":
        skipped = target.get("skipped") or []
        lines = [f"skipped (the driver is not the host's): {', '.join(skipped)}"] if skipped else []
        for group in target.get("groups", []):
            lines.append(f"{group['group']}: {group['nodes']} node(s), driver {', '.join(group['from'])} -> "
                         f"{target['to'].removeprefix('driver-')}, in place")  # fmt: skip
            for number, batch in enumerate(group["batches"], 1):
                lines.append(f"  batch {number}: drain, upgrade, preflight and put back {', '.join(batch)}")
        return lines
    lines = []
    for group in target.get("groups", []):
        lines.append(f"{group['group']}: {group['nodes']} node(s) {group['from']} -> {group['to']}")
        for number, batch in enumerate(group["batches"], 1):
            lines.append(f"  batch {number}: surge {len(batch)}, then drain and remove {', '.join(batch)}")
    return lines


def _image_key(to: str) -> str:
    """The stack-config key an image is pinned by: a custom AMI id, or an AL2023 release."""
    return "amiId" if to.startswith("ami-") else "releaseVersion"


def _epilogue(context: Context) -> str:
    """The stack-config change for each pool whose every AZ now runs the new generation; a pool
    with old nodes left somewhere must not be committed yet (`pulumi up` would delete its old
    groups, nodes and all)."""
    to = str(context.params["to"])
    version = _driver_version(context)
    if version is not None:
        return (
            f"Nodes changed in place run driver {version}. Nodes launched from now on (a scale-out, a replacement) "
            "still boot the driver their AMI ships: bake it into the next AMI (`next: {amiId: ...}` in the stack "
            "config, then rolling-upgrade --to ami-...), or run this again after a scale-out."
        )
    ports = ports_of(context)
    every_pair = generation_pairs(ports.targets)
    fleet = _fleet(context, every_pair)
    old = {pair.key: len(fleet.view(pair.key).old) for pair in every_pair}
    done: list[tuple[str, list[str]]] = []
    pending: list[tuple[str, list[str]]] = []
    for pool in sorted({pair.pool for pair in _selected(context)}):
        left = [f"{p.serving.name} ({old[p.key]} node(s))" for p in every_pair if p.pool == pool and old[p.key]]
        (pending if left else done).append((pool, left))
    lines = []
    if done:
        lines += [
            f"The new generation serves. Commit this to Pulumi.{context.env}.yaml, then `pulumi up -s {context.env}`",
            "(it makes the new node groups the serving ones and deletes the emptied old ones):",
            "",
            "  peakguard:gpuPools:",
        ]
        for pool, _ in done:
            generation = ports.targets.incoming_of(pool)[0].generation
            lines += [f"    {pool}:", f"      generation: {generation}", f"      {_image_key(to)}: {to}",
                      "      # and remove `next`"]  # fmt: skip
    for pool, left in pending:
        lines.append(
            f"Pool {pool} is not done: old nodes remain in {', '.join(left)}. Run rolling-upgrade for them before "
            "changing its stack config; committing now would delete those groups with their nodes."
        )
    return "\n".join(lines)


RUNBOOK = Runbook(
    name="rolling-upgrade",
    summary="move GPU nodes to the declared new generation, a third at most at a time, gated, batch rollback",
    params=(
        Param(
            "to",
            "the AMI release (e.g. 1.33.4-20251010) or custom AMI id the incoming generation is declared at; or "
            "driver-<version> (e.g. driver-570.133.20) to change host drivers in place",
        ),
        Param(
            "nodegroup",
            "comma-separated pools or node groups to upgrade (default: every pool with a declared `next`; for a "
            "driver, every serving group whose nodes run host drivers)",
            default="",
        ),
        Param(
            "drain-timeout", "seconds a node's drain may take before the batch is rolled back", float, 600.0, minimum=1
        ),
        Param("node-timeout", "seconds new nodes may take to be Ready and preflighted", float, 900.0, minimum=1),
        Param("gate-timeout", "seconds the service has to pass its gate after a batch", float, 120.0, minimum=0),
        Param("poll", "seconds between readings of nodes and instances", float, 5.0, minimum=0.1),
    ),
    steps=(
        Step(
            "move-nodes",
            "move each group's nodes to its incoming generation, batch by batch",
            _observe,
            _desired,
            _apply,
            restore=_restore,
            # Not a bound on the move: each wait inside it has its own (drain, node, gate timeouts).
            timeout=7 * 24 * 3600.0,
            retries=1,
            kept_once_done="every node is on the incoming generation, each batch past its gate, and the old "
            "nodes are gone: to go back, declare the old image as `next` and move the nodes again",
            undo=_undo_nodes,
        ),
        Step(
            "upgrade-drivers",
            "change each group's host NVIDIA driver in place, batch by batch (--to driver-<version> only)",
            _observe_drivers,
            _desired_drivers,
            _apply_drivers,
            restore=_restore_drivers,
            timeout=7 * 24 * 3600.0,
            retries=1,
            kept_once_done="every node runs the new driver, each batch past its gate: to go back, run "
            "rolling-upgrade --to driver-<the old version>",
            undo=_undo_nodes,
        ),
    ),
    health=_SERVICE,
    recovery_timeout=120.0,
    explain=_explain,
    epilogue=_epilogue,
    notes={
        "rollback": "the batch in flight; finished batches keep their new nodes (in place: a node whose change "
        "failed is held cordoned, named in the stop)",
        "declare first": "peakguard:gpuPools.<pool>.next in the stack file, then pulumi up",
    },
)
