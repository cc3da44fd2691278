"""The incident memory's index: one reviewed Markdown document per incident in `incidents/`, each
opening with a YAML front matter that says which alert signals it showed, so every alert can link to
the incidents that share its signals (infra/alerts.py) and a person paged by one reads what happened
the last time. Pulumi-free: the program, the lab and the drafting command read it alike.

A document's front matter:

    ---
    id: 2023-11-11-singles-day-surge         # the file's name without .md
    title: Singles' Day surge: replies from 200 ms to 12 s for five hours
    date: 2023-11-11
    status: reviewed                         # or draft: drafts are linked from no alert
    signals: [qps, p99 latency, OOM kills]   # among infra.alerts' signals
    runbooks: [emergency-stop]               # among infra.alerts.RUNBOOKS
    runs: []                                 # runbook run ids (the journals)
    ---

and its body has the sections in `SECTIONS`, in that order.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from infra.alerts import ALERTS, RUNBOOKS

__all__ = [
    "DEFAULT_FOLDER", "SECTIONS", "SIGNALS", "Incident", "IncidentError", "links_by_signal", "load", "parse", "sharing",
]  # fmt: skip

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "incidents"
"""The repository's `incidents/`."""
SIGNALS = tuple(dict.fromkeys(alert.signal for alert in ALERTS))
"""The signals an incident may name: those the alerts watch."""
SECTIONS = ("Signals", "Timeline", "Root cause", "Fix", "Runbook runs")
"""The body's `## ` sections, in order."""
_RUN_ID = re.compile(r"^(dev|staging|prod)-[a-z0-9-]+-\d{8}T\d{6}Z-[0-9a-f]{4}$")
_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)

Status = Literal["reviewed", "draft"]


class IncidentError(ValueError):
    """An incident document that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Incident:
    id: str
    title: str
    date: dt.date
    status: Status
    signals: tuple[str, ...]
    runbooks: tuple[str, ...]
    runs: tuple[str, ...]
    path: Path

    @property
    def link(self) -> str:
        """The document's path from the repository's root, as alerts link it."""
        return f"incidents/{self.path.name}"


def _list(raw: dict[str, Any], key: str, where: str, among: tuple[str, ...] | None = None) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise IncidentError(f"{where}: {key} must be a list of names, got {value!r}")
    if among is not None:
        unknown = [item for item in value if item not in among]
        if unknown:
            raise IncidentError(f"{where}: {key} {unknown} not among: {', '.join(among)}")
    return tuple(value)


def parse(path: Path) -> Incident:
    """One document, checked: its front matter's keys and values, and its sections."""
    text = path.read_text(encoding="utf-8")
    front = _FRONT.match(text)
    if front is None:
        raise IncidentError(f"{path}: no front matter: start the file with --- YAML --- (see infra/incident_index.py)")
    try:
        raw = yaml.safe_load(front[1])
    except yaml.YAMLError as exc:
        raise IncidentError(f"{path}: front matter is not YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise IncidentError(f"{path}: front matter must be a mapping")
    allowed = {"id", "title", "date", "status", "signals", "runbooks", "runs"}
    if extra := sorted(set(raw) - allowed):
        raise IncidentError(f"{path}: unknown front-matter keys {extra}; allowed: {', '.join(sorted(allowed))}")
    if raw.get("id") != path.stem:
        raise IncidentError(f"{path}: id {raw.get('id')!r} must be the file's name without .md ({path.stem!r})")
    if not isinstance(raw.get("title"), str) or not raw["title"].strip():
        raise IncidentError(f"{path}: title is missing")
    date = raw.get("date")
    if not isinstance(date, dt.date):
        raise IncidentError(f"{path}: date must be YYYY-MM-DD, got {date!r}")
    status = raw.get("status")
    if status not in ("reviewed", "draft"):
        raise IncidentError(f"{path}: status must be reviewed or draft, got {status!r}")
    runs = _list(raw, "runs", str(path))
    if bad := [run for run in runs if not _RUN_ID.match(run)]:
        raise IncidentError(f"{path}: runs {bad} are not run ids (<env>-<runbook>-<YYYYMMDDTHHMMSSZ>-<hex4>)")
    body = text[front.end() :]
    found = [line[3:].strip() for line in body.splitlines() if line.startswith("## ")]
    if found[: len(SECTIONS)] != list(SECTIONS):
        raise IncidentError(f"{path}: sections {found} must begin with {list(SECTIONS)}, in that order")
    return Incident(
        id=raw["id"], title=raw["title"].strip(), date=date, status=status,
        signals=_list(raw, "signals", str(path), SIGNALS), runbooks=_list(raw, "runbooks", str(path), RUNBOOKS),
        runs=runs, path=path,
    )  # fmt: skip


def load(folder: Path = DEFAULT_FOLDER) -> list[Incident]:
    """Every document in `folder`, oldest first; none if the folder does not exist."""
    if not folder.is_dir():
        return []
    return sorted((parse(path) for path in folder.glob("*.md") if path.name != "README.md"),
                  key=lambda incident: (incident.date, incident.id))  # fmt: skip


def sharing(incidents: list[Incident], signal: str) -> list[Incident]:
    """The reviewed incidents that showed `signal`: what an alert on it links to."""
    return [incident for incident in incidents if incident.status == "reviewed" and signal in incident.signals]


def links_by_signal(incidents: list[Incident]) -> dict[str, list[str]]:
    """Signal -> links of the reviewed incidents that showed it (what each alert annotates)."""
    return {signal: [i.link for i in sharing(incidents, signal)] for signal in SIGNALS if sharing(incidents, signal)}
