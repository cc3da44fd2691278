"""Each rule on the program's own resources: the real stacks comply; a stack changed the way a bad
stack config or a careless edit to the program would change it is a violation that names the
resource, the path and the fix."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from infra.offline import OfflineRun
from policies.catalog import RULES
from policies.evaluation import Stack, evaluate, failed
from policies.findings import UNKNOWN, Resource

DROP = object()
"""What an edit returns to remove the resource from the stack (a forgotten PDB, say)."""

Edit = Callable[[dict[str, Any]], object]


@dataclass(frozen=True)
class Case:
    type: str
    """Type of the resources the edit changes."""
    pick: Callable[[str], bool]
    """Which of them, by logical name."""
    edit: Edit
    expect: str
    """Text the finding's message must contain."""
    reported_on: str | None = None
    """The logical name the finding must name, when it is not the edited resource's."""


def _stack(run: OfflineRun) -> Stack:
    return Stack.from_registrations(run.resources)


def _edited(stack: Stack, case: Case) -> tuple[Stack, list[str]]:
    """`stack` with `case.edit` applied to the picked resources' inputs and outputs alike."""
    names: list[str] = []

    def change(resources: tuple[Resource, ...]) -> tuple[Resource, ...]:
        out = []
        for resource in resources:
            if resource.type == case.type and case.pick(resource.name):
                props = copy.deepcopy(dict(resource.props))
                if case.edit(props) is DROP:
                    names.append(resource.name)
                    continue
                resource = Resource(resource.type, resource.name, resource.urn, props)
                names.append(resource.name)
            out.append(resource)
        return tuple(out)

    edited = Stack(inputs=change(stack.inputs), outputs=change(stack.outputs))
    assert names, f"no {case.type} picked"
    return edited, sorted(set(names))


def _set(path: str, value: Any) -> Edit:
    def edit(props: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = props
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return edit


def _full(name: str) -> bool:
    return name.endswith("model-service-full")


LT, NG, SG = (
    "aws:ec2/launchTemplate:LaunchTemplate",
    "aws:eks/nodeGroup:NodeGroup",
    "aws:ec2/securityGroup:SecurityGroup",
)
DEPLOYMENT, HPA = "kubernetes:apps/v1:Deployment", "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
FIS = "aws:fis/experimentTemplate:ExperimentTemplate"
OTEL_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "xray:*", "Resource": "*"}]}
)

