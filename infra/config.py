"""The stack's configuration: read once, validated whole, frozen.

`StackConfig.from_mapping` takes the decoded `config:` map of a `Pulumi.<env>.yaml` (or what the
Pulumi engine hands the program) and returns plain frozen values, or raises `ConfigError` naming
the key, the bad value and what is allowed, before any resource is declared. It imports no
Pulumi, so the offline preview and the policy check validate a stack file the same way
`pulumi up` does.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, NoReturn

from infra import facts

__all__ = [
    "CHARTS",
    "ENVIRONMENTS",
    "PROJECT",
    "CapacityReservation",
    "ClusterConfig",
    "ConfigError",
    "FsxConfig",
    "GpuPoolConfig",
    "IngressConfig",
    "KubernetesConfig",
    "ModelServiceConfig",
    "NetworkConfig",
    "Scaling",
    "ServiceMode",
    "StackConfig",
    "StorageConfig",
    "SystemNodesConfig",
]

PROJECT = "peakguard"
"""The Pulumi project name, and so the namespace of our config keys (`peakguard:<key>`)."""

ENVIRONMENTS = ("dev", "staging", "prod")
"""Stack names. The stack name is the environment."""

AmiFamily = Literal["al2023", "ubuntu"]
NatGateways = Literal["perAz", "single"]
ReservationType = Literal["odcr", "capacity-block"]
Generation = Literal["blue", "green"]
GENERATIONS: tuple[Generation, ...] = ("blue", "green")

_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")
_POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_CLUSTER_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")
_K8S_VERSION = re.compile(r"^1\.(\d{2})$")
_AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")
_RESERVATION_ID = re.compile(r"^cr-[0-9a-f]{8,17}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_FSX_THROUGHPUT_PER_TIB = (125, 250, 500, 1000)
_MAX_GPU_VOLUME_GIB = 16384
_MAX_HEADROOM = 10
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# An image reference pinned by digest, or by a tag that is not a moving one.
_IMAGE_BY_DIGEST = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
_IMAGE_BY_TAG = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[0-9]+)?(/[a-z0-9._-]+)*:([A-Za-z0-9_][A-Za-z0-9._-]{0,127})$")
_MOVING_TAGS = ("latest", "main", "master", "stable", "dev", "edge", "nightly")
_AUTOSCALER_TAG = re.compile(r"^v(\d+\.\d+)\.\d+$")
_KUBERNETES_KEYS = ("charts", "clusterAutoscalerImageTag", "efaDevicePluginImageTag", "modelService")
_PLUGIN_TAG = re.compile(r"^v\d+\.\d+\.\d+$")
EFA_DEVICE_PLUGIN_IMAGE_TAG = "v0.5.13"
"""What chart aws-efa-k8s-device-plugin v0.5.20 (eks-charts) deploys by default: its values.yaml
`image.tag`. Pinned here so that a chart bump never moves the plugin unannounced."""
_CHART_VERSION = re.compile(r"^v?\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
# An EKS optimized AMI's release version: <kubernetes version>-<build date>, e.g. 1.33.4-20251010.
_RELEASE_VERSION = re.compile(r"^\d+\.\d+\.\d+-\d{8}$")
_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+$")

CHARTS = (
    "gpuOperator",
    "efaDevicePlugin",
    "metricsServer",
    "clusterAutoscaler",
    "awsLoadBalancerController",
    "kubePrometheusStack",
    "prometheusAdapter",
    "keda",
    "openTelemetryCollector",
)
"""The Helm releases of the Kubernetes side, by their `peakguard:kubernetes.charts` key."""


class ConfigError(ValueError):
    """A stack config value is missing or invalid; the message names the key and the fix."""


# --- The values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scaling:
    """Sizes of one node group (for GPU pools: of each per-AZ group)."""

    min_size: int
    """Nodes the group never goes below."""
    desired_size: int
    """Initial size only: the autoscaler and the runbooks own it afterwards (ignore_changes)."""
    max_size: int
    """Upper bound; with the other AZs' groups it must cover the expected peak plus headroom."""


@dataclass(frozen=True)
class NetworkConfig:
    vpc_cidr: ipaddress.IPv4Network
    """The VPC's address range; split into one private and one public subnet per AZ."""
    availability_zones: tuple[str, ...]
    """AZ names, in order. prod needs at least 3 so one AZ's loss leaves two thirds serving."""
    nat_gateways: NatGateways
    """`perAz` keeps egress alive when an AZ dies (required in prod); `single` saves money."""


@dataclass(frozen=True)
class SystemNodesConfig:
    instance_type: str
    """Instance type of the CPU node group that runs cluster add-ons (coredns, controllers)."""
    scaling: Scaling
    """Sizes of the system node group, which spans every AZ."""


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    """EKS cluster name; default `peakguard-<env>`."""
    kubernetes_version: str
    """EKS control-plane version, e.g. "1.33"."""
    endpoint_public_access: bool
    """Whether the API endpoint is reachable from outside the VPC (private access is always on)."""
    public_access_cidrs: tuple[str, ...]
    """Who may reach the public endpoint; prod refuses 0.0.0.0/0."""
    service_cidr: ipaddress.IPv4Network
    """Kubernetes Service addresses; must not overlap the VPC. Default 172.20.0.0/16."""
    log_types: tuple[str, ...]
    """Control-plane log streams sent to CloudWatch; default all five."""
    addon_versions: Mapping[str, str]
    """Pinned EKS add-on versions by add-on name (vpc-cni, coredns, kube-proxy)."""
    system_nodes: SystemNodesConfig

    @property
    def dns_cluster_ip(self) -> str:
        """CoreDNS's Service address: the tenth of the Service range, as EKS assigns it."""
        return str(self.service_cidr.network_address + 10)


@dataclass(frozen=True)
class NodeImage:
    """What one generation of a pool's nodes boots."""

    ami_id: str | None
    """A custom AMI (the ubuntu family)."""
    release_version: str | None
    """An EKS AL2023 NVIDIA AMI release; None with no ami_id means the newest EKS offers."""

    def describe(self) -> str:
        if self.ami_id:
            return f"amiId {self.ami_id}"
        if self.release_version:
            return f"releaseVersion {self.release_version}"
        return "EKS's newest AL2023 NVIDIA AMI release"


