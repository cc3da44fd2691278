"""`pulumi up` refuses while a runbook holds temporary overrides (the incident hold of DESIGN.md).

emergency-stop raises HPA bounds, node group sizes and switches the model; a deploy in the
middle would put back what the stack config says and undo the mitigation. So the program reads
`/peakguard/<env>/incident-hold` first: under `pulumi up` it stops with the run that holds it;
under `pulumi preview` it warns and shows the plan.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from infra.targets import hold_parameter_name

__all__ = ["check_incident_hold"]


def check_incident_hold(env: str) -> None:
    name = hold_parameter_name(env)
    # By path, not by name: a missing parameter is the normal case and must not fail the program.
    found = aws.ssm.get_parameters_by_path(path=name.rsplit("/", 1)[0] + "/", recursive=False)
    values = dict(zip(found.names or [], found.values or [], strict=False))
    if name not in values:
        return
    try:
        hold = json.loads(values[name])
    except json.JSONDecodeError:
        hold = {"reason": values[name]}
    if not isinstance(hold, dict):
        hold = {"reason": str(hold)}
    message = (
        f"{env} is under an incident hold set by run {hold.get('runId', '?')} "
        f"({hold.get('runbook', '?')}: {hold.get('reason', 'no reason given')}, since {hold.get('since', '?')}). "
        "A deploy now would undo its mitigation. Let that run restore normal operation (which clears the "
        f"hold), or, once the incident is over, clear it by hand: aws ssm delete-parameter --name {name}"
    )
    if pulumi.runtime.is_dry_run():
        pulumi.log.warn(message)
        return
    raise pulumi.RunError(message)
