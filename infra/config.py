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
from typing import Annotated, Any, Literal, NoReturn, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from infra import facts

__all__ = [
    "CHAOS_EXPERIMENTS",
    "CHARTS",
    "ENVIRONMENTS",
    "PROJECT",
    "CapacityReservation",
    "ChaosConfig",
    "ClusterConfig",
    "ConfigError",
    "FsxConfig",
    "GpuPoolConfig",
    "IngressConfig",
    "KubernetesConfig",
    "LoadTestConfig",
    "ModelServiceConfig",
    "NetworkConfig",
    "Pricing",
    "Scaling",
    "ServiceMode",
    "StackConfig",
    "StorageConfig",
    "SystemNodesConfig",
    "json_schema",
]

PROJECT = "peakguard"
"""The Pulumi project name, and so the namespace of our config keys (`peakguard:<key>`)."""

ENVIRONMENTS = ("dev", "staging", "prod")
"""Stack names. The stack name is the environment."""

CHAOS_EXPERIMENTS = ("gpu-zone-stop", "subnet-disconnect", "model-pod-delete")
"""The fault experiments a stack may declare (infra/chaos.py): the full pool's GPU instances in one
AZ stopped, one AZ's private subnets cut off, a share of the model pods deleted."""

AmiFamily = Literal["al2023", "ubuntu"]
NatGateways = Literal["perAz", "single"]
ReservationType = Literal["odcr", "capacity-block"]
Generation = Literal["blue", "green"]
GENERATIONS: tuple[Generation, ...] = ("blue", "green")