CASES: dict[str, Case] = {
    "EFA-001": Case(
        LT, lambda n: n == "prod-gpu-full-us-west-2a-blue", lambda p: p["networkInterfaces"].pop(), "31 EFA interfaces"
    ),
    "EFA-002": Case(
        NG,
        lambda n: n == "prod-gpu-full-us-west-2a-blue",
        lambda p: p["subnetIds"].append("subnet-other"),
        "exactly one subnet",
    ),
    "EFA-003": Case(
        LT, lambda n: n == "prod-gpu-mig-us-west-2a-blue", lambda p: p.pop("placement"), "placement.groupName is None"
    ),
    "EFA-004": Case(
        SG,
        lambda n: n == "prod-gpu-efa",
        lambda p: p.pop("egress"),
        "one group allowing all protocols from itself and to itself",
        reported_on="prod-gpu-full-us-west-2a-blue",
    ),
    "AVAIL-001": Case(
        "aws:ec2/subnet:Subnet",
        lambda n: n == "prod-private-us-west-2c",
        _set("availabilityZone", "us-west-2a"),
        "private subnets' availabilityZone",
        reported_on="prod-vpc",
    ),
    "AVAIL-002": Case(
        NG, lambda n: n == "prod-system", lambda p: p.update(subnetIds=p["subnetIds"][:1]), ">= 3 distinct AZs"
    ),
    # Every mig node group moved into one subnet: the edit needs that subnet's id, so the test builds it.
    "AVAIL-003": Case(
        NG,
        lambda n: n.startswith("prod-gpu-mig-"),
        lambda p: None,
        "pool mig",
        reported_on="prod-gpu-mig-us-west-2a-blue",
    ),
    "AVAIL-004": Case(
        DEPLOYMENT,
        _full,
        lambda p: p["spec"]["template"]["spec"]["topologySpreadConstraints"].pop(0),
        "a constraint on topology.kubernetes.io/zone",
    ),
    "SAFE-001": Case(
        NG,
        lambda n: n == "prod-gpu-full-us-west-2a-blue",
        _set("updateConfig.maxUnavailablePercentage", 50),
        "maxUnavailablePercentage is 50",
    ),
    "SAFE-002": Case(
        DEPLOYMENT, _full, _set("spec.strategy.rollingUpdate.maxUnavailable", "50%"), "maxUnavailable is '50%'"
    ),
    "SAFE-004": Case(
        "kubernetes:apps/v1:DaemonSet",
        lambda n: n.endswith("-full"),
        lambda p: p["metadata"]["annotations"].pop("peakguard.io/rollout-takes-no-capacity"),
        "maxUnavailable is '100%'",
    ),
    "SAFE-003": Case(
        HPA,
        lambda n: True,
        _set("spec.minReplicas", 2),
        "a third of the fewest replicas (2)",
        reported_on="prod-model-service-full-pdb",
    ),
    "CAP-001": Case(HPA, lambda n: True, _set("spec.maxReplicas", 100), "must be >= ceil(1.3 x 85) = 111"),
    "CAP-002": Case(
        HPA,
        lambda n: True,
        _set("spec.behavior.scaleUp.stabilizationWindowSeconds", 180),
        "stabilizationWindowSeconds is 180",
    ),
    "CAP-003": Case(HPA, lambda n: True, _set("spec.maxReplicas", 200), "what pool 'full' holds"),
    "SERV-001": Case(
        DEPLOYMENT,
        _full,
        _set("spec.template.spec.containers.0.readinessProbe.httpGet.path", "/healthz"),
        "path is '/healthz'",
    ),
    "SERV-002": Case(
        DEPLOYMENT,
        _full,
        _set("spec.template.spec.containers.0.image", "repo/model:latest"),
        "image is 'repo/model:latest'",
    ),
    "SERV-003": Case(
        DEPLOYMENT,
        _full,
        lambda p: p["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"].pop("cpu"),
        "requests.cpu set",
    ),
    "SERV-004": Case(DEPLOYMENT, _full, _set("spec.template.spec.tolerations", []), "a toleration of nvidia.com/gpu"),
    "SERV-005": Case(
        DEPLOYMENT,
        _full,
        _set("spec.template.spec.containers.0.securityContext.runAsUser", 0),
        "containers[0].securityContext.runAsUser is 0",
    ),
    "SERV-006": Case(
        PDB,
        lambda n: n == "prod-model-service-full-pdb",
        lambda p: DROP,
        "PodDisruptionBudget",
        reported_on="prod-model-service-full",
    ),
    "SEC-001": Case(
        LT, lambda n: n == "prod-system", _set("metadataOptions.httpTokens", "optional"), "httpTokens is 'optional'"
    ),
    "SEC-002": Case(
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        lambda n: True,
        _set("restrictPublicBuckets", False),
        "restrictPublicBuckets",
    ),
    "SEC-003": Case(
        LT,
        lambda n: n == "prod-system",
        _set("blockDeviceMappings.0.ebs.encrypted", "false"),
        "blockDeviceMappings[0].ebs.encrypted is 'false'",
    ),
    "SEC-004": Case(
        SG,
        lambda n: n == "prod-endpoints",
        _set("ingress.0", {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]}),
        "no 0.0.0.0/0 or ::/0 except tcp 80/443",
    ),
    "SEC-005": Case(
        "aws:eks/cluster:Cluster",
        lambda n: True,
        _set("vpcConfig.publicAccessCidrs", ["0.0.0.0/0"]),
        "publicAccessCidrs is ['0.0.0.0/0']",
    ),
    "SEC-006": Case(
        "aws:iam/rolePolicy:RolePolicy",
        lambda n: n == "prod-addons-otel-collector",
        _set("policy", OTEL_POLICY),
        "Statement[0].Action is ['xray:*']",
    ),
    "SEC-007": Case(
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        lambda n: True,
        lambda p: DROP,
        "a BucketPublicAccessBlock for this bucket",
        reported_on="prod-storage-models",
    ),
    "CHAOS-001": Case(
        FIS,
        lambda n: n == "prod-chaos-model-pod-delete",
        _set("stopConditions", [{"source": "none"}]),
        "at least one aws:cloudwatch:alarm, and no `none`",
    ),
    "CHAOS-002": Case(
        FIS,
        lambda n: n == "prod-chaos-gpu-zone-stop-us-west-2a",
        _set("actions.0.actionId", "aws:ec2:terminate-instances"),
        "actionId is 'aws:ec2:terminate-instances'",
    ),
    "CHAOS-003": Case(
        FIS, lambda n: n == "prod-chaos-model-pod-delete", _set("targets.0.selectionMode", "PERCENT(50)"), "PERCENT(50)"
    ),
}


