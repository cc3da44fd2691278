"""The preflight gate on every GPU node: a DaemonSet that removes a node's startup taint once it checks out.

Every GPU node registers with `infra.facts.PREFLIGHT_TAINT`, so no workload lands on it before its
GPUs, EFA devices, NVMe array and MIG layout are what its pool expects. One DaemonSet per pool runs
`infra/pod_scripts/preflight_gate.py`, which runs `infra/node_scripts/node_preflight.sh` against
the host with the pool's expected numbers (from `infra.facts`), writes the result on the node
(`RESULT_ANNOTATION`) and, once every check passed, removes the taint from its own node.

Removing a taint needs `patch` on nodes, cluster-wide: RBAC cannot name a node that does not exist
yet. A ValidatingAdmissionPolicy narrows it to what the gate does: remove that one taint and write
that one annotation, on the node its own pod runs on, nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import pulumi
import pulumi_kubernetes as k8s

from infra import scanner_skips
from infra.config import GpuPoolConfig
from infra.facts import (
    GPU_TAINT,
    MIG_CONFIG_LABEL,
    PREFLIGHT_GATE,
    PREFLIGHT_NAMESPACE,
    PREFLIGHT_RESULT_ANNOTATION,
    PREFLIGHT_TAINT,
)
from infra.gpu_node_groups import node_labels

_PRIVILEGES_NEEDED = {
    # Why the gate runs as it does, for the peer scanner (infra/scanner_skips.py): each is a check
    # of the node itself, which no unprivileged container can make.
    "CKV_K8S_16": "privileged: nsenter into the host mount namespace (CAP_SYS_ADMIN) to run the host nvidia-smi",
    "CKV_K8S_17": "hostPID: nsenter targets the host init process",
    "CKV_K8S_20": "privileged implies privilege escalation; the gate is the node check itself",
    "CKV_K8S_23": "root: the host GPU device nodes and the RAID mount are root-only",
    "CKV_K8S_40": "runs as root (UID 0) for the same device nodes",
    "CKV_K8S_28": "privileged carries NET_RAW; fi_info probes the EFA devices",
    "CKV_K8S_37": "privileged carries every capability; nsenter needs CAP_SYS_ADMIN",
    "CKV_K8S_29": "the security context is set: privileged root on purpose (see the other skips)",
    "CKV_K8S_31": "seccomp does not apply to a privileged container",
    "CKV_K8S_22": "not yet tried read-only: the gate and the host tools it enters were only run with a writable "
    "root, and a gate that cannot start leaves every new node tainted",
    "CKV_K8S_38": "the gate patches its own node (taint and result annotation) with this token",
    "CKV_K8S_8": "a hung gate leaves its node tainted: the safe state; a restart mid-check would repeat it",
    "CKV_K8S_15": "pinned image: IfNotPresent avoids a registry round trip on every new node",
    "CKV_K8S_43": "the image is the stack config's pinned reference (fixed tag or digest) checked by the loader",
}

__all__ = [
    "NAME",
    "NAMESPACE",
    "RESULT_ANNOTATION",
    "NodePreflight",
    "NodePreflightArgs",
    "admission_validations",
    "gate_script",
    "preflight_script",
]

NAME = PREFLIGHT_GATE
"""Of the ServiceAccount, ConfigMap, RBAC objects and the admission policy; DaemonSets add the pool."""
NAMESPACE = PREFLIGHT_NAMESPACE
RESULT_ANNOTATION = PREFLIGHT_RESULT_ANNOTATION
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{NAMESPACE}:{NAME}"
"""How the API server names the gate's requests (request.userInfo.username)."""

_POOL_LABEL = "peakguard.io/pool"
_CONFIG_DIR = "/etc/peakguard/preflight"
_STATE_DIR = "/run/peakguard-preflight"
_READY_FILE = f"{_STATE_DIR}/ready"
# The GPU operator's driver container keeps its root here on the host (Ubuntu pools); nvidia-smi
# works only inside it. The gate's checks run in the host's mount namespace, so the path is the host's.
_OPERATOR_NVIDIA_SMI = "chroot /run/nvidia/driver nvidia-smi"
# Where the EFA installer puts libfabric's tools on both AMI families. The checks run with the
# container's PATH, not a login shell's, so /opt/amazon/efa/bin is not on it.
_FI_INFO = "/opt/amazon/efa/bin/fi_info"
# The user-info extra in which the API server names the node a pod-bound token's pod runs on.
_NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def preflight_script() -> str:
    """The node check script shipped in `infra/node_scripts/` (also run by the node playbooks)."""
    return resources.files("infra").joinpath("node_scripts/node_preflight.sh").read_text()


