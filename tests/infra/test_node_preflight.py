"""The preflight DaemonSets, their rights and the admission policy that narrows them, as each stack declares them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import pytest

from infra import facts
from infra.manifests import manifests
from infra.node_preflight import RESULT_ANNOTATION, gate_script, preflight_script
from infra.offline import OfflineRun, Registration
from tests.infra.conftest import PROJECT_DIR

RunChanged = Callable[[str, Callable[[dict[str, Any]], None]], OfflineRun]

DAEMON_SET = "kubernetes:apps/v1:DaemonSet"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
CLUSTER_ROLE = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole"
CLUSTER_ROLE_BINDING = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding"
POLICY = "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy"
POLICY_BINDING = "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicyBinding"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
COMPONENT = "peakguard:infra:NodePreflight"
POOL_LABEL = "peakguard.io/pool"
EKS_EFFECTS = {eks: kubernetes for kubernetes, eks in facts.EKS_TAINT_EFFECTS.items()}


# --- Reading the run ----------------------------------------------------------------------


def _children(run: OfflineRun) -> list[Registration]:
    (component,) = run.of_type(COMPONENT)
    return run.children_of(component.urn)


def _one(run: OfflineRun, type_token: str) -> Registration:
    (found,) = [r for r in _children(run) if r.type == type_token]
    return found


def _daemon_sets(run: OfflineRun) -> dict[str, Registration]:
    """By the pool their pods select."""
    return {
        d.inputs["spec"]["template"]["spec"]["nodeSelector"][POOL_LABEL]: d
        for d in _children(run)
        if d.type == DAEMON_SET
    }


def _pod(daemon_set: Registration) -> Mapping[str, Any]:
    pod: Mapping[str, Any] = daemon_set.inputs["spec"]["template"]["spec"]
    return pod


def _container(daemon_set: Registration) -> Mapping[str, Any]:
    containers: list[Mapping[str, Any]] = _pod(daemon_set)["containers"]
    (container,) = containers
    return container


def _env(daemon_set: Registration) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(daemon_set)["env"]}


def _tolerates(tolerations: list[Mapping[str, Any]], key: str, value: str, effect: str) -> bool:
    return any(
        t.get("key") in (key, None)
        and t.get("effect") in (effect, None, "")
        and (t.get("operator") == "Exists" or t.get("value") == value)
        for t in tolerations
    )


# --- The DaemonSets -----------------------------------------------------------------------


def test_one_gate_per_gpu_pool_on_exactly_that_pools_nodes(run: OfflineRun) -> None:
    daemon_sets = _daemon_sets(run)

    assert set(daemon_sets) == {pool.name for pool in run.config.gpu_pools}
    for pool, daemon_set in daemon_sets.items():
        assert daemon_set.inputs["metadata"]["namespace"] == "kube-system"
        assert daemon_set.inputs["metadata"]["name"] == f"peakguard-node-preflight-{pool}"
        groups = [g for g in run.of_type(NODE_GROUP) if g.inputs["labels"].get(POOL_LABEL) == pool]
        assert groups, f"no node group is labelled {POOL_LABEL}={pool}"
        selector = _pod(daemon_set)["nodeSelector"]
        # Selects every generation of the pool, and nothing else.
        assert all(selector.items() <= g.inputs["labels"].items() for g in groups)
        assert not [
            g for g in run.of_type(NODE_GROUP) if g not in groups and selector.items() <= g.inputs["labels"].items()
        ]


def test_gates_tolerate_every_taint_their_nodes_carry_and_ask_for_no_gpu(run: OfflineRun) -> None:
    for pool, daemon_set in _daemon_sets(run).items():
        tolerations = _pod(daemon_set)["tolerations"]
        startup = facts.PREFLIGHT_TAINT
        assert _tolerates(tolerations, startup.key, startup.value, startup.effect)
        for group in run.of_type(NODE_GROUP):
            if group.inputs["labels"].get(POOL_LABEL) != pool:
                continue
            for taint in group.inputs.get("taints", []):
                effect = EKS_EFFECTS[taint["effect"]]
                assert _tolerates(tolerations, taint["key"], taint["value"], effect), (pool, taint)
        resources = _container(daemon_set)["resources"]
        assert not [k for part in resources.values() for k in part if k.startswith("nvidia.com/")]
        assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"]


def test_gates_enter_the_host_and_are_placed_before_anything_else(run: OfflineRun) -> None:
    for daemon_set in _daemon_sets(run).values():
        pod, container = _pod(daemon_set), _container(daemon_set)
        assert pod["hostPID"] is True
        assert pod["priorityClassName"] == "system-node-critical"
        assert container["securityContext"]["privileged"] is True
        assert container["securityContext"]["runAsUser"] == 0
        assert _env(daemon_set)["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert daemon_set.inputs["spec"]["updateStrategy"]["type"] == "RollingUpdate"
        # A node stuck in preflight must not hold up `pulumi up`.
        assert daemon_set.inputs["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
        assert container["image"] == run.config.kubernetes.model_service.image


def test_each_gate_expects_what_its_pools_instance_type_has(run: OfflineRun) -> None:
    for pool_name, daemon_set in _daemon_sets(run).items():
        pool, env = run.config.pool(pool_name), _env(daemon_set)
        instance = facts.INSTANCE_TYPES[pool.instance_type]
        assert env["PREFLIGHT_GPUS"] == str(instance.gpus)
        assert env["PREFLIGHT_EFA"] == str(instance.efa_interface_count)
        assert env["PREFLIGHT_NVME"] == str(instance.nvme_volumes)
        # The layout the node group asks the MIG manager for; none on a GPU without MIG.
        labels = {g.inputs["labels"].get("nvidia.com/mig.config") for g in run.of_type(NODE_GROUP)
                  if g.inputs["labels"].get(POOL_LABEL) == pool_name}  # fmt: skip
        assert labels == {env["PREFLIGHT_MIG_CONFIG"] or None}
        assert env["PREFLIGHT_TAINT"] == facts.PREFLIGHT_TAINT.flag()
        assert env["PREFLIGHT_RESULT_ANNOTATION"] == RESULT_ANNOTATION
        assert "NVIDIA_SMI" not in env, "AL2023 pools run the AMI's own nvidia-smi"


def test_the_prod_mig_pool_checks_its_mig_layout_and_the_full_pool_that_mig_is_off(runs: dict[str, OfflineRun]) -> None:
    daemon_sets = _daemon_sets(runs["prod"])
    assert _env(daemon_sets["mig"])["PREFLIGHT_MIG_CONFIG"] == "all-1g.10gb"
    assert _env(daemon_sets["full"])["PREFLIGHT_MIG_CONFIG"] == "all-disabled"


def test_an_ubuntu_pool_reads_nvidia_smi_from_the_operators_driver_root(run_changed: RunChanged) -> None:
    def ubuntu(values: dict[str, Any]) -> None:
        values["peakguard:gpuPools"]["full"].update(amiFamily="ubuntu", amiId="ami-0abcdef1234567890", gds=True)

    daemon_sets = _daemon_sets(run_changed("prod", ubuntu))

    assert _env(daemon_sets["full"])["NVIDIA_SMI"] == "chroot /run/nvidia/driver nvidia-smi"
    assert "NVIDIA_SMI" not in _env(daemon_sets["mig"])


def test_every_setting_a_gate_is_given_is_read_by_the_gate_or_the_checks(run: OfflineRun) -> None:
    readers = preflight_script() + gate_script()
    for daemon_set in _daemon_sets(run).values():
        unread = [name for name in _env(daemon_set) if not re.search(rf"\b{name}\b", readers)]
        assert unread == [], "a misspelt setting would silently fall back to its default"


def test_the_readiness_probe_tests_the_file_the_gate_writes_in_its_own_volume(run: OfflineRun) -> None:
    for daemon_set in _daemon_sets(run).values():
        container, env = _container(daemon_set), _env(daemon_set)
        assert container["readinessProbe"]["exec"]["command"] == ["test", "-f", env["PREFLIGHT_READY_FILE"]]
        (state,) = [
            m for m in container["volumeMounts"] if env["PREFLIGHT_READY_FILE"].startswith(m["mountPath"] + "/")
        ]
        (volume,) = [v for v in _pod(daemon_set)["volumes"] if v["name"] == state["name"]]
        assert "emptyDir" in volume


# --- The scripts ---------------------------------------------------------------------------


def test_the_gates_run_the_repositorys_scripts_and_roll_when_they_change(run: OfflineRun) -> None:
    config_map = _one(run, CONFIG_MAP)
    data = config_map.inputs["data"]
    assert data == {
        "node_preflight.sh": (PROJECT_DIR / "infra" / "node_scripts" / "node_preflight.sh").read_text(),
        "preflight_gate.py": (PROJECT_DIR / "infra" / "pod_scripts" / "preflight_gate.py").read_text(),
    }
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    for daemon_set in _daemon_sets(run).values():
        container, env = _container(daemon_set), _env(daemon_set)
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "scripts"]
        (volume,) = [v for v in _pod(daemon_set)["volumes"] if v["name"] == "scripts"]
        assert volume["configMap"]["name"] == config_map.inputs["metadata"]["name"]
        assert container["command"] == ["python3", f"{mount['mountPath']}/preflight_gate.py"]
        assert env["PREFLIGHT_SCRIPT"] == f"{mount['mountPath']}/node_preflight.sh"
        assert daemon_set.inputs["spec"]["template"]["metadata"]["annotations"]["peakguard.io/scripts-sha256"] == digest


# --- Rights --------------------------------------------------------------------------------


def test_the_gates_may_read_and_patch_nodes_and_nothing_else(run: OfflineRun) -> None:
    service_account, role, binding = (_one(run, t) for t in (SERVICE_ACCOUNT, CLUSTER_ROLE, CLUSTER_ROLE_BINDING))

    assert role.inputs["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    assert binding.inputs["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role.inputs["metadata"]["name"],
    }
    account = {"kind": "ServiceAccount", **{k: service_account.inputs["metadata"][k] for k in ("name", "namespace")}}
    assert binding.inputs["subjects"] == [account]
    for daemon_set in _daemon_sets(run).values():
        assert _pod(daemon_set)["serviceAccountName"] == account["name"]
        assert daemon_set.inputs["metadata"]["namespace"] == account["namespace"]


def test_the_admission_policy_holds_the_gates_service_account_to_its_one_change(run: OfflineRun) -> None:
    service_account, policy, binding = (_one(run, t) for t in (SERVICE_ACCOUNT, POLICY, POLICY_BINDING))
    spec = policy.inputs["spec"]
    account = service_account.inputs["metadata"]

    assert binding.inputs["spec"] == {"policyName": policy.inputs["metadata"]["name"], "validationActions": ["Deny"]}
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes"]}
    ]
    (condition,) = spec["matchConditions"]
    assert condition["expression"] == (
        f"request.userInfo.username == 'system:serviceaccount:{account['namespace']}:{account['name']}'"
    )
    validations = spec["validations"]
    # The gate reads 422 as "the taints changed under my patch": a refusal must be something else.
    assert {v["reason"] for v in validations} == {"Forbidden"}
    expressions = " ".join(v["expression"] for v in validations)
    assert f"t.key != '{facts.PREFLIGHT_TAINT.key}'" in expressions
    assert f"k == '{RESULT_ANNOTATION}'" in expressions
    assert "request.userInfo.extra['authentication.kubernetes.io/node-name'] == [object.metadata.name]" in expressions
    assert all(v["message"] and "\n" not in v["expression"] for v in validations)
    variables = {v["name"] for v in spec["variables"]}
    assert set(re.findall(r"variables\.(\w+)", expressions)) <= variables


def test_the_gates_start_only_once_their_rights_and_scripts_exist(run: OfflineRun) -> None:
    needed = {_one(run, t).urn for t in (CLUSTER_ROLE_BINDING, POLICY_BINDING, CONFIG_MAP)}
    for daemon_set in _daemon_sets(run).values():
        assert needed <= set(daemon_set.dependencies)


def test_the_objects_validate_against_the_clusters_kubernetes_version(run: OfflineRun) -> None:
    # Field names included: strict validation refuses one the API does not know.
    version = run.config.cluster.kubernetes_version
    kinds = set()
    for manifest in manifests(run):
        if manifest.name.startswith("peakguard-node-preflight"):
            try:
                kubernetes_validate.validate(dict(manifest.body), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{manifest.kind}/{manifest.name}: {'.'.join(map(str, exc.path))}: {exc.message}")
            kinds.add(manifest.kind)
    assert kinds == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ConfigMap",
        "DaemonSet",
        "NetworkPolicy",
    }