@dataclass(frozen=True)
class CapacityReservation:
    """A reservation a GPU group in one AZ launches into."""

    reservation_id: str
    """`cr-...` of an On-Demand Capacity Reservation or an EC2 Capacity Block for ML."""
    type: ReservationType
    """`odcr` or `capacity-block` (which also needs the capacity-block market type)."""
    placement_group: str | None
    """The cluster placement group the reservation was created in, if any. We never create one
    beside a reservation: instances must land where the reserved capacity is."""


@dataclass(frozen=True)
class GpuPoolConfig:
    name: str
    """Pool name, used in node group names and the `peakguard.io/pool` label (e.g. full, mig)."""
    instance_type: str
    """An EFA-capable GPU instance type from `infra.facts.INSTANCE_TYPES`."""
    availability_zones: tuple[str, ...]
    """One managed node group per AZ: EFA traffic stays in one subnet and placement group."""
    ami_family: AmiFamily
    """`al2023` (EKS-optimised NVIDIA AMI, nodeadm) or `ubuntu` (Canonical EKS AMI, for GDS)."""
    ami_id: str | None
    """Required for `ubuntu` (a custom AMI); unset for `al2023`, where EKS picks the AMI."""
    release_version: str | None
    """AL2023 AMI release version pinned for the node group; unset means EKS's latest."""
    mig_profile: str | None
    """`nvidia.com/mig.config` label value, e.g. `all-1g.10gb`; None when MIG is off."""
    expected_peak_nodes: int
    """Nodes the pool needs at the expected peak, across its AZs."""
    headroom: Fraction
    """Factor over the expected peak that the groups' max must reach; >= 1.3."""
    scaling_per_az: Scaling
    """Sizes of each per-AZ node group."""
    max_unavailable_percentage: int
    """EKS rolling-update batch, <= 33 (never more than a third of a group at once)."""
    root_volume_gib: int
    """Encrypted gp3 root volume size; model weights live on the instance-store RAID0."""
    pods_need_instance_metadata: bool
    """Raise the IMDSv2 hop limit to 2 because pods on this pool read instance metadata."""
    gds: bool
    """GPUDirect Storage (nvidia-fs); only on the Ubuntu AMI family."""
    capacity_reservations: Mapping[str, CapacityReservation]
    """Reservation per AZ; those AZs get no placement group of ours."""
    generation: Generation = "blue"
    """Which of the pool's two node-group generations serves (blue/green, README "Rolling upgrades")."""
    next_image: NodeImage | None = None
    """Declares the other generation, at this image and empty, for `rolling-upgrade` to move the
    nodes to; None when no upgrade is under way (the other generation is then not declared)."""

    @property
    def instance(self) -> facts.InstanceType:
        return facts.INSTANCE_TYPES[self.instance_type]

    @property
    def image(self) -> NodeImage:
        """What the serving generation boots."""
        return NodeImage(ami_id=self.ami_id, release_version=self.release_version)

    @property
    def idle_generation(self) -> Generation:
        return "green" if self.generation == "blue" else "blue"

    @property
    def max_capacity(self) -> int:
        return self.scaling_per_az.max_size * len(self.availability_zones)


@dataclass(frozen=True)
class FsxConfig:
    availability_zone: str
    """FSx for Lustre is single-AZ: put it where the GPU nodes that load weights run."""
    storage_capacity_gib: int
    """1200, or a multiple of 2400 (PERSISTENT_2)."""
    throughput_per_tib: int
    """MB/s per TiB: 125, 250, 500 or 1000."""


@dataclass(frozen=True)
class StorageConfig:
    fsx: FsxConfig | None
    """FSx for Lustre (PERSISTENT_2, EFA) for fast model loading; None when disabled."""


@dataclass(frozen=True)
class ServiceMode:
    """The operating mode the mode ConfigMap starts with (the model service's `mode.json`)."""

    model: Literal["full", "light"] = "full"
    precision: Literal["fp32", "int8"] = "fp32"
    shedding: bool = False
    batch_min: int = 16
    batch_max: int = 128
    model_version: str = ""
    """Artifact version folder under `models/` in the bucket; empty means the newest there."""

    def to_document(self) -> dict[str, Any]:
        """`mode.json` as the model service reads it (its field names)."""
        return {
            "model": self.model,
            "precision": self.precision,
            "shedding": self.shedding,
            "batch_min": self.batch_min,
            "batch_max": self.batch_max,
            "model_version": self.model_version,
        }


@dataclass(frozen=True)
class IngressConfig:
    scheme: Literal["internet-facing", "internal"]
    """The ALB's scheme; `internal` keeps it inside the VPC."""
    host: str | None
    """Host name the Ingress rule matches; None matches any."""
    certificate_arn: str | None
    """ACM certificate for HTTPS on 443; without one the ALB listens on HTTP 80 only."""