def test_every_rule_has_its_metadata_and_cases() -> None:
    domains = {"gpu/efa", "availability", "safe change", "capacity", "serving", "security", "chaos"}
    for rule_id, rule in RULES.items():
        assert rule_id == rule.id and re.fullmatch(r"(EFA|AVAIL|SAFE|CAP|SERV|SEC|CHAOS)-\d{3}", rule_id)
        assert re.fullmatch(r"[a-z0-9-]+", rule.name), rule.name
        assert rule.severity in ("mandatory", "advisory")
        assert rule.domain in domains
        assert len(rule.rationale) > 40 and rule.rationale.endswith("."), rule_id
        assert rule.resource_types
        assert all(re.fullmatch(r"CKV_(AWS|K8S)_\d+|AVD-(AWS|KSV)-\d{4}", peer) for peer in rule.peers), rule.peers
        assert rule_id in CASES, f"{rule_id} has no compliant/violating case in CASES"
    assert set(CASES) == set(RULES), "a case for a rule that does not exist"


def test_the_real_stacks_comply(run: OfflineRun) -> None:
    report = evaluate(_stack(run), RULES)
    assert not [f.message() for f in report.findings], run.config.env
    assert not failed(report, strict_unknowns=True)


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_a_violation_names_the_resource_the_path_and_the_fix(rule_id: str, runs: dict[str, OfflineRun]) -> None:
    rule, case = RULES[rule_id], CASES[rule_id]
    stack = _stack(runs["prod"])
    if rule_id == "AVAIL-003":
        subnet = next(r for r in stack.outputs if r.name == "prod-private-us-west-2a").props["id"]
        case = Case(case.type, case.pick, _set("subnetIds", [subnet]), case.expect, case.reported_on)
    assert not evaluate(stack, {rule_id: rule}).findings, "the compliant case"

    edited, names = _edited(stack, case)
    report = evaluate(edited, {rule_id: rule})

    assert report.findings, f"{rule_id} missed the violation"
    finding = report.findings[0]
    assert finding.status == "violation"
    message = finding.message()
    assert (case.reported_on or names[0]) in message
    assert case.expect in message, message
    assert "Why: " in message and "Fix: " in message and len(finding.violation.fix) > 10
    assert failed(report)


def test_hop_limit_2_is_allowed_only_where_the_stack_says_pods_need_metadata(runs: dict[str, OfflineRun]) -> None:
    rule = RULES["SEC-001"]
    hop_two = Case(
        LT, lambda n: n == "prod-gpu-full-us-west-2a-blue", _set("metadataOptions.httpPutResponseHopLimit", 2), ""
    )
    edited, _ = _edited(_stack(runs["prod"]), hop_two)
    assert evaluate(edited, {"SEC-001": rule}).findings, "hop 2 without the stack saying so"
    tagged = Case(LT, hop_two.pick, _set("tags.peakguard:pods-need-instance-metadata", "true"), "")
    edited, _ = _edited(edited, tagged)
    assert not evaluate(edited, {"SEC-001": rule}).findings


