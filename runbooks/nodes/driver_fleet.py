"""The in-place upgrade's fleet over the real ports: the NVIDIA driver of one serving GPU node
group, changed on its nodes by `playbooks/project/gpu_driver_upgrade.yml`.

Only nodes whose driver is the host's can be changed in place: Ubuntu nodes that the GPU operator
labels `nvidia.com/gpu.deploy.driver=pre-installed` (an AMI that ships the driver). On the EKS
AL2023 NVIDIA AMI the driver is baked in (`--to <release>` moves the nodes to a newer AMI), and
where the operator's driver container provides it the operator rolls it (its `driver.version`).
`refusals` says which nodes are neither, before anything changes.

Which nodes are old: those whose GPU feature discovery label does not show the target driver
(and that this run has not upgraded yet: the label follows the reboot by a few seconds).

What `upgrade` does to a batch of drained, cordoned nodes:
1. puts the startup taint back (`peakguard.io/preflight`), so that after the reboot nothing lands
   on a node before its GPUs, EFA devices and NVMe array are checked again;
2. runs the playbook on their instance ids, with the batch as its `serial` (one reboot wave);
3. restarts the preflight gate's pod on each node that passed, which checks it again and lifts
   the taint (the gate stays idle on an untainted node, and a node the playbook left alone was
   not rebooted).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from infra.facts import (
    DRIVER_DEPLOY_LABEL,
    DRIVER_VERSION_LABEL,
    NODE_GROUP_LABEL,
    PREFLIGHT_GATE,
    PREFLIGHT_NAMESPACE,
    PREFLIGHT_TAINT,
)
from infra.targets import NodeGroupTarget
from runbooks.errors import RunbookError
from runbooks.nodes.node_batches import GroupView, NodeView
from runbooks.nodes.run_nodes import RunNodes
from runbooks.ports import Ports
from runbooks.ports.cloud import instance_id_of
from runbooks.ports.cluster import NodeState
from runbooks.ports.node_work import PlaybookRunner

__all__ = ["DRIVER_PLAYBOOK", "DriverFleet", "driver_of", "refusals"]

DRIVER_PLAYBOOK = "gpu_driver_upgrade.yml"


def driver_of(labels: Mapping[str, str]) -> str | None:
    """The running driver as GPU feature discovery labels it; None before GFD has run."""
    full = labels.get(DRIVER_VERSION_LABEL)
    if full:
        return full
    parts = [labels.get(f"nvidia.com/cuda.driver.{part}") for part in ("major", "minor", "rev")]
    if not parts[0] or not parts[1]:
        return None
    return ".".join(p for p in parts if p)


def refusals(nodes: Sequence[NodeState], version: str) -> list[str]:
    """Why nodes cannot have their driver changed in place (empty: every one can)."""
    found = []
    for node in nodes:
        if "ubuntu" not in node.os_image.lower():
            found.append(
                f"{node.name} runs {node.os_image or 'an unknown OS'}: the EKS AL2023 NVIDIA AMI ships its driver "
                "baked in; move the group to a newer AMI release instead (`next` in the stack config, then "
                "--to <releaseVersion>)"
            )
        elif node.labels.get(DRIVER_DEPLOY_LABEL) != "pre-installed":
            found.append(
                f"{node.name}: its driver comes from the GPU operator's driver container ({DRIVER_DEPLOY_LABEL}="
                f"{node.labels.get(DRIVER_DEPLOY_LABEL, 'unset')}); change the operator's driver version to {version} "
                "(gpu-operator values, infra/cluster_addons.py) and let its upgrade controller roll it"
            )
    return found


class DriverFleet(RunNodes):
    """`runbooks.nodes.in_place_upgrade.InPlaceFleet` for serving GPU node groups of one run."""

    def __init__(
        self,
        ports: Ports,
        groups: Sequence[NodeGroupTarget],
        *,
        version: str,
        playbooks: PlaybookRunner | None,
        run_id: str,
        gate: Callable[[], str | None],
        drain_seconds: float,
        wait_seconds: float,
        poll_seconds: float = 5.0,
        extravars: Mapping[str, str] | None = None,
        note: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ports.cluster, run_id=run_id, drain_seconds=drain_seconds, poll_seconds=poll_seconds,
                         sleep=ports.sleep, note=note, gate=gate, wait_seconds=wait_seconds, clock=clock)  # fmt: skip
        self._ports = ports
        self._groups = {group.name: group for group in groups}
        self._version = version
        self._playbooks = playbooks
        self._extravars = dict(extravars or {})
        self._sizes: dict[str, int] = {}
        self._upgraded: set[str] = set()
        """Nodes the playbook upgraded in this run (their GFD label may still lag)."""

    def nodes(self, group: str) -> list[NodeState]:
        return self._ports.cluster.nodes(f"{NODE_GROUP_LABEL}={self._groups[group].name}")

    def begin(self, group: str) -> None:
        """A resumed run's own cordons are lifted (its next batch cordons again what it changes),
        except on nodes it had given the startup taint back: killed mid-change, they are held."""
        for node in self.nodes(group):
            if node.unschedulable and self.marked(node.name):
                if PREFLIGHT_TAINT.key in node.taints:
                    self.hold(node.name, "the run stopped during its change; its state is unknown")
                else:
                    self.uncordon(node.name)

    # --- InPlaceFleet -------------------------------------------------------------------

    def view(self, group: str) -> GroupView:
        states = self.nodes(group)
        size = self._sizes.setdefault(group, len(states))
        nodes = [
            NodeView(
                name=state.name,
                generation="new" if self._at_target(state) else "old",
                ready=state.ready,
                unschedulable=state.unschedulable,
                preflighted=PREFLIGHT_TAINT.key not in state.taints and state.gpus > 0,
            )
            for state in states
        ]
        return GroupView(name=group, size=size, nodes=tuple(sorted(nodes, key=lambda n: n.name)))

    def upgrade(self, nodes: Sequence[str]) -> dict[str, str]:
        if self._playbooks is None:
            raise RunbookError("an in-place driver change runs node playbooks, and this run has no playbook runner")
        self._waiting_since = None  # a batch is progress: the next wait starts its own clock
        states = self._states()
        hosts: dict[str, str] = {}
        failed: dict[str, str] = {}
        for node in nodes:
            state = states.get(node)
            if state is None:
                failed[node] = "gone from the cluster before its change"
                continue
            try:
                hosts[instance_id_of(state.provider_id)] = node
            except RunbookError as exc:
                failed[node] = str(exc)
                continue
            self._ports.cluster.taint_node(node, PREFLIGHT_TAINT)
        if not hosts:
            return failed
        extravars = {**self._extravars, "peakguard_driver_version": self._version,
                     "peakguard_upgrade_batch": len(hosts)}  # fmt: skip
        self._note(f"{DRIVER_PLAYBOOK} on {', '.join(f'{n} ({i})' for i, n in hosts.items())}: driver {self._version}")
        result = self._playbooks.run(DRIVER_PLAYBOOK, list(hosts), extravars)
        for host, why in result.failed.items():
            if host in hosts:
                failed[hosts[host]] = f"{DRIVER_PLAYBOOK}: {why}"
        for host in result.passed:
            node = hosts[host]
            self._upgraded.add(node)
            self._restart_preflight(node)
            self._note(f"{node}: {DRIVER_PLAYBOOK} passed; preflight checks it again")
        return failed

    def until_serving(self, nodes: Sequence[str]) -> dict[str, str]:
        deadline = self._clock() + self._wait_seconds
        waiting = set(nodes)
        lacking: dict[str, str] = {}
        while waiting:
            states = self._states()
            for node in sorted(waiting):
                state = states.get(node)
                lacking[node] = self._lacks(state)
                if not lacking[node]:
                    waiting.discard(node)
                    del lacking[node]
            if not waiting:
                break
            if self._clock() >= deadline:
                return {node: f"not serving {self._wait_seconds:g} s after its change: {lacking[node]}"
                        for node in sorted(waiting)}  # fmt: skip
            self._ports.sleep(self._poll_seconds)
        return {}

    # --- Reading nodes ------------------------------------------------------------------

    def _states(self) -> dict[str, NodeState]:
        """Every node of the run's groups, by name (one list call per group)."""
        return {state.name: state for group in self._groups for state in self.nodes(group)}

    def _at_target(self, state: NodeState) -> bool:
        return state.name in self._upgraded or driver_of(state.labels) == self._version

    def _lacks(self, state: NodeState | None) -> str:
        """What keeps a changed node from serving, but for our cordon ('' once nothing does)."""
        if state is None:
            return "gone from the cluster"
        problems = []
        if not state.ready:
            problems.append("not Ready")
        if PREFLIGHT_TAINT.key in state.taints:
            problems.append(f"still tainted {PREFLIGHT_TAINT.key} (preflight has not passed; see its annotation)")
        if state.gpus == 0:
            problems.append("no GPUs allocatable")
        running = driver_of(state.labels)
        if running is not None and running != self._version:
            problems.append(f"GPU feature discovery reports driver {running}")
        return ", ".join(problems)

    def _restart_preflight(self, node: str) -> None:
        for pod in self._ports.cluster.pods_on(node):
            if pod.namespace == PREFLIGHT_NAMESPACE and pod.name.startswith(f"{PREFLIGHT_GATE}-"):
                self._ports.cluster.delete_pod(pod.namespace, pod.name)
