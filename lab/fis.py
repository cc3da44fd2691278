"""The FIS experiment templates `pulumi up` would create, played in moto from what the program
registered (moto runs no Pulumi): each template's inputs, in the Pulumi provider's shape, turned into
a CreateExperimentTemplate request, which boto3 checks against botocore's FIS model before it is sent.

What moto's FIS does and lacks (moto 5.2.6, moto/fis): it stores templates and runs experiments as a
state machine (pending, initiating, running, completed; stopping, stopped), one step per
GetExperiment by default or per `seconds` with `progression_seconds`; it validates no action, target
or stop condition, resolves no target and never reads CloudWatch. So in the lab an experiment injects
no fault by itself: the drill's faults (lab.drill_faults) do that, and the runbook meets them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import httpx

from infra.offline import OfflineRun

__all__ = ["TEMPLATE", "play_experiment_templates", "progression_seconds"]

TEMPLATE = "aws:fis/experimentTemplate:ExperimentTemplate"


def _request(inputs: Mapping[str, Any], token: str) -> dict[str, Any]:
    """Pulumi's ExperimentTemplate inputs (lists of named actions and targets, key/value pairs) as
    the API's CreateExperimentTemplate (maps by name)."""
    actions = {
        action["name"]: {
            "actionId": action["actionId"],
            "parameters": {p["key"]: p["value"] for p in action.get("parameters", [])},
            "targets": {action["target"]["key"]: action["target"]["value"]} if "target" in action else {},
            **({"startAfter": list(action["startAfters"])} if action.get("startAfters") else {}),
        }
        for action in inputs["actions"]
    }
    targets = {}
    for target in inputs.get("targets", []):
        request: dict[str, Any] = {"resourceType": target["resourceType"], "selectionMode": target["selectionMode"]}
        if target.get("resourceTags"):
            request["resourceTags"] = {t["key"]: t["value"] for t in target["resourceTags"]}
        if target.get("resourceArns"):
            request["resourceArns"] = list(target["resourceArns"])
        if target.get("filters"):
            request["filters"] = [{"path": f["path"], "values": list(f["values"])} for f in target["filters"]]
        if target.get("parameters"):
            request["parameters"] = dict(target["parameters"])
        targets[target["name"]] = request
    options = inputs.get("experimentOptions", {})
    return {
        "clientToken": token,
        "description": inputs["description"],
        "roleArn": inputs["roleArn"],
        "stopConditions": [{k: v for k, v in c.items() if k in ("source", "value")} for c in inputs["stopConditions"]],
        "actions": actions,
        "targets": targets,
        "tags": dict(inputs.get("tags", {})),
        **({"experimentOptions": dict(options)} if options else {}),
    }


def play_experiment_templates(client_args: Mapping[str, Any], program: OfflineRun) -> dict[str, str]:
    """Create every template the program registered; experiment name -> moto's template id."""
    fis = boto3.client("fis", **client_args)
    ids = {}
    for registration in program.of_type(TEMPLATE):
        inputs = registration.inputs
        created = fis.create_experiment_template(**_request(inputs, token=registration.name))
        ids[inputs["tags"]["peakguard:experiment"]] = created["experimentTemplate"]["id"]
    return ids


def progression_seconds(endpoint: str, seconds: float) -> None:
    """Make moto's experiments advance one state every `seconds` of wall time (moto's state manager,
    `time` progression), as a real experiment runs for a while, instead of one per GetExperiment."""
    httpx.post(
        f"{endpoint}/moto-api/state-manager/set-transition",
        json={"model_name": "fis::experiment", "transition": {"progression": "time", "seconds": seconds}},
        timeout=10,
    ).raise_for_status()