def gate_script() -> str:
    """The gate the DaemonSet runs, shipped in `infra/pod_scripts/`."""
    return resources.files("infra").joinpath("pod_scripts/preflight_gate.py").read_text()


@dataclass(frozen=True)
class NodePreflightArgs:
    pools: Sequence[GpuPoolConfig]
    image: str
    """The model-service image: it has python3, bash and nsenter, and GPU nodes pull it anyway."""
    provider: k8s.Provider
    depends_on: Sequence[pulumi.Resource] = ()
    """What must exist first: the system nodes the API server's admission and the DaemonSet need."""


def admission_validations() -> list[tuple[str, str]]:
    """(CEL expression, message) pairs the gate's node updates must pass.

    `oldObject` is the node as stored, `object` as the update would leave it. Absent maps and lists
    read as empty ones, so a node without annotations compares like one with none.
    """
    key, annotation = PREFLIGHT_TAINT.key, RESULT_ANNOTATION
    return [
        (
            # Pod-bound tokens carry their pod's node (ServiceAccountTokenPodNodeInfo, on by
            # default since 1.30): a token taken from one node's gate cannot untaint another node.
            f"has(request.userInfo.extra) && '{_NODE_NAME_EXTRA}' in request.userInfo.extra && "
            f"request.userInfo.extra['{_NODE_NAME_EXTRA}'] == [object.metadata.name]",
            "the preflight gate may change only the node its own pod runs on",
        ),
        (
            "variables.newTaints == variables.oldTaints || "
            f"variables.newTaints == variables.oldTaints.filter(t, t.key != '{key}')",
            f"the preflight gate may only remove the {key} taint, and no other",
        ),
        (
            f"variables.newAnnotations.all(k, k == '{annotation}' || "
            "(k in variables.oldAnnotations && variables.oldAnnotations[k] == variables.newAnnotations[k])) && "
            f"variables.oldAnnotations.all(k, k == '{annotation}' || k in variables.newAnnotations)",
            f"the preflight gate may only set the {annotation} annotation",
        ),
        (
            "(has(object.metadata.labels) ? object.metadata.labels : {}) == "
            "(has(oldObject.metadata.labels) ? oldObject.metadata.labels : {}) && "
            "(has(object.metadata.finalizers) ? object.metadata.finalizers : []) == "
            "(has(oldObject.metadata.finalizers) ? oldObject.metadata.finalizers : []) && "
            "(has(object.metadata.ownerReferences) ? object.metadata.ownerReferences : []) == "
            "(has(oldObject.metadata.ownerReferences) ? oldObject.metadata.ownerReferences : [])",
            "the preflight gate may not change the node's labels, finalizers or owners",
        ),
        (
            "(has(object.spec.unschedulable) && object.spec.unschedulable) == "
            "(has(oldObject.spec.unschedulable) && oldObject.spec.unschedulable) && "
            + " && ".join(
                f"(has(object.spec.{field}) ? object.spec.{field} : {empty}) == "
                f"(has(oldObject.spec.{field}) ? oldObject.spec.{field} : {empty})"
                for field, empty in (("podCIDR", "''"), ("podCIDRs", "[]"), ("providerID", "''"))
            ),
            "the preflight gate may not cordon, uncordon or readdress the node",
        ),
    ]