@dataclass(frozen=True)
class ModelServiceConfig:
    namespace: str
    """Namespace of the workload; `peakguard` by default."""
    image: str
    """The service image, by digest (`...@sha256:...`) or a pinned tag; never a moving tag."""
    weights_image: str
    """Image of the init container that copies the weights from S3 (the AWS CLI)."""
    pool: str
    """GPU pool the full model runs on."""
    light_pool: str | None
    """MIG pool for the light-model variant; None when the env has no MIG pool (no light variant)."""
    gpus_per_replica: int
    expected_peak_replicas: int
    """Replicas of the full model at the expected peak (the seed's peak: 85)."""
    min_replicas: int
    max_replicas: int
    """HPA maximum: at least ceil(1.3 x expected peak), at most what the pool's GPUs hold."""
    in_flight_per_replica: int
    """The HPA's target for average in-flight requests per pod: the load-leading metric."""
    light_max_replicas: int
    canary_max_replicas: int
    max_request_seconds: int
    """The longest a request may take; graceful shutdown and deregistration are sized from it."""
    startup_seconds: int
    """Longest model load plus warm-up before the startup probe gives up on a pod."""
    slo_p99_milliseconds: int
    """The latency SLO: p99 above it for minutes is an incident (the seed's normal was 200 ms)."""
    cpu: str
    memory: str
    mode: ServiceMode
    ingress: IngressConfig
    admin_source_cidrs: tuple[str, ...] = ()
    """Hosts outside the cluster that call the pods' admin API (a runbook runner on a bastion in the
    VPC); runners inside the cluster are let in by their pod label (`peakguard.io/admin-client`)."""

    @property
    def pre_stop_seconds(self) -> int:
        """How long a terminating pod keeps serving while the ALB and kube-proxy stop sending to it."""
        return 15

    @property
    def deregistration_delay_seconds(self) -> int:
        """The ALB drains a target this long: in-flight requests finish, then the target goes."""
        return self.pre_stop_seconds + self.max_request_seconds

    @property
    def idle_timeout_seconds(self) -> int:
        """The ALB closes a connection idle this long, on either side: longer than the longest request."""
        return self.max_request_seconds + 5

    @property
    def keep_alive_seconds(self) -> int:
        """The service keeps an idle connection open longer than the ALB does, so the ALB closes it:
        a target that closes first races the ALB, which answers 502 to a request it sent on the closing
        connection (AWS: "Edit attributes for your Application Load Balancer", Connection idle timeout)."""
        return self.idle_timeout_seconds + 15

    @property
    def termination_grace_seconds(self) -> int:
        """Longer than preStop plus the longest request, and than the ALB's deregistration delay."""
        return self.deregistration_delay_seconds + 15


@dataclass(frozen=True)
class KubernetesConfig:
    chart_versions: Mapping[str, str]
    """Pinned Helm chart version per add-on (keys: `CHARTS`)."""
    cluster_autoscaler_image_tag: str
    """The autoscaler release of the cluster's Kubernetes minor (e.g. v1.33.3), whatever the chart's default."""
    efa_device_plugin_image_tag: str
    """The EFA device plugin's own release: the chart's version is not the plugin's (chart v0.5.20 runs v0.5.13)."""
    model_service: ModelServiceConfig


@dataclass(frozen=True)
class StackConfig:
    env: str
    """dev, staging or prod (the stack name)."""
    region: str
    """AWS region (`aws:region`)."""
    network: NetworkConfig
    cluster: ClusterConfig
    gpu_pools: tuple[GpuPoolConfig, ...]
    storage: StorageConfig
    kubernetes: KubernetesConfig
    tags: Mapping[str, str] = field(default_factory=dict)
    """Extra tags on taggable resources and on GPU instances."""

    @property
    def partition(self) -> str:
        """ARN partition of the region (aws, aws-cn, aws-us-gov)."""
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    def pool(self, name: str) -> GpuPoolConfig:
        for pool in self.gpu_pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, stack: str) -> StackConfig:
        """Validate a decoded stack config map (`{"peakguard:network": {...}, ...}`)."""
        return _parse_stack(values, stack)


# --- Reading, with the key path in every message ------------------------------------------

_MISSING: Any = object()


