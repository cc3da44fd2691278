"""The incident memory's index: the repository's documents check, and every alert links the
reviewed incidents that showed its signal (drafts are linked from none)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra import incident_index
from infra.alerts import ALERTS, alert_rules
from infra.incident_index import IncidentError, links_by_signal, load, parse
from infra.offline import OfflineRun

SEED = incident_index.DEFAULT_FOLDER / "2023-11-11-singles-day-surge.md"


def test_the_seed_incident_is_the_first_entry_and_checks() -> None:
    (first, *_) = load()
    assert first.path == SEED and first.status == "reviewed"
    assert {"qps", "p99 latency", "GPU memory", "OOM kills"} <= set(first.signals)
    assert first.runs == (), "it happened before peakguard: no run of ours belongs to it"


def test_each_alert_links_its_runbook_and_the_incidents_that_share_its_signal() -> None:
    rules = {
        r["alert"]: r["annotations"] for r in alert_rules("prod", "peakguard", 1.0, incidents=links_by_signal(load()))
    }

    assert rules["ModelServiceP99LatencyHigh"]["incidents"] == "incidents/2023-11-11-singles-day-surge.md"
    assert "incidents" not in rules["ModelServiceQueueDeep"], "queue depth was not among the seed's signals"
    for alert in ALERTS:
        source = rules[alert.name]["runbook_source"]
        assert (incident_index.DEFAULT_FOLDER.parent / source).is_file(), source


def test_the_program_annotates_the_prometheus_rules_it_deploys(runs: dict[str, OfflineRun]) -> None:
    (rule,) = runs["prod"].of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
    annotations = {r["alert"]: r["annotations"] for r in rule.inputs["spec"]["groups"][0]["rules"]}

    assert annotations["GpuMemoryNearlyFull"]["incidents"] == "incidents/2023-11-11-singles-day-surge.md"


def _copy(tmp_path: Path, edit: tuple[str, str]) -> Path:
    path = tmp_path / SEED.name
    shutil.copy(SEED, path)
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (("signals: [qps,", "signals: [qpss,"), r"signals \['qpss'\] not among: qps"),
    (("id: 2023-11-11-singles-day-surge", "id: singles-day"), "must be the file's name without .md"),
    (("## Root cause", "## Cause"), "sections .* must begin with"),
    (("status: reviewed", "status: done"), "status must be reviewed or draft"),
    (("runs: []", "runs: [yesterday]"), "are not run ids"),
    (("date: 2023-11-11", "date: 11 November"), "date must be YYYY-MM-DD"),
    (("runs: []", "runs: []\nowner: sre"), r"unknown front-matter keys \['owner'\]"),
])  # fmt: skip
def test_a_document_that_does_not_check_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = _copy(tmp_path, edit)

    with pytest.raises(IncidentError, match=message) as raised:
        parse(path)
    assert str(path) in str(raised.value)


def test_a_draft_is_linked_from_no_alert(tmp_path: Path) -> None:
    _copy(tmp_path, ("status: reviewed", "status: draft"))

    assert links_by_signal(load(tmp_path)) == {}
