"""The lab: one environment on this machine that the runbooks cannot tell from a small real one.

`with Lab(LabSettings(artifacts=...)) as lab:` stands up, seeded from the Pulumi program's own
objects for an environment (the program run under Pulumi's mocks, as `peakguard preview` does):

- AWS as `pulumi up` left it, in moto's server on 127.0.0.1: the EKS cluster and its GPU node
  groups, the targets document in SSM, no incident hold, no change freeze;
- the Kubernetes API (`lab.kube_api`) holding every object the program declares, the admin token
  Secret filled in;
- the controllers a cluster runs (`lab.controllers`): HPA bounds become pods, and each pod is a
  real `peakguard serve` process on its own loopback address serving `artifacts`; with
  `nodes="node-groups"` the GPU nodes come and go with the EKS node groups (`lab.node_groups`);
- the least-outstanding-requests load balancer in front of the Ready pods (`lab.lor_proxy`).

Everything it started (threads, servers, one process per pod) is stopped on exit, whatever ended
the block: an error, Ctrl-C, or SIGTERM turned into one by the caller. A port asked for that is
taken is refused before anything starts. moto keeps its state per process, so one lab at a time
per process (it starts from an empty account).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import boto3
import httpx

from infra.manifests import Manifest, manifests
from infra.offline import OfflineRun, run_offline
from infra.targets import TargetsDocument, freeze_parameter_name, hold_parameter_name, parameter_name
from lab.alb import play_ingress_alb
from lab.aws import CREDENTIALS, moto_server
from lab.controllers import Controllers, Delays
from lab.fis import play_experiment_templates
from lab.kube_api import RESOURCES, LocalKubernetes, ObjectStore
from lab.lor_proxy import LorProxy
from lab.node_groups import NodeGroupDelays, NodeGroups
from model_service.service_process import ServiceProcess, free_port

__all__ = ["DELAYS", "NAMESPACE", "Lab", "LabError", "LabSettings", "ServePod"]

NAMESPACE = "peakguard"
"""The model service's namespace (infra/model_workload.py)."""
DELAYS = Delays(pod_start=2.0, readiness=0.5, config_sync=10.0, tick=0.2)
"""Shorter than a GPU cluster's minutes, long enough that ordering and waiting matter."""
_PLURAL = {kind.kind: plural for plural, kind in RESOURCES.items()}
_REGION = "us-west-2"


class LabError(RuntimeError):
    """The lab cannot start as asked; the message says why and what to change."""


@dataclass(frozen=True)
class LabSettings:
    artifacts: Path
    """The model versions every pod serves (`peakguard train --out`, or the drill's quick models)."""
    workdir: Path
    """Where pods keep their mode files and logs."""
    env: str = "dev"
    """Whose `Pulumi.<env>.yaml` the lab is seeded from."""
    project_dir: Path | None = None
    """Where Pulumi.yaml is (default: found from the current directory up)."""
    program: OfflineRun | None = None
    """The program's run to seed from, if the caller already has one (a changed stack config)."""
    pod_settings: Mapping[str, Any] = field(default_factory=dict)
    """Model-service settings every pod gets on top of artifacts and mode file (`ServiceSettings` fields)."""
    delays: Delays = DELAYS
    max_pods: int = 4
    """Pods beyond this stay Pending: each one is a real process on this machine's cores."""
    replicas: int = 1
    """Ready full-model replicas to start with (the HPA's minimum is raised to it)."""
    nodes: Literal["fixed", "node-groups"] = "fixed"
    """`fixed`: two Ready nodes of the full pool, in its AZs in turn, there unless made NotReady
    (`controllers.set_node_ready`). `node-groups`: GPU nodes are the EKS node groups' instances
    (blue serving one node an AZ, an incoming generation empty), played."""
    node_group_delays: NodeGroupDelays = field(default_factory=NodeGroupDelays)
    gpus_per_node: int | None = None
    """Allocatable GPUs of every node, instead of its instance type's (`fixed`: 8)."""
    node_group_max_size: int = 2
    """Each GPU node group's maxSize in EKS (moto): what the runbooks read as the most nodes the pool
    can grow to, so what their capacity plans are capped by."""
    incoming_image: Mapping[str, str] = field(default_factory=dict)
    """With `node-groups`: what an incoming generation's node groups are declared at in EKS, e.g.
    `{"releaseVersion": "1.33.4-20251010"}` (the stack config's `next`)."""
    aws_port: int = 0
    kube_port: int = 0
    proxy_port: int = 0
    """0: any free port."""
    ready_timeout: float = 180.0
    """Seconds the first replicas may take to be Ready."""
    warm_spares: int = 0
    """Serving processes started ahead, handed to the next pods the controllers start. On a cluster
    a new pod starts on a node of its own; here it would load its models on the cores the serving
    pods need (at a surge, exactly when they need them), so the lab can start them warm. Their
    steady share of the cores remains: scaling out adds no capacity on one machine."""
    pod_threads: int | None = None
    """Each pod's torch threads (None: torch's default, one a core). Several replica processes on
    these cores each with a thread a core oversubscribe them."""


