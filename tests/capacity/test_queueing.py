"""The M/M/c model the capacity planner sizes with, against published values and its own laws."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capacity.queueing import SEED_UTILISATION, erlang_c, replicas_for, response_time_quantile, seed_replicas


@pytest.mark.parametrize(
    ("servers", "load", "published"),
    [
        # Wolfram Language, ErlangC[3, 2] (its documentation's basic example): 4/9.
        pytest.param(3, 2.0, 4 / 9, id="wolfram-3-servers-2-erlangs"),
        # 120 customers an hour, 3 minutes each, 10 assistants (a = 6): "about 0.10" from the Erlang C curve.
        pytest.param(10, 6.0, 0.10, id="textbook-10-servers-6-erlangs"),
        # M/M/1: the probability of waiting is the utilisation.
        pytest.param(1, 0.7, 0.7, id="mm1-is-rho"),
    ],
)
def test_erlang_c_matches_published_values(servers: int, load: float, published: float) -> None:
    assert erlang_c(servers, load) == pytest.approx(published, abs=0.005)


def test_erlang_c_stays_finite_for_thousands_of_servers() -> None:
    # The textbook sum of a^k / k! overflows a float long before 2000 servers.
    value = erlang_c(2000, 1950.0)
    assert 0 < value < 1


def test_mm1_response_time_quantile_is_the_exponential_one() -> None:
    # M/M/1: the sojourn time is exponential at mu - lambda, so its p99 is ln(100) / (mu - lambda).
    assert response_time_quantile(1, 30.0, 50.0) == pytest.approx(math.log(100) / 20, rel=1e-6)


def test_an_overloaded_pool_has_no_finite_tail() -> None:
    assert response_time_quantile(2, 100.0, 50.0) == math.inf


def test_an_slo_below_one_requests_own_service_time_is_refused_naming_the_floor() -> None:
    with pytest.raises(ValueError, match=r"below what a replica serving 50 requests/s takes on its own .*92 ms"):
        replicas_for(1000, 50.0, 0.05)


def test_the_sizing_meets_the_slo_and_one_replica_fewer_does_not() -> None:
    sizing = replicas_for(400.0, 50.6, 0.3)
    assert sizing.latency_quantile_seconds <= 0.3
    assert response_time_quantile(sizing.replicas - 1, 400.0, 50.6) > 0.3


def test_the_seeds_formula_runs_every_pool_at_0618() -> None:
    assert pytest.approx(0.618, abs=1e-3) == SEED_UTILISATION
    assert seed_replicas(618.0, 1.0) == 1000


rates = st.floats(min_value=1.0, max_value=20_000.0)
service = st.floats(min_value=5.0, max_value=200.0)


@settings(max_examples=150, deadline=None)
@given(rps=rates, more=st.floats(min_value=1.0, max_value=3.0), mu=service)
def test_more_load_never_needs_fewer_replicas(rps: float, more: float, mu: float) -> None:
    slo = 5.0 / mu  # above the floor (ln 100 / mu = 4.6 / mu) for every service rate drawn
    assert replicas_for(rps * more, mu, slo).replicas >= replicas_for(rps, mu, slo).replicas


@settings(max_examples=150, deadline=None)
@given(rps=rates, mu=service, slack=st.floats(min_value=1.1, max_value=20.0), tighter=st.floats(0.5, 1.0))
def test_a_tighter_slo_never_needs_fewer_replicas(rps: float, mu: float, slack: float, tighter: float) -> None:
    loose = slack * 4.7 / mu
    tight = max(loose * tighter, 4.7 / mu)
    assert replicas_for(rps, mu, tight).replicas >= replicas_for(rps, mu, loose).replicas
