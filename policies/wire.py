"""Reading properties the way the engine hands them over: wire names, numbers as floats, booleans
sometimes as text, values unknown at preview; and the facts a rule needs about a resource (its
environment, whether it is a GPU node group)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from infra import facts
from infra.facts import INSTANCE_TYPES, InstanceType
from policies.findings import Resource

__all__ = [
    "GPU_TAINT",
    "POOL_LABEL",
    "env_of",
    "gpu_instance",
    "is_gpu_node_group",
    "is_serving",
    "mapping",
    "of_type",
    "sequence",
    "stack_env",
    "truthy",
]

POOL_LABEL = facts.POOL_LABEL
GPU_TAINT = facts.GPU_TAINT.key


def is_serving(node_group: Resource) -> bool:
    """False for a pool's incoming generation during a rolling upgrade (infra/gpu_node_groups.py
    tags it): its maxSize is the same capacity again, not more of it."""
    return mapping(node_group.get("tags")).get("peakguard:serving") != "false"


def truthy(value: Any) -> bool:
    """True for `true` however it arrived (a bool, or "true" where a provider schema says string)."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def sequence(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


_LOWER_BAR = ("dev", "staging")


def env_of(resource: Resource) -> str:
    """The stack a resource belongs to, from its URN (`urn:pulumi:<stack>::...`), which stack config
    cannot change (tags can). Anything but dev or staging is held to prod's bar."""
    head = resource.urn.split("::", 1)[0]
    stack = head.rsplit(":", 1)[-1] if head.startswith("urn:pulumi:") else ""
    return stack if stack in _LOWER_BAR else "prod"


def stack_env(resources: Iterable[Resource]) -> str:
    """The stack's environment: the one its resources' URNs agree on; prod otherwise."""
    envs = {env_of(r) for r in resources}
    return next(iter(envs)) if len(envs) == 1 else "prod"


def of_type(resources: Iterable[Resource], *type_tokens: str) -> list[Resource]:
    return [r for r in resources if r.type in type_tokens]


def is_gpu_node_group(node_group: Resource) -> bool:
    """A node group for GPU work: tainted for GPUs or labelled as having EFA."""
    taints = sequence(node_group.get("taints"))
    labels = mapping(node_group.get("labels"))
    return any(mapping(t).get("key") == GPU_TAINT for t in taints) or "vpc.amazonaws.com/efa.present" in labels


def gpu_instance(launch_template: Resource) -> InstanceType | None:
    """The EFA-capable GPU instance type a launch template launches, if it is one we lay out."""
    name = launch_template.get("instanceType")
    return INSTANCE_TYPES.get(name) if isinstance(name, str) else None
