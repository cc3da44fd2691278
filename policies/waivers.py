"""Waivers, in code and reviewed like code: one rule on one resource, with an owner, a reason and
an expiry date. A waived finding is still listed, as `suppressed`; an expired waiver fails the check
until someone fixes the resource or renews the waiver in a reviewed change.

    Waiver(rule="SEC-005", resource="prod-eks", owner="platform-oncall@",
           reason="public endpoint until the VPN lands (INFRA-123)", expires=date(2026, 12, 31))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

__all__ = ["WAIVERS", "Waiver", "check_waivers"]


@dataclass(frozen=True)
class Waiver:
    rule: str
    """A rule ID (SEC-005), never a domain or a wildcard."""
    resource: str
    """The resource's logical name (`prod-eks`) or its full URN."""
    owner: str
    """Who answers for it: a person or a team alias."""
    reason: str
    """Why, and the ticket that removes it."""
    expires: date

    def matches(self, rule_id: str, name: str, urn: str) -> bool:
        return self.rule == rule_id and self.resource in (name, urn)

    def expired(self, today: date) -> bool:
        return today > self.expires


WAIVERS: tuple[Waiver, ...] = ()
"""The waivers in force. None today: every rule holds on every stack."""


def check_waivers(waivers: Iterable[Waiver], rule_ids: Iterable[str]) -> None:
    """Refuses a waiver that names no rule of the pack or says nobody owns it, naming the waiver."""
    known = set(rule_ids)
    for waiver in waivers:
        if waiver.rule not in known:
            raise ValueError(f"waiver {waiver}: no rule {waiver.rule!r}; rules: {', '.join(sorted(known))}")
        if not waiver.owner.strip() or not waiver.reason.strip() or not waiver.resource.strip():
            raise ValueError(f"waiver {waiver}: owner, reason and resource must all be given")
