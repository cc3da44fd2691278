"""Health gates read from the model-service pods' own metrics, shared by the runbooks.

They judge what clients see: answered latency (p99 against the SLO), server errors, and refusals
(sheds: 429/503 from admission control). Client errors are the callers' and count for nothing
(model_service/metrics.py owns that contract). A window lasts until it holds enough answers for
its p99 to mean something, and every reading reports the sample counts it was judged on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from runbooks.engine.spec import Context, Gate, Reading
from runbooks.ports import Ports
from runbooks.ports.service import MIN_ANSWERS, Window

__all__ = ["ERROR_BUDGET", "REFUSAL_BUDGET", "ServiceMode", "ports_of", "signals", "within_slo", "within_slo_of"]

ERROR_BUDGET = 0.01
"""Share of responses that may be server errors while the service counts as recovered (the
error-rate alert's threshold)."""
ServiceMode = Literal["normal", "degraded"]
REFUSAL_BUDGET: dict[ServiceMode, float] = {"normal": 0.01, "degraded": 0.05}
"""Share of responses the service may refuse (shed) and still count as recovered, per operating
mode. In normal mode nearly nothing. Degraded (light model, INT8, simple queries answered from
the table) is how an 8x surge is met, and admission may still refuse a little while new replicas
warm up: 5%, the shed-rate alert's threshold. A third of clients refused is never 'recovered'."""


def ports_of(context: Context) -> Ports:
    ports = context.ports
    assert isinstance(ports, Ports)
    return ports


def signals(window: Window, *, slo_seconds: float, refusal_budget: float) -> dict[str, float] | None:
    """Each health signal of a window as a share of its limit (1.0 = at the limit); None when the
    window has no responses, or too few answers for a p99 (a verdict on it would be noise) while
    nothing else is over its limit.

    A window with too few answers for a p99 is still judged on its server errors and refusals when
    it counted enough responses (MIN_ANSWERS) and one of them is over its limit: an overloaded
    service refusing most requests answers few of them, and that is a breach, not a lack of data."""
    errors, refused = window.error_rate, window.shed_rate
    if errors is None or refused is None:
        return None
    shares = {"serverErrors": errors / ERROR_BUDGET, "refusals": refused / refusal_budget}
    p99 = window.quantile(0.99)
    if p99 is not None and window.p99_resolved:
        return {"latency": p99 / slo_seconds, **shares}
    if window.requests >= MIN_ANSWERS and max(shares.values()) > 1.0:
        return shares
    return None


def within_slo(mode: ServiceMode) -> Gate:
    """Served within the SLO as clients see it: max of p99/SLO, server errors/1%, refusals/budget."""
    budget = REFUSAL_BUDGET[mode]
    return Gate(f"service within SLO ({mode} mode)", _judged(budget), at_most=1.0)


def within_slo_of(param: str) -> Gate:
    """As `within_slo`, in the mode a runbook parameter names (`normal` or `degraded`) at run time."""

    def probe(context: Context) -> Reading:
        mode: ServiceMode = context.params[param]
        return _judged(REFUSAL_BUDGET[mode])(context)

    return Gate(f"service within SLO (the --{param} mode)", probe, at_most=1.0)


def _judged(refusal_budget: float) -> Callable[[Context], Reading]:
    def probe(context: Context) -> Reading:
        ports = ports_of(context)
        window = ports.traffic(fresh=True)
        slo = ports.model_service.slo_p99_ms / 1000
        found = signals(window, slo_seconds=slo, refusal_budget=refusal_budget)
        raw: dict[str, Any] = {**window.summary(), "sloSeconds": slo, "refusalBudget": refusal_budget}
        query = f"max(p99/SLO, server errors/{ERROR_BUDGET:.0%}, refusals/{refusal_budget:.0%}) over the pods' metrics"
        if found is None:
            raw["why"] = f"{window.answered:g} answers in {window.seconds:.1f} s; a p99 needs {MIN_ANSWERS}"
            return Reading(None, raw=raw, query=query)
        raw.update({key: round(value, 4) for key, value in found.items()})
        if "latency" in found:
            raw["p99Seconds"] = round(window.quantile(0.99) or 0.0, 4)
        else:
            raw["why"] = f"{window.answered:g} answers are too few for a p99; judged on errors and refusals"
        return Reading(max(found.values()), raw=raw, query=query)

    return probe
