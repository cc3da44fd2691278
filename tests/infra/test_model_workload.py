"""The model service on Kubernetes: Deployments, their scaling, disruption budgets, Service, Ingress, IRSA."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from infra import facts
from infra.config import ConfigError
from infra.network import plan_subnets
from infra.offline import OfflineRun, Registration
from model_service import modes

RunChanged = Callable[[str, Callable[[dict[str, Any]], None]], OfflineRun]

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SERVICE = "kubernetes:core/v1:Service"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
PRIORITY_CLASS = "kubernetes:scheduling.k8s.io/v1:PriorityClass"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"

VARIANT = "peakguard.io/variant"
IN_FLIGHT = "peakguard_in_flight_requests"
WHOLE_GPU = "nvidia.com/gpu"
MIG_SLICE = "nvidia.com/mig-1g.10gb"


# --- Reading the run ----------------------------------------------------------------------


def _deployments(run: OfflineRun) -> dict[str, Registration]:
    return {d.inputs["metadata"]["labels"][VARIANT]: d for d in run.of_type(DEPLOYMENT)}


def _pod(deployment: Registration) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = deployment.inputs["spec"]["template"]["spec"]
    return spec


def _main_container(deployment: Registration) -> Mapping[str, Any]:
    containers: list[Mapping[str, Any]] = [c for c in _pod(deployment)["containers"] if c["name"] == "model-service"]
    (container,) = containers
    return container


def _all_containers(deployment: Registration) -> list[Mapping[str, Any]]:
    pod = _pod(deployment)
    return [*pod.get("initContainers", []), *pod["containers"]]


def _scaled_objects(run: OfflineRun) -> dict[str, Registration]:
    return {s.inputs["spec"]["scaleTargetRef"]["name"]: s for s in run.of_type(SCALED_OBJECT)}


def _hpa(run: OfflineRun) -> Registration:
    (hpa,) = run.of_type(HPA)
    return hpa


def _ingress(run: OfflineRun) -> Registration:
    (ingress,) = run.of_type(INGRESS)
    return ingress


def _config_map(run: OfflineRun, name: str) -> Registration:
    (found,) = [c for c in run.of_type(CONFIG_MAP) if c.inputs["metadata"]["name"] == name]
    return found


def _mode_volume_config_map(deployment: Registration) -> str:
    (volume,) = [v for v in _pod(deployment)["volumes"] if v["name"] == "mode"]
    return str(volume["configMap"]["name"])


def _has_mig_pool(run: OfflineRun) -> bool:
    return any(pool.mig_profile is not None for pool in run.config.gpu_pools)


def _replica_range(run: OfflineRun, variant: str, deployment: Registration) -> range:
    """The replica counts the variant's autoscaler may set."""
    if variant == "full":
        spec = _hpa(run).inputs["spec"]
        return range(int(spec["minReplicas"]), int(spec["maxReplicas"]) + 1)
    spec = _scaled_objects(run)[deployment.inputs["metadata"]["name"]].inputs["spec"]
    return range(int(spec["minReplicaCount"]), int(spec["maxReplicaCount"]) + 1)


def _disruptions_allowed(max_unavailable: Any, replicas: int) -> int:
    """How many pods the disruption controller lets go at once (a percentage is rounded up)."""
    if isinstance(max_unavailable, str) and max_unavailable.endswith("%"):
        return math.ceil(int(max_unavailable[:-1]) * replicas / 100)
    return int(max_unavailable)


def _fraction(value: Any, replicas: int) -> float:
    """An int-or-percent field (rolling update) as a share of `replicas`."""
    if isinstance(value, str) and value.endswith("%"):
        return int(value[:-1]) / 100
    return float(value) / replicas


def _target_group_attributes(run: OfflineRun) -> dict[str, str]:
    text = _ingress(run).inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-group-attributes"]
    return dict(item.split("=", 1) for item in text.split(","))


# --- Disruption budgets ------------------------------------------------------------------


