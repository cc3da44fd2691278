"""Facts that more than one package relies on, defined once and free of Pulumi.

The Pulumi program sizes and lays out node groups with them, the policy pack checks the same
numbers, and the runbooks batch node work by them. Nothing here talks to a cloud.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "CLUSTER_AUTOSCALER_RELEASES",
    "CPU_INSTANCE_TYPES",
    "EKS_TAINT_EFFECTS",
    "FIS_ACTIONS",
    "GENERATION_LABEL",
    "GPU_RESOURCE",
    "GPU_TAINT",
    "HEADROOM",
    "INSTANCE_TYPES",
    "MAX_UNAVAILABLE_FRACTION",
    "MAX_UNAVAILABLE_PERCENTAGE",
    "MIG_CONFIG_LABEL",
    "MIG_INSTANCES_PER_GPU",
    "MIG_PROFILES",
    "MIG_RESOURCE_PREFIX",
    "NODE_GROUP_LABEL",
    "POOL_LABEL",
    "PREFLIGHT_RESULT_ANNOTATION",
    "PREFLIGHT_TAINT",
    "VPC_CNI_MIN_EFA_ONLY",
    "EfaInterface",
    "InstanceType",
    "Taint",
    "capacity_with_headroom",
    "efa_interfaces",
    "max_batch",
    "mig_config_is_valid",
    "parse_addon_version",
]

# --- Shared numbers (shared/DESIGN.md, "Shared numbers") -------------------------------------

HEADROOM = Fraction(13, 10)
"""Provision 30% above an expected peak. A Fraction, so the rule never rests on float rounding: 1.3
happens to round well for every peak, but a headroom of 1.1 gives ceil(1.1 * 50) = 56 in floats, not 55."""

MAX_UNAVAILABLE_FRACTION = Fraction(1, 3)
"""Never more than a third of a group's nodes down at once (the seed's rolling-upgrade rule)."""

MAX_UNAVAILABLE_PERCENTAGE = math.floor(MAX_UNAVAILABLE_FRACTION * 100)
"""The same rule as EKS's `updateConfig.maxUnavailablePercentage` takes it: 33."""

PUBLIC_ENDPOINT_MAX_ADDRESSES = 2**16
"""Most addresses prod's public API endpoint may admit, counted on the union of its CIDRs: a /16,
a company's VPN or office ranges. Ours, not AWS's: beyond it the endpoint is public in all but
name (0.0.0.0/1 plus 128.0.0.0/1 is the whole internet without 0.0.0.0/0)."""

# AWS's tag limits ("Tagging your AWS resources", Tag naming limits and requirements): at most 50
# tags per resource, keys up to 128 characters, values up to 256, and the `aws:` prefix reserved.
TAGS_PER_RESOURCE = 50
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
PROGRAM_TAGS_MAX = 10
"""Tags the program adds to one resource at most (peakguard:env, :managed-by, :pool, :az,
:generation, :serving, :pods-need-instance-metadata, Name, and cluster-autoscaler's), so a stack's
own tags may take the rest of `TAGS_PER_RESOURCE`."""


def capacity_with_headroom(peak: int, factor: Fraction = HEADROOM) -> int:
    """Capacity to provision for an expected peak of `peak` (nodes or replicas): ceil(1.3 x P).

    `factor` may raise the headroom, never lower it below 1.3.
    """
    if peak < 0:
        raise ValueError(f"expected peak must be >= 0, got {peak}")
    if factor < HEADROOM:
        raise ValueError(f"headroom factor {float(factor)} is below the floor of {float(HEADROOM)}")
    return math.ceil(factor * peak)


def max_batch(group_size: int) -> int:
    """Nodes of a group of `group_size` that may be unavailable at once: floor(N/3).

    Nodes that are not Ready or are cordoned by anyone count against it. A result of 0 (groups
    under 3 nodes) means the group may only be changed by surging.
    """
    if group_size < 0:
        raise ValueError(f"group size must be >= 0, got {group_size}")
    return math.floor(group_size * MAX_UNAVAILABLE_FRACTION)


