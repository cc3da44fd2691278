"""The Pulumi pack itself, fed the way the engine feeds it (pulumi-policy's public argument types,
props behind its unknown-checking proxy): it reports what the offline check reports, keeps unknowns
out of the violations, and honours waivers."""

from __future__ import annotations

import selectors
import subprocess
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pytest
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)
from pulumi_policy.proxy import UNKNOWN_NUMBER_VALUE, UnknownValueError, unknown_checking_proxy

from infra.offline import run_offline
from policies.catalog import RULES
from policies.evaluation import Stack, evaluate
from policies.pack import build_policies
from policies.waivers import Waiver
from tests.infra.conftest import PROJECT_DIR

BAD_STACK = Path(__file__).parent / "stacks" / "Pulumi.bad-prod.yaml"
_OPTS = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


@pytest.fixture(scope="module")
def bad() -> Stack:
    return Stack.from_registrations(run_offline("prod", project_dir=PROJECT_DIR, stack_file=BAD_STACK).resources)


def _run_pack(stack: Stack, waivers: Sequence[Waiver] = ()) -> list[tuple[str, str, str]]:
    """(policy, urn, message) for every violation the pack reports, as the engine would collect them."""
    reported: list[tuple[str, str, str]] = []
    for policy in build_policies(RULES, waivers, today=lambda: date(2026, 11, 25)):

        def collect(message: str, urn: str | None = None, name: str = policy.name) -> None:
            reported.append((name, urn or "", message))

        if isinstance(policy, ResourceValidationPolicy):
            for r in stack.inputs:
                policy.validate(
                    ResourceValidationArgs(r.type, unknown_checking_proxy(dict(r.props)), r.urn, r.name, _OPTS, None),
                    collect,
                )
        else:
            resources = [
                PolicyResource(r.type, unknown_checking_proxy(dict(r.props)), r.urn, r.name, _OPTS, None, None, [], {})
                for r in stack.outputs
            ]
            policy.validate(StackValidationArgs(resources), collect)
    return reported


def test_the_pack_reports_what_the_offline_check_reports(bad: Stack) -> None:
    offline = {(f.rule.policy_name, f.resource.urn, f.message()) for f in evaluate(bad, RULES).findings}
    assert set(_run_pack(bad)) == offline
    assert {name for name, _, _ in offline} == {
        "avail-003-gpu-pool-spans-two-azs-in-prod",
        "safe-003-disruption-budget-a-third-at-most",
    }


def test_the_real_stacks_pass_the_pack(runs: dict) -> None:
    for env, run in runs.items():
        assert _run_pack(Stack.from_registrations(run.resources)) == [], env


def test_an_active_waiver_silences_the_pack_and_an_expired_one_does_not(bad: Stack) -> None:
    active = Waiver("AVAIL-003", "prod-gpu-mig-us-west-2a-blue", "gpu-platform@", "one AZ (CAP-42)", date(2026, 12, 31))
    assert [n for n, _, _ in _run_pack(bad, [active])] == ["safe-003-disruption-budget-a-third-at-most"]
    expired = Waiver("AVAIL-003", "prod-gpu-mig-us-west-2a-blue", "gpu-platform@", "one AZ (CAP-42)", date(2026, 11, 1))
    reported = _run_pack(bad, [expired])
    messages = [m for n, _, m in reported if n.startswith("avail-003")]
    assert len(messages) == 1 and "waiver by gpu-platform@ expired on 2026-11-01" in messages[0]
    (stale,) = [m for n, _, m in reported if n == "waivers-not-expired"]
    assert "waiver for AVAIL-003 on prod-gpu-mig-us-west-2a-blue (owner gpu-platform@) expired on 2026-11-01" in stale


def test_a_value_unknown_at_preview_is_the_engines_cannot_run_not_a_violation(runs: dict) -> None:
    (policy,) = [p for p in build_policies(RULES) if p.name == "cap-001-hpa-leaves-30-percent-headroom"]
    hpa = next(
        r for r in Stack.from_registrations(runs["prod"].resources).inputs if r.type.endswith("HorizontalPodAutoscaler")
    )
    props = {**hpa.props, "spec": {**hpa.props["spec"], "maxReplicas": UNKNOWN_NUMBER_VALUE}}
    reported: list[str] = []
    with pytest.raises(UnknownValueError) as raised:
        policy.validate(
            ResourceValidationArgs(hpa.type, unknown_checking_proxy(props), hpa.urn, hpa.name, _OPTS, None),
            lambda message, urn=None: reported.append(message),
        )
    assert "not evaluated on kubernetes:autoscaling/v2:HorizontalPodAutoscaler prod-model-service-full-hpa" in (
        raised.value.message
    )
    assert reported == []


def test_the_pack_module_builds_a_pack_with_a_policy_per_rule() -> None:
    """`python -m policies` is what the CLI's plugin host runs: it must start the pack's gRPC server."""
    # The Pulumi CLI starts a Python pack as `python -u -m pulumi.policy <engine> <dir>` (the
    # pulumi-analyzer-policy-python script in pulumi/pulumi, sdk/python/dist/), so the port line is
    # unbuffered there; without -u it would sit in the child's buffer and never reach the pipe.
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "policies"],
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = _first_line(process, seconds=60)
        assert port.isdigit(), f"the pack printed {port!r} instead of its port"
    finally:
        process.kill()
        process.communicate(timeout=10)
    names = [p.name for p in build_policies(RULES)]
    assert len(names) == len(set(names)) == len(RULES) + 1, "a policy per rule, and waivers-not-expired"


def _first_line(process: subprocess.Popen[str], *, seconds: float) -> str:
    """The child's first line of output, or a failure naming what it wrote to stderr; never an endless wait."""
    assert process.stdout is not None
    command = " ".join(map(str, process.args))
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=seconds):
            process.kill()
            _, err = process.communicate(timeout=10)
            pytest.fail(f"no line from `{command}` within {seconds:.0f} s; stderr: {err[-2000:]}")
    line = process.stdout.readline().strip()
    if not line:
        _, err = process.communicate(timeout=10)
        pytest.fail(f"`{command}` exited ({process.returncode}) without a line: {err[-2000:]}")
    return line
