"""The rolling upgrade's `Fleet` over the real ports: a pool's group in one AZ, both generations.

A "group" here is one pool in one AZ: its serving EKS node group (the old generation) and the
incoming one the Pulumi program declared empty beside it (`next` in the stack config). Nodes are
told apart by the `eks.amazonaws.com/nodegroup` label EKS puts on them.

What each call does to AWS and Kubernetes:
- surge: the incoming node group's minSize and desiredSize go up together, through EKS (never the
  Auto Scaling group under it). The minimum rises too so that the cluster autoscaler, which sees
  an empty new node as spare, cannot take it back before the batch it is for has moved onto it.
  It returns the new instances' ids once the Auto Scaling group lists them.
- remove: one instance terminated with the group's desired size lowered (nothing relaunches it);
  the group's minimum is lowered first where it would forbid that.
- cordon/uncordon: with the run's mark, so only our cordons are ever lifted.
- drain: the Eviction API, bounded by the drain deadline (runbooks/drain.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infra.facts import PREFLIGHT_TAINT
from infra.targets import NodeGroupTarget, TargetsDocument
from runbooks.cloud import NodeGroupSize, instance_id_of
from runbooks.cluster import NodeState
from runbooks.drain import drain_node
from runbooks.errors import RunbookError
from runbooks.node_batches import GroupView, NodeView
from runbooks.ports import Ports

__all__ = ["NODE_GROUP_LABEL", "GenerationPair", "PortsFleet", "generation_pairs"]

NODE_GROUP_LABEL = "eks.amazonaws.com/nodegroup"


@dataclass(frozen=True)
class GenerationPair:
    """One pool in one AZ: the node group serving now and the one its nodes move to."""

    pool: str
    availability_zone: str
    serving: NodeGroupTarget
    incoming: NodeGroupTarget

    @property
    def key(self) -> str:
        return f"{self.pool}/{self.availability_zone}"


def generation_pairs(targets: TargetsDocument, selected: Sequence[str] = ()) -> list[GenerationPair]:
    """Every pool and AZ with a declared incoming generation, or those `selected` names (a pool, or
    a node group of either generation). Errors say how to declare what is missing."""
    pairs = []
    for incoming in targets.node_groups:
        if incoming.serving:
            continue
        serving = [
            g for g in targets.node_groups_of(incoming.pool) if g.availability_zone == incoming.availability_zone
        ]
        if len(serving) != 1:
            raise RunbookError(
                f"{incoming.name}: no single serving node group beside it in {incoming.availability_zone} "
                f"(found {[g.name for g in serving]}); the targets document is inconsistent, re-run `pulumi up`"
            )
        pairs.append(GenerationPair(incoming.pool, incoming.availability_zone or "", serving[0], incoming))
    if selected:
        wanted = set(selected)
        chosen = [p for p in pairs if wanted & {p.pool, p.serving.name, p.incoming.name}]
        known = {name for p in pairs for name in (p.pool, p.serving.name, p.incoming.name)}
        unknown = sorted(wanted - known)
        if unknown:
            pools = sorted({g.pool for g in targets.node_groups if g.generation is not None})
            raise RunbookError(
                f"--nodegroup {', '.join(unknown)}: no incoming generation is declared for it. Pools with GPU "
                f"node groups: {', '.join(pools)}; pools with an upgrade declared: "
                f"{', '.join(sorted({p.pool for p in pairs})) or 'none'}. Declare one with "
                f"`peakguard:gpuPools.<pool>.next` in Pulumi.{targets.env}.yaml and `pulumi up -s {targets.env}`"
            )
        pairs = chosen
    if not pairs:
        raise RunbookError(
            f"no GPU pool of {targets.env} has an incoming generation to move nodes to. Declare the upgrade "
            f"first: set `peakguard:gpuPools.<pool>.next: {{releaseVersion: ...}}` (or amiId for the ubuntu "
            f"family) in Pulumi.{targets.env}.yaml and run `pulumi up -s {targets.env}`; it adds the empty "
            "new-generation node groups this runbook fills"
        )
    return sorted(pairs, key=lambda p: (p.pool, p.availability_zone))


def _view_of(state: NodeState, incoming: str) -> NodeView:
    return NodeView(
        name=state.name,
        generation="new" if state.labels.get(NODE_GROUP_LABEL) == incoming else "old",
        ready=state.ready,
        unschedulable=state.unschedulable,
        preflighted=PREFLIGHT_TAINT.key not in state.taints,
    )


class PortsFleet:
    """`runbooks.node_upgrade.Fleet` for the ports of one run."""

    def __init__(
        self,
        ports: Ports,
        pairs: Sequence[GenerationPair],
        *,
        run_id: str,
        gate: Callable[[], str | None],
        drain_seconds: float,
        wait_seconds: float,
        poll_seconds: float = 5.0,
        note: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ports = ports
        self._pairs = {pair.key: pair for pair in pairs}
        self._run_id = run_id
        self._gate = gate
        self._drain_seconds = drain_seconds
        self._wait_seconds = wait_seconds
        self._poll_seconds = poll_seconds
        self._note = note
        self._clock = clock
        self._sizes: dict[str, int] = {}
        self._waiting_since: float | None = None

    @property
    def _cluster_name(self) -> str:
        return self._ports.targets.cluster.name

    def nodes(self, group: str) -> list[NodeState]:
        pair = self._pairs[group]
        members = {pair.serving.name, pair.incoming.name}
        found = self._ports.cluster.nodes(f"peakguard.io/pool={pair.pool}")
        return [node for node in found if node.labels.get(NODE_GROUP_LABEL) in members]

    # --- Fleet --------------------------------------------------------------------------

    def view(self, group: str) -> GroupView:
        pair = self._pairs[group]
        nodes = [_view_of(state, pair.incoming.name) for state in self.nodes(group)]
        # N is the old generation's size when this group's upgrade began: the capacity kept.
        size = self._sizes.setdefault(group, sum(1 for node in nodes if node.generation == "old"))
        return GroupView(name=group, size=size, nodes=tuple(sorted(nodes, key=lambda n: n.name)))

    def surge(self, group: str, count: int) -> list[str]:
        pair = self._pairs[group]
        incoming = pair.incoming
        size = self._ports.cloud.node_group_size(self._cluster_name, incoming.name)
        wanted = size.desired + count
        if wanted > size.max:
            raise RunbookError(
                f"{incoming.name}: surging {count} would need {wanted} nodes, above its maxSize {size.max}; "
                f"raise peakguard:gpuPools.{pair.pool}.scalingPerAz.maxSize"
            )
        before = set(self._ports.cloud.instances_of(incoming.autoscaling_group))
        self._ports.cloud.set_node_group_size(
            self._cluster_name, incoming.name, NodeGroupSize(min=max(size.min, wanted), desired=wanted, max=size.max)
        )
        self._note(f"{group}: surge {count} node(s) in {incoming.name} (desired {size.desired} -> {wanted})")
        self._waiting_since = None
        deadline = self._clock() + self._wait_seconds
        while True:
            launched = sorted(set(self._ports.cloud.instances_of(incoming.autoscaling_group)) - before)[:count]
            # Done once each new instance is a Node: until then the group's view cannot show it,
            # and the next step would ask for another surge.
            registered = {instance_id_of(n.provider_id) for n in self.nodes(group) if n.provider_id}
            if len(launched) == count and set(launched) <= registered:
                return launched
            if self._clock() >= deadline:
                raise RunbookError(
                    f"{incoming.name}: of {count} surged instance(s), {len(launched)} launched and "
                    f"{len(set(launched) & registered)} joined the cluster within {self._wait_seconds:g} s "
                    "(Auto Scaling activities say why an instance did not launch; the node's bootstrap log, why "
                    "it did not join)"
                )
            self._ports.sleep(self._poll_seconds)

    def cordon(self, node: str) -> None:
        self._ports.cluster.cordon(node, self._run_id)
        self._note(f"cordoned {node}")

    def marked(self, node: str) -> bool:
        unschedulable, mark = self._ports.cluster.cordon_mark(node)
        return unschedulable and mark == self._run_id

    def uncordon(self, node: str) -> None:
        self._ports.cluster.uncordon(node, self._run_id)
        self._note(f"uncordoned {node}")

    def drain(self, node: str) -> None:
        report = drain_node(
            self._ports.cluster,
            node,
            deadline_seconds=self._drain_seconds,
            poll_seconds=min(2.0, self._poll_seconds),
            sleep=self._ports.sleep,
            on_event=self._note,
        )
        self._note(f"drained {node} in {report.seconds:.1f} s ({len(report.evicted)} pod(s) evicted)")

    def remove(self, node: str) -> None:
        """`node` is a node name, or an instance id as `surge` returned it (a node not yet registered)."""
        if node.startswith("i-"):
            instance = node
        else:
            states = [s for pair in self._pairs.values() for s in self.nodes(pair.key) if s.name == node]
            if not states:
                self._note(f"{node}: already gone")
                return
            instance = instance_id_of(states[0].provider_id)
        autoscaling_group = self._ports.cloud.group_of_instance(instance)
        if autoscaling_group is None:
            self._note(f"{node}: instance {instance} already gone")
            return
        group = next(
            (
                g
                for p in self._pairs.values()
                for g in (p.serving, p.incoming)
                if g.autoscaling_group == autoscaling_group
            ),
            None,
        )
        if group is None:
            raise RunbookError(
                f"{node}: instance {instance} is in Auto Scaling group {autoscaling_group}, not one this run moves; "
                "left alone"
            )
        size = self._ports.cloud.node_group_size(self._cluster_name, group.name)
        if size.desired - 1 < size.min:
            # Auto Scaling refuses to go below the minimum; the run owns the sizes while it moves nodes.
            lowered = NodeGroupSize(min=size.desired - 1, desired=size.desired, max=size.max)
            self._ports.cloud.set_node_group_size(self._cluster_name, group.name, lowered)
            self._until_applied(group, lowered)
        self._ports.cloud.remove_instance(instance)
        self._waiting_since = None
        self._note(f"removed {node} ({instance}) from {group.name}")

    def _until_applied(self, group: NodeGroupTarget, size: NodeGroupSize) -> None:
        """Wait until EKS has applied a scaling update to the Auto Scaling group. Terminating first
        would be refused below the old minimum, and the update landing later would put the old
        desired size back, launching a node in place of the one just removed."""
        deadline = self._clock() + self._wait_seconds
        while True:
            applied = self._ports.cloud.autoscaling_group_size(group.autoscaling_group)
            if applied.min == size.min:
                return
            if self._clock() >= deadline:
                raise RunbookError(
                    f"{group.name}: EKS did not apply minSize {size.min} to {group.autoscaling_group} within "
                    f"{self._wait_seconds:g} s (still {applied.min}); `aws eks list-updates` shows the update"
                )
            self._ports.sleep(min(1.0, self._poll_seconds))

    def healthy(self) -> str | None:
        return self._gate()

    def pause(self, reason: str) -> bool:
        now = self._clock()
        if self._waiting_since is None:
            self._waiting_since = now
            self._note(f"waiting: {reason}")
        if now - self._waiting_since > self._wait_seconds:
            return False
        self._ports.sleep(self._poll_seconds)
        return True