# --- Node labels, annotations and taints ---------------------------------------------------------

POOL_LABEL = "peakguard.io/pool"
"""Node label: the GPU pool (or `system`) a node belongs to."""
GENERATION_LABEL = "peakguard.io/generation"
"""Node label: blue or green, the node group generation a node belongs to."""
NODE_GROUP_LABEL = "eks.amazonaws.com/nodegroup"
"""Node label EKS puts on every node of a managed node group: the group's name."""
GPU_RESOURCE = "nvidia.com/gpu"
"""The device plugin's resource for whole GPUs (pods request it, nodes list it as allocatable)."""
PREFLIGHT_RESULT_ANNOTATION = "peakguard.io/preflight-result"
"""Node annotation: the last preflight result as compact JSON (ok, failed checks, why, when)."""


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str
    """Kubernetes spelling: NoSchedule, PreferNoSchedule or NoExecute."""

    def flag(self) -> str:
        """As the kubelet's `--register-with-taints` takes it."""
        return f"{self.key}={self.value}:{self.effect}"

    def toleration(self) -> dict[str, str]:
        """A toleration of this taint whatever its value."""
        return {"key": self.key, "operator": "Exists", "effect": self.effect}


EKS_TAINT_EFFECTS = {"NoSchedule": "NO_SCHEDULE", "PreferNoSchedule": "PREFER_NO_SCHEDULE", "NoExecute": "NO_EXECUTE"}
"""Kubernetes taint effects as the EKS node group API spells them."""

GPU_TAINT = Taint(key="nvidia.com/gpu", value="true", effect="NoSchedule")
"""On every GPU node: only pods that tolerate it (and ask for GPUs) land there."""

PREFLIGHT_TAINT = Taint(key="peakguard.io/preflight", value="pending", effect="NoSchedule")
"""Every new GPU node registers with it; the preflight DaemonSet removes it once the node's
GPUs, EFA devices and NVMe array check out (infra/node_preflight.py). A node still carrying it
is not serving, whatever its Ready condition says."""

PREFLIGHT_GATE = "peakguard-node-preflight"
"""Name of the preflight gate's objects (its DaemonSets add the pool) and its pods' name label."""
PREFLIGHT_NAMESPACE = "kube-system"

DRIVER_DEPLOY_LABEL = "nvidia.com/gpu.deploy.driver"
"""GPU operator node label: `pre-installed` where the driver is the host's (baked into the AMI, or
installed by the playbooks), anything else where the operator's driver container provides it."""
DRIVER_VERSION_LABEL = "nvidia.com/cuda.driver-version.full"
"""GPU feature discovery's node label: the running driver (e.g. 570.133.20); older GFD releases
label only `nvidia.com/cuda.driver.{major,minor,rev}`."""


NODES_PER_MANAGED_NODE_GROUP = 450
"""Most nodes one EKS managed node group holds (EKS User Guide, "View and manage Amazon EKS and
Fargate service quotas": Nodes per managed node group, 450, not adjustable)."""

EKS_KUBERNETES_VERSIONS: dict[str, str] = {
    # Minor -> the end of its extended support in EKS (EKS User Guide, "Understand the Kubernetes
    # version lifecycle on EKS": 14 months of standard support, then 12 of extended; dates as listed
    # by endoflife.date/amazon-eks in February 2026). 1.31 left extended support on 2026-11-26.
    # A newer minor is added here, with its dates, when EKS offers it.
    "1.32": "2027-03-23",
    "1.33": "2027-07-29",
    "1.34": "2027-12-02",
    "1.35": "2028-03-27",
}
"""The Kubernetes minors a stack may ask EKS for: `kubernetesVersion` outside these is refused."""

FSX_LUSTRE_MAX_GIB = 100_800
"""Largest FSx for Lustre file system a stack may ask for: the default per-account Lustre storage
quota (FSx for Lustre User Guide, "Quotas"; also SageMaker's FSxLustreConfig.SizeInGiB range,
1200-100800). Raise it here after AWS raises the account's quota."""