_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")
_POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_CLUSTER_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")
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
_PLUGIN_TAG = re.compile(r"^v\d+\.\d+\.\d+$")
EFA_DEVICE_PLUGIN_IMAGE_TAG = "v0.5.13"
"""What chart aws-efa-k8s-device-plugin v0.5.20 (eks-charts) deploys by default: its values.yaml
`image.tag`. Pinned here so that a chart bump never moves the plugin unannounced."""
_CHART_VERSION = re.compile(r"^v?\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
# An EKS optimized AMI's release version: <kubernetes version>-<build date>, e.g. 1.33.4-20251010.
_RELEASE_VERSION = re.compile(r"^\d+\.\d+\.\d+-\d{8}$")
_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$")

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
    fsx_csi_driver_version: str | None = None
    """The FSx CSI driver add-on's version where FSx is enabled; None takes EKS's default for the
    cluster's Kubernetes version (`aws eks describe-addon-versions --addon-name aws-fsx-csi-driver`)."""

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
    model_service_mount: bool = False
    """Whether the model-service pods mount the file system to copy their weights from it. Off by
    default: the file system lives in one AZ, and a pod cannot start while its volume does not
    mount, so with it on, losing that AZ (or the file system) stops new replicas in every AZ,
    the very moment the others must scale out. The static volume exists either way."""


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
class PredictiveScaleConfig:
    """The predictive-scale CronJob (runbooks/library/predictive_scale.py): absent, none runs."""

    image: str
    """The runbooks image (`peakguard[runbooks,forecast]`)."""
    replica_rps: float
    """Requests/s one full-model replica sustains on the pool's GPU (`peakguard bench model` there)."""
    horizon_minutes: int
    every_minutes: int
    """The schedule: every this many minutes."""
    model: Literal["holt_winters", "lstm", "seasonal_naive"]


@dataclass(frozen=True)
class ChaosConfig:
    """AWS FIS experiment templates for the chaos-drill runbook (infra/chaos.py): absent, none."""

    experiments: tuple[str, ...]
    """Which of CHAOS_EXPERIMENTS; the zone-wide ones get a template per AZ."""
    duration_minutes: int
    """How long a zone stays stopped or cut off (FIS restarts and reconnects it after)."""
    pod_delete_percent: int
    """Share of the model pods `model-pod-delete` deletes at once."""


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
    predictive_scale: PredictiveScaleConfig | None = None
    chaos: ChaosConfig | None = None
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
class LoadTestConfig:
    """The distributed load's node pool and namespace (infra/load_test.py): absent, neither exists."""

    instance_type: str
    """A CPU type of facts.CPU_INSTANCE_TYPES: one load worker a vCPU."""
    max_nodes: int
    namespace: str


@dataclass(frozen=True)
class KubernetesConfig:
    chart_versions: Mapping[str, str]
    """Pinned Helm chart version per add-on (keys: `CHARTS`)."""
    cluster_autoscaler_image_tag: str
    """The autoscaler release of the cluster's Kubernetes minor (e.g. v1.33.3), whatever the chart's default."""
    efa_device_plugin_image_tag: str
    """The EFA device plugin's own release: the chart's version is not the plugin's (chart v0.5.20 runs v0.5.13)."""
    model_service: ModelServiceConfig
    load_test: LoadTestConfig | None = None


@dataclass(frozen=True)
class Pricing:
    """On-Demand prices the capacity planner costs a plan with (`peakguard capacity plan`)."""

    usd_per_hour: Mapping[str, float]
    """Per instance type, in the stack's region."""
    source: str
    """Where the prices were read (a URL, the AWS Pricing API call)."""
    date: str
    """When they were read (YYYY-MM-DD): prices change, and a plan says how old its prices are."""


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
    pricing: Pricing | None = None
    """Instance prices for capacity plans; None: plans carry no cost."""

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


def _fail(key: str, value: Any, problem: str) -> NoReturn:
    raise ConfigError(f"{key}: {problem} (got {_describe(value)})")


def _problem(problem: str, *, got: Any = _MISSING, key: Any = _MISSING) -> PydanticCustomError:
    """A refusal from the document's types, carried through pydantic to `_config_error`: what is wrong,
    and, where it is not the whole value, the part that is (`got`) or the key under the value (`key`)."""
    context: dict[str, Any] = {"problem": problem}
    if got is not _MISSING:
        context["got"] = got
    if key is not _MISSING:
        context["key"] = key
    return PydanticCustomError("peakguard_config", "{problem}", context)


# --- The value types of the document ----------------------------------------------------------
#
# Each is `Annotated` metadata: it validates a YAML value and returns it as the program reads it,
# refuses it with the message an SRE reads (key, value, what is allowed), and describes it in the
# JSON Schema `peakguard config schema` writes. Pydantic's own scalar types would refuse the same
# values, but with messages that name Python types, and they cannot take what `pulumi config set
# --path` writes (every value a string).


class _ValueType:
    """Base of the value types: `check` validates, `schema` is the JSON Schema."""

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return self.schema()


@dataclass(frozen=True)
class _Text(_ValueType):
    """A non-empty string, optionally one of `choices` or matching `pattern` (else `problem`)."""

    choices: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    problem: str = ""
    any_type: bool = False
    """Refuse a non-string with `problem` too (aws:region: a number is no region either)."""
    allow_empty: bool = False
    """"" is a value here (mode.modelVersion: the newest version)."""

    def check(self, value: Any) -> str:
        if (
            self.any_type
            and self.pattern is not None
            and not (isinstance(value, str) and self.pattern.fullmatch(value))
        ):
            raise _problem(self.problem)
        if isinstance(value, int | float) and not isinstance(value, bool):
            # `kubernetesVersion: 1.30` is the number 1.3 to YAML: only quotes keep it text.
            raise _problem(f"must be a string: YAML read a number; quote it (e.g. '{value}')")
        if not isinstance(value, str) or not (value or self.allow_empty):
            raise _problem("must be a non-empty string")
        if self.choices and value not in self.choices:
            raise _problem(self.problem or f"must be one of {', '.join(self.choices)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise _problem(self.problem)
        return value

    def schema(self) -> dict[str, Any]:
        if self.choices:
            return {"type": "string", "enum": list(self.choices)}
        schema: dict[str, Any] = {"type": "string", "minLength": 0 if self.allow_empty else 1}
        if self.pattern is not None:
            schema["pattern"] = self.pattern.pattern
        return schema


@dataclass(frozen=True)
class _Whole(_ValueType):
    """A whole number in [low, high] (or one of `choices`); digit strings count (`pulumi config set
    --path` stores every value as a string)."""

    low: int = 0
    high: int | None = None
    choices: tuple[int, ...] = ()
    problem: str = ""

    def check(self, value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _problem("must be a whole number")
        if self.choices and value not in self.choices:
            raise _problem(self.problem)
        if value < self.low or (self.high is not None and value > self.high):
            raise _problem(
                f"must be between {self.low} and {self.high}" if self.high is not None else f"must be >= {self.low}"
            )
        return value

    def schema(self) -> dict[str, Any]:
        number: dict[str, Any] = {"type": "integer"}
        if self.choices:
            number["enum"] = list(self.choices)
        else:
            number["minimum"] = self.low
            if self.high is not None:
                number["maximum"] = self.high
        return {"anyOf": [number, {"type": "string", "pattern": r"^[0-9]+$"}]}


@dataclass(frozen=True)
class _Flag(_ValueType):
    """true or false; the strings 'true' and 'false' in any case count, YAML 1.1's yes/no/on/off do not."""

    def check(self, value: Any) -> bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise _problem("must be true or false")
        return value

    def schema(self) -> dict[str, Any]:
        return {
            "anyOf": [{"type": "boolean"}, {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"}]
        }


@dataclass(frozen=True)
class _Texts(_ValueType):
    """A list of non-empty strings, each optionally among `among`, or an IPv4 network (`networks`)."""

    among: tuple[str, ...] = ()
    networks: bool = False

    def check(self, value: Any) -> tuple[str, ...]:
        if (
            isinstance(value, str)
            or not isinstance(value, Sequence)
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise _problem("must be a list of strings")
        for item in value:
            if self.among and item not in self.among:
                raise _problem(f"must be among {', '.join(self.among)}", got=item)
            if self.networks:
                try:
                    ipaddress.IPv4Network(item)
                except ValueError as exc:
                    raise _problem(f"is not an IPv4 network ({exc})", got=item) from None
        return tuple(value)

    def schema(self) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "string", "minLength": 1}
        if self.among:
            item = {"type": "string", "enum": list(self.among)}
        if self.networks:
            item = _Network().schema()
        return {"type": "array", "items": item}


@dataclass(frozen=True)
class _Network(_ValueType):
    """An IPv4 network in CIDR notation, with the prefix lengths allowed (`problem` otherwise)."""

    prefixes: tuple[int, int] = (0, 32)
    problem: str = ""

    def check(self, value: Any) -> ipaddress.IPv4Network:
        text = _Text().check(value)
        try:
            network = ipaddress.IPv4Network(text)
        except ValueError as exc:
            raise _problem(f"is not an IPv4 network ({exc})") from None
        if not self.prefixes[0] <= network.prefixlen <= self.prefixes[1]:
            raise _problem(self.problem)
        return network

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "ipv4-network", "pattern": r"^[0-9.]+/[0-9]+$"}


@dataclass(frozen=True)
class _AddonVersion(_ValueType):
    """An EKS add-on version, v1.2.3-eksbuild.1."""

    addon: str

    def check(self, value: Any) -> str:
        text = _Text().check(value)
        if facts.parse_addon_version(text) is None:
            raise _problem(f"must be an EKS add-on version like v1.2.3-eksbuild.1 for {self.addon}")
        return text

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^v[0-9]+\.[0-9]+\.[0-9]+-eksbuild\.[0-9]+$"}


@dataclass(frozen=True)
class _Headroom(_ValueType):
    """A factor over the expected peak: a number or its text, at least facts.HEADROOM."""

    def check(self, value: Any) -> Fraction:
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            headroom = Fraction(str(value))
        except (ValueError, ZeroDivisionError):
            raise _problem("must be a number such as 1.3") from None
        if not facts.HEADROOM <= headroom <= _MAX_HEADROOM:
            raise _problem(
                f"may raise the headroom, never lower it below {float(facts.HEADROOM)} (and at most {_MAX_HEADROOM})"
            )
        return headroom

    def schema(self) -> dict[str, Any]:
        bounds = {"minimum": float(facts.HEADROOM), "maximum": _MAX_HEADROOM}
        return {"anyOf": [{"type": "number", **bounds}, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}]}


@dataclass(frozen=True)
class _Image(_ValueType):
    """A container image pinned by digest or by a fixed tag."""

    def check(self, value: Any) -> str:
        image = _Text().check(value)
        tag = image.rsplit(":", 1)[-1] if "@" not in image else ""
        if _IMAGE_BY_DIGEST.fullmatch(image):
            return image
        if not _IMAGE_BY_TAG.fullmatch(image) or tag in _MOVING_TAGS:
            raise _problem(
                "must pin the image by digest (repo@sha256:<64 hex>) or by a fixed tag (repo:1.2.3); "
                f"moving tags ({', '.join(_MOVING_TAGS)}) and untagged images are refused"
            )
        return image

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "anyOf": [{"pattern": _IMAGE_BY_DIGEST.pattern}, {"pattern": _IMAGE_BY_TAG.pattern}]}


@dataclass(frozen=True)
class _Quantity(_ValueType):
    """A Kubernetes resource quantity above zero."""

    def check(self, value: Any) -> str:
        quantity = _Text().check(value)
        if not _QUANTITY.fullmatch(quantity):
            raise _problem("must be a Kubernetes quantity such as 4, 500m or 16Gi")
        if not re.search(r"[1-9]", quantity.rstrip("mKiMGT")):
            raise _problem("must be more than zero: a pod is guaranteed what it requests")
        return quantity

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": _QUANTITY.pattern}


# --- The document: every key of the stack's config, its type, bounds and default ------------


class _Doc(BaseModel):
    """One YAML object of the stack config. Keys are the camelCase of the fields; a key the object
    does not declare is refused first, with the key it was probably meant to be."""

    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, alias_generator=to_camel, use_attribute_docstrings=True,
        protected_namespaces=(), arbitrary_types_allowed=True,
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise _problem("must be an object (a YAML mapping)")
        known = sorted(str(field.alias) for field in cls.model_fields.values())
        for name in sorted(data, key=str):
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
                raise _problem(f"is not a known key; {hint}", got=data[name], key=name)
        # `key:` with nothing after it is YAML's null: the key is absent (its default, or required).
        return {name: value for name, value in data.items() if value is not None}


_TEXT = _Text()
_CIDRS = _Texts(networks=True)
# Value types with long messages are named here: the annotations below are strings to Python.
_KUBERNETES_VERSION = _Text(
    choices=tuple(facts.EKS_KUBERNETES_VERSIONS),
    problem='must be an EKS version such as "1.33" (quote it in YAML), one EKS offers: '
    f"{', '.join(facts.EKS_KUBERNETES_VERSIONS)} (infra/facts.py EKS_KUBERNETES_VERSIONS)",
)
_GPU_INSTANCE_TYPE = _Text(
    choices=tuple(sorted(facts.INSTANCE_TYPES)),
    problem="is not in the EFA instance-type table (infra/facts.py); supported: "
    f"{', '.join(sorted(facts.INSTANCE_TYPES))}. Add the type there, with its source, to use it",
)
_FSX_THROUGHPUT = _Whole(
    choices=_FSX_THROUGHPUT_PER_TIB,
    problem=f"must be one of {', '.join(map(str, _FSX_THROUGHPUT_PER_TIB))} (MB/s per TiB, PERSISTENT_2)",
)


class _ScalingDoc(_Doc):
    min_size: Annotated[int, _Whole(0, facts.NODES_PER_MANAGED_NODE_GROUP)]
    """Nodes the group never goes below."""
    desired_size: Annotated[int | None, _Whole(0, facts.NODES_PER_MANAGED_NODE_GROUP)] = None
    """Initial size only (default minSize): the autoscaler and the runbooks own it afterwards."""
    max_size: Annotated[int, _Whole(1, facts.NODES_PER_MANAGED_NODE_GROUP)]
    """Upper bound; with the other AZs' groups it must cover the expected peak plus headroom."""


class _NetworkDoc(_Doc):
    vpc_cidr: Annotated[
        ipaddress.IPv4Network,
        _Network((16, 20), "must be a /16 to /20: GPU nodes with EFA and many pods use many addresses"),
    ]
    """The VPC's address range; split into one private and one public subnet per AZ."""
    availability_zones: Annotated[tuple[str, ...], _Texts()]
    """AZ names of the region, in order: 3 to 4 in prod, 2 to 4 elsewhere."""
    nat_gateways: Annotated[NatGateways | None, _Text(choices=get_args(NatGateways))] = None
    """perAz (required in prod, the default there) or single (the default elsewhere)."""


class _EndpointDoc(_Doc):
    public_access: Annotated[bool, _Flag()]
    """Whether the API endpoint is reachable from outside the VPC (private access is always on)."""
    public_access_cidrs: Annotated[tuple[str, ...], _CIDRS] = ()
    """Who may reach the public endpoint; prod allows at most a /16's worth, counted on the union."""


class _AddonsDoc(_Doc):
    vpc_cni: Annotated[str, _AddonVersion("vpc-cni")]
    coredns: Annotated[str, _AddonVersion("coredns")]
    kube_proxy: Annotated[str, _AddonVersion("kube-proxy")]
    """A build for the cluster's Kubernetes version (EKS builds kube-proxy per minor)."""
    fsx_csi_driver: Annotated[str | None, _AddonVersion("aws-fsx-csi-driver")] = None
    """Where FSx is enabled: the FSx CSI driver add-on's version; default EKS's default for the
    cluster's version (`aws eks describe-addon-versions --addon-name aws-fsx-csi-driver`)."""


class _SystemNodesDoc(_Doc):
    instance_type: Annotated[
        str, _Text(pattern=facts.EC2_INSTANCE_TYPE, problem="must be an EC2 instance type such as m7i.xlarge")
    ]
    """Instance type of the CPU node group that runs cluster add-ons."""
    scaling: _ScalingDoc


class _ClusterDoc(_Doc):
    name: Annotated[
        str | None,
        _Text(pattern=_CLUSTER_NAME, problem="must start with a letter and hold only letters, digits and '-' (max 63)"),
    ] = None
    """EKS cluster name; default peakguard-<env>."""
    kubernetes_version: Annotated[str, _KUBERNETES_VERSION]
    """EKS control-plane version, quoted: "1.33"."""
    endpoint: _EndpointDoc
    service_ipv4_cidr: Annotated[ipaddress.IPv4Network | None, _Network()] = None
    """Kubernetes Service addresses, a /12 to /24 outside the VPC; default 172.20.0.0/16."""
    log_types: Annotated[tuple[str, ...], _Texts(among=_LOG_TYPES)] = _LOG_TYPES
    """Control-plane log streams sent to CloudWatch; prod keeps api and audit."""
    addons: _AddonsDoc
    system_nodes: _SystemNodesDoc


class _ReservationDoc(_Doc):
    id: Annotated[str, _Text(pattern=_RESERVATION_ID, problem="must be a capacity reservation id (cr-...)")]
    type: Annotated[ReservationType, _Text(choices=get_args(ReservationType))] = "odcr"
    placement_group: Annotated[str | None, _TEXT] = None
    """The cluster placement group the reservation was created in, if any."""


_AMI = _Text(pattern=_AMI_ID, problem="must be an AMI id (ami-0123456789abcdef0)")
_RELEASE = _Text(pattern=_RELEASE_VERSION, problem="must be an EKS AMI release version such as 1.33.4-20251010")


class _ImageDoc(_Doc):
    ami_id: Annotated[str | None, _AMI] = None
    """A custom AMI (the ubuntu family)."""
    release_version: Annotated[str | None, _RELEASE] = None
    """An EKS AL2023 NVIDIA AMI release (the al2023 family)."""


class _PoolDoc(_ImageDoc):
    instance_type: Annotated[str, _GPU_INSTANCE_TYPE]
    """An EFA-capable GPU instance type from infra/facts.py."""
    availability_zones: Annotated[tuple[str, ...] | None, _Texts()] = None
    """One managed node group per AZ; default the network's AZs."""
    ami_family: Annotated[AmiFamily, _Text(choices=get_args(AmiFamily))]
    mig_profile: Annotated[str, _TEXT] = "none"
    """nvidia.com/mig.config layout, e.g. all-1g.10gb; none turns MIG off."""
    expected_peak_nodes: Annotated[int, _Whole(0)]
    headroom: Annotated[Fraction, _Headroom()] = Field(
        facts.HEADROOM, json_schema_extra={"default": float(facts.HEADROOM)}
    )
    scaling_per_az: _ScalingDoc
    max_unavailable_percentage: Annotated[int, _Whole(1, 100)] = facts.MAX_UNAVAILABLE_PERCENTAGE
    """EKS rolling-update batch: at most a third of a group at once."""
    root_volume_gib: Annotated[int, _Whole(50, _MAX_GPU_VOLUME_GIB)] = Field(200, alias="rootVolumeGiB")
    pods_need_instance_metadata: Annotated[bool, _Flag()] = False
    gds: Annotated[bool, _Flag()] = False
    """GPUDirect Storage (nvidia-fs): the ubuntu family only."""
    capacity_reservations: dict[Any, _ReservationDoc] = Field(default_factory=dict)
    """Reservation per AZ of the pool."""
    generation: Annotated[Generation, _Text(choices=GENERATIONS)] = "blue"
    next: _ImageDoc | None = None
    """The other generation's image while an upgrade is under way."""


class _FsxDoc(_Doc):
    enabled: Annotated[bool, _Flag()] = True
    """false switches FSx off; the other keys may stay (and are still checked)."""
    availability_zone: Annotated[str | None, _TEXT] = None
    """Required when enabled: an AZ with GPU nodes (Lustre is single-AZ)."""
    storage_capacity_gib: Annotated[int | None, _Whole(1200, facts.FSX_LUSTRE_MAX_GIB)] = Field(
        None, alias="storageCapacityGiB"
    )
    """Required when enabled: 1200 or a multiple of 2400 (PERSISTENT_2)."""
    throughput_per_tib: Annotated[int, _FSX_THROUGHPUT] = Field(250, alias="throughputPerTiB")
    model_service_mount: Annotated[bool, _Flag()] = False
    """Model-service pods copy weights from Lustre (else S3 only). Every pod then needs the file
    system to start, in every AZ: off by default."""


class _StorageDoc(_Doc):
    fsx: _FsxDoc | None = None


class _ModeDoc(_Doc):
    model: Annotated[Literal["full", "light"], _Text(choices=("full", "light"))] = "full"
    precision: Annotated[Literal["fp32", "int8"], _Text(choices=("fp32", "int8"))] = "fp32"
    shedding: Annotated[bool, _Flag()] = False
    batch_min: Annotated[int, _Whole(1, 256)] = 16
    batch_max: Annotated[int, _Whole(1, 256)] = 128
    model_version: Annotated[str, _Text(allow_empty=True)] = ""
    """Artifact version folder under models/ in the bucket; empty means the newest there."""


class _IngressDoc(_Doc):
    scheme: Annotated[Literal["internet-facing", "internal"], _Text(choices=("internet-facing", "internal"))] = (
        "internal"
    )
    host: Annotated[str | None, _Text(pattern=_HOST, problem="must be a DNS name such as intent.example.com")] = None
    certificate_arn: Annotated[str | None, _Text(pattern=_ARN, problem="must be an ACM certificate ARN")] = None


@dataclass(frozen=True)
class _Positive(_ValueType):
    """A number above 0 and below `high`; `problem` says what it is (rates, prices)."""

    problem: str
    high: float

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < self.high:
            raise _problem(self.problem)
        return float(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": self.high}


_RATE = _Positive("must be requests per second, a number above 0", 1_000_000)
_PRICE = _Positive("must be US dollars per hour, a number above 0 (and below 10000)", 10_000)


class _PredictiveScaleDoc(_Doc):
    image: Annotated[str, _Image()]
    """The runbooks image, with the forecast extra."""
    replica_rps: Annotated[float, _RATE]
    """Requests/s one full-model replica sustains on the pool's GPU."""
    horizon_minutes: Annotated[int, _Whole(1, 720)] = 15
    every_minutes: Annotated[int, _Whole(1, 60)] = 5
    model: Annotated[
        Literal["holt_winters", "lstm", "seasonal_naive"], _Text(choices=("holt_winters", "lstm", "seasonal_naive"))
    ] = "holt_winters"


class _ChaosDoc(_Doc):
    experiments: Annotated[tuple[str, ...], _Texts(among=CHAOS_EXPERIMENTS)] = CHAOS_EXPERIMENTS
    duration_minutes: Annotated[int, _Whole(1, 60)] = 10
    """FIS takes 1 minute to 12 hours; a drill longer than an hour is an outage, not a drill."""
    pod_delete_percent: Annotated[int, _Whole(1, 33)] = 33
    """At most a third: the disruption budget's bound (policy SAFE-003)."""


class _ModelServiceDoc(_Doc):
    namespace: Annotated[
        str, _Text(pattern=_NAMESPACE, problem="must be a DNS label: lowercase letters, digits and '-'")
    ] = PROJECT
    image: Annotated[str, _Image()]
    weights_image: Annotated[str, _Image()] = "public.ecr.aws/aws-cli/aws-cli:2.27.50"
    pool: Annotated[str | None, _TEXT] = None
    """GPU pool of the full model (a pool without migProfile); default the first pool."""
    light_pool: Annotated[str | None, _TEXT] = None
    """MIG pool of the light variant; default the first pool with a migProfile."""
    gpus_per_replica: Annotated[int, _Whole(1)] = 1
    expected_peak_replicas: Annotated[int, _Whole(1)]
    min_replicas: Annotated[int, _Whole(1)]
    max_replicas: Annotated[int, _Whole(1)]
    in_flight_per_replica: Annotated[int, _Whole(1, 1024)] = 8
    light_max_replicas: Annotated[int | None, _Whole(0)] = None
    """Default 8 with a light pool, 0 without."""
    canary_max_replicas: Annotated[int, _Whole(1)] = 2
    max_request_seconds: Annotated[int, _Whole(1, 600)] = 30
    startup_seconds: Annotated[int, _Whole(30, 3600)] = 600
    slo_p99_milliseconds: Annotated[int, _Whole(10, 60_000)] = 1000
    cpu: Annotated[str, _Quantity()] = "4"
    memory: Annotated[str, _Quantity()] = "16Gi"
    mode: _ModeDoc = Field(default_factory=_ModeDoc)
    ingress: _IngressDoc = Field(default_factory=_IngressDoc)
    predictive_scale: _PredictiveScaleDoc | None = None
    """The predictive-scale CronJob: be warm before the wave (absent: none)."""
    chaos: _ChaosDoc | None = None
    """FIS experiment templates for `peakguard runbook run chaos-drill` (absent: none)."""
    admin_source_cidrs: Annotated[tuple[str, ...], _CIDRS] = ()


_CHART = _Text(pattern=_CHART_VERSION, problem="must be an exact chart version such as 1.2.3 (ranges are not pinned)")


class _ChartsDoc(_Doc):
    gpu_operator: Annotated[str, _CHART]
    efa_device_plugin: Annotated[str, _CHART]
    metrics_server: Annotated[str, _CHART]
    cluster_autoscaler: Annotated[str, _CHART]
    aws_load_balancer_controller: Annotated[str, _CHART]
    kube_prometheus_stack: Annotated[str, _CHART]
    prometheus_adapter: Annotated[str, _CHART]
    keda: Annotated[str, _CHART]
    open_telemetry_collector: Annotated[str, _CHART]


class _LoadTestDoc(_Doc):
    instance_type: Annotated[str, _Text(choices=tuple(facts.CPU_INSTANCE_TYPES))] = "c7i.4xlarge"
    max_nodes: Annotated[int, _Whole(1, 200)] = 8
    """Nodes at most: workers = nodes x (vCPUs - 1) (8 c7i.4xlarge hold 120 workers)."""
    namespace: Annotated[
        str, _Text(pattern=_NAMESPACE, problem="must be a DNS label: lowercase letters, digits and '-'")
    ] = "peakguard-load"


class _KubernetesDoc(_Doc):
    charts: _ChartsDoc
    cluster_autoscaler_image_tag: Annotated[str | None, _TEXT] = None
    """A cluster-autoscaler release of the cluster's minor; default facts.CLUSTER_AUTOSCALER_RELEASES."""
    efa_device_plugin_image_tag: Annotated[
        str, _Text(pattern=_PLUGIN_TAG, problem="must be a plugin release such as v0.5.13")
    ] = EFA_DEVICE_PLUGIN_IMAGE_TAG
    model_service: _ModelServiceDoc
    load_test: _LoadTestDoc | None = None
    """The distributed load's CPU node pool, namespace, service account and quotas (absent: none)."""


_DATE = re.compile(r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")


class _PricingDoc(_Doc):
    usd_per_hour: dict[Any, Annotated[float, _PRICE]] = Field(alias="usdPerHour")
    """On-Demand price per instance type in the stack's region."""
    source: Annotated[str, _TEXT]
    """Where the prices were read: a URL, or the AWS Pricing API query."""
    date: Annotated[str, _Text(pattern=_DATE, problem="must be the day the prices were read, YYYY-MM-DD")]


_REGION_PROBLEM = "must name an AWS region, e.g. us-west-2 (`pulumi config set aws:region ...`)"


class _StackDoc(_Doc):
    """The stack's `config:` map: `aws:region` and our `peakguard:` keys. Other namespaces (aws:profile,
    kubernetes:context) are not ours to check."""

    model_config = ConfigDict(extra="ignore", alias_generator=lambda name: f"{PROJECT}:{to_camel(name)}")

    region: Annotated[str | None, _Text(pattern=_REGION, problem=_REGION_PROBLEM, any_type=True)] = Field(
        None, alias="aws:region"
    )
    network: _NetworkDoc
    cluster: _ClusterDoc
    gpu_pools: dict[Any, _PoolDoc]
    storage: _StorageDoc = Field(default_factory=_StorageDoc)
    kubernetes: _KubernetesDoc
    tags: dict[Any, Any] = Field(default_factory=dict)
    """Extra tags on taggable resources and GPU instances (AWS's tag rules apply)."""
    pricing: _PricingDoc | None = None
    """Instance prices for `peakguard capacity plan`, with their source and date."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise _problem("must be a mapping of config keys to values")
        ours = sorted(
            str(field.alias).partition(":")[2] for field in cls.model_fields.values() if field.alias != "aws:region"
        )
        for key in sorted(data, key=str):
            namespace, _, name = str(key).partition(":")
            if namespace == PROJECT and name not in ours:
                close = difflib.get_close_matches(name, ours, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(ours)}"
                raise _problem(f"is not a known key; {hint}", got=data[key], key=key)
            # A misspelt namespace would otherwise surface as "peakguard:network is required".
            if namespace != PROJECT and difflib.get_close_matches(namespace, [PROJECT], n=1, cutoff=0.7):
                raise _problem(
                    f"is not a key of this program; did you mean '{PROJECT}:{name}'?", got=data[key], key=key
                )
        return {key: value for key, value in data.items() if value is not None}


def _config_error(exc: ValidationError) -> ConfigError:
    """The first refusal, as `key: problem (got value)`: a misspelt key first (what it would have set
    is reported missing otherwise), then in the document's order."""
    errors = exc.errors()
    error = next((e for e in errors if "key" in e.get("ctx", {})), errors[0])
    context = error.get("ctx", {})
    loc = [str(part) for part in error["loc"]]
    if "key" in context:
        loc.append(str(context["key"]))
    key = ".".join(loc)
    if error["type"] == "missing":
        return ConfigError(f"{key}: is required (got nothing)")
    if error["type"] == "peakguard_config":
        return ConfigError(f"{key}: {context['problem']} (got {_describe(context.get('got', error['input']))})")
    if error["type"] in ("dict_type", "model_type", "model_attributes_type"):
        return ConfigError(f"{key}: must be an object (a YAML mapping) (got {_describe(error['input'])})")
    return ConfigError(f"{key}: {error['msg']} (got {_describe(error['input'])})")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a `Pulumi.<env>.yaml` for this program: editors validate and complete the
    `config:` map as it is typed (README, "Stack config"). Only the loader knows the rules across keys
    (headroom, one third, prod's rules), so a file the schema accepts can still be refused."""
    config = _StackDoc.model_json_schema(by_alias=True)
    config["additionalProperties"] = True  # other namespaces: aws:profile, kubernetes:context...
    config["required"] = sorted({*config.get("required", ()), "aws:region"})  # checked after the model
    definitions = config.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Pulumi.<env>.yaml of the {PROJECT} program",
        "type": "object",
        "properties": {
            "config": config,
            "secretsprovider": {"type": "string"},
            "encryptedkey": {"type": "string"},
            "encryptionsalt": {"type": "string"},
        },
        "$defs": definitions,
    }


# --- The rules across keys -------------------------------------------------------------------


def _parse_stack(values: Mapping[str, Any], stack: str) -> StackConfig:
    if stack not in ENVIRONMENTS:
        _fail("stack", stack, f"must be one of {', '.join(ENVIRONMENTS)} (the stack name is the environment)")
    env = stack
    try:
        doc = _StackDoc.model_validate(values)
    except ValidationError as exc:
        raise _config_error(exc) from None
    if doc.region is None:
        _fail("aws:region", _MISSING, _REGION_PROBLEM)
    root = f"{PROJECT}:"
    network = _parse_network(doc.network, f"{root}network", env=env, region=doc.region)
    cluster = _parse_cluster(doc.cluster, f"{root}cluster", env=env, network=network)
    if not doc.gpu_pools:
        _fail(f"{root}gpuPools", {}, "must define at least one GPU pool")
    pools = tuple(
        _parse_gpu_pool(name, pool, f"{root}gpuPools.{name}", network=network) for name, pool in doc.gpu_pools.items()
    )
    storage = _parse_storage(doc.storage, f"{root}storage", pools=pools)
    if storage.fsx is None and cluster.fsx_csi_driver_version is not None:
        _fail(f"{root}cluster.addons.fsxCsiDriver", cluster.fsx_csi_driver_version,
              "pins the FSx CSI driver, which is installed only where storage.fsx is enabled; remove it")  # fmt: skip
    kubernetes = _parse_kubernetes(
        doc.kubernetes, f"{root}kubernetes", pools=pools, kubernetes_version=cluster.kubernetes_version
    )
    return StackConfig(
        env=env,
        region=doc.region,
        network=network,
        cluster=cluster,
        gpu_pools=pools,
        storage=storage,
        kubernetes=kubernetes,
        tags=_parse_tags(doc.tags, f"{root}tags"),
        pricing=_parse_pricing(doc.pricing, f"{root}pricing"),
    )


def _parse_pricing(doc: _PricingDoc | None, path: str) -> Pricing | None:
    if doc is None:
        return None
    for name in doc.usd_per_hour:
        if not isinstance(name, str) or not facts.EC2_INSTANCE_TYPE.fullmatch(name):
            _fail(f"{path}.usdPerHour.{name}", name, "must be an EC2 instance type such as p5.48xlarge")
    return Pricing(usd_per_hour=dict(doc.usd_per_hour), source=doc.source, date=doc.date)


def _parse_tags(raw: Mapping[Any, Any], path: str) -> dict[str, str]:
    """AWS's tag rules (EC2 User Guide, "Tag restrictions") and the program's own tag keys."""
    room = facts.TAGS_PER_RESOURCE - facts.PROGRAM_TAGS_MAX
    if len(raw) > room:
        limits = f"AWS allows {facts.TAGS_PER_RESOURCE} per resource, the program adds up to {facts.PROGRAM_TAGS_MAX}"
        _fail(path, f"{len(raw)} tags", f"must be at most {room}: {limits}")
    tags: dict[str, str] = {}
    for name, value in raw.items():
        key = f"{path}.{name}"
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
    return tags


def _parse_network(doc: _NetworkDoc, path: str, *, env: str, region: str) -> NetworkConfig:
    azs = doc.availability_zones
    if len(set(azs)) != len(azs):
        _fail(f"{path}.availabilityZones", list(azs), "lists an AZ twice")
    for az in azs:
        if not (az.startswith(region) and len(az) == len(region) + 1 and az[-1].isalpha()):
            _fail(f"{path}.availabilityZones", az, f"is not an AZ of region {region} (e.g. {region}a)")
    minimum = 3 if env == "prod" else 2
    if not minimum <= len(azs) <= 4:
        _fail(
            f"{path}.availabilityZones",
            list(azs),
            f"must list {minimum} to 4 AZs in {env}: a single AZ's loss must not take the service down",
        )
    nat = doc.nat_gateways or ("perAz" if env == "prod" else "single")
    if env == "prod" and nat != "perAz":
        _fail(f"{path}.natGateways", nat, "must be perAz in prod, so an AZ outage leaves the others egress")
    return NetworkConfig(vpc_cidr=doc.vpc_cidr, availability_zones=azs, nat_gateways=nat)


def _parse_scaling(doc: _ScalingDoc, path: str) -> Scaling:
    low, high = doc.min_size, doc.max_size
    desired = low if doc.desired_size is None else doc.desired_size
    if not low <= desired <= high:
        _fail(
            path,
            {"minSize": low, "desiredSize": desired, "maxSize": high},
            "must satisfy minSize <= desiredSize <= maxSize",
        )
    return Scaling(min_size=low, desired_size=desired, max_size=high)


def _parse_cluster(doc: _ClusterDoc, path: str, *, env: str, network: NetworkConfig) -> ClusterConfig:
    version = doc.kubernetes_version
    endpoint, endpoint_path = doc.endpoint, f"{path}.endpoint.publicAccessCidrs"
    public, cidrs = endpoint.public_access, endpoint.public_access_cidrs
    if public and not cidrs:
        _fail(endpoint_path, [], "must list who may reach the public endpoint (or set publicAccess: false)")
    if not public and cidrs:
        _fail(endpoint_path, list(cidrs), "is set but publicAccess is false")
    if env == "prod" and any(ipaddress.IPv4Network(c).prefixlen == 0 for c in cidrs):
        _fail(endpoint_path, list(cidrs), "must not include 0.0.0.0/0 in prod; list your VPN/bastion ranges")
    # Counted on the union: two /1s are the internet too, and overlapping ranges count once.
    admitted = sum(net.num_addresses for net in ipaddress.collapse_addresses(ipaddress.IPv4Network(c) for c in cidrs))
    if env == "prod" and admitted > facts.PUBLIC_ENDPOINT_MAX_ADDRESSES:
        _fail(
            endpoint_path,
            list(cidrs),
            f"admit {admitted} addresses together; prod allows {facts.PUBLIC_ENDPOINT_MAX_ADDRESSES} (a /16, "
            "facts.PUBLIC_ENDPOINT_MAX_ADDRESSES): list your VPN/bastion ranges",
        )

    service_cidr = doc.service_ipv4_cidr or ipaddress.IPv4Network("172.20.0.0/16")
    if not 12 <= service_cidr.prefixlen <= 24 or service_cidr.overlaps(network.vpc_cidr):
        _fail(
            f"{path}.serviceIpv4Cidr",
            str(service_cidr),
            f"must be a /12 to /24 that does not overlap the VPC ({network.vpc_cidr})",
        )
    if env == "prod" and not {"api", "audit"} <= set(doc.log_types):
        # An incident's first question is who changed what: prod keeps the API server's and the audit log.
        _fail(f"{path}.logTypes", list(doc.log_types), "must include api and audit in prod")

    addons = doc.addons
    kube_proxy = facts.parse_addon_version(addons.kube_proxy)
    assert kube_proxy is not None  # _AddonVersion checked it
    if f"{kube_proxy[0]}.{kube_proxy[1]}" != version:
        # EKS builds the kube-proxy add-on per Kubernetes version (EKS User Guide, "Manage kube-proxy",
        # its versions table: v1.33.x for 1.33, v1.34.x for 1.34).
        _fail(f"{path}.addons.kubeProxy", addons.kube_proxy, f"must be a build for Kubernetes {version} "
              f"(v{version}.x-eksbuild.N): EKS builds kube-proxy per cluster version")  # fmt: skip
    vpc_cni = facts.parse_addon_version(addons.vpc_cni)
    assert vpc_cni is not None
    if vpc_cni < facts.VPC_CNI_MIN_EFA_ONLY:
        minimum = ".".join(map(str, facts.VPC_CNI_MIN_EFA_ONLY))
        _fail(
            f"{path}.addons.vpcCni",
            addons.vpc_cni,
            f"must be v{minimum} or newer: older VPC CNIs do not support the efa-only interfaces of the GPU nodes",
        )

    system_path = f"{path}.systemNodes"
    system_nodes = SystemNodesConfig(
        instance_type=doc.system_nodes.instance_type,
        scaling=_parse_scaling(doc.system_nodes.scaling, f"{system_path}.scaling"),
    )
    if system_nodes.scaling.min_size < len(network.availability_zones):
        _fail(
            f"{system_path}.scaling.minSize",
            system_nodes.scaling.min_size,
            f"must be >= the number of AZs ({len(network.availability_zones)}) so add-ons run in every AZ",
        )
    return ClusterConfig(
        name=doc.name or f"{PROJECT}-{env}",
        kubernetes_version=version,
        endpoint_public_access=public,
        public_access_cidrs=cidrs,
        service_cidr=service_cidr,
        log_types=doc.log_types,
        addon_versions={"vpc-cni": addons.vpc_cni, "coredns": addons.coredns, "kube-proxy": addons.kube_proxy},
        system_nodes=system_nodes,
        fsx_csi_driver_version=addons.fsx_csi_driver,
    )


def _parse_gpu_pool(name: Any, doc: _PoolDoc, path: str, *, network: NetworkConfig) -> GpuPoolConfig:
    if not isinstance(name, str) or not _POOL_NAME.fullmatch(name):
        _fail(path, name, "pool names are 1-12 lowercase letters and digits, starting with a letter")
    instance = facts.INSTANCE_TYPES[doc.instance_type]

    azs = network.availability_zones if doc.availability_zones is None else doc.availability_zones
    if not azs:
        _fail(f"{path}.availabilityZones", [], "must list at least one AZ (leave it out for all of the network's)")
    for az in azs:
        if az not in network.availability_zones:
            _fail(
                f"{path}.availabilityZones",
                az,
                f"is not one of the network's AZs ({', '.join(network.availability_zones)})",
            )
    if len(set(azs)) != len(azs):
        _fail(f"{path}.availabilityZones", list(azs), "lists an AZ twice")

    family = doc.ami_family
    image = _parse_image(doc, path, family)
    next_image = None if doc.next is None else _parse_image(doc.next, f"{path}.next", family)
    if next_image is not None and next_image.ami_id is None and next_image.release_version is None:
        _fail(
            f"{path}.next.releaseVersion",
            _MISSING,
            "is required: an upgrade names the AL2023 release it goes to (`aws ssm get-parameters-by-path "
            "--path /aws/service/eks/optimized-ami/<k8s version>/amazon-linux-2023/x86_64/nvidia/`)",
        )
    if next_image == image:
        _fail(
            f"{path}.next",
            image.describe(),
            f"is what the serving generation ({doc.generation}) already runs; name the image to upgrade to, "
            "or remove `next`",
        )

    mig_profile = None
    if doc.mig_profile != "none":
        if not instance.mig_profiles:
            _fail(
                f"{path}.migProfile",
                doc.mig_profile,
                f"{doc.instance_type} ({instance.gpu_model}) has no MIG; use none",
            )
        if not facts.mig_config_is_valid(doc.mig_profile, instance):
            _fail(
                f"{path}.migProfile",
                doc.mig_profile,
                f"is not a MIG layout of {instance.gpu_model}; use all-<profile> with one of "
                + ", ".join(instance.mig_profiles),
            )
        mig_profile = doc.mig_profile

    peak, headroom = doc.expected_peak_nodes, doc.headroom
    scaling = _parse_scaling(doc.scaling_per_az, f"{path}.scalingPerAz")
    needed = facts.capacity_with_headroom(peak, headroom)
    if scaling.max_size * len(azs) < needed:
        per_az = -(-needed // len(azs))
        if per_az > facts.NODES_PER_MANAGED_NODE_GROUP:
            _fail(
                f"{path}.expectedPeakNodes",
                peak,
                f"needs {needed} nodes with {float(headroom)}x headroom, {per_az} per AZ over {len(azs)} AZs, and an "
                f"EKS managed node group holds at most {facts.NODES_PER_MANAGED_NODE_GROUP}: split the pool, or "
                "use a larger instance type",
            )
        _fail(
            f"{path}.scalingPerAz.maxSize",
            scaling.max_size,
            f"gives {scaling.max_size * len(azs)} nodes over {len(azs)} AZs, below the {needed} that an "
            f"expected peak of {peak} needs with {float(headroom)}x headroom; set maxSize >= {per_az}",
        )
    if doc.max_unavailable_percentage > facts.MAX_UNAVAILABLE_PERCENTAGE:
        _fail(
            f"{path}.maxUnavailablePercentage",
            doc.max_unavailable_percentage,
            f"must be <= {facts.MAX_UNAVAILABLE_PERCENTAGE}: never take more than a third of a group down at once",
        )
    if doc.gds and family != "ubuntu":
        _fail(
            f"{path}.gds",
            doc.gds,
            "needs amiFamily: ubuntu. GPUDirect Storage needs the nvidia-fs module from the GPU "
            "operator's driver container, which the EKS AL2023 NVIDIA AMIs (drivers preinstalled) do not run",
        )

    reservations: dict[str, CapacityReservation] = {}
    for az, entry in doc.capacity_reservations.items():
        if az not in azs:
            _fail(
                f"{path}.capacityReservations.{az}", az,
                f"is not one of this pool's AZs ({', '.join(azs)}); a reservation is per AZ",
            )  # fmt: skip
        reservations[az] = CapacityReservation(
            reservation_id=entry.id, type=entry.type, placement_group=entry.placement_group
        )

    return GpuPoolConfig(
        name=name,
        instance_type=doc.instance_type,
        availability_zones=azs,
        ami_family=family,
        ami_id=image.ami_id,
        release_version=image.release_version,
        mig_profile=mig_profile,
        expected_peak_nodes=peak,
        headroom=headroom,
        scaling_per_az=scaling,
        max_unavailable_percentage=doc.max_unavailable_percentage,
        root_volume_gib=doc.root_volume_gib,
        pods_need_instance_metadata=doc.pods_need_instance_metadata,
        gds=doc.gds,
        capacity_reservations=reservations,
        generation=doc.generation,
        next_image=next_image,
    )


def _parse_image(doc: _ImageDoc, path: str, family: str) -> NodeImage:
    """`amiId` / `releaseVersion` of a pool or of its `next`, by the AMI family's rules."""
    if family == "ubuntu":
        if doc.ami_id is None:
            _fail(
                f"{path}.amiId",
                _MISSING,
                "is required for the ubuntu AMI family; find one with `aws ssm get-parameters-by-path "
                "--path /aws/service/canonical/ubuntu/eks/` for your Kubernetes version",
            )
        if doc.release_version is not None:
            _fail(f"{path}.releaseVersion", doc.release_version, "applies to al2023 only; the ubuntu family pins amiId")
    elif doc.ami_id is not None:
        _fail(f"{path}.amiId", doc.ami_id, "applies to ubuntu only; al2023 pools pin releaseVersion")
    return NodeImage(ami_id=doc.ami_id, release_version=doc.release_version)


def _parse_storage(doc: _StorageDoc, path: str, *, pools: Sequence[GpuPoolConfig]) -> StorageConfig:
    fsx_doc, fsx_path = doc.fsx, f"{path}.fsx"
    if fsx_doc is None or not fsx_doc.enabled:
        return StorageConfig(fsx=None)
    gpu_azs = sorted({az for pool in pools for az in pool.availability_zones})
    if fsx_doc.availability_zone is None:
        _fail(f"{fsx_path}.availabilityZone", _MISSING, "is required")
    if fsx_doc.availability_zone not in gpu_azs:
        _fail(
            f"{fsx_path}.availabilityZone",
            fsx_doc.availability_zone,
            f"must be an AZ with GPU nodes ({', '.join(gpu_azs)}): Lustre is single-AZ and EFA does not cross AZs",
        )
    capacity = fsx_doc.storage_capacity_gib
    if capacity is None:
        _fail(f"{fsx_path}.storageCapacityGiB", _MISSING, "is required")
    if capacity != 1200 and capacity % 2400:
        _fail(f"{fsx_path}.storageCapacityGiB", capacity, "must be 1200 or a multiple of 2400 (PERSISTENT_2)")
    return StorageConfig(
        fsx=FsxConfig(
            availability_zone=fsx_doc.availability_zone,
            storage_capacity_gib=capacity,
            throughput_per_tib=fsx_doc.throughput_per_tib,
            model_service_mount=fsx_doc.model_service_mount,
        )
    )


def _parse_kubernetes(
    doc: _KubernetesDoc, path: str, *, pools: Sequence[GpuPoolConfig], kubernetes_version: str
) -> KubernetesConfig:
    tag = doc.cluster_autoscaler_image_tag or facts.CLUSTER_AUTOSCALER_RELEASES.get(kubernetes_version)
    tag_path = f"{path}.clusterAutoscalerImageTag"
    if tag is None:
        _fail(
            tag_path,
            None,
            f"must be set for Kubernetes {kubernetes_version}: the cluster autoscaler release of that minor, "
            f"v{kubernetes_version}.<patch> (kubernetes/autoscaler releases cluster-autoscaler-{kubernetes_version}.*)",
        )
    release = _AUTOSCALER_TAG.fullmatch(tag)
    if release is None or release[1] != kubernetes_version:
        _fail(
            tag_path,
            tag,
            f"must be a release of the cluster's Kubernetes minor, v{kubernetes_version}.<patch>: the autoscaler "
            "supports only the minor it was built for",
        )
    charts = doc.charts.model_dump(by_alias=True)
    return KubernetesConfig(
        chart_versions={chart: charts[chart] for chart in CHARTS},
        cluster_autoscaler_image_tag=tag,
        efa_device_plugin_image_tag=doc.efa_device_plugin_image_tag,
        model_service=_parse_model_service(doc.model_service, f"{path}.modelService", pools=pools),
        load_test=None
        if doc.load_test is None
        else LoadTestConfig(
            instance_type=doc.load_test.instance_type,
            max_nodes=doc.load_test.max_nodes,
            namespace=doc.load_test.namespace,
        ),
    )


def _parse_model_service(doc: _ModelServiceDoc, path: str, *, pools: Sequence[GpuPoolConfig]) -> ModelServiceConfig:
    by_name = {pool.name: pool for pool in pools}
    pool_name = doc.pool or pools[0].name
    if pool_name not in by_name:
        _fail(f"{path}.pool", pool_name, f"must be one of {', '.join(by_name)}")
    pool = by_name[pool_name]
    if pool.mig_profile is not None:
        _fail(f"{path}.pool", pool_name, "runs the full model on whole GPUs; pick a pool without migProfile")
    mig_pools = [p.name for p in pools if p.mig_profile is not None]
    light_pool = doc.light_pool or (mig_pools[0] if mig_pools else None)
    if light_pool is not None and light_pool not in mig_pools:
        _fail(
            f"{path}.lightPool",
            light_pool,
            f"must be a pool with a migProfile ({', '.join(mig_pools) or 'this env has none'}): "
            "the light variant runs on MIG slices",
        )
    if light_pool is not None and by_name[light_pool].mig_profile == "all-balanced":
        _fail(
            f"{path}.lightPool",
            light_pool,
            "is cut all-balanced (three sizes of MIG instance); the light variant asks for one size: give the "
            "pool an all-<profile> migProfile such as all-1g.10gb",
        )

    gpus = doc.gpus_per_replica
    if gpus > pool.instance.gpus:
        _fail(f"{path}.gpusPerReplica", gpus, f"must be between 1 and {pool.instance.gpus}")
    peak, low, high = doc.expected_peak_replicas, doc.min_replicas, doc.max_replicas
    needed = facts.capacity_with_headroom(peak)
    if high < needed:
        _fail(
            f"{path}.maxReplicas",
            high,
            f"must be >= {needed}: an expected peak of {peak} replicas needs {float(facts.HEADROOM)}x headroom",
        )
    if low > high:
        _fail(f"{path}.minReplicas", low, f"exceeds maxReplicas ({high})")
    fits = pool.max_capacity * (pool.instance.gpus // gpus)
    if high > fits:
        _fail(
            f"{path}.maxReplicas",
            high,
            f"is more than pool {pool_name} can hold: {pool.max_capacity} nodes x {pool.instance.gpus // gpus} "
            f"replicas of {gpus} GPU(s) = {fits}; raise the pool's scalingPerAz.maxSize or lower maxReplicas",
        )

    mode_doc = doc.mode
    if mode_doc.batch_min > mode_doc.batch_max:
        _fail(f"{path}.mode.batchMin", mode_doc.batch_min, f"exceeds batchMax ({mode_doc.batch_max})")
    mode = ServiceMode(
        model=mode_doc.model, precision=mode_doc.precision, shedding=mode_doc.shedding,
        batch_min=mode_doc.batch_min, batch_max=mode_doc.batch_max, model_version=mode_doc.model_version,
    )  # fmt: skip
    ingress = IngressConfig(
        scheme=doc.ingress.scheme, host=doc.ingress.host, certificate_arn=doc.ingress.certificate_arn
    )
    for cidr in doc.admin_source_cidrs:
        if ipaddress.IPv4Network(cidr).prefixlen == 0:
            _fail(f"{path}.adminSourceCidrs", cidr, "opens the admin API to every address; name the runners' hosts")
    return ModelServiceConfig(
        admin_source_cidrs=doc.admin_source_cidrs,
        namespace=doc.namespace,
        image=doc.image,
        weights_image=doc.weights_image,
        pool=pool_name,
        light_pool=light_pool,
        gpus_per_replica=gpus,
        expected_peak_replicas=peak,
        min_replicas=low,
        max_replicas=high,
        in_flight_per_replica=doc.in_flight_per_replica,
        light_max_replicas=(0 if light_pool is None else 8)
        if doc.light_max_replicas is None
        else doc.light_max_replicas,
        canary_max_replicas=doc.canary_max_replicas,
        max_request_seconds=doc.max_request_seconds,
        startup_seconds=doc.startup_seconds,
        slo_p99_milliseconds=doc.slo_p99_milliseconds,
        cpu=doc.cpu,
        memory=doc.memory,
        mode=mode,
        ingress=ingress,
        predictive_scale=_parse_predictive_scale(doc.predictive_scale, f"{path}.predictiveScale"),
        chaos=_parse_chaos(doc.chaos, f"{path}.chaos"),
    )


def _parse_chaos(doc: _ChaosDoc | None, path: str) -> ChaosConfig | None:
    if doc is None:
        return None
    if not doc.experiments:
        _fail(f"{path}.experiments", [], "is empty: leave chaos out instead, or name the experiments to declare")
    if len(set(doc.experiments)) != len(doc.experiments):
        _fail(f"{path}.experiments", list(doc.experiments), "names an experiment twice")
    return ChaosConfig(experiments=doc.experiments, duration_minutes=doc.duration_minutes,
                       pod_delete_percent=doc.pod_delete_percent)  # fmt: skip


def _parse_predictive_scale(doc: _PredictiveScaleDoc | None, path: str) -> PredictiveScaleConfig | None:
    if doc is None:
        return None
    if doc.horizon_minutes < doc.every_minutes:
        _fail(f"{path}.horizonMinutes", doc.horizon_minutes,
              f"must be at least everyMinutes ({doc.every_minutes}): a forecast shorter than the time to the next "
              "run leaves its end uncovered")  # fmt: skip
    return PredictiveScaleConfig(image=doc.image, replica_rps=doc.replica_rps, horizon_minutes=doc.horizon_minutes,
                                 every_minutes=doc.every_minutes, model=doc.model)  # fmt: skip
