"""Health gates read from the model-service pods' own metrics, shared by the runbooks."""

from __future__ import annotations

from runbooks.ports import Ports
from runbooks.spec import Context, Reading

__all__ = ["ERROR_BUDGET", "SHED_BUDGET", "ports_of", "pressure", "recovered"]

ERROR_BUDGET = 0.01
"""Share of failed requests the service may have and still count as recovered."""
SHED_BUDGET = 0.05
"""Share of requests refused by admission that by itself means capacity is short."""


def ports_of(context: Context) -> Ports:
    ports = context.ports
    assert isinstance(ports, Ports)
    return ports


def pressure(context: Context) -> Reading:
    """How far past its SLO the service is: max of p99/SLO, errors/1%, sheds/5% (1.0 = at the limit)."""
    ports = ports_of(context)
    window = ports.traffic(fresh=True)
    slo = ports.model_service.slo_p99_ms / 1000
    p99 = window.quantile(0.99)
    error_rate = window.error_rate
    if p99 is None or error_rate is None:
        return Reading(None, raw={"requests": window.requests}, query="no requests in the window")
    shed_rate = window.shed / window.requests
    value = max(p99 / slo, error_rate / ERROR_BUDGET, shed_rate / SHED_BUDGET)
    raw = {"p99": round(p99, 4), "sloSeconds": slo, "errorRate": round(error_rate, 5), "shedRate": round(shed_rate, 5),
           "requests": window.requests, "seconds": round(window.seconds, 2)}  # fmt: skip
    return Reading(value, raw=raw, query="max(p99/SLO, errors/1%, shed/5%) over the pods' metrics")


def recovered(context: Context) -> Reading:
    """Served within the SLO: max of p99/SLO and errors/1% (sheds are expected while shedding)."""
    ports = ports_of(context)
    window = ports.traffic(fresh=True)
    slo = ports.model_service.slo_p99_ms / 1000
    p99, error_rate = window.quantile(0.99), window.error_rate
    if p99 is None or error_rate is None:
        return Reading(None, raw={"requests": window.requests}, query="no answered requests in the window")
    raw = {"p99": round(p99, 4), "sloSeconds": slo, "errorRate": round(error_rate, 5), "requests": window.requests}
    return Reading(max(p99 / slo, error_rate / ERROR_BUDGET), raw=raw, query="max(p99/SLO, errors/1%)")