def test_every_deployment_has_a_disruption_budget_on_its_own_pods(run: OfflineRun) -> None:
    budgets = {p.inputs["metadata"]["name"]: p for p in run.of_type(PDB)}
    for variant, deployment in _deployments(run).items():
        budget = budgets[deployment.inputs["metadata"]["name"]]
        assert budget.inputs["spec"]["selector"] == deployment.inputs["spec"]["selector"], variant
        assert budget.inputs["metadata"]["namespace"] == deployment.inputs["metadata"]["namespace"]
    assert len(budgets) == len(_deployments(run))


def test_disruption_budgets_let_at_most_a_third_of_the_replicas_go(run: OfflineRun) -> None:
    # Below three replicas a third is less than one pod; from three up, a drain may take at most
    # a third, counted the way the disruption controller counts (a percentage rounds up).
    budgets = {p.inputs["metadata"]["name"]: p for p in run.of_type(PDB)}
    too_many = []
    for variant, deployment in _deployments(run).items():
        spec = budgets[deployment.inputs["metadata"]["name"]].inputs["spec"]
        assert "maxUnavailable" in spec or "minAvailable" in spec
        for replicas in _replica_range(run, variant, deployment):
            if replicas < 3:
                continue
            if "maxUnavailable" in spec:
                allowed = _disruptions_allowed(spec["maxUnavailable"], replicas)
            else:
                allowed = replicas - _disruptions_allowed(spec["minAvailable"], replicas)
            assert allowed >= 1, f"{variant}: a drain is blocked at {replicas} replicas"
            if 3 * allowed > replicas:
                too_many.append(f"{variant}: {allowed} of {replicas}")
    assert not too_many, f"{run.config.env}: more than a third may be disrupted at once: {too_many[:6]}"


# --- Scaling -----------------------------------------------------------------------------


def test_hpa_reaches_the_peak_plus_30_percent_from_the_config(run: OfflineRun) -> None:
    service = run.config.kubernetes.model_service
    spec = _hpa(run).inputs["spec"]

    assert spec["maxReplicas"] >= facts.capacity_with_headroom(service.expected_peak_replicas)
    assert spec["maxReplicas"] == service.max_replicas
    assert spec["minReplicas"] == service.min_replicas
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": _deployments(run)["full"].inputs["metadata"]["name"],
    }


def test_hpa_scales_up_at_once_on_in_flight_requests(run: OfflineRun) -> None:
    spec = _hpa(run).inputs["spec"]

    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    pods_metrics = [m["pods"] for m in spec["metrics"] if m["type"] == "Pods"]
    assert [m["metric"]["name"] for m in pods_metrics] == [IN_FLIGHT]
    target = pods_metrics[0]["target"]
    assert target["type"] == "AverageValue"
    assert float(target["averageValue"]) == run.config.kubernetes.model_service.in_flight_per_replica


def test_hpa_bounds_belong_to_runbooks_after_creation(run: OfflineRun) -> None:
    assert {"spec.minReplicas", "spec.maxReplicas"} <= set(_hpa(run).ignore_changes)


def test_deployments_leave_replicas_to_their_autoscaler(run: OfflineRun) -> None:
    for variant, deployment in _deployments(run).items():
        assert "replicas" not in deployment.inputs["spec"], variant
        assert "spec.replicas" in deployment.ignore_changes, variant


# --- Pods --------------------------------------------------------------------------------


def test_probes_ready_after_warm_up_alive_separately_and_startup_covers_the_load(run: OfflineRun) -> None:
    startup_seconds = run.config.kubernetes.model_service.startup_seconds
    for variant, deployment in _deployments(run).items():
        container = _main_container(deployment)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", variant
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", variant
        startup = container["startupProbe"]
        assert startup["failureThreshold"] * startup["periodSeconds"] >= startup_seconds, variant


