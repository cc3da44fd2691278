"""Enforcement per rule, from a policy config in the format `pulumi preview --policy-pack-config`
takes, so one file serves the CLI and the offline check:

    {"all": "mandatory", "sec-005-control-plane-private-in-prod": "advisory",
     "serv-002-image-pinned": {"enforcementLevel": "disabled"}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from policies.findings import Rule

__all__ = ["Level", "levels_from_config", "load_policy_config"]

Level = Literal["mandatory", "advisory", "disabled"]
_LEVELS = ("mandatory", "advisory", "disabled", "remediate")


def _level(key: str, value: Any) -> Level:
    level = value.get("enforcementLevel") if isinstance(value, dict) else value
    if level not in _LEVELS:
        raise ValueError(f"policy config {key!r}: enforcement level {level!r} is not one of {', '.join(_LEVELS)}")
    # The pack has no remediations; the engine treats a remediation that still violates as mandatory.
    return "mandatory" if level == "remediate" else level


def levels_from_config(config: Mapping[str, Any], rules: Mapping[str, Rule]) -> dict[str, Level]:
    """Rule ID -> enforcement level: each rule's own default, then `all`, then its own key."""
    by_policy = {rule.policy_name: rule for rule in rules.values()}
    unknown = sorted(set(config) - set(by_policy) - {"all"})
    if unknown:
        raise ValueError(
            f"policy config names no policy of the pack: {', '.join(unknown)}; policies: {', '.join(sorted(by_policy))}"
        )
    levels: dict[str, Level] = {rule.id: rule.severity for rule in rules.values()}
    if "all" in config:
        levels = dict.fromkeys(levels, _level("all", config["all"]))
    for name, value in config.items():
        if name != "all":
            levels[by_policy[name].id] = _level(name, value)
    return levels


def load_policy_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the policy config ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a policy config is a JSON object of policy name -> enforcement level")
    return config