class ServePod:
    """One emulated pod's container: `peakguard serve` on the pod's own loopback address."""

    def __init__(
        self,
        pod: str,
        address: str,
        *,
        port: int,
        artifacts: Path,
        token: str,
        folder: Path,
        settings: Mapping[str, Any] | None = None,
        keep_alive: float | None = None,
        threads: int | None = None,
    ) -> None:
        self.address, self.port, self.pod = address, port, pod
        self.url = f"http://{address}:{port}"
        self.mode_dir = folder / pod
        self.mode_dir.mkdir(parents=True)
        serve = {"artifacts": str(artifacts), "mode_file": str(self.mode_dir), "max_wait": 0.002, **(settings or {})}
        self.process = ServiceProcess(
            serve,
            host=address,
            port=port,
            admin_token=token,
            ready_timeout=120,
            log_dir=folder,
            keep_alive=keep_alive,
            threads=threads,
        )
        self.process.start()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def write_config(self, config_map: str, data: Mapping[str, str]) -> None:
        """The kubelet's sync of the mounted mode ConfigMap: atomic, as its symlink swap is."""
        for key, text in data.items():
            partial = self.mode_dir / f".{key}.partial"
            partial.write_text(text)
            partial.replace(self.mode_dir / key)

    def stop(self) -> None:
        self.process.stop()