def test_the_load_balancer_ports_may_be_open_to_the_internet_and_nothing_else(runs: dict[str, OfflineRun]) -> None:
    rule = {"SEC-004": RULES["SEC-004"]}
    for port, allowed in ((443, True), (80, True), (8080, False)):
        case = Case(
            SG,
            lambda n: n == "prod-endpoints",
            _set("ingress.0", {"protocol": "tcp", "fromPort": port, "toPort": port, "ipv6CidrBlocks": ["::/0"]}),
            "",
        )
        edited, _ = _edited(_stack(runs["prod"]), case)
        assert bool(evaluate(edited, rule).findings) is not allowed, port


def test_read_only_wildcards_pass_and_write_wildcards_do_not(runs: dict[str, OfflineRun]) -> None:
    rule = {"SEC-006": RULES["SEC-006"]}
    for action, allowed in (("ec2:Describe*", True), ("s3:Get*", True), ("s3:Put*", False), ("*", False)):
        document = json.dumps({"Statement": [{"Effect": "Allow", "Action": [action], "Resource": "*"}]})
        case = Case(
            "aws:iam/rolePolicy:RolePolicy", lambda n: n == "prod-addons-otel-collector", _set("policy", document), ""
        )
        edited, _ = _edited(_stack(runs["prod"]), case)
        assert bool(evaluate(edited, rule).findings) is not allowed, action


def test_the_control_plane_may_be_public_outside_prod(runs: dict[str, OfflineRun]) -> None:
    case = Case("aws:eks/cluster:Cluster", lambda n: True, _set("vpcConfig.publicAccessCidrs", ["0.0.0.0/0"]), "")
    edited, _ = _edited(_stack(runs["dev"]), case)
    assert not evaluate(edited, {"SEC-005": RULES["SEC-005"]}).findings


@pytest.mark.parametrize(
    ("type_", "pick", "edit", "expect"),
    [
        ("aws:eks/cluster:Cluster", lambda n: True, lambda p: p.pop("encryptionConfig"), "encryptionConfig.resources"),
        ("aws:fsx/lustreFileSystem:LustreFileSystem", lambda n: True, lambda p: p.pop("kmsKeyId"), "kmsKeyId"),
        (
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            lambda n: True,
            _set("rules.0.applyServerSideEncryptionByDefault.sseAlgorithm", "AES256"),
            "['AES256']",
        ),
    ],
)
def test_every_kind_of_storage_must_be_encrypted(type_: str, pick: Any, edit: Edit, expect: str, runs: dict) -> None:
    edited, names = _edited(_stack(runs["prod"]), Case(type_, pick, edit, expect))
    (finding,) = evaluate(edited, {"SEC-003": RULES["SEC-003"]}).findings
    assert names[0] in finding.message() and expect in finding.message()


def test_a_placement_group_that_spreads_is_named(runs: dict[str, OfflineRun]) -> None:
    case = Case(
        "aws:ec2/placementGroup:PlacementGroup",
        lambda n: n == "prod-gpu-full-us-west-2b",
        _set("strategy", "spread"),
        "",
    )
    edited, _ = _edited(_stack(runs["prod"]), case)
    (finding,) = evaluate(edited, {"EFA-003": RULES["EFA-003"]}).findings
    assert "prod-gpu-full-us-west-2b" in finding.message() and "strategy is 'spread'" in finding.message()


def test_an_efa_only_primary_interface_is_a_violation(runs: dict[str, OfflineRun]) -> None:
    case = Case(
        LT, lambda n: n == "prod-gpu-full-us-west-2a-blue", _set("networkInterfaces.0.interfaceType", "efa-only"), ""
    )
    edited, _ = _edited(_stack(runs["prod"]), case)
    messages = [f.message() for f in evaluate(edited, {"EFA-001": RULES["EFA-001"]}).findings]
    assert any("networkInterfaces[0].interfaceType is 'efa-only'" in m for m in messages), messages


