"""When a rollback step fails, the journal tells a person what to put back by hand: for every step
of every runbook, the object, the field and the value (and the command that sets it)."""

from __future__ import annotations

from typing import Any

import pytest

from infra.targets import ClusterTarget, ModelServiceTarget, NodeGroupTarget, TargetsDocument
from runbooks.catalog import RUNBOOKS
from runbooks.engine.spec import Context
from runbooks.library import undo
from runbooks.ports import Ports

SERVICE = ModelServiceTarget(
    namespace="peakguard",
    deployments={"full": "model-service-full", "canary": "model-service-canary", "light": "model-service-light"},
    hpa="model-service-full",
    scaled_objects={"light": "model-service-light", "canary": "model-service-canary"},
    mode_config_maps={"full": "model-service-full-mode", "canary": "model-service-canary-mode"},
    admin_token_secret="model-service-admin",
    service="model-service",
    url="http://model-service.peakguard:8080",
)
TARGETS = TargetsDocument(
    "prod",
    ClusterTarget("peakguard-prod", "https://x", "us-west-2"),
    (NodeGroupTarget("full", "us-west-2a", "gpu-full-us-west-2a-blue", "eks-1", "p5.48xlarge"),),
    model_service=SERVICE,
)


def _context() -> Context:
    ports = Ports(targets=TARGETS, cluster=None, cloud=None, service=None)  # type: ignore[arg-type]
    return Context(env="prod", params={}, ports=ports)


@pytest.mark.parametrize(
    "step", [(r.name, s.name) for r in RUNBOOKS.values() for s in r.steps], ids=lambda pair: f"{pair[0]}/{pair[1]}"
)
def test_every_step_says_how_to_undo_it_by_hand(step: tuple[str, str]) -> None:
    runbook, name = step
    found = next(s for s in RUNBOOKS[runbook].steps if s.name == name)
    assert found.undo is not None, f"{runbook} step {name} has no undo note: the journal could only print a value"


def test_the_hold_note_names_the_parameter_and_the_command() -> None:
    assert undo.hold(_context(), None) == (
        "SSM parameter /peakguard/prod/incident-hold (the incident hold): delete it: "
        "aws ssm delete-parameter --name /peakguard/prod/incident-hold"
    )
    another: Any = {"runId": "prod-emergency-stop-1", "runbook": "emergency-stop"}
    assert "aws ssm put-parameter --overwrite" in undo.hold(_context(), another)
    assert '"runId": "prod-emergency-stop-1"' in undo.hold(_context(), another)


def test_the_mode_note_names_the_config_map_and_the_pods() -> None:
    note = undo.mode(_context(), "full", {"model": "full", "precision": "fp32", "shedding": False})
    assert note.startswith("ConfigMap peakguard/model-service-full-mode key mode.json: set ")
    assert '{"model": "full", "precision": "fp32", "shedding": false}' in note
    assert "to every ready full pod" in note
    assert "kubectl -n peakguard rollout restart deployment model-service-full" in note


def test_the_node_group_and_bounds_notes_name_field_and_value() -> None:
    groups = undo.node_groups(_context(), {"gpu-full-us-west-2a-blue": {"min": 1, "desired": 2, "max": 4}})
    assert (
        "EKS node group peakguard-prod/gpu-full-us-west-2a-blue: scalingConfig minSize=1 desiredSize=2 maxSize=4"
        in (groups)
    )
    assert "--scaling-config minSize=1,maxSize=4,desiredSize=2" in groups
    scaled = undo.bounds(_context(), "ScaledObject", "model-service-light", {"min": 0, "max": 8})
    assert scaled.startswith(
        "ScaledObject peakguard/model-service-light: spec.minReplicaCount=0 spec.maxReplicaCount=8"
    )