def test_startup_probe_covers_a_startup_time_that_is_not_a_multiple_of_its_period(run_changed: RunChanged) -> None:
    def slow_to_start(values: dict[str, Any]) -> None:
        values["peakguard:kubernetes"]["modelService"]["startupSeconds"] = 33

    run = run_changed("dev", slow_to_start)
    for variant, deployment in _deployments(run).items():
        startup = _main_container(deployment)["startupProbe"]
        covered = startup["failureThreshold"] * startup["periodSeconds"]
        assert covered >= 33, f"{variant}: the startup probe gives up after {covered:g} s, the load takes 33 s"


def test_pods_spread_over_zones_with_skew_1_and_over_hosts(run: OfflineRun) -> None:
    for variant, deployment in _deployments(run).items():
        spreads = {c["topologyKey"]: c for c in _pod(deployment)["topologySpreadConstraints"]}
        zone = spreads["topology.kubernetes.io/zone"]
        assert zone["maxSkew"] == 1, variant
        assert zone["whenUnsatisfiable"] == "DoNotSchedule", variant
        assert zone["labelSelector"] == deployment.inputs["spec"]["selector"], variant
        assert "kubernetes.io/hostname" in spreads, variant


def test_rolling_updates_keep_three_quarters_serving_and_surge_a_quarter(run: OfflineRun) -> None:
    replicas = run.config.kubernetes.model_service.min_replicas
    for variant, deployment in _deployments(run).items():
        strategy = deployment.inputs["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", variant
        rolling = strategy["rollingUpdate"]
        assert _fraction(rolling["maxUnavailable"], replicas) <= 0.25, variant
        assert _fraction(rolling["maxSurge"], replicas) >= 0.25, variant


def test_grace_period_outlasts_pre_stop_the_longest_request_and_the_alb_drain(run: OfflineRun) -> None:
    service = run.config.kubernetes.model_service
    deregistration = int(_target_group_attributes(run)["deregistration_delay.timeout_seconds"])
    for variant, deployment in _deployments(run).items():
        grace = _pod(deployment)["terminationGracePeriodSeconds"]
        pre_stop = _main_container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop > 0, variant
        assert grace > pre_stop + service.max_request_seconds, variant
        assert grace > deregistration, variant


def test_image_is_the_configured_one_and_pinned(run: OfflineRun) -> None:
    service = run.config.kubernetes.model_service
    for variant, deployment in _deployments(run).items():
        assert _main_container(deployment)["image"] == service.image, variant
        for container in _all_containers(deployment):
            image = container["image"]
            assert not image.endswith(":latest"), (variant, image)
            assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], (variant, image)


