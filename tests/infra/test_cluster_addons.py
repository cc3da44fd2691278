"""Cluster add-ons: pinned Helm releases, their values, their IAM roles, and the one Kubernetes provider."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from infra import offline
from infra.kubernetes_provider import kubeconfig
from infra.offline import OfflineRun, Registration
from tests.infra.conftest import PROJECT_DIR, stack_values

RELEASE = "kubernetes:helm.sh/v3:Release"
PROVIDER = "pulumi:providers:kubernetes"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ROLE_ARN = "eks.amazonaws.com/role-arn"
IN_FLIGHT = "peakguard_in_flight_requests"

# Chart name per `peakguard:kubernetes.charts` key, as the stack files pin them.
CHARTS = {
    "gpuOperator": "gpu-operator",
    "efaDevicePlugin": "aws-efa-k8s-device-plugin",
    "metricsServer": "metrics-server",
    "clusterAutoscaler": "cluster-autoscaler",
    "awsLoadBalancerController": "aws-load-balancer-controller",
    "kubePrometheusStack": "kube-prometheus-stack",
    "prometheusAdapter": "prometheus-adapter",
    "keda": "keda",
    "openTelemetryCollector": "opentelemetry-collector",
}


def _releases(run: OfflineRun) -> dict[str, Registration]:
    """By chart name."""
    return {r.inputs["chart"]: r for r in run.of_type(RELEASE)}


def _values(run: OfflineRun, chart: str) -> Mapping[str, Any]:
    values: Mapping[str, Any] = _releases(run)[chart].inputs["values"]
    return values


def _cluster_name(run: OfflineRun) -> str:
    (cluster,) = run.of_type("aws:eks/cluster:Cluster")
    return str(cluster.inputs["name"])


def _role_by_arn(run: OfflineRun, arn: str) -> Registration:
    (role,) = [r for r in run.of_type(ROLE) if r.outputs["arn"] == arn]
    return role


def _inline_policy(run: OfflineRun, role: Registration) -> dict[str, Any]:
    (policy,) = [p for p in run.of_type(ROLE_POLICY) if p.inputs["role"] == role.id]
    document: dict[str, Any] = json.loads(policy.inputs["policy"])
    return document


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- Releases ----------------------------------------------------------------------------


def test_every_release_is_pinned_to_the_stack_config_and_names_its_repository(run: OfflineRun) -> None:
    pins = stack_values(run.config.env)["peakguard:kubernetes"]["charts"]
    releases = _releases(run)

    assert set(releases) == set(CHARTS.values())
    for key, chart in CHARTS.items():
        release = releases[chart]
        assert release.inputs["version"] == pins[key], chart
        repository = release.inputs["repositoryOpts"]["repo"]
        assert repository.startswith("https://"), chart
        assert release.inputs["atomic"] is True, chart


def test_gpu_operator_uses_mixed_mig_and_its_mig_manager(run: OfflineRun) -> None:
    values = _values(run, "gpu-operator")

    assert values["mig"]["strategy"] == "mixed"
    assert values["migManager"]["enabled"] is True
    assert all(pool.ami_family == "al2023" for pool in run.config.gpu_pools), "every stack file uses al2023"
    # AL2023's NVIDIA AMIs carry the driver and toolkit: the operator must not install its own.
    assert values["driver"]["enabled"] is False
    assert values["toolkit"]["enabled"] is False


def test_gpu_metrics_keep_the_pod_they_were_measured_for(run: OfflineRun) -> None:
    # `peakguard diagnose` reads DCGM's GPU memory by pod and namespace: with the chart's default
    # honorLabels false, Prometheus would rename those labels to exported_pod/exported_namespace.
    monitor = _values(run, "gpu-operator")["dcgmExporter"]["serviceMonitor"]

    assert monitor == {"enabled": True, "honorLabels": True}


def test_an_operator_driver_upgrade_takes_at_most_a_third_of_the_nodes_each_drained(run_changed) -> None:
    def ubuntu(values: dict[str, Any]) -> None:
        pool = values["peakguard:gpuPools"]["full"]
        pool["amiFamily"] = "ubuntu"
        pool["amiId"] = "ami-0123456789abcdef0"
        pool.pop("releaseVersion", None)

    values = _values(run_changed("prod", ubuntu), "gpu-operator")

    assert values["driver"]["enabled"] is True, "a pool that needs the operator's driver container"
    policy = values["driver"]["upgradePolicy"]
    assert policy["maxUnavailable"] == "33%"
    assert policy["drain"]["enable"] is True
    assert policy["drain"]["deleteEmptyDir"] is True, "model pods keep their weights in emptyDir"


def test_efa_device_plugin_selects_nodes_by_the_efa_label(run: OfflineRun) -> None:
    values = _values(run, "aws-efa-k8s-device-plugin")

    assert values["nodeSelector"] == {"vpc.amazonaws.com/efa.present": "true"}
    # The chart's required node affinity is built from these: the label, not an instance-type list.
    assert values["supportedInstanceLabels"] == {"keys": ["vpc.amazonaws.com/efa.present"], "values": ["true"]}
    text = json.dumps(values)
    assert "node.kubernetes.io/instance-type" not in text
    assert "beta.kubernetes.io/instance-type" not in text
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in values["tolerations"]


@pytest.mark.parametrize(
    ("chart", "account_path"),
    [
        ("cluster-autoscaler", ("rbac", "serviceAccount")),
        ("aws-load-balancer-controller", ("serviceAccount",)),
    ],
)
def test_controller_service_account_role_trusts_exactly_that_account(
    run: OfflineRun, chart: str, account_path: tuple[str, ...]
) -> None:
    release = _releases(run)[chart]
    account: Mapping[str, Any] = release.inputs["values"]
    for key in account_path:
        account = account[key]
    role = _role_by_arn(run, account["annotations"][ROLE_ARN])
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]

    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert set(statement["Condition"]) == {"StringEquals"}
    conditions = statement["Condition"]["StringEquals"]
    subject = f"system:serviceaccount:{release.inputs['namespace']}:{account['name']}"
    assert sorted(conditions.values()) == sorted([subject, "sts.amazonaws.com"])
    assert [k for k in conditions if k.endswith(":sub")] and [k for k in conditions if k.endswith(":aud")]


@pytest.mark.parametrize(
    ("chart", "path"),
    [
        ("gpu-operator", ("daemonsets",)),
        ("gpu-operator", ("node-feature-discovery", "worker")),
        ("aws-efa-k8s-device-plugin", ()),
        ("kube-prometheus-stack", ("prometheus-node-exporter",)),
    ],
)
def test_gpu_node_agents_run_on_a_node_that_has_not_passed_preflight(
    run: OfflineRun, chart: str, path: tuple[str, ...]
) -> None:
    values: Any = _values(run, chart)
    for key in path:
        values = values[key]

    # Without these the MIG manager never applies the layout preflight waits for: a deadlock.
    assert {"key": "peakguard.io/preflight", "operator": "Exists", "effect": "NoSchedule"} in values["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in values["tolerations"]


def test_autoscaler_and_efa_plugin_run_the_releases_the_stack_pins(run: OfflineRun) -> None:
    # Not the charts' defaults: chart 9.52.1 would run an autoscaler built for 1.34 on a 1.33 cluster.
    assert _values(run, "cluster-autoscaler")["image"] == {"tag": run.config.kubernetes.cluster_autoscaler_image_tag}
    assert run.config.kubernetes.cluster_autoscaler_image_tag.startswith(f"v{run.config.cluster.kubernetes_version}.")
    plugin = _values(run, "aws-efa-k8s-device-plugin")["image"]
    assert plugin == {"tag": run.config.kubernetes.efa_device_plugin_image_tag}


def test_autoscaler_counts_a_node_in_preflight_as_coming_capacity(run: OfflineRun) -> None:
    assert _values(run, "cluster-autoscaler")["extraArgs"]["startup-taint"] == "peakguard.io/preflight"


def test_autoscaler_resizes_only_node_groups_tagged_for_this_cluster(run: OfflineRun) -> None:
    values = _values(run, "cluster-autoscaler")
    role = _role_by_arn(run, values["rbac"]["serviceAccount"]["annotations"][ROLE_ARN])
    statements = _inline_policy(run, role)["Statement"]
    cluster = _cluster_name(run)

    assert values["autoDiscovery"]["clusterName"] == cluster
    resizing = [s for s in statements if "autoscaling:SetDesiredCapacity" in _as_list(s["Action"])]
    assert resizing
    for statement in resizing:
        tag = statement["Condition"]["StringEquals"]
        assert tag == {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster}": "owned"}
    unconditional = [s for s in statements if "Condition" not in s]
    assert not [a for s in unconditional for a in _as_list(s["Action"]) if a in {"autoscaling:*", "*"}]


def test_prometheus_adapter_exposes_the_in_flight_metric(run: OfflineRun) -> None:
    rules = _values(run, "prometheus-adapter")["rules"]["custom"]
    exposed = [rule for rule in rules if rule["name"]["as"] == IN_FLIGHT]

    assert len(exposed) == 1
    assert exposed[0]["seriesQuery"].startswith(IN_FLIGHT + "{")
    assert set(exposed[0]["resources"]["overrides"]) == {"namespace", "pod"}


def test_kube_prometheus_stack_selects_rules_and_monitors_from_every_namespace(run: OfflineRun) -> None:
    spec = _values(run, "kube-prometheus-stack")["prometheus"]["prometheusSpec"]

    assert spec["ruleSelectorNilUsesHelmValues"] is False
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False
    # Left at the chart's `{}` (every namespace), not narrowed to the release's own.
    for key in ("ruleSelector", "ruleNamespaceSelector", "podMonitorSelector", "podMonitorNamespaceSelector"):
        assert not spec.get(key), key


# --- The Kubernetes provider -------------------------------------------------------------


def test_one_kubernetes_provider_authenticating_through_aws_eks_get_token(run: OfflineRun) -> None:
    (provider,) = run.of_type(PROVIDER)
    config = json.loads(provider.inputs["kubeconfig"])
    cluster = _cluster_name(run)
    (user,) = config["users"]
    exec_ = user["user"]["exec"]

    assert exec_["command"] == "aws"
    assert exec_["args"][:2] == ["eks", "get-token"]
    assert exec_["args"][exec_["args"].index("--cluster-name") + 1] == cluster
    assert exec_["args"][exec_["args"].index("--region") + 1] == run.config.region
    assert "token" not in user["user"]


def test_every_kubernetes_resource_goes_through_that_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    # Registrations do not record the provider; spy on the recording monitor for one run.
    providers: dict[str, str] = {}
    register = offline._RecordingMonitor.RegisterResource

    def spy(self: offline._RecordingMonitor, request: Any) -> Any:
        if request.type.startswith("kubernetes:"):
            providers[f"{request.type} {request.name}"] = request.provider
        return register(self, request)

    monkeypatch.setattr(offline._RecordingMonitor, "RegisterResource", spy)
    run = offline.run_offline("dev", project_dir=PROJECT_DIR)
    (provider,) = run.of_type(PROVIDER)

    assert len(providers) == len([r for r in run.resources if r.type.startswith("kubernetes:")]) > 10
    wrong = {name: ref for name, ref in providers.items() if not ref.startswith(provider.urn + "::")}
    assert not wrong


# --- kubeconfig --------------------------------------------------------------------------


def test_kubeconfig_is_json_for_one_cluster_with_an_exec_credential() -> None:
    text = kubeconfig("peakguard-test", "https://example.eks.amazonaws.com", "Q0EtREFUQQ==", "eu-west-1")
    config = json.loads(text)

    assert config["apiVersion"] == "v1" and config["kind"] == "Config"
    (cluster,) = config["clusters"]
    assert cluster == {
        "name": "peakguard-test",
        "cluster": {"server": "https://example.eks.amazonaws.com", "certificate-authority-data": "Q0EtREFUQQ=="},
    }
    (context,) = config["contexts"]
    assert config["current-context"] == context["name"]
    (user,) = config["users"]
    assert context["context"] == {"cluster": "peakguard-test", "user": user["name"]}
    exec_ = user["user"]["exec"]
    assert exec_["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    assert exec_["command"] == "aws"
    assert exec_["args"] == ["eks", "get-token", "--cluster-name", "peakguard-test", "--region", "eu-west-1"]
    assert exec_["interactiveMode"] == "Never"
