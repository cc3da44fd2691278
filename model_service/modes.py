"""The service's operating mode, and where it comes from: a watched file and the admin API.

In Kubernetes the file is the mode ConfigMap mounted as a directory (never with `subPath`, which
never updates); the kubelet syncs it within a minute or so, so runbooks also push the same mode to
each pod's admin API for an immediate switch. Both paths go through `ModeStore.apply`, which
validates the whole mode and keeps the previous one if anything is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["MODE_FILE", "ModeError", "ModeStore", "OperatingMode", "Override"]

MODE_FILE = "mode.json"
"""The ConfigMap key, and so the file name inside the mounted directory."""

ModelName = Literal["full", "light"]
Precision = Literal["fp32", "int8"]

BATCH_FLOOR, BATCH_CEILING = 1, 256


class ModeError(ValueError):
    """A mode document is invalid; the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class OperatingMode:
    model: ModelName = "full"
    """Which model answers: the MoE `full` one, or the `light` fallback (about 76% fewer parameters)."""
    precision: Precision = "fp32"
    """`int8` trades about a point of accuracy for lower latency."""
    shedding: bool = False
    """Answer simple queries from the cached answer table and refuse what would miss its budget."""
    batch_min: int = 16
    """Smallest batch the batcher waits to fill (up to its short max wait)."""
    batch_max: int = 128
    """Largest batch; smaller when requests are long (the token budget)."""
    model_version: str = ""
    """Artifact version to serve; empty means whatever version the service started with."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, raw: Any, *, base: OperatingMode | None = None, source: str = "mode") -> OperatingMode:
        """Validate a (partial) mode document; fields it leaves out keep `base`'s values."""
        if not isinstance(raw, Mapping):
            raise ModeError(f"{source}: must be a JSON object, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModeError(f"{source}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
        merged = {**(base or cls()).to_dict(), **raw}
        checks: list[tuple[str, Callable[[Any], bool], str]] = [
            ("model", lambda v: v in ("full", "light"), "full or light"),
            ("precision", lambda v: v in ("fp32", "int8"), "fp32 or int8"),
            ("shedding", lambda v: isinstance(v, bool), "true or false"),
            ("batch_min", _batch_size, f"a whole number from {BATCH_FLOOR} to {BATCH_CEILING}"),
            ("batch_max", _batch_size, f"a whole number from {BATCH_FLOOR} to {BATCH_CEILING}"),
            ("model_version", _version_name, "empty or a version folder's name (letters, digits, . _ -), never a path"),
        ]
        for name, valid, allowed in checks:
            if not valid(merged[name]):
                raise ModeError(f"{source}: {name}={merged[name]!r} is invalid; must be {allowed}")
        if merged["batch_min"] > merged["batch_max"]:
            raise ModeError(f"{source}: batch_min={merged['batch_min']} exceeds batch_max={merged['batch_max']}")
        return cls(**merged)


def _version_name(value: Any) -> bool:
    # A name under the artifact root: no separator, no "..", so root / name never leaves the root.
    return isinstance(value, str) and (value == "" or (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value)
                                                       is not None and ".." not in value))  # fmt: skip


def _batch_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and BATCH_FLOOR <= value <= BATCH_CEILING


@dataclass(frozen=True)
class Override:
    """A temporary change on top of the configured mode (the circuit breaker's light fallback)."""

    model: ModelName
    reason: str


class ModeStore:
    """The current mode, its source and revision; thread-safe. Listeners hear every change."""

    def __init__(
        self, initial: OperatingMode | None = None, *, version_problem: Callable[[str], str | None] | None = None
    ) -> None:
        """`version_problem(name)`: why a mode may not name that model version (None: it may), e.g.
        that the artifact root has no such version; a mode naming it is refused like any invalid one."""
        self._version_problem = version_problem
        self._lock = threading.Lock()
        self._configured = initial or OperatingMode()
        self._override: Override | None = None
        self._source = "default"
        self._revision = 0
        self._last_error: str | None = None
        self._file_digest: str | None = None
        self._listeners: list[Callable[[OperatingMode], None]] = []

    @property
    def mode(self) -> OperatingMode:
        """What the service runs now: the configured mode with any override applied."""
        with self._lock:
            if self._override is None:
                return self._configured
            return dataclasses.replace(self._configured, model=self._override.model)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "configured": self._configured.to_dict(),
                "override": dataclasses.asdict(self._override) if self._override else None,
                "source": self._source,
                "revision": self._revision,
                "last_error": self._last_error,
            }

    def subscribe(self, listener: Callable[[OperatingMode], None]) -> None:
        self._listeners.append(listener)

    def apply(self, raw: Any, *, source: str) -> OperatingMode:
        """Validate and switch to a (partial) mode document; raises ModeError and keeps the old mode."""
        with self._lock:
            base = self._configured
        try:
            mode = OperatingMode.from_mapping(raw, base=base, source=source)
            # Only a change is checked: a version folder removed later must not block, say, shedding.
            changed_version = mode.model_version and mode.model_version != base.model_version
            problem = self._version_problem(mode.model_version) if self._version_problem and changed_version else None
            if problem:
                raise ModeError(f"{source}: {problem}")
        except ModeError as exc:
            with self._lock:
                self._last_error = str(exc)
            raise
        with self._lock:
            changed = mode != self._configured
            self._configured, self._source, self._last_error = mode, source, None
            self._revision += 1
        if changed:
            self._notify()
        return self.mode

    def set_override(self, override: Override | None) -> None:
        with self._lock:
            if override == self._override:
                return
            self._override = override
            self._revision += 1
        self._notify()

    def _notify(self) -> None:
        current = self.mode
        for listener in self._listeners:
            listener(current)

    def reload_file(self, path: Path) -> bool:
        """Apply the mode file if its content changed since the last read. Returns True on a change.

        Reads content, not timestamps: a ConfigMap update swaps a symlink, which a file's mtime
        does not always show. A missing file keeps the current mode (a pod may start before the
        ConfigMap exists); an invalid one is reported and ignored.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._file_digest:
            return False
        self._file_digest = digest
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            with self._lock:
                self._last_error = f"{path}: not JSON ({exc})"
            return False
        try:
            self.apply(raw, source=f"file {path}")
        except ModeError:
            return False
        return True