def test_pods_run_as_non_root_on_a_read_only_root_filesystem(run: OfflineRun) -> None:
    for variant, deployment in _deployments(run).items():
        assert _pod(deployment)["securityContext"]["runAsNonRoot"] is True, variant
        for container in _all_containers(deployment):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (variant, container["name"])
            assert context.get("runAsNonRoot", True) is True, (variant, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (variant, container["name"])


def test_pods_use_the_model_service_priority_class(run: OfflineRun) -> None:
    (priority,) = run.of_type(PRIORITY_CLASS)
    for variant, deployment in _deployments(run).items():
        assert _pod(deployment)["priorityClassName"] == priority.inputs["metadata"]["name"], variant
    assert priority.inputs["value"] > 0


# --- The mode ConfigMaps -----------------------------------------------------------------


def test_mode_config_map_is_mounted_as_a_directory_the_service_watches(run: OfflineRun) -> None:
    for variant, deployment in _deployments(run).items():
        name = _mode_volume_config_map(deployment)
        assert _config_map(run, name), variant
        mounts = [m for c in _all_containers(deployment) for m in c.get("volumeMounts", []) if m["name"] == "mode"]
        assert mounts, variant
        assert all("subPath" not in m and "subPathExpr" not in m for m in mounts), variant
        # The service is pointed at the mounted directory, where it looks for mode.json.
        args = _main_container(deployment)["args"]
        mode_dir = args[args.index("--mode-file") + 1]
        assert mode_dir in {m["mountPath"] for m in mounts}, variant


def test_mode_documents_are_valid_for_the_model_service(run: OfflineRun) -> None:
    for deployment in _deployments(run).values():
        config_map = _config_map(run, _mode_volume_config_map(deployment))
        document = json.loads(config_map.inputs["data"][modes.MODE_FILE])
        mode = modes.OperatingMode.from_mapping(document, source=config_map.name)
        assert mode.batch_min <= mode.batch_max


def test_mode_config_maps_belong_to_runbooks_after_creation(run: OfflineRun) -> None:
    for deployment in _deployments(run).values():
        config_map = _config_map(run, _mode_volume_config_map(deployment))
        assert config_map.ignore_changes == ("data",), config_map.name


# --- Variants ----------------------------------------------------------------------------


def test_light_variant_only_where_there_is_a_mig_pool(run: OfflineRun) -> None:
    expected = {"prod": True, "staging": True, "dev": False}[run.config.env]
    assert _has_mig_pool(run) is expected
    assert ("light" in _deployments(run)) is expected


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_light_variant_asks_for_a_mig_slice_and_idles_at_zero(env: str, runs: dict[str, OfflineRun]) -> None:
    run = runs[env]
    light = _deployments(run)["light"]
    resources = _main_container(light)["resources"]
    for bound in ("requests", "limits"):
        assert MIG_SLICE in resources[bound], bound
        assert WHOLE_GPU not in resources[bound], bound
    assert _pod(light)["nodeSelector"] == {"peakguard.io/pool": run.config.kubernetes.model_service.light_pool}

    scaled = _scaled_objects(run)[light.inputs["metadata"]["name"]]
    assert scaled.type == SCALED_OBJECT
    assert scaled.inputs["spec"]["minReplicaCount"] == 0
    assert scaled.inputs["spec"]["maxReplicaCount"] == run.config.kubernetes.model_service.light_max_replicas
    document = json.loads(_config_map(run, _mode_volume_config_map(light)).inputs["data"][modes.MODE_FILE])
    assert modes.OperatingMode.from_mapping(document).model == "light"


def test_full_and_canary_run_on_whole_gpus(run: OfflineRun) -> None:
    for variant in ("full", "canary"):
        resources = _main_container(_deployments(run)[variant])["resources"]
        assert resources["requests"][WHOLE_GPU] == str(run.config.kubernetes.model_service.gpus_per_replica)
        assert not [r for r in resources["requests"] if r.startswith("nvidia.com/mig-")]


def test_canary_has_its_own_scaled_object_and_mode_config_map(run: OfflineRun) -> None:
    deployments = _deployments(run)
    canary = deployments["canary"]
    scaled = _scaled_objects(run)[canary.inputs["metadata"]["name"]]
    assert scaled.inputs["spec"]["minReplicaCount"] == 0
    assert scaled.inputs["spec"]["scaleTargetRef"]["kind"] == "Deployment"

    own = _mode_volume_config_map(canary)
    others = {_mode_volume_config_map(d) for variant, d in deployments.items() if variant != "canary"}
    assert own not in others
    assert _config_map(run, own).ignore_changes == ("data",)
    assert len(run.of_type(SCALED_OBJECT)) == (2 if _has_mig_pool(run) else 1)


def test_service_reaches_every_variant_and_each_deployment_only_its_own(run: OfflineRun) -> None:
    (service,) = run.of_type(SERVICE)
    selector = service.inputs["spec"]["selector"]
    deployments = _deployments(run)
    for variant, deployment in deployments.items():
        labels = deployment.inputs["spec"]["template"]["metadata"]["labels"]
        own = deployment.inputs["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), variant
        assert own[VARIANT] == variant
        assert own.items() <= labels.items(), variant
        for other, other_deployment in deployments.items():
            if other != variant:
                other_labels = other_deployment.inputs["spec"]["template"]["metadata"]["labels"]
                assert not own.items() <= other_labels.items(), f"{variant}'s selector matches {other}'s pods"


# --- Ingress -----------------------------------------------------------------------------


def test_ingress_routes_by_least_outstanding_requests_without_slow_start(run: OfflineRun) -> None:
    ingress = _ingress(run)
    annotations = ingress.inputs["metadata"]["annotations"]
    attributes = _target_group_attributes(run)

    assert ingress.inputs["spec"]["ingressClassName"] == "alb"
    assert attributes["load_balancing.algorithm.type"] == "least_outstanding_requests"
    assert not [key for key in attributes if key.startswith("slow_start")]
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"


def test_pods_behind_ip_targets_wait_for_the_alb_before_a_rollout_moves_on(run: OfflineRun) -> None:
    # The load balancer controller injects its readiness gate into pods of a namespace so labelled:
    # an old pod goes only once its replacement is a healthy ALB target, not while it is "initial".
    (namespace,) = [n for n in run.of_type("kubernetes:core/v1:Namespace")
                    if n.inputs["metadata"]["name"] == _ingress(run).inputs["metadata"]["namespace"]]  # fmt: skip
    assert namespace.inputs["metadata"]["labels"]["elbv2.k8s.aws/pod-readiness-gate-inject"] == "enabled"


def test_the_service_keeps_idle_connections_open_longer_than_the_alb(run: OfflineRun) -> None:
    # Otherwise the service closes a connection the ALB is about to reuse, and the ALB answers 502
    # (found by the drill: a surge's pooled connections went idle together when it ended).
    text = _ingress(run).inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/load-balancer-attributes"]
    idle = int(dict(item.split("=", 1) for item in text.split(","))["idle_timeout.timeout_seconds"])
    for variant, deployment in _deployments(run).items():
        args = _main_container(deployment)["args"]
        assert float(args[args.index("--keep-alive") + 1]) > idle, variant


def test_ingress_exposes_only_the_public_api(run: OfflineRun) -> None:
    (service,) = run.of_type(SERVICE)
    port_names = {p["name"] for p in service.inputs["spec"]["ports"]}
    paths = [path for rule in _ingress(run).inputs["spec"]["rules"] for path in rule["http"]["paths"]]

    assert [p["path"] for p in paths] == ["/v1"]
    assert not [p for p in paths if p["path"].startswith(("/admin", "/metrics"))]
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == service.inputs["metadata"]["name"]
        assert backend["port"]["name"] in port_names


# --- IRSA --------------------------------------------------------------------------------


def _weights_role(run: OfflineRun) -> tuple[Registration, Registration]:
    (account,) = [a for a in run.of_type(SERVICE_ACCOUNT) if a.inputs["metadata"]["name"] == "model-service"]
    arn = account.inputs["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    (role,) = [r for r in run.of_type(ROLE) if r.outputs["arn"] == arn]
    (policy,) = [p for p in run.of_type(ROLE_POLICY) if p.inputs["role"] == role.id]
    return role, policy


def test_weights_role_trusts_only_the_model_service_account(run: OfflineRun) -> None:
    namespace = run.config.kubernetes.model_service.namespace
    role, _ = _weights_role(run)
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]

    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    conditions = statement["Condition"]["StringEquals"]
    subjects = [value for key, value in conditions.items() if key.endswith(":sub")]
    audiences = [value for key, value in conditions.items() if key.endswith(":aud")]
    assert subjects == [f"system:serviceaccount:{namespace}:model-service"]
    assert audiences == ["sts.amazonaws.com"]
    assert set(statement["Condition"]) == {"StringEquals"}


def test_weights_role_only_reads_models(run: OfflineRun) -> None:
    _, policy = _weights_role(run)
    statements = json.loads(policy.inputs["policy"])["Statement"]
    actions = set()
    for statement in statements:
        assert statement["Effect"] == "Allow"
        listed = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        actions.update(listed)
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if "s3:GetObject" in listed:
            assert all(r.endswith("/models/*") for r in resources), resources
        if "s3:ListBucket" in listed:
            prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
            assert all(p.startswith("models/") for p in prefixes), prefixes

    assert "s3:GetObject" in actions
    assert not [a for a in actions if a in {"s3:PutObject", "s3:DeleteObject", "s3:*", "*"}]
    assert all(a.startswith(("s3:Get", "s3:List", "kms:Decrypt")) for a in actions), actions


# --- Config the program refuses ------------------------------------------------------------


def test_max_replicas_below_the_headroom_rule_is_refused(run_changed: RunChanged) -> None:
    def too_low(values: dict[str, Any]) -> None:
        service = values["peakguard:kubernetes"]["modelService"]
        service["maxReplicas"] = facts.capacity_with_headroom(service["expectedPeakReplicas"]) - 1

    with pytest.raises(ConfigError, match=r"maxReplicas"):
        run_changed("prod", too_low)


def test_a_moving_image_tag_is_refused(run_changed: RunChanged) -> None:
    def latest(values: dict[str, Any]) -> None:
        service = values["peakguard:kubernetes"]["modelService"]
        service["image"] = service["image"].rsplit(":", 1)[0] + ":latest"

    with pytest.raises(ConfigError, match=r"modelService\.image\b"):
        run_changed("prod", latest)


def test_a_light_pool_without_mig_is_refused(run_changed: RunChanged) -> None:
    def whole_gpus(values: dict[str, Any]) -> None:
        values["peakguard:kubernetes"]["modelService"]["lightPool"] = "full"

    with pytest.raises(ConfigError, match=r"lightPool.*migProfile"):
        run_changed("prod", whole_gpus)


def _sources(run: OfflineRun) -> list[dict[str, Any]]:
    (policy,) = [p for p in run.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
                 if p.inputs["metadata"]["namespace"] == run.config.kubernetes.model_service.namespace]  # fmt: skip
    spec = policy.inputs["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "model-service"}}
    assert spec["policyTypes"] == ["Ingress"], "egress stays open: S3, OTLP, DNS"
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    return list(rule["from"])


def test_only_the_alb_prometheus_and_runbook_runners_reach_the_pods(runs: dict[str, OfflineRun]) -> None:
    run = runs["prod"]  # internet-facing: the ALB's nodes sit in the public subnets
    sources = _sources(run)

    blocks = sorted(s["ipBlock"]["cidr"] for s in sources if "ipBlock" in s)
    public = sorted(str(pair.public) for pair in plan_subnets(run.config.network.vpc_cidr,
                                                              run.config.network.availability_zones))  # fmt: skip
    assert blocks == public
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in sources
    assert {"namespaceSelector": {}, "podSelector": {"matchLabels": {"peakguard.io/admin-client": "true"}}} in sources
    assert len(sources) == len(blocks) + 2


def test_an_internal_alb_and_admin_hosts_are_let_in_by_their_addresses(run_changed: RunChanged) -> None:
    def internal(values: dict[str, Any]) -> None:
        service = values["peakguard:kubernetes"]["modelService"]
        service["ingress"] = {"scheme": "internal"}
        service["adminSourceCidrs"] = ["10.99.0.0/24"]

    run = run_changed("prod", internal)

    blocks = {s["ipBlock"]["cidr"] for s in _sources(run) if "ipBlock" in s}
    private = {str(pair.private) for pair in plan_subnets(run.config.network.vpc_cidr,
                                                          run.config.network.availability_zones)}  # fmt: skip
    assert blocks == private | {"10.99.0.0/24"}


@pytest.mark.parametrize(("cidr", "says"), [("10.99.0.0/33", "is not an IPv4 network"), ("0.0.0.0/0", "every address")])
def test_admin_source_addresses_must_be_a_network_and_not_everyone(
    run_changed: RunChanged, cidr: str, says: str
) -> None:
    def admin(values: dict[str, Any]) -> None:
        values["peakguard:kubernetes"]["modelService"]["adminSourceCidrs"] = [cidr]

    with pytest.raises(ConfigError, match=says):
        run_changed("prod", admin)
