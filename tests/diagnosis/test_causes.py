"""The checks of `diagnosis.causes` on recordings built pod by pod (tests/diagnosis/fleet.py): each
cause found where its evidence is, ranked as the module says, and no cause claimed without it."""

from __future__ import annotations

import pytest

from diagnosis.causes import diagnose
from diagnosis.readings import histogram_quantile
from diagnosis.series import Series
from tests.diagnosis.fleet import LAYERS, Pod, build


def _slow(layer: str, seconds: float) -> dict[str, float]:
    return {name: (seconds if name == layer else 0.01) for name in LAYERS}


def test_a_steady_fleet_within_its_slo_is_healthy_and_no_cause_is_claimed() -> None:
    result = diagnose(build([Pod("a"), Pod("b", node="node-b")]))

    assert result.verdict == "healthy" and result.findings == () and result.cause is None
    assert result.symptoms == ()
    assert result.fleet["pods_serving"] == 2 and result.fleet["answered_per_second"] == pytest.approx(40, rel=0.05)


def test_one_pods_slow_layer_is_named_with_the_pod_and_layer_even_when_its_peers_shed() -> None:
    slow = Pod("b", node="node-b", changes=[(40, {"layers": _slow("block1", 0.3), "answered": 3.0, "latency": 0.7})])
    peers = [Pod("a", changes=[(40, {"answered": 30.0, "shed": 5.0, "queue": 0.2})]),
             Pod("c", node="node-b", changes=[(40, {"answered": 30.0, "shed": 5.0, "queue": 0.2})])]  # fmt: skip

    result = diagnose(build([*peers, slow]))

    assert result.verdict == "cause"
    top = result.findings[0]
    assert (top.cause, top.figures["pod"], top.figures["layer"]) == ("slow-layer", "b", "block1"), result.findings
    assert top.figures["ratio"] >= 20 and top.runbook is None and "cordon" in top.action
    assert "overload" not in [f.cause for f in result.findings[:1]]


def test_a_slow_layer_that_opened_the_pods_breaker_is_found_where_the_full_model_slowed() -> None:
    # The recent window holds only b's light model, which no peer runs: the span since the baseline
    # still holds the seconds its full model ran slow.
    slow = Pod("b", node="node-b", changes=[(35, {"layers": _slow("head", 0.2)}), (38, {"serves": "light"})])

    result = diagnose(build([Pod("a"), slow]))

    assert result.verdict == "cause", result.reason
    top = result.findings[0]
    assert (top.cause, top.figures["pod"]) == ("slow-layer", "b"), result.findings
    assert (top.figures["model"], top.figures["layer"]) == ("full", "head"), result.findings
    assert "since the baseline" in top.summary


def test_a_slow_layer_on_the_only_pod_is_judged_against_its_own_baseline() -> None:
    result = diagnose(build([Pod("a", changes=[(35, {"layers": _slow("head", 0.2)})])]))

    assert result.findings and result.findings[0].cause == "slow-layer"
    assert result.findings[0].figures["layer"] == "head"


def test_a_pod_slower_in_every_layer_is_cold_when_new_and_slow_when_old() -> None:
    every = dict.fromkeys(LAYERS, 0.05)
    new = diagnose(build([Pod("a"), Pod("b"), Pod("c", node="node-b", born=15.0, layers=every, answered=4.0)]))
    old = diagnose(build([Pod("a"), Pod("b"), Pod("c", node="node-b", layers=every, answered=4.0)]))

    assert (new.findings[0].cause, new.findings[0].figures["pod"]) == ("cold-replica", "c"), new.findings
    assert new.findings[0].runbook == "predictive-scale"
    assert (old.findings[0].cause, old.findings[0].figures["pod"]) == ("slow-replica", "c"), old.findings


def test_a_node_not_ready_ranks_above_the_overload_it_leaves_behind() -> None:
    overloaded = {"answered": 30.0, "shed": 10.0, "queue": 0.3, "latency": 0.7}
    pods = [Pod("a", changes=[(40, overloaded)]), Pod("b", node="node-b", gone=40.0)]

    result = diagnose(build(pods, nodes_not_ready={"node-b": 40.0}))

    causes = [f.cause for f in result.findings]
    assert causes[0] == "node-not-ready" and "overload" in causes, result.findings
    top = result.findings[0]
    assert top.figures["node"] == "node-b" and top.figures["pods_gone"] == ["b"] and top.runbook == "rolling-upgrade"


def test_without_kube_state_metrics_a_vanished_pod_is_a_lost_replica() -> None:
    pods = [Pod("a"), Pod("b", node="node-b", gone=40.0)]

    result = diagnose(build(pods, without=("node_ready", "pod_node", "pod_ready", "pod_created")))

    assert result.findings[0].cause == "replica-lost" and result.findings[0].figures["pod"] == "b"


def test_a_pod_that_stops_answering_is_a_lost_replica_unless_it_was_deleted_on_purpose() -> None:
    crashed = diagnose(build([Pod("a"), Pod("b", node="node-a", gone=40.0)]))
    scaled_in = diagnose(build([Pod("a"), Pod("b", node="node-a", gone=40.0, deleted=True)]))

    assert crashed.findings[0].cause == "replica-lost" and "its node stayed Ready" in crashed.findings[0].summary
    assert scaled_in.verdict == "healthy", scaled_in.findings