def test_a_standby_variant_may_lose_its_one_pod_and_dev_its_one_replica(runs: dict[str, OfflineRun]) -> None:
    rule = {"SAFE-003": RULES["SAFE-003"]}
    assert not evaluate(_stack(runs["dev"]), rule).findings, "dev: 1 replica, PDB 1"
    light = Case(PDB, lambda n: n == "prod-model-service-light-pdb", _set("spec.maxUnavailable", 2), "")
    edited, _ = _edited(_stack(runs["prod"]), light)
    (finding,) = evaluate(edited, rule).findings
    assert "prod-model-service-light-pdb" in finding.message()


def test_an_unknown_property_is_not_evaluated_never_a_pass(runs: dict[str, OfflineRun]) -> None:
    case = Case(HPA, lambda n: True, _set("spec.maxReplicas", UNKNOWN), "")
    edited, _ = _edited(_stack(runs["prod"]), case)
    report = evaluate(edited, {"CAP-001": RULES["CAP-001"]})
    (finding,) = report.findings
    assert finding.status == "not-evaluated"
    assert "not evaluated on kubernetes:autoscaling/v2:HorizontalPodAutoscaler prod-model-service-full-hpa" in (
        finding.message()
    )
    assert not failed(report)
    assert failed(report, strict_unknowns=True)


def test_an_absent_property_is_known_and_judged(runs: dict[str, OfflineRun]) -> None:
    case = Case(HPA, lambda n: True, lambda p: p["metadata"].pop("annotations"), "")
    edited, _ = _edited(_stack(runs["prod"]), case)
    (finding,) = evaluate(edited, {"CAP-001": RULES["CAP-001"]}).findings
    assert finding.status == "violation"
    assert "the headroom cannot be checked" in finding.message()


def _first_preview(run: OfflineRun) -> Stack:
    """The stack as a first `pulumi preview` sees it: every value a provider computes (ids, ARNs,
    generated names) and every string built from one is unknown."""
    computed = set()
    for r in run.resources:
        if r.custom:
            computed.add(r.id)
            computed |= {v for k, v in r.outputs.items() if k not in r.inputs and isinstance(v, str) and len(v) > 6}

    def blank(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: blank(v) for k, v in value.items()}
        if isinstance(value, list):
            return [blank(v) for v in value]
        return UNKNOWN if isinstance(value, str) and any(c in value for c in computed) else value

    custom = [r for r in run.resources if r.custom]
    return Stack(
        inputs=tuple(Resource(r.type, r.name, r.urn, blank(dict(r.inputs))) for r in custom),
        outputs=tuple(Resource(r.type, r.name, r.urn, blank({**r.outputs, "id": r.id})) for r in custom),
    )


def test_a_first_preview_finds_no_violation_only_things_not_yet_known(run: OfflineRun) -> None:
    report = evaluate(_first_preview(run), RULES)
    assert not [f.message() for f in report.findings if f.status == "violation"]
    unknown = {(f.rule.id, f.resource.name) for f in report.findings if f.status == "not-evaluated"}
    env = run.config.env
    assert ("SEC-007", f"{env}-storage-models") in unknown, "the bucket's guards are matched once names exist"
    assert all("Fix: " in f.message() for f in report.findings)


def test_a_budget_percentage_is_judged_as_the_pods_it_rounds_up_to(runs: dict[str, OfflineRun]) -> None:
    rule = {"SAFE-003": RULES["SAFE-003"]}
    stack = _stack(runs["prod"])
    for budget, fewest, allowed in (("33%", 4, False), ("33%", 12, True), ("25%", 12, True), ("34%", 12, False)):
        edited, _ = _edited(stack, Case(PDB, lambda n: n == "prod-model-service-full-pdb",
                                        _set("spec.maxUnavailable", budget), ""))  # fmt: skip
        edited, _ = _edited(edited, Case(HPA, lambda n: True, _set("spec.minReplicas", fewest), ""))
        assert bool(evaluate(edited, rule).findings) is not allowed, (budget, fewest)


