"""Stack files (`Pulumi.<env>.yaml`) read as the Pulumi CLI reads them, and strictly.

The CLI parses stack files with a YAML 1.2 parser; PyYAML speaks YAML 1.1, where `yes`, `on` and
`off` are booleans, `2025-01-01` is a date and `1:30` is the number 90. The offline preview and the
policy check read the same files, so they must read the same values: here `yes` stays the string
'yes' (which the config loader then refuses for a flag, as `pulumi up` would), dates and `1:30`
stay text, and only YAML 1.2's `true`/`false` are booleans. A key written twice in one mapping is
refused with both lines (PyYAML and the CLI both keep the last one silently).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["StackYamlError", "load"]


class StackYamlError(ValueError):
    """The file is not YAML, or not YAML a stack file may be (a duplicated key)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's core schema for booleans and integers, no timestamps, and no
    duplicated keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise StackYamlError(
                    f"line {line}: key {key!r} is also set on line {seen[key]} of the same mapping; "
                    "keep one (YAML keeps the last without a word)"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


# Drop YAML 1.1's implicit booleans, integers (octal 010, sexagesimal 1:30) and timestamps...
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}  # fmt: skip
# ...and resolve YAML 1.2's core schema instead.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)


def _int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text, 10)  # YAML 1.2: a leading zero is decimal, not octal


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _int)


def load(path: Path) -> Any:
    """The document in `path`, as the Pulumi CLI would read it; StackYamlError naming the problem."""
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except StackYamlError as exc:
        raise StackYamlError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise StackYamlError(f"{path}: not valid YAML ({exc})") from None
