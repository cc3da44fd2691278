"""predictive-scale end to end, in the lab of `tests/runbooks/e2e/conftest.py`: the request
history is CloudWatch's (moto) RequestCount of a target group tagged as the AWS Load Balancer
Controller tags the one it makes from the Ingress (the controller is played here: moto has no
controller); the HPA and node groups are the lab's."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from typing import Any

from infra import facts
from infra.targets import hold_parameter_name
from lab.alb import write_request_count
from runbooks.ports.lease_lock import LEASE_NAME
from tests.runbooks.e2e.conftest import NAMESPACE, World, _records

REPLICA_RPS = 10.0
PEAK_STARTS_IN = dt.timedelta(minutes=5)
"""Each day's peak starts this long after now: a 15-minute horizon must see it coming."""


def _predictive(world: World, *args: str) -> Any:
    return world.peakguard("runbook", "run", "predictive-scale", "--env", "dev", "--kube-url", world.kube_url,
                           "--replica-rps", str(REPLICA_RPS), *args)  # fmt: skip


def _history(world: World, rate: Callable[[dt.datetime], float], *, days: float = 5, skip_zero: bool = False) -> None:
    """Five days of RequestCount every 5 minutes up to now, `rate(t)` requests/s, for the target
    group the lab's played load balancer controller made from the Ingress."""
    assert world.lab.request_count_dimensions, "the lab plays the Ingress's ALB"
    write_request_count(world.lab.client_args(), world.lab.request_count_dimensions, rate, days=days,
                        skip_zero=skip_zero)  # fmt: skip


def _daily_peak(quiet: float, peak: float, *, now_rate: float | None = None) -> Callable[[dt.datetime], float]:
    """`quiet` requests/s, and `peak` for two hours a day from PEAK_STARTS_IN after now's time of day."""
    start = dt.datetime.now(dt.UTC) + PEAK_STARTS_IN
    opens = start.hour * 60 + start.minute

    def rate(t: dt.datetime) -> float:
        if now_rate is not None and dt.datetime.now(dt.UTC) - t < dt.timedelta(minutes=30):
            return now_rate
        minute = (t.hour * 60 + t.minute - opens) % 1440
        return peak if minute < 120 else quiet

    return rate


def _need(rps: float) -> int:
    return facts.capacity_with_headroom(math.ceil(rps / REPLICA_RPS))


def _basis(world: World) -> dict[str, Any]:
    started = next(r for r in _records(world) if r["event"] == "run_started")
    basis: dict[str, Any] = started["plan"]["basis"]
    return basis


def test_it_raises_the_minimum_before_the_daily_peak_arrives(world: World) -> None:
    _history(world, _daily_peak(quiet=5, peak=30))
    before = world.sizes()

    done = _predictive(world, "--horizon", "15")

    assert done.returncode == 0, done.stdout + done.stderr
    basis = _basis(world)
    assert basis["rpsNow"] == 5 and basis["needNow"] == _need(5)
    assert basis["forecastP90Rps"] >= 25, "yesterday's peak at this time is forecast"
    assert world.hpa() == {"min": _need(30), "max": 6}
    assert all(world.sizes()[name]["desired"] >= size["desired"] for name, size in before.items()), "never lowered"


def test_never_below_the_need_of_the_traffic_now(world: World) -> None:
    _history(world, _daily_peak(quiet=2, peak=2, now_rate=25))

    done = _predictive(world)

    assert done.returncode == 0, done.stdout + done.stderr
    assert _basis(world)["needNow"] == _need(25)
    assert world.hpa()["min"] >= _need(25)


def test_never_above_the_declared_maximum(world: World) -> None:
    _history(world, _daily_peak(quiet=5, peak=200))

    done = _predictive(world)

    assert done.returncode == 0, done.stdout + done.stderr
    assert _basis(world)["cappedByMax"] is True
    assert world.hpa() == {"min": 6, "max": 6}