def test_a_rollout_count_is_judged_against_the_fewest_replicas(runs: dict[str, OfflineRun]) -> None:
    rule = {"SAFE-002": RULES["SAFE-002"]}
    for count, allowed in ((4, True), (5, False), (4.0, True)):
        case = Case(DEPLOYMENT, _full, _set("spec.strategy.rollingUpdate.maxUnavailable", count), "")
        edited, _ = _edited(_stack(runs["prod"]), case)  # minReplicas 12: a third is 4
        assert bool(evaluate(edited, rule).findings) is not allowed, count


def test_init_containers_are_held_to_the_same_image_rule(runs: dict[str, OfflineRun]) -> None:
    case = Case(DEPLOYMENT, _full, _set("spec.template.spec.initContainers.0.image", "repo/weights:latest"), "")
    edited, _ = _edited(_stack(runs["prod"]), case)
    (finding,) = evaluate(edited, {"SERV-002": RULES["SERV-002"]}).findings
    assert "initContainers[0].image is 'repo/weights:latest'" in finding.message()


def test_the_environment_comes_from_the_urn_not_from_tags(runs: dict[str, OfflineRun]) -> None:
    """A prod stack tagging itself dev (peakguard:tags) must not lower the bar."""
    case = Case("aws:eks/cluster:Cluster", lambda n: True, _set("vpcConfig.publicAccessCidrs", ["0.0.0.0/0"]), "")
    edited, _ = _edited(_stack(runs["prod"]), case)
    edited, _ = _edited(edited, Case("aws:eks/cluster:Cluster", lambda n: True, _set("tags.peakguard:env", "dev"), ""))
    assert evaluate(edited, {"SEC-005": RULES["SEC-005"]}).findings


def test_booleans_and_counts_as_the_wire_sends_them(runs: dict[str, OfflineRun]) -> None:
    stack = _stack(runs["prod"])
    as_text = Case("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", lambda n: True,
                   lambda p: p.update({k: "true" for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                                          "restrictPublicBuckets")}), "")  # fmt: skip
    edited, _ = _edited(stack, as_text)
    assert not evaluate(edited, {"SEC-002": RULES["SEC-002"]}).findings
    path = "spec.template.spec.containers.0.securityContext.runAsNonRoot"
    non_root_text = Case(DEPLOYMENT, _full, _set(path, "true"), "")
    edited, _ = _edited(stack, non_root_text)
    assert not evaluate(edited, {"SERV-005": RULES["SERV-005"]}).findings
    gpu_as_float = Case(DEPLOYMENT, _full, lambda p: p["spec"]["template"]["spec"]["containers"][0]["resources"]
                        ["limits"].update({"nvidia.com/gpu": 1.0}), "")  # fmt: skip
    edited, _ = _edited(stack, gpu_as_float)
    assert not evaluate(edited, {"SERV-003": RULES["SERV-003"]}).findings


def test_a_rule_that_cannot_read_its_input_is_not_evaluated_not_a_crash(runs: dict[str, OfflineRun]) -> None:
    case = Case(
        LT, lambda n: n == "prod-gpu-full-us-west-2a-blue", _set("networkInterfaces.0.networkCardIndex", "zero"), ""
    )
    edited, _ = _edited(_stack(runs["prod"]), case)
    (finding,) = evaluate(edited, {"EFA-001": RULES["EFA-001"]}).findings
    assert finding.status == "not-evaluated" and "ValueError" in finding.message()


