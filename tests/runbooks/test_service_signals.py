"""The health signals every runbook gate judges: p99 only on enough answers, and a window too thin
for a p99 still judged on the errors and refusals it counted when those already break their limits."""

from __future__ import annotations

import math

import pytest

from runbooks.library.service_gates import signals
from runbooks.ports.service import MIN_ANSWERS, Window


def _window(*, answered: float, shed: float = 0, errors: float = 0, slow: float = 0) -> Window:
    """`answered` answers, `slow` of them over 1 s (the SLO), the rest under 0.1 s."""
    requests = answered + shed + errors
    buckets = {0.1: answered - slow, 1.0: answered - slow, 2.5: answered, math.inf: answered}
    return Window(seconds=5.0, requests=requests, answered=answered, shed=shed, server_errors=errors,
                  client_errors=0, buckets=buckets)  # fmt: skip


def test_a_resolved_window_is_judged_on_all_three() -> None:
    found = signals(_window(answered=200, slow=10), slo_seconds=1.0, refusal_budget=0.01)

    assert found is not None and set(found) == {"latency", "serverErrors", "refusals"}
    assert found["latency"] > 1.0, "5% of answers over the SLO: p99 is over it"


def test_a_service_refusing_most_requests_is_a_breach_not_a_lack_of_data() -> None:
    window = _window(answered=58, shed=279)  # what the chaos drill's slowed pods did

    found = signals(window, slo_seconds=1.0, refusal_budget=0.01)

    assert found is not None and "latency" not in found
    assert found["refusals"] == pytest.approx(279 / 337 / 0.01)


@pytest.mark.parametrize("window", [
    _window(answered=58),  # too few answers, nothing else wrong: no verdict
    _window(answered=20, shed=30),  # shares over their limits, but on too few responses
    Window(seconds=1.0, requests=0, answered=0, shed=0, server_errors=0, client_errors=0, buckets={}),
])  # fmt: skip
def test_too_little_to_judge_is_no_verdict(window: Window) -> None:
    assert window.requests < MIN_ANSWERS or window.shed == 0
    assert signals(window, slo_seconds=1.0, refusal_budget=0.01) is None
