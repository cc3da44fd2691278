"""The playbooks as files: Ansible parses them, ansible-lint passes them, their facts are infra's.

`ansible-playbook --syntax-check` and `ansible-lint` (production profile, config in
playbooks/.ansible-lint) run on the committed playbooks/ directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from infra.facts import INSTANCE_TYPES
from playbooks import instance_types

from .conftest import PLAYBOOKS, REPO, VENV_BIN, tool_env

PLAYBOOK_FILES = [
    "node_preflight.yml",
    "nvme_raid0.yml",
    "mig_configure.yml",
    "gpu_driver_upgrade.yml",
    "gds_setup.yml",
]


def test_every_playbook_is_there_and_parses() -> None:
    assert sorted(p.name for p in (PLAYBOOKS / "project").glob("*.yml")) == sorted(PLAYBOOK_FILES)
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "--syntax-check", *PLAYBOOK_FILES],
        cwd=PLAYBOOKS / "project",
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_passes_with_the_production_profile() -> None:
    config = yaml.safe_load((PLAYBOOKS / ".ansible-lint").read_text())
    assert config["profile"] == "production"
    result = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--nocolor"],
        cwd=PLAYBOOKS,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output


def test_the_instance_types_vars_file_is_what_infra_facts_gives() -> None:
    committed = instance_types.VARS_FILE.read_text()
    assert committed == instance_types.render(), (
        f"{instance_types.VARS_FILE.relative_to(REPO)} is stale against infra/facts.py; "
        f"regenerate it: {instance_types.REGENERATE}"
    )
    table = yaml.safe_load(committed)["peakguard_instance_types"]
    assert list(table) == list(INSTANCE_TYPES)
    for name, facts in INSTANCE_TYPES.items():
        assert table[name] == {
            "gpus": facts.gpus,
            "gpu_model": facts.gpu_model,
            "efa_interfaces": facts.efa_interface_count,
            "nvme_volumes": facts.nvme_volumes,
            "nvme_volume_gb": facts.nvme_volume_gb,
            "mig_profiles": list(facts.mig_profiles),
        }


def test_the_generator_check_mode_flags_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert instance_types.main(["--check"]) == 0
    stale = tmp_path / "instance_types.yml"
    stale.write_text(instance_types.render().replace("gpus: 8", "gpus: 7", 1))
    monkeypatch.setattr(instance_types, "VARS_FILE", stale)
    assert instance_types.main(["--check"]) == 1
    assert instance_types.main([]) == 0
    assert stale.read_text() == instance_types.render()


@pytest.mark.parametrize("script", ["node_preflight.sh", "nvme_raid0.sh"])
def test_the_node_scripts_are_infras_own_files_not_copies(script: str) -> None:
    shipped = PLAYBOOKS / "project" / "files" / script
    assert shipped.is_symlink()
    assert shipped.resolve() == REPO / "infra" / "node_scripts" / script