def test_a_stack_in_the_middle_of_an_upgrade_complies_and_counts_its_capacity_once(run_changed) -> None:
    def upgrade(values: dict[str, Any]) -> None:
        values["peakguard:gpuPools"]["full"]["next"] = {"releaseVersion": "1.33.4-20251010"}

    stack = _stack(run_changed("prod", upgrade))
    report = evaluate(stack, RULES)
    assert not failed(report), [f.message() for f in report.findings]

    # 15 serving nodes of 8 GPUs hold 120 one-GPU replicas; the empty green generation's maxSize
    # is the same capacity again, so 150 must still not fit.
    edited, _ = _edited(stack, Case(HPA, lambda n: True, _set("spec.maxReplicas", 150), ""))
    (finding,) = evaluate(edited, {"CAP-003": RULES["CAP-003"]}).findings
    assert "what pool 'full' holds" in finding.message()


def test_mig_capacity_counts_the_instances_the_gpus_memory_allows(run_changed) -> None:
    # 6 nodes of 8 A100-40GB GPUs at most: 1g.10gb is a quarter of a 40 GB GPU, so 192 instances,
    # not the 336 that "7 slices per GPU" would count.
    def a100_40gb(values: dict[str, Any]) -> None:
        values["peakguard:gpuPools"]["mig"]["instanceType"] = "p4d.24xlarge"
        values["peakguard:kubernetes"]["modelService"]["lightMaxReplicas"] = 200

    report = evaluate(_stack(run_changed("prod", a100_40gb)), {"CAP-003": RULES["CAP-003"]})

    assert failed(report)
    (finding,) = report.findings
    assert "(192 replicas of 1 nvidia.com/mig-1g.10gb)" in finding.message()


def test_mig_capacity_that_fits_complies(run_changed) -> None:
    def a100_40gb(values: dict[str, Any]) -> None:
        values["peakguard:gpuPools"]["mig"]["instanceType"] = "p4d.24xlarge"
        values["peakguard:kubernetes"]["modelService"]["lightMaxReplicas"] = 192

    report = evaluate(_stack(run_changed("prod", a100_40gb)), {"CAP-003": RULES["CAP-003"]})

    assert not failed(report), [f.message() for f in report.findings]


@pytest.mark.parametrize(
    ("strategy", "violates"),
    [
        ({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "33%"}}, False),
        ({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "34%"}}, True),
        ({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}, False),
        ({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}, True),
        ({"type": "RollingUpdate"}, False),  # Kubernetes' default: one node at a time
        ({"type": "OnDelete"}, False),
    ],
)
def test_a_daemon_set_without_a_reason_rolls_a_third_of_its_nodes_at_most(
    runs: dict[str, OfflineRun], strategy: dict[str, Any], violates: bool
) -> None:
    def edit(props: dict[str, Any]) -> None:
        props["metadata"]["annotations"].pop("peakguard.io/rollout-takes-no-capacity")
        props["spec"]["updateStrategy"] = strategy

    case = Case("kubernetes:apps/v1:DaemonSet", lambda n: n.endswith("-full"), edit, "")
    edited, _ = _edited(_stack(runs["prod"]), case)

    assert bool(failed(evaluate(edited, {"SAFE-004": RULES["SAFE-004"]}))) is violates


@pytest.mark.parametrize(("edit", "expect"), [
    (_set("stopConditions.0.value", "arn:aws:cloudwatch:us-west-2:123456789012:alarm:someone-elses"),
     "alarms this stack declares"),
    (_set("actions.0.target.key", "Subnets"), "key Instances naming a target of type aws:ec2:instance"),
    (_set("targets.0.name", "renamed"), "key Instances naming a target of type aws:ec2:instance"),
])  # fmt: skip
def test_a_fault_experiment_stops_on_its_own_alarms_and_acts_on_its_own_target(
    edit: Edit, expect: str, runs: dict[str, OfflineRun]
) -> None:
    stack = _stack(runs["prod"])
    case = Case(FIS, lambda n: n == "prod-chaos-gpu-zone-stop-us-west-2b", edit, expect)
    rules = {rule_id: RULES[rule_id] for rule_id in ("CHAOS-001", "CHAOS-002")}

    report = evaluate(_edited(stack, case)[0], rules)

    assert [f.violation.required for f in report.findings if f.status == "violation"] == [expect]