def test_a_minimum_someone_set_higher_is_never_lowered(world: World) -> None:
    hpa = world.store.get("horizontalpodautoscalers", NAMESPACE, "model-service-full")
    world.store.replace("horizontalpodautoscalers", NAMESPACE, "model-service-full",
                        {**hpa, "spec": {**hpa["spec"], "minReplicas": 5}})  # fmt: skip
    _history(world, _daily_peak(quiet=5, peak=5))

    done = _predictive(world)

    assert done.returncode == 0, done.stdout + done.stderr
    assert _basis(world)["minReplicas"] < 5
    assert world.hpa() == {"min": 5, "max": 6}


def test_a_quiet_night_up_to_now_is_read_as_no_traffic_not_as_its_last_busy_period(world: World) -> None:
    """No datapoint for the last hours (an ALB reports none without requests): the rate now is 0."""

    def busy_until_three_hours_ago(t: dt.datetime) -> float:
        return 0.0 if dt.datetime.now(dt.UTC) - t < dt.timedelta(hours=3) else 40.0

    _history(world, busy_until_three_hours_ago, skip_zero=True)

    done = _predictive(world)

    assert done.returncode == 0, done.stdout + done.stderr
    basis = _basis(world)
    assert basis["rpsNow"] == 0
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the basis is in naive UTC
    assert dt.datetime.fromisoformat(basis["forecastAt"]) >= now + dt.timedelta(minutes=10)


def test_a_failed_step_rolls_back_the_node_groups_it_raised(world: World) -> None:
    from lab.kube_api import ApiStatus

    eks = world.eks()
    for name in world.sizes():  # the groups idle at zero, so that holding the minimum needs a node
        eks.update_nodegroup_config(clusterName=world.targets.cluster.name, nodegroupName=name,
                                    scalingConfig={"minSize": 0, "desiredSize": 0, "maxSize": 2})  # fmt: skip
    before = world.sizes()
    _history(world, _daily_peak(quiet=5, peak=30))
    world.store.faults[("PATCH", "horizontalpodautoscalers")] = ApiStatus(403, "Forbidden", "cannot patch hpa")

    failed = _predictive(world)

    assert failed.returncode == 1, failed.stdout + failed.stderr
    events = [r["event"] for r in _records(world)]
    assert "rollback_started" in events
    raised = [r for r in _records(world) if r["event"] == "step_done" and r["step"] == "gpu-node-groups"]
    assert raised, "the node groups were raised before the HPA step failed"
    assert world.sizes() == before
    assert world.hpa() == {"min": 1, "max": 6}


def test_under_an_incident_hold_a_scheduled_run_stands_aside(world: World) -> None:
    _history(world, _daily_peak(quiet=5, peak=30))
    hold = {"runId": "dev-emergency-stop-1", "runbook": "emergency-stop"}
    world.ssm().put_parameter(Name=hold_parameter_name("dev"), Type="String", Value=json.dumps(hold))

    refused = _predictive(world)
    stood_aside = _predictive(world, "--stand-aside")

    assert refused.returncode == 2 and "stands aside" in refused.stderr
    assert stood_aside.returncode == 0, stood_aside.stdout + stood_aside.stderr
    assert "stood aside" in stood_aside.stdout
    (record,) = _records(world)
    assert record["event"] == "run_refused" and record["stood_aside"] is True
    assert world.hpa() == {"min": 1, "max": 6}


def test_while_another_runner_holds_the_lock_a_scheduled_run_stands_aside(world: World) -> None:
    _history(world, _daily_peak(quiet=5, peak=30))
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    spec = {"holderIdentity": "carol@laptop", "leaseDurationSeconds": 300, "acquireTime": now, "renewTime": now}
    world.store.create("leases", NAMESPACE, {"metadata": {"name": LEASE_NAME}, "spec": spec})

    stood_aside = _predictive(world, "--stand-aside")

    assert stood_aside.returncode == 0, stood_aside.stdout + stood_aside.stderr
    assert "held by carol@laptop" in stood_aside.stdout
    assert [r["event"] for r in _records(world)][-1] == "run_refused"
    assert world.hpa() == {"min": 1, "max": 6}