class Lab:
    """The environment; use as a context manager. Attributes are set on entry."""

    def __init__(self, settings: LabSettings) -> None:
        self.settings = settings
        self.token = "lab-admin-token-" + uuid.uuid4().hex
        self.pods: list[ServePod] = []
        self.on_pod_started: list[Callable[[ServePod], None]] = []
        """Called with each pod's container once its process started (tests break some on purpose)."""
        self._pod_port = free_port()
        self._spares: dict[str, ServePod] = {}
        self._spares_lock = threading.Lock()  # the controllers take spares while a drill may drop them
        self.aws_env: dict[str, str] = {}
        self.targets: TargetsDocument
        self.kubernetes: LocalKubernetes
        self.controllers: Controllers
        self.node_groups: NodeGroups | None = None
        self.proxy: LorProxy
        self.request_count_dimensions: list[dict[str, str]] = []
        """The dimensions of the model service's ALB RequestCount in CloudWatch (lab.alb), if it has an Ingress."""
        self._stack = contextlib.ExitStack()

    # --- Lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        settings = self.settings
        for name, port in (
            ("--aws-port", settings.aws_port),
            ("--kube-port", settings.kube_port),
            ("--proxy-port", settings.proxy_port),
        ):
            _refuse_if_taken(name, port)
        program = settings.program or run_offline(settings.env, project_dir=settings.project_dir)
        self._program = program
        self.targets = TargetsDocument.from_dict(program.outputs["targets"])
        objects = manifests(program)
        self._idle_timeout, self._keep_alive = _connection_timeouts(objects)
        try:
            url = self._stack.enter_context(moto_server(port=settings.aws_port))
            self.aws_env = {
                "AWS_ENDPOINT_URL": url,
                "AWS_DEFAULT_REGION": _REGION,
                "AWS_REGION": _REGION,
                "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            }
            self._seed_aws()
            self.kubernetes = self._stack.enter_context(LocalKubernetes(port=settings.kube_port))
            self._seed_kubernetes(objects)
            if settings.nodes == "node-groups":
                delays, gpus = settings.node_group_delays, settings.gpus_per_node
                players = NodeGroups(
                    self.store, self.targets, aws=self.client_args(), delays=delays, gpus_per_node=gpus
                )
                self.node_groups = self._stack.enter_context(players)
            self.controllers = self._stack.enter_context(self._controllers())
            self._wait(
                lambda: len(self.ready_backends()) >= settings.replicas,
                settings.ready_timeout,
                f"{settings.replicas} Ready model-service replica(s)",
            )
            self._start_spares()
            self.proxy = self._stack.enter_context(
                LorProxy(
                    self.ready_backends, refresh_interval=0.2, idle_timeout=self._idle_timeout, port=settings.proxy_port
                )
            )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        # Pods first (the controllers stop their processes), then the servers, whatever happens.
        self._stack.close()
        for pod in self.pods:
            pod.stop()

    # --- What callers use -------------------------------------------------------------------------

    @property
    def store(self) -> ObjectStore:
        return self.kubernetes.store

    @property
    def kube_url(self) -> str:
        return self.kubernetes.url

    @property
    def proxy_url(self) -> str:
        return self.proxy.url

    def zones(self) -> tuple[str, ...]:
        """The AZs the full pool serves from (with fixed nodes, one node each in turn)."""
        return tuple(
            sorted(
                {
                    group.availability_zone
                    for group in self.targets.node_groups
                    if group.pool == "full" and group.serving and group.availability_zone
                }
            )
        )

    def client_args(self) -> dict[str, Any]:
        """Keyword arguments for `boto3.client` against the lab's AWS."""
        return {"endpoint_url": self.aws_env["AWS_ENDPOINT_URL"], "region_name": _REGION, **CREDENTIALS}

    def command_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """An environment for `peakguard ...` against the lab: `base` plus the AWS endpoint and credentials."""
        return {**base, **self.aws_env}

    def ready_backends(self) -> list[tuple[str, str]]:
        """(pod, base URL) of the Ready model-service pods, from the EndpointSlices the controllers keep."""
        found = []
        for endpoint_slice in self.store.list("endpointslices", NAMESPACE):
            port = endpoint_slice["ports"][0]["port"]
            for endpoint in endpoint_slice["endpoints"]:
                if endpoint["conditions"]["ready"]:
                    found.append((endpoint["targetRef"]["name"], f"http://{endpoint['addresses'][0]}:{port}"))
        return sorted(found)

    # --- Seeding ------------------------------------------------------------------------------------

    def _seed_aws(self) -> None:
        """AWS as `pulumi up` left it: the cluster, its GPU node groups, the targets document."""
        httpx.post(f"{self.aws_env['AWS_ENDPOINT_URL']}/moto-api/reset").raise_for_status()
        eks: Any = boto3.client("eks", **self.client_args())
        ssm: Any = boto3.client("ssm", **self.client_args())
        cluster = self.targets.cluster.name
        eks.create_cluster(
            name=cluster, roleArn="arn:aws:iam::123456789012:role/eks", resourcesVpcConfig={"subnetIds": ["subnet-1"]}
        )
        played = self.settings.nodes == "node-groups"
        for group in self.targets.node_groups:
            if group.generation is None or (not played and group.pool != "full"):
                continue
            # One node an AZ serving; an incoming generation declared empty at its image.
            desired = 1 if group.serving else 0
            incoming = {} if group.serving else dict(self.settings.incoming_image)
            eks.create_nodegroup(
                clusterName=cluster,
                nodegroupName=group.name,
                subnets=["subnet-1"],
                nodeRole="arn:aws:iam::123456789012:role/node",
                scalingConfig={"minSize": 0, "desiredSize": desired, "maxSize": self.settings.node_group_max_size},
                **incoming,
            )
        service = self.targets.model_service
        if service is not None and service.ingress:
            self.request_count_dimensions = play_ingress_alb(
                self.client_args(), cluster=cluster, namespace=service.namespace, ingress=service.ingress
            )
        if self.targets.chaos_experiments:
            # The program's templates, created in moto: the targets document names moto's ids.
            chaos = play_experiment_templates(self.client_args(), self._program)
            self.targets = dataclasses.replace(self.targets, chaos_experiments=chaos)
        env = self.settings.env
        ssm.put_parameter(Name=parameter_name(env), Value=self.targets.to_json(), Type="String", Overwrite=True)
        for name in (hold_parameter_name(env), freeze_parameter_name(env)):
            with contextlib.suppress(ssm.exceptions.ParameterNotFound):
                ssm.delete_parameter(Name=name)

    def _seed_kubernetes(self, objects: list[Manifest]) -> None:
        store = self.store
        for manifest in objects:
            plural = _PLURAL.get(manifest.kind)
            if plural is not None:
                store.create(plural, manifest.namespace, dict(manifest.body))
        secret = {"stringData": None, "data": {"token": base64.b64encode(self.token.encode()).decode()}}
        store.patch("secrets", NAMESPACE, "model-service-admin", secret, content_type="application/merge-patch+json")
        if self.settings.replicas > 1:
            store.patch(
                "horizontalpodautoscalers",
                NAMESPACE,
                "model-service-full",
                {"spec": {"minReplicas": self.settings.replicas}},
                content_type="application/merge-patch+json",
            )

    def _start_spares(self) -> None:
        """Warm serving processes on the addresses the controllers give the next pods."""
        first = 2 + len(self.pods)
        for address in (f"127.0.0.{first + n}" for n in range(self.settings.warm_spares)):
            self._spares[address] = self._serve_pod(f"spare-{address}", address)
        self._wait(
            lambda: all(spare.ready() for spare in self._spares.values()),
            self.settings.ready_timeout,
            f"{self.settings.warm_spares} warm spare(s)",
        )

    def drop_spares(self) -> int:
        """Stop the warm spare processes (how many there were): the next pods start cold."""
        with self._spares_lock:
            spares = list(self._spares.values())
            self._spares.clear()
        for spare in spares:
            spare.stop()
            self.pods.remove(spare)
        return len(spares)

    def _serve_pod(self, pod: str, address: str) -> ServePod:
        settings = self.settings
        started = ServePod(
            pod,
            address,
            port=self._pod_port,
            artifacts=settings.artifacts,
            token=self.token,
            folder=settings.workdir / "pods",
            settings=settings.pod_settings,
            keep_alive=self._keep_alive,
            threads=settings.pod_threads,
        )
        self.pods.append(started)
        return started

    def _controllers(self) -> Controllers:
        settings = self.settings

        def start_pod(pod: str, template: Mapping[str, Any], address: str) -> ServePod:
            with self._spares_lock:
                started = self._spares.pop(address, None)
            if started is not None:
                started.pod = pod
            else:
                started = self._serve_pod(pod, address)
            for hook in self.on_pod_started:
                hook(started)
            return started

        if settings.nodes == "node-groups":
            return Controllers(
                self.store, backends=start_pod, delays=settings.delays, max_pods=settings.max_pods, nodes=()
            )
        return Controllers(
            self.store,
            backends=start_pod,
            delays=settings.delays,
            max_pods=settings.max_pods,
            node_labels={"peakguard.io/pool": "full"},
            node_gpus=settings.gpus_per_node or 8,
            zones=self.zones(),
        )

    @staticmethod
    def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise LabError(f"the lab did not reach {what} within {timeout:.0f} s")
            time.sleep(0.1)


def _connection_timeouts(objects: list[Manifest]) -> tuple[float, float | None]:
    """(the ALB's idle timeout, the full pods' `--keep-alive`) as the program declares them: the
    proxy and the pods race over idle connections exactly as the ALB and the pods would."""
    idle, keep_alive = 60.0, None  # the ALB's default; serve's default
    for manifest in objects:
        if manifest.kind == "Ingress":
            annotations = manifest.body.get("metadata", {}).get("annotations", {})
            text = annotations.get("alb.ingress.kubernetes.io/load-balancer-attributes", "")
            attributes = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
            idle = float(attributes.get("idle_timeout.timeout_seconds", idle))
        if manifest.kind == "Deployment" and manifest.body["metadata"]["name"] == "model-service-full":
            containers = manifest.body["spec"]["template"]["spec"]["containers"]
            args: list[str] = next((c.get("args", []) for c in containers if c["name"] == "model-service"), [])
            if "--keep-alive" in args:
                keep_alive = float(args[args.index("--keep-alive") + 1])
    return idle, keep_alive


def _refuse_if_taken(flag: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise LabError(
                f"port {port} on 127.0.0.1 is taken ({exc.strerror}): another lab, or another program, listens "
                f"there; stop it, or pass {flag} with another port (0 for any free one)"
            ) from None
