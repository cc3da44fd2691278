"""Each rule on the program's own resources: the real stacks comply; a resource changed the way a
bad stack config or a careless edit would change it is a violation that names the resource."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from infra.offline import OfflineRun
from policies.catalog import RULES
from policies.evaluation import evaluate, failed
from policies.findings import Resource, Rule
from tests.infra.conftest import PROJECT_DIR


def _resources(run: OfflineRun) -> list[Resource]:
    return [Resource(r.type, r.name, r.urn, r.inputs) for r in run.resources if r.custom]


def _one(run: OfflineRun, rule: Rule, pick: Callable[[Resource], bool] = lambda r: True) -> Resource:
    return next(r for r in _resources(run) if r.type in rule.resource_types and pick(r))


def _changed(resource: Resource, edit: Callable[[dict[str, Any]], None]) -> Resource:
    props = copy.deepcopy(dict(resource.props))
    edit(props)
    return Resource(resource.type, resource.name, resource.urn, props)


def test_every_rule_has_its_metadata() -> None:
    for rule_id, rule in RULES.items():
        assert rule_id == rule.id
        assert rule.severity in ("mandatory", "advisory")
        assert rule.rationale.endswith(".")
        assert rule.resource_types
        assert rule.id in CASES, f"{rule.id} has no violating case below"


def test_the_real_stacks_comply(run: OfflineRun) -> None:
    findings = evaluate(_resources(run), RULES)
    assert not [f.message() for f in findings], run.config.env


def _model_service(r: Resource) -> bool:
    return r.name.endswith("-model-service-full")


CASES: dict[str, tuple[Callable[[Resource], bool], Callable[[dict[str, Any]], None], str]] = {
    "SAFE-001": (lambda r: "gpu" in r.name, lambda p: p["updateConfig"].update(maxUnavailablePercentage=50),
                 "maxUnavailablePercentage is 50"),
    "SAFE-002": (_model_service, lambda p: p["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable="50%"),
                 "maxUnavailable is '50%'"),
    "CAP-001": (lambda r: True, lambda p: p["spec"].update(maxReplicas=100), "must be >= ceil(1.3 x 85) = 111"),
    "CAP-002": (lambda r: True, lambda p: p["spec"]["behavior"]["scaleUp"].update(stabilizationWindowSeconds=180),
                "stabilizationWindowSeconds is 180"),
    "SEC-001": (lambda r: True, lambda p: p["metadataOptions"].update(httpTokens="optional"),
                "httpTokens is 'optional'"),
    "SEC-002": (lambda r: True, lambda p: p.update(restrictPublicBuckets=False), "restrictPublicBuckets"),
    "SERV-001": (_model_service, lambda p: p["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
                 .update(path="/healthz"), "path is '/healthz'"),
    "SERV-002": (_model_service,
                 lambda p: p["spec"]["template"]["spec"]["containers"][0].update(image="repo/model:latest"),
                 "image is 'repo/model:latest'"),
}  # fmt: skip


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_a_violating_resource_is_reported_with_its_name_and_the_fix(rule_id: str, runs: dict[str, OfflineRun]) -> None:
    rule = RULES[rule_id]
    pick, edit, expected = CASES[rule_id]
    resource = _one(runs["prod"], rule, pick)
    assert not rule.check(resource), "the compliant case"

    findings = evaluate([_changed(resource, edit)], {rule_id: rule})

    assert findings, f"{rule_id} missed the violation"
    message = findings[0].message()
    assert resource.name in message
    assert expected in message
    assert "Fix:" in message
    assert failed(findings)


def test_hop_limit_2_is_allowed_only_where_the_stack_says_pods_need_metadata(runs: dict[str, OfflineRun]) -> None:
    rule = RULES["SEC-001"]
    template = _one(runs["prod"], rule, lambda r: "gpu" in r.name)
    hop_two = _changed(template, lambda p: p["metadataOptions"].update(httpPutResponseHopLimit=2))
    assert rule.check(hop_two), "hop 2 without the stack saying so"
    tagged = _changed(
        hop_two, lambda p: p.setdefault("tags", {}).update({"peakguard:pods-need-instance-metadata": "true"})
    )
    assert not rule.check(tagged)


def test_an_unknown_property_is_not_evaluated_never_a_pass(runs: dict[str, OfflineRun]) -> None:
    rule = RULES["CAP-001"]
    hpa = _changed(_one(runs["prod"], rule), lambda p: p["metadata"].pop("annotations"))
    (finding,) = evaluate([hpa], {"CAP-001": rule})
    assert finding.status == "not-evaluated"
    assert not failed([finding])
    assert failed([finding], strict_unknowns=True)


def test_the_offline_check_of_all_three_stacks_passes_in_under_30_s() -> None:
    started = time.monotonic()
    for env in ("dev", "staging", "prod"):
        done = subprocess.run([sys.executable, "-m", "peakguard", "policy", "check", "--env", env], cwd=PROJECT_DIR,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 findings" in done.stdout
    seconds = time.monotonic() - started
    print(f"\noffline policy check of dev, staging and prod: {seconds:.1f} s")
    assert seconds < 30
