"""The model service on Kubernetes: the Deployments, how they scale, how traffic reaches them.

Three Deployments share one Service: `full` (the MoE model on whole GPUs, scaled by an HPA on
in-flight requests), `light` (the emergency variant on MIG slices, idling at zero through a KEDA
ScaledObject) and `canary` (a model-version rollout, also at zero until the rebuild runbook raises
it). The fixes for the seed's outage are in the fields: least-outstanding-requests routing instead
of round robin, readiness only after warm-up (cold replicas served at 18% of warm ones), scale-up
with no stabilisation window on a metric that leads load (scaling lagged 3 minutes).

Who owns which field (`../shared/DESIGN.md`): the program never sets `replicas`; the HPA's and the
ScaledObjects' bounds and the mode ConfigMaps' data are ignored after creation, because runbooks
move them during incidents.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import scanner_skips
from infra.cluster_addons import FSX_CSI_DRIVER
from infra.config import GpuPoolConfig, ModelServiceConfig, ServiceMode
from infra.facts import GPU_RESOURCE, GPU_TAINT, MIG_RESOURCE_PREFIX
from infra.irsa import irsa_role
from infra.storage import LUSTRE_MODELS_PATH, LustreFileSystem

__all__ = [
    "ADMIN_TOKEN_KEY",
    "APP_LABEL",
    "IN_FLIGHT_METRIC",
    "MODE_KEY",
    "PORT",
    "ModelWorkload",
    "ModelWorkloadArgs",
    "mig_resource",
]

Variant = Literal["full", "light", "canary"]

APP_LABEL = "model-service"
"""`app.kubernetes.io/name` of every model-service pod; the Service selects on it alone."""
MODE_KEY = "mode.json"
"""The ConfigMap key, and the file the service watches in the mounted directory."""
ADMIN_TOKEN_KEY = "token"  # noqa: S105 (the key name, not a token)
"""Key of the admin-token Secret; runbooks read it to call the pods' admin API."""
_ACCEPTED = {
    # Peer-scanner findings the model service accepts on purpose (infra/scanner_skips.py).
    "CKV_K8S_11": "no CPU limit on purpose: a CFS quota throttles the event loop and the model thread in the "
    "very surge the replica exists for; the CPU request reserves its share",
    "CKV_K8S_15": "IfNotPresent: the image is pinned (digest or a tag the loader will not let move), and a new "
    "replica in a surge must not wait on the registry",
    "CKV_K8S_43": "pinned by the stack config: a digest, or a fixed tag the config loader and SERV-002 refuse "
    "to let be a moving one",
}
ADMIN_CLIENT_LABEL = "peakguard.io/admin-client"
"""Pod label of in-cluster runbook runners: the model-service NetworkPolicy lets them call the admin API."""
PORT = 8080
IN_FLIGHT_METRIC = "peakguard_in_flight_requests"
"""The service's gauge of requests being handled: it rises before latency does."""

