"""Runbook declarations: parameters validated naming the flag, gates failing closed, unsafe runbooks refused."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runbooks.engine.spec import Context, Gate, Param, Reading, Runbook
from runbooks.errors import ParameterError
from tests.runbooks.conftest import ENV, EngineFactory, World, approved_plan, reads, setter, toy_runbook

REPLICAS = Param("to", "HPA minimum replicas", kind=int, minimum=1, maximum=200)
RATIO = Param("headroom", "capacity headroom ratio", kind=float, default=1.25)
MODE = Param("mode", "serving mode", choices=("light", "full"), default="full")


def _context(**values: Any) -> Context:
    return Context(env=ENV, params={}, ports=World(dict(values)))


# --- Param.parse ------------------------------------------------------------------------------


def test_required_param_missing_names_the_flag_and_its_help() -> None:
    with pytest.raises(ParameterError, match=r"--to is required: HPA minimum replicas"):
        REPLICAS.parse(None)


def test_missing_optional_param_takes_its_default() -> None:
    assert RATIO.parse(None) == 1.25
    assert MODE.parse(None) == "full"


def test_text_is_converted_to_the_declared_type() -> None:
    assert REPLICAS.parse("12") == 12
    assert RATIO.parse("1.5") == 1.5
    assert MODE.parse("light") == "light"


@pytest.mark.parametrize("raw", ["ten", "3.5", "", "0x10"])
def test_value_of_the_wrong_type_is_refused_naming_the_flag(raw: str) -> None:
    with pytest.raises(ParameterError, match=r"--to=.* is not a int: HPA minimum replicas"):
        REPLICAS.parse(raw)


@pytest.mark.parametrize("raw", [3.7, True])
def test_int_param_refuses_a_plain_value_it_would_silently_change(raw: Any) -> None:
    # "validated before anything runs": 3.7 replicas must not quietly become 3, nor True become 1.
    with pytest.raises(ParameterError, match=r"--to"):
        REPLICAS.parse(raw)


def test_value_outside_the_choices_is_refused_listing_them() -> None:
    with pytest.raises(ParameterError, match=r"--mode='heavy' must be one of light, full"):
        MODE.parse("heavy")


@pytest.mark.parametrize(("raw", "message"), [("0", r"--to='0' must be >= 1"), ("201", r"--to='201' must be <= 200")])
def test_value_past_its_bounds_is_refused_naming_the_bound(raw: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        REPLICAS.parse(raw)


def test_bounds_are_inclusive() -> None:
    assert REPLICAS.parse("1") == 1
    assert REPLICAS.parse("200") == 200


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e400", math.nan, math.inf])
def test_non_finite_float_is_refused_naming_the_flag(raw: Any) -> None:
    with pytest.raises(ParameterError, match=r"--headroom=.* must be a finite number"):
        RATIO.parse(raw)


def test_non_finite_float_is_refused_even_within_open_bounds() -> None:
    bounded = Param("headroom", "ratio", kind=float, minimum=1.0)
    with pytest.raises(ParameterError, match="finite"):
        bounded.parse("inf")


# --- Runbook.parse_params ---------------------------------------------------------------------


def _with_params() -> Runbook:
    return toy_runbook(setter("a", "a", to=3), params=(REPLICAS, RATIO, MODE))


def test_parse_params_refuses_an_unknown_parameter_naming_the_known_ones() -> None:
    with pytest.raises(ParameterError, match=r"unknown parameter --replicas; parameters: --headroom, --mode, --to"):
        _with_params().parse_params({"to": "3", "replicas": "9"})


def test_parse_params_of_a_runbook_without_parameters_says_none() -> None:
    with pytest.raises(ParameterError, match=r"unknown parameter --to; parameters: none"):
        toy_runbook(setter("a", "a", to=3)).parse_params({"to": "3"})


def test_parse_params_validates_every_parameter_and_fills_defaults() -> None:
    assert _with_params().parse_params({"to": "7"}) == {"to": 7, "headroom": 1.25, "mode": "full"}
    with pytest.raises(ParameterError, match="--to is required"):
        _with_params().parse_params({"mode": "light"})


# --- Gate.judge: fails closed -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, math.nan, math.inf, -math.inf, True, False, "0.2", []],
    ids=["none", "nan", "inf", "-inf", "true", "false", "text", "empty-list"],
)
def test_gate_without_a_measurement_is_inconclusive(value: Any) -> None:
    judgement = reads("p99", at_most=1.0).judge(_context(p99=value))
    assert judgement.verdict == "inconclusive"
    assert judgement.reason.startswith("p99:")


def test_gate_on_an_empty_result_is_inconclusive_and_keeps_the_query() -> None:
    empty = Gate("errors", lambda _: Reading(None, raw=[], query="rate(errors[1m])"), at_most=0.01)
    judgement = empty.judge(_context())
    assert judgement.verdict == "inconclusive"
    assert "rate(errors[1m])" in judgement.reason
    assert judgement.to_dict()["query"] == "rate(errors[1m])"
    assert judgement.to_dict()["raw"] == []


def test_gate_whose_probe_raises_is_inconclusive_with_the_error() -> None:
    def broken(_: Context) -> Reading:
        raise ConnectionError("prometheus: connection refused")

    judgement = Gate("p99", broken, at_most=1.0).judge(_context())
    assert judgement.verdict == "inconclusive"
    assert "connection refused" in judgement.reason


@pytest.mark.parametrize(
    ("gate", "value", "verdict"),
    [
        (reads("v", at_most=1.0), 1.5, "fail"),
        (reads("v", at_most=1.0), 1.0, "pass"),
        (reads("v", at_most=1.0), 0.2, "pass"),
        (reads("v", at_least=10), 9, "fail"),
        (reads("v", at_least=10), 10, "pass"),
        (reads("v", at_least=1, at_most=2), 2.5, "fail"),
        (reads("v", at_least=1, at_most=2), 0.5, "fail"),
        (reads("v", at_least=1, at_most=2), 1.5, "pass"),
    ],
)
def test_gate_judges_a_measurement_against_its_threshold(gate: Gate, value: float, verdict: str) -> None:
    judgement = gate.judge(_context(v=value))
    assert judgement.verdict == verdict
    assert judgement.reading is not None
    assert judgement.reading.value == value


def test_failed_gate_says_the_value_and_the_threshold() -> None:
    judgement = reads("p99", at_most=0.8).judge(_context(p99=2.5))
    assert judgement.reason == "p99: 2.5 > 0.8"
    assert judgement.to_dict() == {
        "threshold": "<= 0.8",
        "verdict": "fail",
        "reason": "p99: 2.5 > 0.8",
        "value": 2.5,
        "raw": {"samples": [2.5]},
        "query": "toy:p99",
    }


def test_gate_without_a_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="needs at_most or at_least"):
        Gate("p99", lambda _: Reading(0.1))


@pytest.mark.parametrize("bound", ["at_most", "at_least"])
def test_gate_with_a_nan_threshold_is_refused(bound: str) -> None:
    # A NaN threshold compares false with everything, so it would pass any reading: fail open.
    with pytest.raises(ValueError, match="p99"):
        Gate("p99", lambda _: Reading(0.1), **{bound: math.nan})


# --- Runbook declarations ---------------------------------------------------------------------


def test_destructive_step_without_a_trigger_is_refused() -> None:
    with pytest.raises(ValueError, match="destructive steps need a trigger"):
        Runbook(name="toy", summary="s", steps=(setter("drain", "a", to=0, destructive=True),))


def test_a_destructive_step_with_a_trigger_is_accepted_and_acts_only_while_the_trigger_holds(
    engine_for: EngineFactory, world: World
) -> None:
    runbook = toy_runbook(setter("drain", "c", to=0, destructive=True), trigger=reads("load", at_least=100))
    engine = engine_for(runbook)
    plan, approval = approved_plan(engine)
    world.values["load"] = 20.0  # the surge ended between the plan and the run
    stopped = engine.run(plan, approval)
    assert (stopped.status, world.calls("apply", "drain"), world.values["c"]) == ("stopped", 0, 1)

    world.values["load"] = 500.0
    acted = engine.run(*approved_plan(engine))
    assert (acted.status, world.calls("apply", "drain"), world.values["c"]) == ("succeeded", 1, 0)


def test_duplicate_step_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"step names must be unique, got \['a', 'a'\]"):
        toy_runbook(setter("a", "a", to=1), setter("a", "b", to="on"))
