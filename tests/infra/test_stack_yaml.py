"""Stack files read as the Pulumi CLI reads them (YAML 1.2), with duplicated keys refused."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml

from infra import stack_yaml

STACK = """\
config:
  aws:region: us-west-2
  peakguard:cluster:
    endpoint:
      publicAccess: yes
      privateAccess: true
    kubernetesVersion: "1.33"
  peakguard:tags:
    since: 2025-01-01
    window: 1:30
    code: 010
    hex: 0x1F
"""


def test_values_are_read_as_yaml_1_2_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(STACK)

    config = stack_yaml.load(path)["config"]

    endpoint = config["peakguard:cluster"]["endpoint"]
    assert endpoint == {"publicAccess": "yes", "privateAccess": True}  # YAML 1.1 made 'yes' a boolean
    assert config["peakguard:tags"] == {"since": "2025-01-01", "window": "1:30", "code": 10, "hex": 31}
    # What PyYAML's own loader made of the same file: a date (a traceback later), 90 and 8.
    legacy = yaml.safe_load(STACK)["config"]["peakguard:tags"]
    assert legacy["since"] == datetime.date(2025, 1, 1) and legacy["window"] == 90 and legacy["code"] == 8


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text("config:\n  peakguard:tags:\n    team: a\n    owner: b\n    team: c\n")

    with pytest.raises(stack_yaml.StackYamlError, match=r"Pulumi.prod.yaml: line 5: key 'team' is also set on line 3"):
        stack_yaml.load(path)


def test_the_real_stack_files_read_as_before(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    for env in ("dev", "staging", "prod"):
        path = root / f"Pulumi.{env}.yaml"
        assert stack_yaml.load(path) == yaml.safe_load(path.read_text()), env