_MODE_DIR = "/etc/peakguard/mode"
_ADMIN_TOKEN_DIR = "/var/run/secrets/peakguard"  # noqa: S105 (a mount path)
_MODELS_DIR = "/models"
_LUSTRE_DIR = "/lustre"
_LUSTRE_CLAIM = "models-lustre"
_ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (in a pod: the pod's own address, which the Service targets)
# The pod's own emptyDir: the root filesystem is read-only, and nothing else shares it.
_TMP_DIR = "/tmp"  # noqa: S108


def mig_resource(profile: str) -> str:
    """The extended resource the GPU operator's mixed MIG strategy advertises for a layout."""
    # `all-1g.10gb` slices every GPU into 1g.10gb instances, advertised as nvidia.com/mig-1g.10gb.
    return MIG_RESOURCE_PREFIX + profile.removeprefix("all-")


def fetch_weights_script() -> str:
    return resources.files("infra").joinpath("pod_scripts/fetch_weights.sh").read_text()


@dataclass(frozen=True)
class ModelWorkloadArgs:
    env: str
    config: ModelServiceConfig
    full_pool: GpuPoolConfig
    light_pool: GpuPoolConfig | None
    """The MIG pool of the light variant; None means no light variant in this env."""
    provider: k8s.Provider
    bucket_name: pulumi.Input[str]
    data_key_arn: pulumi.Input[str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    partition: str
    otlp_endpoint: str
    """The OpenTelemetry collector's OTLP/HTTP URL inside the cluster."""
    prometheus_url: str
    """Prometheus inside the cluster, queried by the KEDA ScaledObjects."""
    load_balancer_cidrs: tuple[str, ...] = ()
    """The subnets the ALB's nodes live in (public ones for an internet-facing ALB): its traffic and
    health checks come from there, with `target-type: ip` straight to the pods."""
    monitoring_namespace: str = "monitoring"
    """Where Prometheus runs: it scrapes /metrics on the pods."""
    load_test_namespace: str | None = None
    """Where the distributed load's workers run (infra/load_test.py), if the stack has them: they
    reach the pods through the Service, so the network policy lets them in."""
    lustre: LustreFileSystem | None = None
    """Where FSx is enabled: its static volume and claim; with `model_service_mount`, the init
    container copies a version from it, and from S3 when it does not hold the version whole."""
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    """Add-ons whose CRDs and webhooks these objects need (KEDA, the load balancer controller)."""
    tags: Mapping[str, str] = field(default_factory=dict)


class ModelWorkload(pulumi.ComponentResource):
    """Namespace, mode ConfigMaps, the three Deployments, their scaling, PDBs, Service and Ingress."""

    namespace: str
    service_name: str
    service_url: str
    deployments: dict[str, str]
    """Deployment name by variant (full, light, canary)."""
    mode_config_maps: dict[str, str]
    """Mode ConfigMap name by variant: each variant's pods read their own."""
    hpa_name: str
    scaled_objects: dict[str, str]
    admin_token_secret: str

    def __init__(self, name: str, args: ModelWorkloadArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:infra:ModelWorkload", name, None, opts)
        self._args = args
        config = args.config
        self.namespace = config.namespace
        self._k8s = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)

        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=config.namespace,
                labels={
                    # GPU pods need no privilege: the namespace refuses any that asks for it.
                    "pod-security.kubernetes.io/enforce": "restricted",
                    # With `target-type: ip` the ALB sends to pod addresses: the load balancer
                    # controller's readiness gate keeps an old pod until its replacement's target
                    # is healthy in the ALB, so a rollout never leaves only "initial" targets (AWS
                    # Load Balancer Controller docs, "Pod readiness gate").
                    "elbv2.k8s.aws/pod-readiness-gate-inject": "enabled",
                    **self._labels(),
                },
            ),
            opts=self._k8s,
        )
        self._in_ns = pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(depends_on=[namespace]))

        role = irsa_role(
            f"{name}-weights",
            namespace=config.namespace,
            service_account=APP_LABEL,
            oidc_provider_arn=args.oidc_provider_arn,
            oidc_issuer=args.oidc_issuer,
            policy=pulumi.Output.all(args.bucket_name, args.data_key_arn).apply(
                lambda values: json.dumps(self._weights_policy(values[0], values[1]))
            ),
            tags=args.tags,
            parent=self,
        )
        k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata=self._metadata(APP_LABEL, annotations={"eks.amazonaws.com/role-arn": role.arn}),
            # Pods call no Kubernetes API: no token mounted.
            automount_service_account_token=False,
            opts=self._in_ns,
        )

        token = random.RandomPassword(
            f"{name}-admin-token", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        self.admin_token_secret = f"{APP_LABEL}-admin"
        k8s.core.v1.Secret(
            f"{name}-admin-token",
            metadata=self._metadata(self.admin_token_secret),
            string_data={ADMIN_TOKEN_KEY: token.result},
            opts=self._in_ns,
        )

        k8s.scheduling.v1.PriorityClass(
            f"{name}-priority",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=f"{config.namespace}-model-service", labels=self._labels()),
            # Above batch and add-on work: under GPU pressure the model service preempts, not the reverse.
            value=1_000_000,
            preemption_policy="PreemptLowerPriority",
            global_default=False,
            description="peakguard model service: customer-facing inference",
            opts=self._k8s,
        )
        self._priority_class = f"{config.namespace}-model-service"

        # One per variant: the light variant answers with the light model whatever the full
        # fleet runs, and the canary's model version moves alone until it is promoted.
        self.mode_config_maps = {"full": self._mode_config_map(name, "full", config.mode)}
        if args.light_pool is not None:
            light_mode = dataclasses.replace(config.mode, model="light")
            self.mode_config_maps["light"] = self._mode_config_map(name, "light", light_mode)
        self.mode_config_maps["canary"] = self._mode_config_map(name, "canary", config.mode)
        if args.lustre is not None:
            self._lustre_claim(name, args.lustre)

        self.service_name = APP_LABEL
        self.ingress_name = APP_LABEL
        """The Ingress (the AWS Load Balancer Controller tags its target group `<namespace>/<this>`)."""
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=self._metadata(APP_LABEL),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                # All variants: the canary and the light model answer beside the full one.
                selector={"app.kubernetes.io/name": APP_LABEL},
                ports=[k8s.core.v1.ServicePortArgs(name="http", port=80, target_port="http", protocol="TCP")],
            ),
            opts=self._in_ns,
        )
        self.service_url = f"http://{APP_LABEL}.{config.namespace}.svc.cluster.local"

        self.deployments = {}
        self.scaled_objects = {}
        full = self._deployment(name, "full", args.full_pool, gpu_resource=GPU_RESOURCE)
        self.hpa_name = self._hpa(name, full)
        if args.light_pool is not None:
            assert args.light_pool.mig_profile is not None
            light = self._deployment(
                name, "light", args.light_pool, gpu_resource=mig_resource(args.light_pool.mig_profile)
            )
            self.scaled_objects["light"] = self._scaled_object(name, "light", light, config.light_max_replicas)
        canary = self._deployment(name, "canary", args.full_pool, gpu_resource=GPU_RESOURCE)
        self.scaled_objects["canary"] = self._scaled_object(name, "canary", canary, config.canary_max_replicas)

        self._ingress(name, service)
        self._network_policy(name)
        self.register_outputs(
            {"namespace": self.namespace, "service": self.service_name, "deployments": self.deployments}
        )

    # --- Pieces --------------------------------------------------------------------------

    def _network_policy(self, name: str) -> None:
        """Who may reach the model-service pods: the ALB (requests and health checks), Prometheus
        (scrapes), runbook runners (the admin API) and, where the stack has them, the load workers,
        nothing else. Enforced by the VPC CNI's
        network-policy agent (infra/cluster.py turns it on); egress stays open (S3, OTLP, DNS)."""
        args = self._args
        port = [k8s.networking.v1.NetworkPolicyPortArgs(port=PORT, protocol="TCP")]
        runners = k8s.networking.v1.NetworkPolicyPeerArgs(
            namespace_selector=k8s.meta.v1.LabelSelectorArgs(),
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={ADMIN_CLIENT_LABEL: "true"}),
        )
        prometheus = k8s.networking.v1.NetworkPolicyPeerArgs(
            namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                match_labels={"kubernetes.io/metadata.name": args.monitoring_namespace}
            )
        )
        addresses = [
            k8s.networking.v1.NetworkPolicyPeerArgs(ip_block=k8s.networking.v1.IPBlockArgs(cidr=cidr))
            for cidr in (*args.load_balancer_cidrs, *args.config.admin_source_cidrs)
        ]
        if args.load_test_namespace is not None:
            addresses.append(
                k8s.networking.v1.NetworkPolicyPeerArgs(
                    namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"kubernetes.io/metadata.name": args.load_test_namespace}
                    ),
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app.kubernetes.io/name": "load-worker"}),
                )
            )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-ingress-sources",
            metadata=self._metadata(f"{APP_LABEL}-ingress-sources"),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app.kubernetes.io/name": APP_LABEL}),
                policy_types=["Ingress"],
                ingress=[
                    k8s.networking.v1.NetworkPolicyIngressRuleArgs(from_=[*addresses, prometheus, runners], ports=port)
                ],
            ),
            opts=self._in_ns,
        )

    def _lustre_claim(self, name: str, lustre: LustreFileSystem) -> None:
        """The file system as a static volume bound to one claim in this namespace: FSx owns the data
        (its link to the bucket), Kubernetes only mounts it (the FSx CSI driver's static-provisioning
        example). ReadWriteMany because the driver publishes only single-node-writer and
        multi-node-multi-writer volumes (a ReadOnlyMany one fails to mount, kubernetes-sigs/
        aws-fsx-csi-driver#164); read-only by `csi.readOnly` and every mount's `readOnly` instead.
        No zone affinity: in the file system's AZ a client can use EFA, elsewhere TCP across AZs."""
        volume = f"{self.namespace}-{_LUSTRE_CLAIM}"  # PersistentVolumes are cluster-wide
        k8s.core.v1.PersistentVolume(
            f"{name}-lustre",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=volume, labels=self._labels()),
            spec=k8s.core.v1.PersistentVolumeSpecArgs(
                capacity={"storage": f"{lustre.capacity_gib}Gi"},  # the file system's, for people: Lustre ignores it
                access_modes=["ReadWriteMany"],
                volume_mode="Filesystem",
                # Kubernetes did not create the file system and must never delete it.
                persistent_volume_reclaim_policy="Retain",
                storage_class_name="",
                mount_options=["noatime"],
                # Only our claim binds it: no other claim in the cluster can take the volume first.
                claim_ref=k8s.core.v1.ObjectReferenceArgs(namespace=self.namespace, name=_LUSTRE_CLAIM),
                csi=k8s.core.v1.CSIPersistentVolumeSourceArgs(
                    driver=FSX_CSI_DRIVER,
                    volume_handle=lustre.file_system_id,
                    read_only=True,
                    volume_attributes={"dnsname": lustre.dns_name, "mountname": lustre.mount_name},
                ),
            ),
            opts=self._k8s,
        )
        k8s.core.v1.PersistentVolumeClaim(
            f"{name}-lustre",
            metadata=self._metadata(_LUSTRE_CLAIM),
            spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                access_modes=["ReadWriteMany"],
                storage_class_name="",  # bind the static volume, never provision one
                volume_name=volume,
                # Nominal: a static claim cannot be resized, so the file system's size here would make
                # the `pulumi up` that grows FSx fail; any request up to the volume's binds it.
                resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": "1Gi"}),
            ),
            opts=self._in_ns,
        )

    def _labels(self, variant: Variant | None = None) -> dict[str, str]:
        labels = {"app.kubernetes.io/part-of": "peakguard", "app.kubernetes.io/managed-by": "pulumi"}
        if variant is not None:
            labels |= {"app.kubernetes.io/name": APP_LABEL, "peakguard.io/variant": variant}
        return labels

    def _metadata(
        self, name: str, *, variant: Variant | None = None, annotations: Mapping[str, Any] | None = None
    ) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(
            name=name, namespace=self.namespace, labels=self._labels(variant), annotations=annotations
        )

    def _weights_policy(self, bucket: str, data_key_arn: str) -> dict[str, Any]:
        partition = self._args.partition
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ListModelVersions",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": f"arn:{partition}:s3:::{bucket}",
                    "Condition": {"StringLike": {"s3:prefix": ["models/", "models/*"]}},
                },
                {
                    "Sid": "ReadModels",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:{partition}:s3:::{bucket}/models/*",
                },
                # The bucket is SSE-KMS: reading an object decrypts its data key.
                {"Sid": "DecryptModels", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": data_key_arn},
            ],
        }

    def _mode_config_map(self, name: str, variant: Variant, mode: ServiceMode) -> str:
        config_map = f"{APP_LABEL}-{variant}-mode"
        k8s.core.v1.ConfigMap(
            f"{name}-{variant}-mode",
            metadata=self._metadata(config_map),
            data={MODE_KEY: json.dumps(mode.to_document(), sort_keys=True)},
            # The durable switch runbooks flip: created here, then theirs.
            opts=pulumi.ResourceOptions.merge(self._in_ns, pulumi.ResourceOptions(ignore_changes=["data"])),
        )
        return config_map

    def _deployment(
        self, name: str, variant: Variant, pool: GpuPoolConfig, *, gpu_resource: str
    ) -> k8s.apps.v1.Deployment:
        args, config = self._args, self._args.config
        deployment_name = f"{APP_LABEL}-{variant}"
        selector = {"app.kubernetes.io/name": APP_LABEL, "peakguard.io/variant": variant}
        mode_config_map = self.mode_config_maps[variant]
        resources = k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": config.cpu, "memory": config.memory, gpu_resource: str(config.gpus_per_replica)},
            # No CPU limit: throttling a batch mid-forward is latency for a whole batch.
            limits={"memory": config.memory, gpu_resource: str(config.gpus_per_replica)},
        )
        restricted = k8s.core.v1.SecurityContextArgs(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        )

        def spread(key: str, when: str) -> k8s.core.v1.TopologySpreadConstraintArgs:
            return k8s.core.v1.TopologySpreadConstraintArgs(
                topology_key=key,
                max_skew=1,
                when_unsatisfiable=when,
                label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                # Spread each revision on its own, so a rollout does not pile new pods in one zone.
                match_label_keys=["pod-template-hash"],
            )

        lustre_env, lustre_mounts, lustre_volumes = [], [], []
        if args.lustre is not None and args.lustre.model_service_mount:
            lustre_env = [k8s.core.v1.EnvVarArgs(name="LUSTRE_MODELS_DIR", value=_LUSTRE_DIR + LUSTRE_MODELS_PATH)]
            lustre_mounts = [k8s.core.v1.VolumeMountArgs(name="lustre", mount_path=_LUSTRE_DIR, read_only=True)]
            lustre_volumes = [
                k8s.core.v1.VolumeArgs(
                    name="lustre",
                    persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                        claim_name=_LUSTRE_CLAIM, read_only=True
                    ),
                )
            ]
        pod = k8s.core.v1.PodSpecArgs(
            service_account_name=APP_LABEL,
            automount_service_account_token=False,
            priority_class_name=self._priority_class,
            termination_grace_period_seconds=config.termination_grace_seconds,
            security_context=k8s.core.v1.PodSecurityContextArgs(
                run_as_non_root=True,
                run_as_user=10001,
                run_as_group=10001,
                fs_group=10001,
                seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
            ),
            node_selector={"peakguard.io/pool": pool.name},
            tolerations=[k8s.core.v1.TolerationArgs(key=GPU_TAINT.key, operator="Exists", effect=GPU_TAINT.effect)],
            topology_spread_constraints=[
                # A lost zone leaves two thirds serving: never more than one replica of skew.
                spread("topology.kubernetes.io/zone", "DoNotSchedule"),
                spread("kubernetes.io/hostname", "ScheduleAnyway"),
            ],
            init_containers=[
                k8s.core.v1.ContainerArgs(
                    name="fetch-weights",
                    image=config.weights_image,
                    command=["/bin/bash", "-c", fetch_weights_script(), "fetch-weights"],
                    env=[
                        k8s.core.v1.EnvVarArgs(name="MODEL_BUCKET", value=args.bucket_name),
                        k8s.core.v1.EnvVarArgs(name="MODE_FILE", value=f"{_MODE_DIR}/{MODE_KEY}"),
                        k8s.core.v1.EnvVarArgs(name="MODELS_DIR", value=_MODELS_DIR),
                        k8s.core.v1.EnvVarArgs(name="HOME", value=_TMP_DIR),
                        *lustre_env,
                    ],
                    resources=k8s.core.v1.ResourceRequirementsArgs(
                        requests={"cpu": "1", "memory": "1Gi"}, limits={"memory": "1Gi"}
                    ),
                    security_context=restricted,
                    volume_mounts=[
                        k8s.core.v1.VolumeMountArgs(name="mode", mount_path=_MODE_DIR, read_only=True),
                        k8s.core.v1.VolumeMountArgs(name="models", mount_path=_MODELS_DIR),
                        k8s.core.v1.VolumeMountArgs(name="tmp", mount_path=_TMP_DIR),
                        *lustre_mounts,
                    ],
                )
            ],
            containers=[
                k8s.core.v1.ContainerArgs(
                    name="model-service",
                    image=config.image,
                    args=[
                        "--host",
                        _ALL_INTERFACES,
                        "--port",
                        str(PORT),
                        "--artifacts",
                        _MODELS_DIR,
                        "--mode-file",
                        _MODE_DIR,
                        "--keep-alive",
                        str(config.keep_alive_seconds),
                    ],
                    ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=PORT, protocol="TCP")],
                    env=[
                        k8s.core.v1.EnvVarArgs(
                            name="PEAKGUARD_ADMIN_TOKEN_FILE", value=f"{_ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}"
                        ),
                        k8s.core.v1.EnvVarArgs(name="OTEL_EXPORTER_OTLP_ENDPOINT", value=args.otlp_endpoint),
                        # Join the trace the ALB starts (its X-Amzn-Trace-Id header) as well as W3C callers'.
                        k8s.core.v1.EnvVarArgs(name="OTEL_PROPAGATORS", value="tracecontext,baggage,xray"),
                        k8s.core.v1.EnvVarArgs(
                            name="OTEL_RESOURCE_ATTRIBUTES",
                            value=f"deployment.environment={args.env},peakguard.variant={variant}",
                        ),
                    ],
                    resources=resources,
                    # Ready only once the weights are loaded and a warm-up batch ran: the load
                    # balancer never sends traffic to a cold replica.
                    readiness_probe=_probe("/readyz", period=5, failures=2),
                    # Alive is separate: a pod that is busy or still warming is not restarted.
                    liveness_probe=_probe("/healthz", period=10, failures=3),
                    # Rounded up: the probe must wait at least the configured startup time.
                    startup_probe=_probe("/healthz", period=5, failures=max(1, -(-config.startup_seconds // 5))),
                    lifecycle=k8s.core.v1.LifecycleArgs(
                        # Keep serving while the ALB and EndpointSlices stop sending to this pod.
                        pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                            sleep=k8s.core.v1.SleepActionArgs(seconds=config.pre_stop_seconds)
                        )
                    ),
                    security_context=restricted,
                    volume_mounts=[
                        k8s.core.v1.VolumeMountArgs(name="mode", mount_path=_MODE_DIR, read_only=True),
                        k8s.core.v1.VolumeMountArgs(name="models", mount_path=_MODELS_DIR, read_only=True),
                        k8s.core.v1.VolumeMountArgs(name="admin-token", mount_path=_ADMIN_TOKEN_DIR, read_only=True),
                        k8s.core.v1.VolumeMountArgs(name="tmp", mount_path=_TMP_DIR),
                    ],
                )
            ],
            volumes=[
                # Mounted as a directory, never with subPath: subPath mounts never see updates.
                k8s.core.v1.VolumeArgs(
                    name="mode", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=mode_config_map)
                ),
                k8s.core.v1.VolumeArgs(
                    name="models", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="20Gi")
                ),
                k8s.core.v1.VolumeArgs(
                    name="admin-token",
                    secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=self.admin_token_secret, default_mode=0o440),
                ),
                k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="1Gi")),
                *lustre_volumes,
            ],
        )
        created = k8s.apps.v1.Deployment(
            f"{name}-{variant}",
            metadata=self._metadata(
                deployment_name, variant=variant, annotations=scanner_skips.skip_annotations(_ACCEPTED)
            ),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                # No replicas: the HPA or the ScaledObject owns them.
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_unavailable="25%", max_surge="25%"),
                ),
                min_ready_seconds=5,
                revision_history_limit=5,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=self._labels(variant)),
                    spec=pod,
                ),
            ),
            opts=pulumi.ResourceOptions.merge(self._in_ns, pulumi.ResourceOptions(ignore_changes=["spec.replicas"])),
        )
        self.deployments[variant] = deployment_name
        self._pdb(name, variant)
        return created

    def _pdb(self, name: str, variant: Variant) -> None:
        # At most a third, for every replica count the autoscaler may set: a percentage would not
        # do, because the disruption controller rounds it up ("33%" of 4 pods lets 2 go). A third
        # of the fewest replicas never exceeds a third of more; at least one, or drains block.
        fewest = self._args.config.min_replicas if variant == "full" else 0
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-{variant}-pdb",
            metadata=self._metadata(f"{APP_LABEL}-{variant}", variant=variant),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=max(1, fewest // 3),
                selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels={"app.kubernetes.io/name": APP_LABEL, "peakguard.io/variant": variant}
                ),
                # A pod that never got Ready (bad node, bad image) can be evicted despite the budget.
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=self._in_ns,
        )

    def _hpa(self, name: str, deployment: k8s.apps.v1.Deployment) -> str:
        config = self._args.config
        hpa = f"{APP_LABEL}-full"
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-full-hpa",
            # The expected peak, for the policy pack's headroom rule (policies/rules/capacity.py).
            metadata=self._metadata(
                hpa,
                variant="full",
                annotations={"peakguard.io/expected-peak-replicas": str(config.expected_peak_replicas)},
            ),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=deployment.metadata.name
                ),
                min_replicas=config.min_replicas,
                max_replicas=config.max_replicas,
                metrics=[
                    # In-flight requests per pod (through the Prometheus adapter) rise as soon as
                    # arrivals outpace service, before latency or GPU utilisation show it.
                    k8s.autoscaling.v2.MetricSpecArgs(
                        type="Pods",
                        pods=k8s.autoscaling.v2.PodsMetricSourceArgs(
                            metric=k8s.autoscaling.v2.MetricIdentifierArgs(name=IN_FLIGHT_METRIC),
                            target=k8s.autoscaling.v2.MetricTargetArgs(
                                type="AverageValue", average_value=str(config.in_flight_per_replica)
                            ),
                        ),
                    ),
                ],
                behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
                    # The seed's 3-minute lag: scale up on the first reading, by doubling or by 8
                    # pods per 15 s, whichever is more.
                    scale_up=k8s.autoscaling.v2.HPAScalingRulesArgs(
                        stabilization_window_seconds=0,
                        select_policy="Max",
                        policies=[
                            k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Percent", value=100, period_seconds=15),
                            k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Pods", value=8, period_seconds=15),
                        ],
                    ),
                    # Down slowly: a surge comes in waves, and a GPU replica takes minutes to warm.
                    scale_down=k8s.autoscaling.v2.HPAScalingRulesArgs(
                        stabilization_window_seconds=600,
                        select_policy="Min",
                        policies=[k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Percent", value=10, period_seconds=60)],
                    ),
                ),
            ),
            # Runbooks raise the bounds during an incident; `pulumi up` must not undo that.
            opts=pulumi.ResourceOptions.merge(
                self._in_ns, pulumi.ResourceOptions(ignore_changes=["spec.minReplicas", "spec.maxReplicas"])
            ),
        )
        return hpa

    def _scaled_object(self, name: str, variant: Variant, deployment: k8s.apps.v1.Deployment, max_replicas: int) -> str:
        config = self._args.config
        scaled = f"{APP_LABEL}-{variant}"
        pods = f'namespace="{config.namespace}",pod=~"{APP_LABEL}-{variant}-.*"'
        query = f"sum(avg_over_time({IN_FLIGHT_METRIC}{{{pods}}}[1m]))"
        k8s.apiextensions.CustomResource(
            f"{name}-{variant}-scaledobject",
            api_version="keda.sh/v1alpha1",
            kind="ScaledObject",
            metadata=self._metadata(scaled, variant=variant),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment.metadata.name},
                # Idles at zero (a plain HPA cannot: that needs a feature gate EKS does not enable);
                # the emergency and rebuild runbooks raise the minimum.
                "minReplicaCount": 0,
                "maxReplicaCount": max_replicas,
                "cooldownPeriod": 300,
                "pollingInterval": 15,
                "triggers": [
                    {
                        "type": "prometheus",
                        "metadata": {
                            "serverAddress": self._args.prometheus_url,
                            "query": query,
                            "threshold": str(config.in_flight_per_replica),
                            "activationThreshold": "0",
                        },
                    }
                ],
                "advanced": {
                    "horizontalPodAutoscalerConfig": {
                        "behavior": {
                            "scaleUp": {
                                "stabilizationWindowSeconds": 0,
                                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                            }
                        }
                    }
                },
            },
            opts=pulumi.ResourceOptions.merge(
                self._in_ns,
                pulumi.ResourceOptions(ignore_changes=["spec.minReplicaCount", "spec.maxReplicaCount"]),
            ),
        )
        return scaled

    def _ingress(self, name: str, service: k8s.core.v1.Service) -> None:
        config = self._args.config
        ingress = config.ingress
        # Least outstanding requests, not round robin: round robin overloaded 23% of nodes while
        # others idled. AWS: "You cannot enable both least outstanding requests and slow start
        # mode" (Application Load Balancers guide, target groups, routing algorithms), so cold
        # replicas are kept out by readiness after warm-up instead, and the health check is that
        # readiness endpoint. Deregistration finishes inside the pods' grace period.
        attributes = ",".join(
            [
                "load_balancing.algorithm.type=least_outstanding_requests",
                f"deregistration_delay.timeout_seconds={config.deregistration_delay_seconds}",
            ]
        )
        annotations = {
            "alb.ingress.kubernetes.io/scheme": ingress.scheme,
            "alb.ingress.kubernetes.io/target-type": "ip",
            "alb.ingress.kubernetes.io/target-group-attributes": attributes,
            "alb.ingress.kubernetes.io/healthcheck-path": "/readyz",
            "alb.ingress.kubernetes.io/healthcheck-port": "traffic-port",
            "alb.ingress.kubernetes.io/healthcheck-interval-seconds": "5",
            "alb.ingress.kubernetes.io/healthcheck-timeout-seconds": "2",
            "alb.ingress.kubernetes.io/healthy-threshold-count": "2",
            "alb.ingress.kubernetes.io/unhealthy-threshold-count": "2",
            "alb.ingress.kubernetes.io/success-codes": "200",
            "alb.ingress.kubernetes.io/load-balancer-attributes": (
                f"idle_timeout.timeout_seconds={config.idle_timeout_seconds}"
            ),
        }
        if ingress.certificate_arn:
            annotations |= {
                "alb.ingress.kubernetes.io/certificate-arn": ingress.certificate_arn,
                "alb.ingress.kubernetes.io/listen-ports": '[{"HTTPS": 443}]',
                "alb.ingress.kubernetes.io/ssl-policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
            }
        else:
            annotations["alb.ingress.kubernetes.io/listen-ports"] = '[{"HTTP": 80}]'
        self.ingress = k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata=self._metadata(self.ingress_name, annotations=annotations),
            spec=k8s.networking.v1.IngressSpecArgs(
                ingress_class_name="alb",
                rules=[
                    k8s.networking.v1.IngressRuleArgs(
                        host=ingress.host,
                        http=k8s.networking.v1.HTTPIngressRuleValueArgs(
                            paths=[
                                k8s.networking.v1.HTTPIngressPathArgs(
                                    # Only the public API: /admin and /metrics stay inside the cluster.
                                    path="/v1",
                                    path_type="Prefix",
                                    backend=k8s.networking.v1.IngressBackendArgs(
                                        service=k8s.networking.v1.IngressServiceBackendArgs(
                                            name=service.metadata.name,
                                            port=k8s.networking.v1.ServiceBackendPortArgs(name="http"),
                                        )
                                    ),
                                )
                            ]
                        ),
                    )
                ],
            ),
            opts=self._in_ns,
        )


def _probe(path: str, *, period: int, failures: int) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port="http"),
        period_seconds=period,
        timeout_seconds=2,
        failure_threshold=failures,
        success_threshold=1,
    )