def test_demand_over_capacity_with_layers_at_their_usual_speed_is_overload() -> None:
    surge = {"answered": 40.0, "shed": 30.0, "queue": 0.35, "latency": 0.75, "batch_size": 16.0}
    result = diagnose(build([Pod("a", changes=[(40, surge)]), Pod("b", node="node-b", changes=[(40, surge)])]))

    assert result.verdict == "cause" and [f.cause for f in result.findings] == ["overload"]
    top = result.findings[0]
    assert top.runbook == "emergency-stop" and top.figures["shed_share"] == pytest.approx(30 / 70, rel=0.02)
    assert any("SLO" in s for s in result.symptoms) and result.time["stage_shares"]["queue"] > 0.5


def test_overload_is_weighed_by_requests_when_the_pod_that_sheds_holds_most_of_them() -> None:
    # A refusal is quick, so a balancer sends more to the pod that sheds; its peer queues under the bar.
    shedding = {"answered": 20.0, "shed": 150.0, "queue": 0.02, "latency": 0.3}
    queuing = {"answered": 25.0, "queue": 0.02, "latency": 0.3}
    result = diagnose(build([Pod("a", changes=[(40, shedding)]), Pod("b", node="node-b", changes=[(40, queuing)])]))

    assert result.verdict == "cause" and result.findings[0].cause == "overload", result.reason
    assert result.findings[0].figures["pods_behind"] == ["a"]


def test_a_surge_is_overload_even_where_it_slows_the_layers_that_share_its_cores() -> None:
    # Ten times the baseline's requests, every layer twice its time (the lab's overload runs at 250/s).
    surge = {"answered": 40.0, "shed": 160.0, "queue": 0.02, "latency": 0.3, "layers": dict.fromkeys(LAYERS, 0.02)}
    result = diagnose(build([Pod("a", answered=10.0, changes=[(40, surge)]),
                             Pod("b", node="node-b", answered=10.0, changes=[(40, surge)])]))  # fmt: skip

    assert result.verdict == "cause" and result.findings[0].cause == "overload", result.reason
    assert result.findings[0].figures["layers_vs_baseline"] == pytest.approx(2.0, rel=0.05)


def test_layers_slower_everywhere_are_not_called_overload() -> None:
    # Every pod slower in every layer (a bad model version, a throttled fleet) and shedding: not demand.
    slower = {"answered": 20.0, "shed": 10.0, "queue": 0.3, "latency": 0.7, "layers": dict.fromkeys(LAYERS, 0.05)}
    result = diagnose(build([Pod("a", changes=[(40, slower)]), Pod("b", node="node-b", changes=[(40, slower)])]))

    assert "overload" not in [f.cause for f in result.findings]
    assert result.verdict == "inconclusive" and "no known cause matches" in result.reason


def test_missing_metrics_make_it_inconclusive_naming_them_never_a_guess() -> None:
    slow = Pod("b", node="node-b", changes=[(40, {"latency": 0.9})])
    no_layers = diagnose(build([Pod("a"), slow], without=("layer_sum", "layer_count", "stage_sum", "stage_count")))
    no_traffic = diagnose(build([Pod("a", answered=0.0)]))

    assert no_layers.verdict == "inconclusive", no_layers.reason
    assert "layer_sum" in no_layers.reason and "slow-layers" in no_layers.unchecked
    assert no_traffic.verdict == "inconclusive" and "no responses" in no_traffic.reason


def test_within_the_slo_but_blind_to_a_cause_is_inconclusive_and_only_gpu_memory_is_optional() -> None:
    blind = diagnose(build([Pod("a"), Pod("b")], without=("layer_sum", "layer_count")))
    cpu = diagnose(build([Pod("a"), Pod("b")]))

    assert blind.verdict == "inconclusive" and "could not look" in blind.reason and "slow-layers" in blind.unchecked
    assert cpu.verdict == "healthy" and cpu.unchecked.keys() == {"gpu-memory"} and "optional" in cpu.reason


def test_histogram_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    buckets = {0.1: 50.0, 0.2: 90.0, 0.5: 100.0, float("inf"): 100.0}

    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * 0.9)
    assert histogram_quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 10.0, float("inf"): 20.0}) == 0.1  # beyond the last finite bound


def test_a_counters_increase_counts_resets_and_a_new_pods_start() -> None:
    reset = Series({}, ((0.0, 10.0), (1.0, 15.0), (2.0, 3.0), (3.0, 8.0)))
    new = Series({}, ((5.0, 4.0), (6.0, 9.0)))

    assert reset.increase(0.0, 3.0) == 5 + 3 + 5
    assert reset.increase(1.5, 3.0) == 3 + 5
    assert new.increase(0.0, 6.0, from_zero=True) == 9.0
    assert new.increase(0.0, 6.0) == 5.0
    assert new.increase(0.0, 4.0) is None
