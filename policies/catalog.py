"""Every rule of the pack, by ID."""

from __future__ import annotations

from collections.abc import Mapping

from policies.findings import Rule
from policies.rules import availability, capacity, chaos, gpu_network, safe_change, security, serving

__all__ = ["RULES"]

RULES: Mapping[str, Rule] = {
    rule.id: rule
    for module in (gpu_network, availability, safe_change, capacity, serving, security, chaos)
    for rule in module.RULES
}
