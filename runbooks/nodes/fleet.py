"""The rolling upgrade's `Fleet` over the real ports: a pool's group in one AZ, both generations.

A "group" here is one pool in one AZ: its serving EKS node group (the old generation) and the
incoming one the Pulumi program declared empty beside it (`next` in the stack config). Nodes are
told apart by the `eks.amazonaws.com/nodegroup` label EKS puts on them.

What each call does to AWS and Kubernetes:
- begin (once per group): the serving node group's minSize goes to 0 through EKS, waited for until
  its Auto Scaling group shows it, so that every later removal is one plain call; nodes still
  carrying this run's cordon (a resumed run) are uncordoned.
- surge: the incoming node group's desiredSize goes up, through EKS (never the Auto Scaling group's
  own settings), from the Auto Scaling group's desired capacity (EKS's copy lags). Each new node
  is annotated so that the cluster autoscaler, which sees an empty new node as spare, does not
  take it back before the batch it is for has moved onto it. It returns once every new instance
  has joined as a Node.
- remove: one instance terminated with its group's desired size lowered (nothing relaunches it).
- cordon/uncordon/drain: `runbooks/nodes/run_nodes.py` (the run's mark; the Eviction API, bounded).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infra.facts import NODE_GROUP_LABEL, POOL_LABEL, PREFLIGHT_TAINT
from infra.targets import NodeGroupTarget, TargetsDocument
from runbooks.errors import RunbookError, TransientError
from runbooks.nodes.node_batches import GroupView, NodeView
from runbooks.nodes.node_upgrade import SurgeIncompleteError
from runbooks.nodes.run_nodes import RunNodes
from runbooks.ports import Ports
from runbooks.ports.cloud import NodeGroupSize, instance_id_of
from runbooks.ports.cluster import NodeState

__all__ = ["NODE_GROUP_LABEL", "GenerationPair", "PortsFleet", "generation_pairs"]

SCALE_DOWN_DISABLED = "cluster-autoscaler.kubernetes.io/scale-down-disabled"
"""Node annotation the cluster autoscaler honours: never scale this node down."""


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
        # Preflight passes before the device plugin registers the GPUs: a node serves once both did.
        preflighted=PREFLIGHT_TAINT.key not in state.taints and state.gpus > 0,
    )


def _instance_or_none(provider_id: str) -> str | None:
    try:
        return instance_id_of(provider_id)
    except RunbookError:
        return None


class PortsFleet(RunNodes):
    """`runbooks.nodes.node_upgrade.Fleet` for the ports of one run."""

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
        super().__init__(ports.cluster, run_id=run_id, drain_seconds=drain_seconds, poll_seconds=poll_seconds,
                         sleep=ports.sleep, note=note, gate=gate, wait_seconds=wait_seconds, clock=clock)  # fmt: skip
        self._ports = ports
        self._pairs = {pair.key: pair for pair in pairs}
        self._sizes: dict[str, int] = {}
        self._protected: set[str] = set()
        """New instances whose nodes carry the scale-down-disabled annotation."""
        self._removed: set[str] = set()
        """Nodes and instances this run terminated: their Node objects linger while they shut down."""

    @property
    def _cluster_name(self) -> str:
        return self._ports.targets.cluster.name

    def nodes(self, group: str) -> list[NodeState]:
        """Both generations' nodes of the group, but not those this run already terminated."""
        pair = self._pairs[group]
        members = {pair.serving.name, pair.incoming.name}
        found = self._ports.cluster.nodes(f"{POOL_LABEL}={pair.pool}")
        return [
            node
            for node in found
            if node.labels.get(NODE_GROUP_LABEL) in members
            and node.name not in self._removed
            and _instance_or_none(node.provider_id) not in self._removed
        ]

    def begin(self, group: str) -> None:
        """Before the group's first batch: the serving group may shrink to nothing, and a resumed
        run's own cordons are lifted (its next batch cordons again what it drains)."""
        pair = self._pairs[group]
        size = self._ports.cloud.node_group_size(self._cluster_name, pair.serving.name)
        if size.min > 0:
            lowered = NodeGroupSize(min=0, desired=self._asg_desired(pair.serving), max=size.max)
            self._set_size(pair.serving, lowered)
            self._until_applied(pair.serving, lowered)
        for node in self.nodes(group):
            if node.unschedulable and self.marked(node.name):
                self.uncordon(node.name)

    # --- Fleet --------------------------------------------------------------------------

    def view(self, group: str) -> GroupView:
        pair = self._pairs[group]
        nodes = [_view_of(state, pair.incoming.name) for state in self.nodes(group)]
        # N is the group's node count when this run began on it, both generations (a re-run after a
        # stop counts the new nodes that earlier batches brought): the capacity kept.
        size = self._sizes.setdefault(group, len(nodes))
        return GroupView(name=group, size=size, nodes=tuple(sorted(nodes, key=lambda n: n.name)))

    def surge(self, group: str, count: int) -> list[str]:
        pair = self._pairs[group]
        incoming = pair.incoming
        size = self._ports.cloud.node_group_size(self._cluster_name, incoming.name)
        current = self._asg_desired(incoming)
        wanted = current + count
        if wanted > size.max:
            raise RunbookError(
                f"{incoming.name}: surging {count} would need {wanted} nodes, above its maxSize {size.max}; "
                f"raise peakguard:gpuPools.{pair.pool}.scalingPerAz.maxSize"
            )
        before = set(self._ports.cloud.instances_of(incoming.autoscaling_group))
        self._set_size(incoming, NodeGroupSize(min=size.min, desired=wanted, max=size.max))
        self._note(f"{group}: surge {count} node(s) in {incoming.name} (desired {current} -> {wanted})")
        self._waiting_since = None
        deadline = self._clock() + self._wait_seconds
        launched: list[str] = []
        while True:
            launched = sorted(set(self._ports.cloud.instances_of(incoming.autoscaling_group)) - before)[:count]
            # Done once each new instance is a Node: until then the group's view cannot show it,
            # and the next step would ask for another surge.
            joined = {instance_id_of(n.provider_id): n.name for n in self.nodes(group) if n.provider_id}
            for instance in launched:
                if instance in joined and instance not in self._protected:
                    self._ports.cluster.annotate_node(joined[instance], {SCALE_DOWN_DISABLED: "true"})
                    self._protected.add(instance)
            if len(launched) == count and set(launched) <= set(joined):
                # By node name: what the group's view shows, so a rollback can drain them by it.
                return [joined[instance] for instance in launched]
            if self._clock() >= deadline:
                missing = count - len(launched)
                if missing:
                    # Nothing more may launch for this surge; what did launch the rollback removes.
                    now = self._asg_desired(incoming)
                    self._set_size(incoming, NodeGroupSize(min=size.min, desired=max(0, now - missing), max=size.max))
                raise SurgeIncompleteError(
                    f"{incoming.name}: of {count} surged instance(s), {len(launched)} launched and "
                    f"{len(set(launched) & set(joined))} joined the cluster within {self._wait_seconds:g} s "
                    "(Auto Scaling activities say why an instance did not launch; the node's bootstrap log, why "
                    "it did not join)",
                    launched=[joined.get(instance, instance) for instance in launched],
                )
            self._ports.sleep(self._poll_seconds)

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
        groups = [g for p in self._pairs.values() for g in (p.serving, p.incoming)]
        group = next((g for g in groups if g.autoscaling_group == autoscaling_group), None)
        if group is None:
            raise RunbookError(
                f"{node}: instance {instance} is in Auto Scaling group {autoscaling_group}, not one this run moves; "
                "left alone"
            )
        self._ports.cloud.remove_instance(instance)
        self._removed.update({node, instance})
        self._waiting_since = None
        self._note(f"removed {node} ({instance}) from {group.name}")

    def _asg_desired(self, group: NodeGroupTarget) -> int:
        return self._ports.cloud.autoscaling_group_size(group.autoscaling_group).desired

    def _set_size(self, group: NodeGroupTarget, size: NodeGroupSize) -> None:
        """An EKS scaling update; while the group's previous update still runs, EKS answers
        ResourceInUseException, which is waited out (up to the node timeout)."""
        deadline = self._clock() + self._wait_seconds
        while True:
            try:
                self._ports.cloud.set_node_group_size(self._cluster_name, group.name, size)
                return
            except TransientError:
                if self._clock() >= deadline:
                    raise
                self._ports.sleep(min(2.0, self._poll_seconds))

    def _until_applied(self, group: NodeGroupTarget, size: NodeGroupSize) -> None:
        """Wait until EKS has applied a scaling update to the Auto Scaling group (it does so
        asynchronously): a removal before that would be refused below the old minimum."""
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