class NodePreflight(pulumi.ComponentResource):
    """ServiceAccount, RBAC and its admission policy, the scripts' ConfigMap, one DaemonSet per GPU pool."""

    daemon_sets: dict[str, str]
    """DaemonSet name by pool name."""

    def __init__(self, name: str, args: NodePreflightArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:infra:NodePreflight", name, None, opts)
        self._args = args
        self._name = name
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))

        service_account = k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata=self._metadata(NAME, namespaced=True),
            opts=k8s_opts,
        )
        role = k8s.rbac.v1.ClusterRole(
            f"{name}-role",
            metadata=self._metadata(NAME),
            # Read its node and patch it; what the patch may change is the admission policy's to say.
            rules=[k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["nodes"], verbs=["get", "patch"])],
            opts=k8s_opts,
        )
        binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-role-binding",
            metadata=self._metadata(NAME),
            role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=NAME),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=NAME, namespace=NAMESPACE)],
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[role, service_account])),
        )
        policy = self._admission_policy(k8s_opts)

        scripts = {"node_preflight.sh": preflight_script(), "preflight_gate.py": gate_script()}
        config_map = k8s.core.v1.ConfigMap(
            f"{name}-scripts",
            metadata=self._metadata(NAME, namespaced=True),
            data=scripts,
            opts=k8s_opts,
        )
        # In the pod template, so a change to either script rolls the DaemonSets: a mounted
        # ConfigMap changes under a running gate, which would keep its old code.
        scripts_hash = hashlib.sha256(json.dumps(scripts, sort_keys=True).encode()).hexdigest()

        # The gate must not run before it may do its job: refused patches would only fill its log.
        ready = pulumi.ResourceOptions.merge(
            k8s_opts, pulumi.ResourceOptions(depends_on=[*args.depends_on, binding, policy, config_map])
        )
        self.daemon_sets = {pool.name: self._daemon_set(pool, scripts_hash, ready) for pool in args.pools}
        self._no_ingress(ready)
        self.register_outputs({"daemonSets": self.daemon_sets})

    # --- Pieces --------------------------------------------------------------------------

    def _metadata(
        self, name: str, *, namespaced: bool = False, annotations: dict[str, str] | None = None
    ) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(
            name=name,
            namespace=NAMESPACE if namespaced else None,
            labels={
                "app.kubernetes.io/name": NAME,
                "app.kubernetes.io/part-of": "peakguard",
                "app.kubernetes.io/managed-by": "pulumi",
            },
            annotations=annotations,
        )

    def _admission_policy(
        self, k8s_opts: pulumi.ResourceOptions
    ) -> k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding:
        admission = k8s.admissionregistration.v1
        policy = admission.ValidatingAdmissionPolicy(
            f"{self._name}-policy",
            metadata=self._metadata(NAME),
            spec=admission.ValidatingAdmissionPolicySpecArgs(
                # A policy that cannot be evaluated denies: the gate then waits, a node stays
                # tainted, and nothing is let through unchecked.
                failure_policy="Fail",
                match_constraints=admission.MatchResourcesArgs(
                    resource_rules=[
                        # A patch is an UPDATE to admission. The gate has no right to nodes/status.
                        admission.NamedRuleWithOperationsArgs(
                            api_groups=[""], api_versions=["v1"], operations=["UPDATE"], resources=["nodes"]
                        )
                    ]
                ),
                # Only the gate's own requests: the kubelet, the node controllers and operators are
                # governed by their own rights.
                match_conditions=[
                    admission.MatchConditionArgs(
                        name="preflight-gate", expression=f"request.userInfo.username == '{SERVICE_ACCOUNT_USER}'"
                    )
                ],
                variables=[
                    admission.VariableArgs(name=name, expression=f"has({path}) ? {path} : {empty}")
                    for name, path, empty in (
                        ("oldTaints", "oldObject.spec.taints", "[]"),
                        ("newTaints", "object.spec.taints", "[]"),
                        ("oldAnnotations", "oldObject.metadata.annotations", "{}"),
                        ("newAnnotations", "object.metadata.annotations", "{}"),
                    )
                ],
                validations=[
                    # Forbidden, not the default Invalid (422): the gate reads 422 as "the taints
                    # changed under my patch, read again", and must not retry a refusal forever.
                    admission.ValidationArgs(expression=expression, message=message, reason="Forbidden")
                    for expression, message in admission_validations()
                ],
            ),
            opts=k8s_opts,
        )
        return admission.ValidatingAdmissionPolicyBinding(
            f"{self._name}-policy-binding",
            metadata=self._metadata(NAME),
            spec=admission.ValidatingAdmissionPolicyBindingSpecArgs(policy_name=NAME, validation_actions=["Deny"]),
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[policy])),
        )

    def _env(self, pool: GpuPoolConfig) -> list[k8s.core.v1.EnvVarArgs]:
        instance = pool.instance
        env = {
            "PREFLIGHT_TAINT": PREFLIGHT_TAINT.flag(),
            "PREFLIGHT_RESULT_ANNOTATION": RESULT_ANNOTATION,
            "PREFLIGHT_READY_FILE": _READY_FILE,
            "PREFLIGHT_SCRIPT": f"{_CONFIG_DIR}/node_preflight.sh",
            "PREFLIGHT_INTERVAL": "30",
            # What the pool's instance type must show (infra/facts.py).
            "PREFLIGHT_GPUS": str(instance.gpus),
            "PREFLIGHT_EFA": str(instance.efa_interface_count),
            "PREFLIGHT_NVME": str(instance.nvme_volumes),
            # The label the MIG manager applies, as the node group sets it; empty: a GPU without MIG.
            "PREFLIGHT_MIG_CONFIG": node_labels(pool).get(MIG_CONFIG_LABEL, ""),
            "FI_INFO": _FI_INFO,
        }
        if pool.ami_family == "ubuntu":
            # The GPU operator installs the driver in a container on these nodes (cluster_addons.py).
            env["NVIDIA_SMI"] = _OPERATOR_NVIDIA_SMI
        return [
            k8s.core.v1.EnvVarArgs(
                name="NODE_NAME",
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="spec.nodeName")
                ),
            ),
            *(k8s.core.v1.EnvVarArgs(name=key, value=value) for key, value in env.items()),
        ]

    def _no_ingress(self, opts: pulumi.ResourceOptions) -> None:
        """Nothing needs to reach a gate (its readiness is a file test): every connection in is refused."""
        k8s.networking.v1.NetworkPolicy(
            f"{self._name}-no-ingress",
            metadata=self._metadata(f"{NAME}-no-ingress", namespaced=True),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app.kubernetes.io/name": NAME}),
                policy_types=["Ingress"],
            ),
            opts=opts,
        )

    def _daemon_set(self, pool: GpuPoolConfig, scripts_hash: str, opts: pulumi.ResourceOptions) -> str:
        daemon_set = f"{NAME}-{pool.name}"
        selector = {"app.kubernetes.io/name": NAME, _POOL_LABEL: pool.name}
        container = k8s.core.v1.ContainerArgs(
            name="gate",
            image=self._args.image,
            command=["python3", f"{_CONFIG_DIR}/preflight_gate.py"],
            env=self._env(pool),
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "50m", "memory": "64Mi"},
                # The checks' processes (nvidia-smi, and all_reduce_perf's CUDA contexts where
                # nccl-tests is installed) count against this container: room for them, no more.
                limits={"cpu": "1", "memory": "1Gi"},
            ),
            # Privileged and root: the checks enter the host's mount namespace (nsenter, with
            # hostPID) to run the host's nvidia-smi and fi_info and to see its RAID mount, which
            # takes CAP_SYS_ADMIN; nvidia-smi needs the host's device nodes as root too.
            security_context=k8s.core.v1.SecurityContextArgs(privileged=True, run_as_user=0, run_as_non_root=False),
            readiness_probe=k8s.core.v1.ProbeArgs(
                # Ready once the node carries no preflight taint: `kubectl get ds` shows stuck nodes.
                exec_=k8s.core.v1.ExecActionArgs(command=["test", "-f", _READY_FILE]),
                period_seconds=10,
            ),
            volume_mounts=[
                k8s.core.v1.VolumeMountArgs(name="scripts", mount_path=_CONFIG_DIR, read_only=True),
                k8s.core.v1.VolumeMountArgs(name="state", mount_path=_STATE_DIR),
            ],
        )
        pod = k8s.core.v1.PodSpecArgs(
            service_account_name=NAME,
            # The gate reads and patches its node through the API with this token.
            automount_service_account_token=True,
            host_pid=True,
            # Node-critical: on a full node the gate preempts rather than waits, or the node never serves.
            priority_class_name="system-node-critical",
            node_selector={_POOL_LABEL: node_labels(pool)[_POOL_LABEL]},
            # Its own taint, obviously, and the GPU one. No GPU request: it must not wait for the
            # device plugin, whose GPUs it checks through nvidia-smi directly.
            tolerations=[k8s.core.v1.TolerationArgs(**taint.toleration()) for taint in (GPU_TAINT, PREFLIGHT_TAINT)],
            termination_grace_period_seconds=10,
            containers=[container],
            volumes=[
                k8s.core.v1.VolumeArgs(
                    name="scripts", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=NAME, default_mode=0o444)
                ),
                k8s.core.v1.VolumeArgs(name="state", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="1Mi")),
            ],
        )
        k8s.apps.v1.DaemonSet(
            f"{self._name}-{pool.name}",
            metadata=self._metadata(
                daemon_set,
                namespaced=True,
                # A node that keeps failing preflight keeps its gate unready; `pulumi up` must not
                # wait on it (the node stays tainted, which is the point).
                annotations={
                    **scanner_skips.skip_annotations(_PRIVILEGES_NEEDED),
                    "pulumi.com/skipAwait": "true",
                    # Read by the policy pack (SAFE-004): why this one may roll on every node at once.
                    "peakguard.io/rollout-takes-no-capacity": "the gate only lifts a startup taint; on a serving "
                    "node it finds none and idles, so its pods restarting takes no replica away",
                },
            ),
            spec=k8s.apps.v1.DaemonSetSpecArgs(
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                update_strategy=k8s.apps.v1.DaemonSetUpdateStrategyArgs(
                    type="RollingUpdate",
                    # All at once: on serving nodes a new gate finds no taint and idles, and an unready
                    # gate on a failing node would otherwise hold the rollout everywhere else.
                    rolling_update=k8s.apps.v1.RollingUpdateDaemonSetArgs(max_unavailable="100%"),
                ),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels={**selector, "app.kubernetes.io/part-of": "peakguard"},
                        annotations={"peakguard.io/scripts-sha256": scripts_hash},
                    ),
                    spec=pod,
                ),
            ),
            opts=opts,
        )
        return daemon_set
