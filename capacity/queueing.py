"""M/M/c: replicas as servers, requests as Poisson arrivals, exponential service times.

Why this model and where it is rough: each replica is one server whose service rate is the
request rate it sustains on its own (`peakguard bench model`'s sustainable rate, or the operator's
figure); requests wait in one queue in front of all replicas, which the least-outstanding-requests
balancer approximates. A batching server is not exponential (a batch's requests leave together),
so the tail here is an estimate to size from, with headroom on top, not a promise.

The seed's formula, lambda = N/T * 1/(1 + rho), is kept beside it (`seed_replicas`): solved for its
own rho it fixes every pool at the same utilisation, 0.618, whatever its size and SLO. M/M/c lets a
large pool run hotter within the same tail (many servers share one queue) and makes a small pool or
a tight SLO run cooler; the two meet only by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SEED_UTILISATION", "Sizing", "erlang_c", "replicas_for", "response_time_quantile", "seed_replicas"]

SEED_UTILISATION = (math.sqrt(5) - 1) / 2
"""rho in lambda = N/T / (1 + rho) when rho is the utilisation that rate itself causes (rho = lambda T / N):
(T/N) lambda^2 + lambda - N/T = 0, so lambda = 0.618 N/T."""


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits, for `servers` servers and `offered_load` = lambda/mu erlangs.

    Through Erlang B's recursion (B(k) = a B(k-1) / (k + a B(k-1))), which stays finite for thousands
    of servers where the textbook sum of a^k/k! overflows."""
    if servers < 1:
        raise ValueError(f"servers must be at least 1, got {servers}")
    if offered_load < 0:
        raise ValueError(f"offered load must be >= 0, got {offered_load}")
    if offered_load >= servers:
        return 1.0  # unstable: every arrival waits, and the queue grows without end
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    utilisation = offered_load / servers
    return blocking / (1 - utilisation * (1 - blocking))


def _sojourn_exceeds(t: float, servers: int, arrival_rate: float, service_rate: float, waits: float) -> float:
    """P(T > t) for T = W + S: W is 0 with probability 1 - C, else exponential at c mu - lambda."""
    drain = servers * service_rate - arrival_rate
    if math.isclose(drain, service_rate):
        queued = math.exp(-service_rate * t) * (1 + service_rate * t)
    else:
        queued = (drain * math.exp(-service_rate * t) - service_rate * math.exp(-drain * t)) / (drain - service_rate)
    return (1 - waits) * math.exp(-service_rate * t) + waits * queued


def response_time_quantile(servers: int, arrival_rate: float, service_rate: float, quantile: float = 0.99) -> float:
    """Seconds within which `quantile` of requests are answered (waiting plus service); inf when
    the servers cannot keep up."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if service_rate <= 0 or arrival_rate < 0:
        raise ValueError(f"rates must be positive: arrival {arrival_rate}, service {service_rate}")
    if arrival_rate >= servers * service_rate:
        return math.inf
    waits = erlang_c(servers, arrival_rate / service_rate)
    tail = 1 - quantile
    low, high = 0.0, 1.0 / service_rate
    while _sojourn_exceeds(high, servers, arrival_rate, service_rate, waits) > tail:
        high *= 2
    for _ in range(200):  # P(T > t) falls with t: bisection to well below a microsecond
        middle = (low + high) / 2
        if _sojourn_exceeds(middle, servers, arrival_rate, service_rate, waits) > tail:
            low = middle
        else:
            high = middle
    return high


@dataclass(frozen=True)
class Sizing:
    replicas: int
    """The fewest replicas whose modelled quantile is within the SLO (no headroom)."""
    utilisation: float
    latency_quantile_seconds: float
    """The modelled quantile at that many replicas."""
    wait_probability: float


def replicas_for(arrival_rate: float, service_rate: float, slo_seconds: float, quantile: float = 0.99) -> Sizing:
    """The fewest replicas that answer `quantile` of `arrival_rate` requests/s within `slo_seconds`.

    Raises ValueError, naming the floor, when the SLO is below what one request's own service time
    takes at that quantile: no number of replicas can meet it."""
    if arrival_rate <= 0:
        raise ValueError(f"the request rate must be positive, got {arrival_rate}")
    floor = -math.log(1 - quantile) / service_rate
    if slo_seconds <= floor:
        raise ValueError(
            f"a p{quantile * 100:g} of {slo_seconds * 1000:g} ms is below what a replica serving {service_rate:g} "
            f"requests/s takes on its own at that quantile ({floor * 1000:.0f} ms): no number of replicas meets it; "
            "raise the SLO or make the replica faster"
        )
    low = math.floor(arrival_rate / service_rate) + 1  # the fewest that keep up at all
    high = low
    while response_time_quantile(high, arrival_rate, service_rate, quantile) > slo_seconds:
        high *= 2
    while low < high:  # the quantile falls as replicas are added: binary search
        middle = (low + high) // 2
        if response_time_quantile(middle, arrival_rate, service_rate, quantile) <= slo_seconds:
            high = middle
        else:
            low = middle + 1
    return Sizing(
        replicas=high,
        utilisation=arrival_rate / (high * service_rate),
        latency_quantile_seconds=response_time_quantile(high, arrival_rate, service_rate, quantile),
        wait_probability=erlang_c(high, arrival_rate / service_rate),
    )


def seed_replicas(arrival_rate: float, service_rate: float) -> int:
    """N from the seed's lambda = N/T * 1/(1 + rho) at its own rho (0.618): N = 1.618 lambda T."""
    return math.ceil(arrival_rate / (service_rate * SEED_UTILISATION))