def _describe(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class _Obj:
    """A config object being read. Its schema's keys are declared up front, so a misspelt key is
    reported as such (with a suggestion) before anything it would have set is missed."""

    def __init__(self, key: str, value: Any, *, known: Sequence[str], separator: str = ".") -> None:
        if not isinstance(value, Mapping):
            _fail(key, value, "must be an object (a YAML mapping)")
        self.key = key
        self._separator = separator
        self._value: Mapping[Any, Any] = value
        for name in sorted(value, key=str):
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
                _fail(self._path(name), value[name], f"is not a known key; {hint}")

    def _get(self, name: str, default: Any) -> Any:
        value = self._value.get(name, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                _fail(self._path(name), _MISSING, "is required")
            return default
        return value

    def _path(self, name: Any) -> str:
        return f"{self.key}{self._separator}{name}"

    def text(self, name: str, *, default: Any = _MISSING, choices: Sequence[str] = ()) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            # `kubernetesVersion: 1.30` is the number 1.3 to YAML: only quotes keep it text.
            _fail(self._path(name), value, f"must be a string: YAML read a number; quote it (e.g. '{value}')")
        if not isinstance(value, str) or not value:
            _fail(self._path(name), value, "must be a non-empty string")
        if choices and value not in choices:
            _fail(self._path(name), value, f"must be one of {', '.join(choices)}")
        return value

    def number(self, name: str, *, default: Any = _MISSING, low: int = 0, high: int | None = None) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        # `pulumi config set --path` stores numbers as strings; accept plain ASCII digits too.
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(self._path(name), value, "must be a whole number")
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            _fail(self._path(name), value, f"must be {bounds}")
        return value

    def flag(self, name: str, *, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            _fail(self._path(name), value, "must be true or false")
        return value

    def texts(self, name: str, *, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if (
            isinstance(value, str)
            or not isinstance(value, Sequence)
            or not all(isinstance(item, str) and item for item in value)
        ):
            _fail(self._path(name), value, "must be a list of strings")
        return tuple(value)

    def child(self, name: str, *, known: Sequence[str], default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        return _Obj(self._path(name), value, known=known)

    def items(self, name: str, *, known: Sequence[str], default: Any = _MISSING) -> list[tuple[Any, _Obj]]:
        """The entries of a map-of-objects key (pools by name, reservations by AZ), each an object."""
        value = self._get(name, default)
        if value is default:
            return []
        if not isinstance(value, Mapping):
            _fail(self._path(name), value, "must be an object (a YAML mapping)")
        container = self._path(name)
        return [(k, _Obj(f"{container}.{k}", v, known=known)) for k, v in value.items()]


def _fail(key: str, value: Any, problem: str) -> NoReturn:
    raise ConfigError(f"{key}: {problem} (got {_describe(value)})")


# --- The schema ----------------------------------------------------------------------------


_SCALING_KEYS = ("minSize", "desiredSize", "maxSize")
_CLUSTER_KEYS = ("name", "kubernetesVersion", "endpoint", "serviceIpv4Cidr", "logTypes", "addons", "systemNodes")
_POOL_KEYS = (
    "instanceType", "availabilityZones", "amiFamily", "amiId", "releaseVersion", "migProfile",
    "expectedPeakNodes", "headroom", "scalingPerAz", "maxUnavailablePercentage", "rootVolumeGiB",
    "podsNeedInstanceMetadata", "gds", "capacityReservations", "generation", "next",
)  # fmt: skip


def _parse_stack(values: Mapping[str, Any], stack: str) -> StackConfig:
    if stack not in ENVIRONMENTS:
        _fail("stack", stack, f"must be one of {', '.join(ENVIRONMENTS)} (the stack name is the environment)")
    env = stack
    for key in values:
        namespace = str(key).partition(":")[0]
        # A misspelt namespace would otherwise surface as "peakguard:network is required".
        if namespace != PROJECT and difflib.get_close_matches(namespace, [PROJECT], n=1, cutoff=0.7):
            _fail(
                str(key),
                values[key],
                f"is not a key of this program; did you mean '{PROJECT}:{str(key).partition(':')[2]}'?",
            )
    ours = {k.split(":", 1)[1]: v for k, v in values.items() if k.startswith(f"{PROJECT}:")}
    root = _Obj(PROJECT, ours, known=("network", "cluster", "gpuPools", "storage", "kubernetes", "tags"), separator=":")

    region = values.get("aws:region")
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        _fail(
            "aws:region",
            region if region is not None else _MISSING,
            "must name an AWS region, e.g. us-west-2 (`pulumi config set aws:region ...`)",
        )

    network = _parse_network(
        root.child("network", known=("vpcCidr", "availabilityZones", "natGateways")), env=env, region=region
    )
    cluster = _parse_cluster(root.child("cluster", known=_CLUSTER_KEYS), env=env, network=network)
    pools = tuple(
        _parse_gpu_pool(name, node, network=network) for name, node in root.items("gpuPools", known=_POOL_KEYS)
    )
    if not pools:
        _fail(f"{PROJECT}:gpuPools", {}, "must define at least one GPU pool")
    storage = _parse_storage(root.child("storage", known=("fsx",), default=None), pools=pools)
    kubernetes = _parse_kubernetes(
        root.child("kubernetes", known=_KUBERNETES_KEYS),
        pools=pools,
        kubernetes_version=cluster.kubernetes_version,
    )
    raw_tags = ours.get("tags") or {}
    if not isinstance(raw_tags, Mapping):
        _fail(f"{PROJECT}:tags", raw_tags, "must map tag names to values")
    tags: dict[str, str] = {}
    room = facts.TAGS_PER_RESOURCE - facts.PROGRAM_TAGS_MAX
    if len(raw_tags) > room:
        limits = f"AWS allows {facts.TAGS_PER_RESOURCE} per resource, the program adds up to {facts.PROGRAM_TAGS_MAX}"
        _fail(f"{PROJECT}:tags", f"{len(raw_tags)} tags", f"must be at most {room}: {limits}")
    for name, value in raw_tags.items():
        key = f"{PROJECT}:tags.{name}"
        if not isinstance(value, str) or not value:
            _fail(key, value, "must be a non-empty string")
        if str(name).startswith("peakguard:"):
            # The program's own tags (env, pool, managed-by) drive cost reports, runbooks and policies.
            _fail(key, value, "is reserved: tags starting with 'peakguard:' are set by the program")
        if str(name).lower().startswith("aws:"):
            _fail(key, value, "is reserved by AWS: tag keys may not start with 'aws:'")
        if len(str(name)) > facts.TAG_KEY_MAX:
            _fail(key, value, f"has a key of {len(str(name))} characters; AWS allows {facts.TAG_KEY_MAX}")
        if len(value) > facts.TAG_VALUE_MAX:
            _fail(key, f"{len(value)} characters", f"must be at most {facts.TAG_VALUE_MAX} characters (AWS's limit)")
        tags[str(name)] = value
    return StackConfig(
        env=env,
        region=region,
        network=network,
        cluster=cluster,
        gpu_pools=pools,
        storage=storage,
        kubernetes=kubernetes,
        tags=tags,
    )


def _parse_network(node: _Obj, *, env: str, region: str) -> NetworkConfig:
    cidr_text = node.text("vpcCidr")
    try:
        cidr = ipaddress.IPv4Network(cidr_text)
    except ValueError as exc:
        _fail(node._path("vpcCidr"), cidr_text, f"is not an IPv4 network ({exc})")
    if not 16 <= cidr.prefixlen <= 20:
        _fail(
            node._path("vpcCidr"),
            cidr_text,
            "must be a /16 to /20: GPU nodes with EFA and many pods use many addresses",
        )
    azs = node.texts("availabilityZones")
    if len(set(azs)) != len(azs):
        _fail(node._path("availabilityZones"), list(azs), "lists an AZ twice")
    for az in azs:
        if not (az.startswith(region) and len(az) == len(region) + 1 and az[-1].isalpha()):
            _fail(node._path("availabilityZones"), az, f"is not an AZ of region {region} (e.g. {region}a)")
    minimum = 3 if env == "prod" else 2
    if not minimum <= len(azs) <= 4:
        _fail(
            node._path("availabilityZones"),
            list(azs),
            f"must list {minimum} to 4 AZs in {env}: a single AZ's loss must not take the service down",
        )
    nat = node.text("natGateways", default="perAz" if env == "prod" else "single", choices=("perAz", "single"))
    if env == "prod" and nat != "perAz":
        _fail(node._path("natGateways"), nat, "must be perAz in prod, so an AZ outage leaves the others egress")
    return NetworkConfig(vpc_cidr=cidr, availability_zones=azs, nat_gateways=nat)


def _parse_scaling(node: _Obj) -> Scaling:
    low = node.number("minSize", low=0, high=450)
    desired = node.number("desiredSize", default=low, low=0, high=450)
    high = node.number("maxSize", low=1, high=450)
    if not low <= desired <= high:
        _fail(
            node.key,
            {"minSize": low, "desiredSize": desired, "maxSize": high},
            "must satisfy minSize <= desiredSize <= maxSize",
        )
    return Scaling(min_size=low, desired_size=desired, max_size=high)


def _parse_cluster(node: _Obj, *, env: str, network: NetworkConfig) -> ClusterConfig:
    name = node.text("name", default=f"{PROJECT}-{env}")
    if not _CLUSTER_NAME.fullmatch(name):
        _fail(node._path("name"), name, "must start with a letter and hold only letters, digits and '-' (max 63)")
    version = node.text("kubernetesVersion")
    if not _K8S_VERSION.fullmatch(version):
        _fail(node._path("kubernetesVersion"), version, 'must be an EKS version such as "1.33" (quote it in YAML)')

    endpoint = node.child("endpoint", known=("publicAccess", "publicAccessCidrs"))
    public = endpoint.flag("publicAccess")
    cidrs = endpoint.texts("publicAccessCidrs", default=())
    for cidr in cidrs:
        try:
            ipaddress.IPv4Network(cidr)
        except ValueError as exc:
            _fail(endpoint._path("publicAccessCidrs"), cidr, f"is not an IPv4 network ({exc})")
    if public and not cidrs:
        _fail(
            endpoint._path("publicAccessCidrs"),
            [],
            "must list who may reach the public endpoint (or set publicAccess: false)",
        )
    if not public and cidrs:
        _fail(endpoint._path("publicAccessCidrs"), list(cidrs), "is set but publicAccess is false")
    if env == "prod" and any(ipaddress.IPv4Network(c).prefixlen == 0 for c in cidrs):
        _fail(
            endpoint._path("publicAccessCidrs"),
            list(cidrs),
            "must not include 0.0.0.0/0 in prod; list your VPN/bastion ranges",
        )
    # Counted on the union: two /1s are the internet too, and overlapping ranges count once.
    admitted = sum(net.num_addresses for net in ipaddress.collapse_addresses(ipaddress.IPv4Network(c) for c in cidrs))
    if env == "prod" and admitted > facts.PUBLIC_ENDPOINT_MAX_ADDRESSES:
        _fail(
            endpoint._path("publicAccessCidrs"),
            list(cidrs),
            f"admit {admitted} addresses together; prod allows {facts.PUBLIC_ENDPOINT_MAX_ADDRESSES} (a /16, "
            "facts.PUBLIC_ENDPOINT_MAX_ADDRESSES): list your VPN/bastion ranges",
        )

    service_text = node.text("serviceIpv4Cidr", default="172.20.0.0/16")
    try:
        service_cidr = ipaddress.IPv4Network(service_text)
    except ValueError as exc:
        _fail(node._path("serviceIpv4Cidr"), service_text, f"is not an IPv4 network ({exc})")
    if not 12 <= service_cidr.prefixlen <= 24 or service_cidr.overlaps(network.vpc_cidr):
        _fail(
            node._path("serviceIpv4Cidr"),
            service_text,
            f"must be a /12 to /24 that does not overlap the VPC ({network.vpc_cidr})",
        )

    log_types = node.texts("logTypes", default=_LOG_TYPES)
    for log_type in log_types:
        if log_type not in _LOG_TYPES:
            _fail(node._path("logTypes"), log_type, f"must be among {', '.join(_LOG_TYPES)}")
    if env == "prod" and not {"api", "audit"} <= set(log_types):
        # An incident's first question is who changed what: prod keeps the API server's and the audit log.
        _fail(node._path("logTypes"), list(log_types), "must include api and audit in prod")

    addons = node.child("addons", known=("vpcCni", "coredns", "kubeProxy"))
    versions = {
        "vpc-cni": addons.text("vpcCni"),
        "coredns": addons.text("coredns"),
        "kube-proxy": addons.text("kubeProxy"),
    }
    for addon_key, (addon, version_text) in zip(("vpcCni", "coredns", "kubeProxy"), versions.items(), strict=True):
        if facts.parse_addon_version(version_text) is None:
            _fail(
                addons._path(addon_key),
                version_text,
                f"must be an EKS add-on version like v1.2.3-eksbuild.1 for {addon}",
            )
    kube_proxy = facts.parse_addon_version(versions["kube-proxy"])
    assert kube_proxy is not None
    if f"{kube_proxy[0]}.{kube_proxy[1]}" != version:
        # EKS builds the kube-proxy add-on per Kubernetes version (EKS User Guide, "Manage kube-proxy",
        # its versions table: v1.33.x for 1.33, v1.34.x for 1.34).
        _fail(addons._path("kubeProxy"), versions["kube-proxy"], f"must be a build for Kubernetes {version} "
              f"(v{version}.x-eksbuild.N): EKS builds kube-proxy per cluster version")  # fmt: skip
    vpc_cni = facts.parse_addon_version(versions["vpc-cni"])
    assert vpc_cni is not None
    if vpc_cni < facts.VPC_CNI_MIN_EFA_ONLY:
        minimum = ".".join(map(str, facts.VPC_CNI_MIN_EFA_ONLY))
        _fail(
            addons._path("vpcCni"),
            versions["vpc-cni"],
            f"must be v{minimum} or newer: older VPC CNIs do not support the efa-only interfaces of the GPU nodes",
        )

    system = node.child("systemNodes", known=("instanceType", "scaling"))
    system_nodes = SystemNodesConfig(
        instance_type=system.text("instanceType"),
        scaling=_parse_scaling(system.child("scaling", known=_SCALING_KEYS)),
    )
    if system_nodes.scaling.min_size < len(network.availability_zones):
        _fail(
            system._path("scaling.minSize"),
            system_nodes.scaling.min_size,
            f"must be >= the number of AZs ({len(network.availability_zones)}) so add-ons run in every AZ",
        )
    return ClusterConfig(
        name=name,
        kubernetes_version=version,
        endpoint_public_access=public,
        public_access_cidrs=cidrs,
        service_cidr=service_cidr,
        log_types=log_types,
        addon_versions=versions,
        system_nodes=system_nodes,
    )


def _parse_gpu_pool(name: str, node: _Obj, *, network: NetworkConfig) -> GpuPoolConfig:
    if not isinstance(name, str) or not _POOL_NAME.fullmatch(name):
        _fail(node.key, name, "pool names are 1-12 lowercase letters and digits, starting with a letter")
    instance_type = node.text("instanceType")
    if instance_type not in facts.INSTANCE_TYPES:
        _fail(
            node._path("instanceType"),
            instance_type,
            "is not in the EFA instance-type table (infra/facts.py); supported: "
            + ", ".join(sorted(facts.INSTANCE_TYPES))
            + ". Add the type there, with its source, to use it",
        )
    instance = facts.INSTANCE_TYPES[instance_type]

    azs = node.texts("availabilityZones", default=network.availability_zones)
    if not azs:
        _fail(node._path("availabilityZones"), [], "must list at least one AZ (leave it out for all of the network's)")
    for az in azs:
        if az not in network.availability_zones:
            _fail(
                node._path("availabilityZones"),
                az,
                f"is not one of the network's AZs ({', '.join(network.availability_zones)})",
            )
    if len(set(azs)) != len(azs):
        _fail(node._path("availabilityZones"), list(azs), "lists an AZ twice")

    family = node.text("amiFamily", choices=("al2023", "ubuntu"))
    image = _parse_image(node, family)
    generation = node.text("generation", default="blue", choices=GENERATIONS)
    next_node = node.child("next", known=("amiId", "releaseVersion"), default=None)
    next_image = None if next_node is None else _parse_image(next_node, family)
    if next_image is not None and next_image.ami_id is None and next_image.release_version is None:
        _fail(
            node._path("next.releaseVersion"),
            _MISSING,
            "is required: an upgrade names the AL2023 release it goes to (`aws ssm get-parameters-by-path "
            "--path /aws/service/eks/optimized-ami/<k8s version>/amazon-linux-2023/x86_64/nvidia/`)",
        )
    if next_image == image:
        _fail(
            node._path("next"),
            image.describe(),
            f"is what the serving generation ({generation}) already runs; name the image to upgrade to, "
            "or remove `next`",
        )

    mig = node.text("migProfile", default="none")
    if mig == "none":
        mig_profile = None
    elif not instance.mig_profiles:
        _fail(node._path("migProfile"), mig, f"{instance_type} ({instance.gpu_model}) has no MIG; use none")
    elif not facts.mig_config_is_valid(mig, instance):
        _fail(
            node._path("migProfile"),
            mig,
            f"is not a MIG layout of {instance.gpu_model}; use all-<profile> with one of "
            + ", ".join(instance.mig_profiles),
        )
    else:
        mig_profile = mig

    peak = node.number("expectedPeakNodes", low=0)
    headroom_text = node._get("headroom", str(facts.HEADROOM))
    try:
        headroom = Fraction(str(headroom_text))
    except (ValueError, ZeroDivisionError):
        _fail(node._path("headroom"), headroom_text, "must be a number such as 1.3")
    if not facts.HEADROOM <= headroom <= _MAX_HEADROOM:
        _fail(
            node._path("headroom"),
            headroom_text,
            f"may raise the headroom, never lower it below {float(facts.HEADROOM)} (and at most {_MAX_HEADROOM})",
        )
    scaling = _parse_scaling(node.child("scalingPerAz", known=_SCALING_KEYS))
    needed = facts.capacity_with_headroom(peak, headroom)
    if scaling.max_size * len(azs) < needed:
        per_az = -(-needed // len(azs))
        _fail(
            node._path("scalingPerAz.maxSize"),
            scaling.max_size,
            f"gives {scaling.max_size * len(azs)} nodes over {len(azs)} AZs, below the {needed} that an "
            f"expected peak of {peak} needs with {float(headroom)}x headroom; set maxSize >= {per_az}",
        )

    max_unavailable = node.number("maxUnavailablePercentage", default=facts.MAX_UNAVAILABLE_PERCENTAGE, low=1, high=100)
    if max_unavailable > facts.MAX_UNAVAILABLE_PERCENTAGE:
        _fail(
            node._path("maxUnavailablePercentage"),
            max_unavailable,
            f"must be <= {facts.MAX_UNAVAILABLE_PERCENTAGE}: never take more than a third of a group down at once",
        )

    gds = node.flag("gds", default=False)
    if gds and family != "ubuntu":
        _fail(
            node._path("gds"),
            gds,
            "needs amiFamily: ubuntu. GPUDirect Storage needs the nvidia-fs module from the GPU "
            "operator's driver container, which the EKS AL2023 NVIDIA AMIs (drivers preinstalled) do not run",
        )

    reservations: dict[str, CapacityReservation] = {}
    for az, entry in node.items("capacityReservations", known=("id", "type", "placementGroup"), default=None):
        if az not in azs:
            _fail(entry.key, az, f"is not one of this pool's AZs ({', '.join(azs)}); a reservation is per AZ")
        reservation_id = entry.text("id")
        if not _RESERVATION_ID.fullmatch(reservation_id):
            _fail(entry._path("id"), reservation_id, "must be a capacity reservation id (cr-...)")
        reservations[az] = CapacityReservation(
            reservation_id=reservation_id,
            type=entry.text("type", default="odcr", choices=("odcr", "capacity-block")),
            placement_group=entry.text("placementGroup", default=None),
        )

    pool = GpuPoolConfig(
        name=name,
        instance_type=instance_type,
        availability_zones=azs,
        ami_family=family,
        ami_id=image.ami_id,
        release_version=image.release_version,
        mig_profile=mig_profile,
        expected_peak_nodes=peak,
        headroom=headroom,
        scaling_per_az=scaling,
        max_unavailable_percentage=max_unavailable,
        root_volume_gib=node.number("rootVolumeGiB", default=200, low=50, high=_MAX_GPU_VOLUME_GIB),
        pods_need_instance_metadata=node.flag("podsNeedInstanceMetadata", default=False),
        gds=gds,
        capacity_reservations=reservations,
        generation=generation,
        next_image=next_image,
    )
    return pool


def _parse_image(node: _Obj, family: str) -> NodeImage:
    """`amiId` / `releaseVersion` of a pool or of its `next`, by the AMI family's rules."""
    ami_id = node.text("amiId", default=None)
    release = node.text("releaseVersion", default=None)
    if family == "ubuntu":
        if ami_id is None:
            _fail(
                node._path("amiId"),
                _MISSING,
                "is required for the ubuntu AMI family; find one with `aws ssm get-parameters-by-path "
                "--path /aws/service/canonical/ubuntu/eks/` for your Kubernetes version",
            )
        if not _AMI_ID.fullmatch(ami_id):
            _fail(node._path("amiId"), ami_id, "must be an AMI id (ami-0123456789abcdef0)")
        if release is not None:
            _fail(node._path("releaseVersion"), release, "applies to al2023 only; the ubuntu family pins amiId")
    elif ami_id is not None:
        _fail(node._path("amiId"), ami_id, "applies to ubuntu only; al2023 pools pin releaseVersion")
    if release is not None and not _RELEASE_VERSION.fullmatch(release):
        _fail(node._path("releaseVersion"), release, "must be an EKS AMI release version such as 1.33.4-20251010")
    return NodeImage(ami_id=ami_id, release_version=release)


def _parse_storage(node: _Obj | None, *, pools: Sequence[GpuPoolConfig]) -> StorageConfig:
    if node is None:
        return StorageConfig(fsx=None)
    fsx_node = node.child(
        "fsx", known=("enabled", "availabilityZone", "storageCapacityGiB", "throughputPerTiB"), default=None
    )
    fsx = None
    if fsx_node is not None and fsx_node.flag("enabled", default=True):
        gpu_azs = sorted({az for pool in pools for az in pool.availability_zones})
        az = fsx_node.text("availabilityZone")
        if az not in gpu_azs:
            _fail(
                fsx_node._path("availabilityZone"),
                az,
                f"must be an AZ with GPU nodes ({', '.join(gpu_azs)}): Lustre is single-AZ and EFA does not cross AZs",
            )
        capacity = fsx_node.number("storageCapacityGiB", low=1200)
        if capacity != 1200 and capacity % 2400:
            _fail(fsx_node._path("storageCapacityGiB"), capacity, "must be 1200 or a multiple of 2400 (PERSISTENT_2)")
        throughput = fsx_node.number("throughputPerTiB", default=250)
        if throughput not in _FSX_THROUGHPUT_PER_TIB:
            _fail(
                fsx_node._path("throughputPerTiB"),
                throughput,
                f"must be one of {', '.join(map(str, _FSX_THROUGHPUT_PER_TIB))} (MB/s per TiB, PERSISTENT_2)",
            )
        fsx = FsxConfig(availability_zone=az, storage_capacity_gib=capacity, throughput_per_tib=throughput)
    return StorageConfig(fsx=fsx)


_MODEL_SERVICE_KEYS = (
    "namespace", "image", "weightsImage", "pool", "lightPool", "gpusPerReplica", "expectedPeakReplicas",
    "minReplicas", "maxReplicas", "inFlightPerReplica", "lightMaxReplicas", "canaryMaxReplicas",
    "maxRequestSeconds", "startupSeconds", "sloP99Milliseconds", "cpu", "memory", "mode", "ingress",
    "adminSourceCidrs",
)  # fmt: skip
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$")


def _parse_kubernetes(node: _Obj, *, pools: Sequence[GpuPoolConfig], kubernetes_version: str) -> KubernetesConfig:
    charts = node.child("charts", known=CHARTS)
    versions = {}
    for chart in CHARTS:
        version = charts.text(chart)
        if not _CHART_VERSION.fullmatch(version):
            _fail(charts._path(chart), version, "must be an exact chart version such as 1.2.3 (ranges are not pinned)")
        versions[chart] = version
    tag = node.text("clusterAutoscalerImageTag", default=facts.CLUSTER_AUTOSCALER_RELEASES.get(kubernetes_version))
    if tag is None:
        _fail(
            node._path("clusterAutoscalerImageTag"),
            None,
            f"must be set for Kubernetes {kubernetes_version}: the cluster autoscaler release of that minor, "
            f"v{kubernetes_version}.<patch> (kubernetes/autoscaler releases cluster-autoscaler-{kubernetes_version}.*)",
        )
    release = _AUTOSCALER_TAG.fullmatch(tag)
    if release is None or release[1] != kubernetes_version:
        _fail(
            node._path("clusterAutoscalerImageTag"),
            tag,
            f"must be a release of the cluster's Kubernetes minor, v{kubernetes_version}.<patch>: the autoscaler "
            "supports only the minor it was built for",
        )
    efa_plugin = node.text("efaDevicePluginImageTag", default=EFA_DEVICE_PLUGIN_IMAGE_TAG)
    if not _PLUGIN_TAG.fullmatch(efa_plugin):
        _fail(node._path("efaDevicePluginImageTag"), efa_plugin, "must be a plugin release such as v0.5.13")
    return KubernetesConfig(
        chart_versions=versions,
        cluster_autoscaler_image_tag=tag,
        efa_device_plugin_image_tag=efa_plugin,
        model_service=_parse_model_service(node.child("modelService", known=_MODEL_SERVICE_KEYS), pools=pools),
    )


def _image(node: _Obj, key: str, default: Any = _MISSING) -> str:
    image = node.text(key, default=default)
    tag = image.rsplit(":", 1)[-1] if "@" not in image else ""
    if _IMAGE_BY_DIGEST.fullmatch(image):
        return str(image)
    if not _IMAGE_BY_TAG.fullmatch(image) or tag in _MOVING_TAGS:
        _fail(
            node._path(key),
            image,
            "must pin the image by digest (repo@sha256:<64 hex>) or by a fixed tag (repo:1.2.3); "
            f"moving tags ({', '.join(_MOVING_TAGS)}) and untagged images are refused",
        )
    return str(image)


def _parse_model_service(node: _Obj, *, pools: Sequence[GpuPoolConfig]) -> ModelServiceConfig:
    namespace = node.text("namespace", default=PROJECT)
    if not _NAMESPACE.fullmatch(namespace):
        _fail(node._path("namespace"), namespace, "must be a DNS label: lowercase letters, digits and '-'")
    by_name = {pool.name: pool for pool in pools}
    pool_name = node.text("pool", default=pools[0].name, choices=tuple(by_name))
    pool = by_name[pool_name]
    if pool.mig_profile is not None:
        _fail(node._path("pool"), pool_name, "runs the full model on whole GPUs; pick a pool without migProfile")
    mig_pools = [p.name for p in pools if p.mig_profile is not None]
    light_pool = node.text("lightPool", default=mig_pools[0] if mig_pools else None)
    if light_pool is not None and light_pool not in mig_pools:
        _fail(
            node._path("lightPool"),
            light_pool,
            f"must be a pool with a migProfile ({', '.join(mig_pools) or 'this env has none'}): "
            "the light variant runs on MIG slices",
        )
    if light_pool is not None and by_name[light_pool].mig_profile == "all-balanced":
        _fail(
            node._path("lightPool"),
            light_pool,
            "is cut all-balanced (three sizes of MIG instance); the light variant asks for one size: give the "
            "pool an all-<profile> migProfile such as all-1g.10gb",
        )

    gpus = node.number("gpusPerReplica", default=1, low=1, high=pool.instance.gpus)
    peak = node.number("expectedPeakReplicas", low=1)
    needed = facts.capacity_with_headroom(peak)
    low = node.number("minReplicas", low=1)
    high = node.number("maxReplicas", low=1)
    if high < needed:
        _fail(
            node._path("maxReplicas"),
            high,
            f"must be >= {needed}: an expected peak of {peak} replicas needs {float(facts.HEADROOM)}x headroom",
        )
    if low > high:
        _fail(node._path("minReplicas"), low, f"exceeds maxReplicas ({high})")
    fits = pool.max_capacity * (pool.instance.gpus // gpus)
    if high > fits:
        _fail(
            node._path("maxReplicas"),
            high,
            f"is more than pool {pool_name} can hold: {pool.max_capacity} nodes x {pool.instance.gpus // gpus} "
            f"replicas of {gpus} GPU(s) = {fits}; raise the pool's scalingPerAz.maxSize or lower maxReplicas",
        )

    max_request = node.number("maxRequestSeconds", default=30, low=1, high=600)
    cpu = node.text("cpu", default="4")
    memory = node.text("memory", default="16Gi")
    for key, quantity in (("cpu", cpu), ("memory", memory)):
        if not _QUANTITY.fullmatch(quantity):
            _fail(node._path(key), quantity, "must be a Kubernetes quantity such as 4, 500m or 16Gi")
        if not re.search(r"[1-9]", quantity.rstrip("mKiMGT")):
            _fail(node._path(key), quantity, "must be more than zero: a pod is guaranteed what it requests")

    mode_node = node.child("mode", known=("model", "precision", "shedding", "batchMin", "batchMax", "modelVersion"),
                           default=None)  # fmt: skip
    mode = ServiceMode()
    if mode_node is not None:
        mode = ServiceMode(
            model=mode_node.text("model", default="full", choices=("full", "light")),
            precision=mode_node.text("precision", default="fp32", choices=("fp32", "int8")),
            shedding=mode_node.flag("shedding", default=False),
            batch_min=mode_node.number("batchMin", default=16, low=1, high=256),
            batch_max=mode_node.number("batchMax", default=128, low=1, high=256),
            model_version=mode_node.text("modelVersion", default=""),
        )
        if mode.batch_min > mode.batch_max:
            _fail(mode_node._path("batchMin"), mode.batch_min, f"exceeds batchMax ({mode.batch_max})")

    ingress_node = node.child("ingress", known=("scheme", "host", "certificateArn"), default=None)
    ingress = IngressConfig(scheme="internal", host=None, certificate_arn=None)
    if ingress_node is not None:
        certificate = ingress_node.text("certificateArn", default=None)
        if certificate is not None and not _ARN.fullmatch(certificate):
            _fail(ingress_node._path("certificateArn"), certificate, "must be an ACM certificate ARN")
        host = ingress_node.text("host", default=None)
        if host is not None and not _HOST.fullmatch(host):
            _fail(ingress_node._path("host"), host, "must be a DNS name such as intent.example.com")
        ingress = IngressConfig(
            scheme=ingress_node.text("scheme", default="internal", choices=("internet-facing", "internal")),
            host=host,
            certificate_arn=certificate,
        )

    admin_cidrs = node.texts("adminSourceCidrs", default=())
    for cidr in admin_cidrs:
        try:
            network = ipaddress.IPv4Network(cidr)
        except ValueError as exc:
            _fail(node._path("adminSourceCidrs"), cidr, f"is not an IPv4 network ({exc})")
        if network.prefixlen == 0:
            _fail(node._path("adminSourceCidrs"), cidr, "opens the admin API to every address; name the runners' hosts")
    return ModelServiceConfig(
        admin_source_cidrs=tuple(admin_cidrs),
        namespace=namespace,
        image=_image(node, "image"),
        weights_image=_image(node, "weightsImage", default="public.ecr.aws/aws-cli/aws-cli:2.27.50"),
        pool=pool_name,
        light_pool=light_pool,
        gpus_per_replica=gpus,
        expected_peak_replicas=peak,
        min_replicas=low,
        max_replicas=high,
        in_flight_per_replica=node.number("inFlightPerReplica", default=8, low=1, high=1024),
        light_max_replicas=node.number("lightMaxReplicas", default=0 if light_pool is None else 8, low=0),
        canary_max_replicas=node.number("canaryMaxReplicas", default=2, low=1),
        max_request_seconds=max_request,
        startup_seconds=node.number("startupSeconds", default=600, low=30, high=3600),
        slo_p99_milliseconds=node.number("sloP99Milliseconds", default=1000, low=10, high=60_000),
        cpu=cpu,
        memory=memory,
        mode=mode,
        ingress=ingress,
    )