EC2_INSTANCE_TYPE = re.compile(
    r"^[a-z][a-z0-9-]*[0-9][a-z0-9-]*\.(nano|micro|small|medium|large|metal|[0-9]*xlarge)(-[0-9]+xl)?$"
)
"""The shape of an EC2 instance type name, <family><generation><options>.<size> (EC2 User Guide,
"Amazon EC2 instance type naming conventions"): m7i.xlarge, c7gn.16xlarge, m7i.metal-24xl,
u-6tb1.112xlarge; a name with no generation digit (banana.huge) is none."""


# --- GPU instance types with EFA -------------------------------------------------------------

_ADDON_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)-eksbuild\.(\d+)")

VPC_CNI_MIN_EFA_ONLY = (1, 18, 5)
"""Oldest Amazon VPC CNI that supports nodes with `efa-only` interfaces (EKS User Guide, "Run
machine learning training on Amazon EKS with Elastic Fabric Adapter", section "EFA and EFA-only
interfaces": "You must have VPC CNI version 1.18.5 or later for EFA-only interfaces")."""


def parse_addon_version(text: str) -> tuple[int, int, int] | None:
    """`v1.19.2-eksbuild.1` -> (1, 19, 2); None if it is not an EKS add-on version."""
    match = _ADDON_VERSION.fullmatch(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


CLUSTER_AUTOSCALER_RELEASES: dict[str, str] = {
    # The cluster autoscaler supports only the Kubernetes minor it was built against (its README,
    # "Releases": "use the Cluster Autoscaler version that matches your Kubernetes minor"); a chart
    # release defaults to the newest, e.g. chart 9.52.1 runs v1.34.x. Release tag
    # cluster-autoscaler-1.33.3 of kubernetes/autoscaler, image registry.k8s.io/autoscaling/cluster-autoscaler.
    "1.33": "v1.33.3",
}
"""Image tag of the cluster autoscaler per Kubernetes minor, when the stack does not name one."""

MIG_INSTANCES_PER_GPU: dict[str, dict[str, int]] = {
    # NVIDIA MIG User Guide, "Supported MIG Profiles", column "Number of Instances Available"
    # (https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html). How
    # many fit depends on the GPU's memory: 1g.10gb is a seventh of an 80 GB GPU but a quarter of a
    # 40 GB one. The +me (media extension) variants, one per GPU, are left out: we never ask for them.
    "A100-SXM4-40GB": {"1g.5gb": 7, "1g.10gb": 4, "2g.10gb": 3, "3g.20gb": 2, "4g.20gb": 1, "7g.40gb": 1},
    "A100-SXM4-80GB": {"1g.10gb": 7, "1g.20gb": 4, "2g.20gb": 3, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1},
    "H100-SXM5-80GB": {"1g.10gb": 7, "1g.20gb": 4, "2g.20gb": 3, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1},
    "H200-SXM5-141GB": {"1g.18gb": 7, "1g.35gb": 4, "2g.35gb": 3, "3g.71gb": 2, "4g.71gb": 1, "7g.141gb": 1},
}
"""MIG instances of each profile one GPU holds, by GPU model. GPUs not listed (A10G, L40S) have no MIG."""

MIG_PROFILES: dict[str, tuple[str, ...]] = {gpu: tuple(counts) for gpu, counts in MIG_INSTANCES_PER_GPU.items()}
"""MIG instance profiles per GPU."""

MIG_CONFIG_LABEL = "nvidia.com/mig.config"
"""Node label naming the MIG layout the GPU operator's MIG manager applies (`all-1g.10gb`, ...)."""

MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
"""The GPU operator's mixed MIG strategy advertises each profile as its own extended resource."""


@dataclass(frozen=True)
class EfaInterface:
    network_card_index: int
    device_index: int
    interface_type: str
    """`efa` (EFA with ENA: IP traffic too) or `efa-only` (RDMA only, takes no IP address)."""


@dataclass(frozen=True)
class InstanceType:
    name: str
    network_cards: int
    """Network cards of the instance; EFA bandwidth is reached with one EFA per card."""
    max_efa_interfaces: int
    gpus: int
    gpu_model: str
    nvme_volumes: int
    """Instance-store NVMe devices, striped into one RAID0 array at boot."""
    nvme_volume_gb: int

    @property
    def mig_profiles(self) -> tuple[str, ...]:
        return MIG_PROFILES.get(self.gpu_model, ())

    @property
    def efa_interface_count(self) -> int:
        return min(self.network_cards, self.max_efa_interfaces)

    def accelerators(self, mig_config: str | None = None) -> dict[str, int]:
        """The extended resources one node advertises, by name: `nvidia.com/gpu` with MIG off, else
        one `nvidia.com/mig-<profile>` per profile the layout (`nvidia.com/mig.config`) makes.

        `all-balanced` is the GPU operator's default mixed layout (its default-mig-parted-config):
        two of the smallest 1g profile, one 2g and one 3g per GPU."""
        if mig_config in (None, "", "all-disabled") or not self.mig_profiles:
            return {GPU_RESOURCE: self.gpus}
        per_gpu = MIG_INSTANCES_PER_GPU[self.gpu_model]
        if mig_config == "all-balanced":
            first = {slices: next(p for p in per_gpu if p.startswith(slices)) for slices in ("1g.", "2g.", "3g.")}
            layout = {first["1g."]: 2, first["2g."]: 1, first["3g."]: 1}
        else:
            profile = mig_config.removeprefix("all-")
            if not mig_config.startswith("all-") or profile not in per_gpu:
                raise ValueError(
                    f"MIG layout {mig_config!r} is not one of {self.gpu_model}'s: use all-disabled, all-balanced "
                    "or all-<profile> with one of " + ", ".join(per_gpu)
                )
            layout = {profile: per_gpu[profile]}
        return {MIG_RESOURCE_PREFIX + profile: count * self.gpus for profile, count in layout.items()}


# Sources: Amazon EC2 User Guide, "Network cards" (network cards, maximum EFA interfaces per
# type) and "Supported instance types" for EFA; the Accelerated Computing instance specifications
# (GPUs, instance store column): https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html.
# Typed by hand, so checked against a second source: tests/infra/test_instance_facts.py diffs every
# row with DescribeInstanceTypes as moto bundles it, and `peakguard facts verify` with a live region.
_TABLE = """
name            network_cards  max_efa  gpus  gpu_model          nvme_volumes  nvme_volume_gb
p4d.24xlarge    4              4        8     A100-SXM4-40GB     8             1000
p4de.24xlarge   4              4        8     A100-SXM4-80GB     8             1000
p5.48xlarge     32             32       8     H100-SXM5-80GB     8             3800
p5e.48xlarge    32             32       8     H200-SXM5-141GB    8             3800
p5en.48xlarge   16             16       8     H200-SXM5-141GB    8             3800
g6e.8xlarge     1              1        1     L40S-48GB          2             450
g6e.12xlarge    1              1        4     L40S-48GB          2             1900
g6e.16xlarge    1              1        1     L40S-48GB          2             950
g6e.24xlarge    2              2        4     L40S-48GB          2             1900
g6e.48xlarge    4              4        8     L40S-48GB          4             1900
g5.8xlarge      1              1        1     A10G-24GB          1             900
g5.12xlarge     1              1        4     A10G-24GB          1             3800
g5.16xlarge     1              1        1     A10G-24GB          1             1900
g5.24xlarge     1              1        4     A10G-24GB          1             3800
g5.48xlarge     1              1        8     A10G-24GB          2             3800
"""


def _parse_table(table: str) -> dict[str, InstanceType]:
    header, *rows = (line.split() for line in table.strip().splitlines())
    if header != ["name", "network_cards", "max_efa", "gpus", "gpu_model", "nvme_volumes", "nvme_volume_gb"]:
        raise ValueError(f"instance table header changed: {header}")
    types = {}
    for name, cards, max_efa, gpus, gpu_model, nvme_volumes, nvme_volume_gb in rows:
        types[name] = InstanceType(
            name,
            network_cards=int(cards),
            max_efa_interfaces=int(max_efa),
            gpus=int(gpus),
            gpu_model=gpu_model,
            nvme_volumes=int(nvme_volumes),
            nvme_volume_gb=int(nvme_volume_gb),
        )
    return types


INSTANCE_TYPES: dict[str, InstanceType] = _parse_table(_TABLE)
"""EFA-capable GPU instance types we can lay out. A type not here is a config error, never a guess."""


def efa_interfaces(instance: InstanceType) -> tuple[EfaInterface, ...]:
    """The network interfaces of a GPU node: one EFA per network card.

    Card 0, device 0 is the primary interface, an `efa` (EFA with ENA) interface that also carries
    the node's IP traffic and pods' addresses. Every other card gets an `efa-only` interface at
    device index 1, so no (card, device) pair repeats and no extra IP addresses are taken.

    Sources: EC2 User Guide, "Maximize network bandwidth on Amazon EC2 instances with multiple
    network cards" (primary: card 0, device 0, EFA with ENA, never EFA-only; each additional
    interface: next unused card, device index 1, EFA or EFA-only) and EKS User Guide, "EFA and
    EFA-only interfaces" ("you can't set the network card 0 to an EFA-only interface"). A newer
    revision of the EC2 guide also allows an ENA primary plus an EFA-only at card 0, device 1 and
    EFA-only at device 0 elsewhere; we keep the layout both guides accept on EKS.
    """
    slots = [EfaInterface(network_card_index=0, device_index=0, interface_type="efa")]
    slots += [
        EfaInterface(network_card_index=card, device_index=1, interface_type="efa-only")
        for card in range(1, instance.efa_interface_count)
    ]
    return tuple(slots)


def mig_config_is_valid(label: str, instance: InstanceType) -> bool:
    """Whether `label` (the `nvidia.com/mig.config` value) is a layout this GPU supports.

    Accepts `all-disabled`, `all-balanced` and `all-<profile>` as in the GPU operator's default
    mig-parted configuration.
    """
    if not instance.mig_profiles:
        return False
    if label in ("all-disabled", "all-balanced"):
        return True
    return label.startswith("all-") and label[len("all-") :] in instance.mig_profiles


# --- AWS Fault Injection Service -------------------------------------------------------------

FIS_ACTIONS: dict[str, tuple[str, str]] = {
    "aws:ec2:stop-instances": ("Instances", "aws:ec2:instance"),
    "aws:network:disrupt-connectivity": ("Subnets", "aws:ec2:subnet"),
    "aws:eks:pod-delete": ("Pods", "aws:eks:pod"),
}
"""The FIS actions peakguard's experiments use: action id -> (the action's `targets` key, the target's
resource type). From the FIS actions reference
(https://docs.aws.amazon.com/fis/latest/userguide/fis-actions-reference.html) and its target keys
(https://docs.aws.amazon.com/fis/latest/userguide/action-sequence.html#action-targets). infra/chaos.py
declares nothing else, and the policy pack refuses an action outside it."""


# --- CPU instances (the load pool) -----------------------------------------------------------

CPU_INSTANCE_TYPES: dict[str, tuple[int, int]] = {
    "c7i.xlarge": (4, 8),
    "c7i.2xlarge": (8, 16),
    "c7i.4xlarge": (16, 32),
    "c7i.8xlarge": (32, 64),
    "c7i.16xlarge": (64, 128),
}
"""vCPUs and GiB of memory of the CPU types the load pool may use (Amazon EC2 C7i instances,
https://aws.amazon.com/ec2/instance-types/c7i/): the namespace's quota is sized from them."""
