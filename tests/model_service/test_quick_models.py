"""The quick models (model_service/quick_models.py), built once for this file from the real data
(about a minute on 2 idle cores, nearer 2 while another test file shares them), then loaded by
the real runtime and served over real HTTP, judged on banking77's test split, and reused from cache."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from model_service import quick_models
from model_service.artifacts import newest_version
from model_service.datasets import load_banking77, load_clinc_out_of_scope
from model_service.modes import OperatingMode
from model_service.quick_models import RECORD, prepare, summary
from model_service.runtime import ModelRuntime
from model_service.server import ServiceSettings
from peakguard.cli import main
from tests.model_service.conftest import ask, serving, write_tiny_artifacts

# The first test pays for the module's build (and the service's load) inside its own timeout.
pytestmark = pytest.mark.timeout(600)

GOAL_SECONDS = 120.0
"""The issue's goal: servable models within 2 minutes on 2 cores."""

FULL_FLOOR, LIGHT_FLOOR = 0.90, 0.87
"""Test accuracy floors. Full: above the TF-IDF + logistic regression baseline on the same split
(89.42%, README), which a head on a pretrained encoder must beat to be worth serving; measured
92.0%. Light: 2 points under its measured 89.1%, and 3 points over what the same head reaches
with 40 training queries an intent (86%), so a recipe that silently dropped most of the data fails."""


@dataclass(frozen=True)
class Prepared:
    root: Path
    cache: Path
    seconds: float
    cpu_seconds: float


@pytest.fixture(scope="module")
def prepared(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    cache = tmp_path_factory.mktemp("quick-cache")
    wall, cpu = time.perf_counter(), time.process_time()
    root = prepare(data_dir, cache, log=lambda line: print(line, flush=True))
    return Prepared(root, cache, time.perf_counter() - wall, time.process_time() - cpu)


@pytest.fixture(scope="module")
def runtime(prepared: Prepared) -> ModelRuntime:
    loaded = ModelRuntime(prepared.root, newest_version(prepared.root), device="cpu")
    loaded.warm_up()
    return loaded


def _cards(root: Path) -> dict[str, dict[str, Any]]:
    folder = root / newest_version(root)
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in ("full", "light")}


def _sample(population: int, count: int, *, seed: int) -> list[int]:
    return random.Random(seed).sample(range(population), count)  # noqa: S311 (a fixed sample, not a secret)


def _answers(runtime: ModelRuntime, texts: list[str], model: str) -> list[Any]:
    mode = OperatingMode(model=model)  # type: ignore[arg-type]
    answers = []
    for start in range(0, len(texts), 64):
        predictions, _ = runtime.infer([runtime.encoder.ids(t) for t in texts[start : start + 64]], mode)
        answers += predictions
    return answers


def test_prepare_meets_the_two_minute_goal(prepared: Prepared) -> None:
    print(f"quick models prepared in {prepared.seconds:.1f} s wall, {prepared.cpu_seconds:.1f} s CPU (goal 120 s)")
    # The work fits 2 cores for 2 minutes; the wall clock gets twice that, as `make test` runs two
    # test files side by side on the 2 cores (alone, the build took about 60 s).
    assert prepared.cpu_seconds <= 2 * GOAL_SECONDS, f"{prepared.cpu_seconds:.0f} CPU-s: more than 2 cores do in 2 min"
    assert prepared.seconds <= 2 * GOAL_SECONDS, f"{prepared.seconds:.0f} s even allowing for a shared machine"


def test_the_cards_say_quick_and_the_summary_gives_accuracy(prepared: Prepared) -> None:
    cards = _cards(prepared.root)
    record = json.loads((prepared.root / RECORD).read_text())

    for name, card in cards.items():
        assert card["training"]["recipe"] == "quick", name
        assert "head only" in card["training"]["trained"], name
        assert "100 full-batch AdamW steps" in card["training"]["trained"], name
        assert card["metrics"]["test_queries"] == 3080
        assert card["metrics"]["test_accuracy_int8_queries"] == 500
    assert cards["full"]["config"]["num_experts"] == 8 and cards["light"]["config"]["num_experts"] == 0
    assert record["recipe_version"] == quick_models.RECIPE_VERSION
    assert set(record["data_sha256"]) == set(quick_models.DATA_FILES)
    line = summary(prepared.root)
    print(line)
    assert "\n" not in line
    for name, card in cards.items():
        assert f"{name}: quick head on MiniLM" in line
        assert f"{100 * card['metrics']['test_accuracy']:.1f}% on 3080 test queries" in line


def test_the_version_serves_in_the_real_runtime_at_the_accuracy_its_cards_claim(
    prepared: Prepared, runtime: ModelRuntime, data_dir: Path
) -> None:
    cards = _cards(prepared.root)
    test = load_banking77(data_dir / "banking77").test
    rows = _sample(len(test), 256, seed=5)
    texts, labels = [test.texts[i] for i in rows], [runtime.card("full").intents[test.labels[i]] for i in rows]

    for name, floor in (("full", FULL_FLOOR), ("light", LIGHT_FLOOR)):
        claimed = cards[name]["metrics"]["test_accuracy"]
        # Served answers count as right only when not handed over, as the card's "with hand-over" figure does.
        answered_right = cards[name]["metrics"]["test_accuracy_with_handover"]
        served = _answers(runtime, texts, name)
        measured = sum(a.intent == label for a, label in zip(served, labels, strict=True)) / len(texts)
        print(
            f"{name}: card {claimed:.4f} ({answered_right:.4f} with hand-over) on 3080 test queries; "
            f"served {measured:.4f} on 256"
        )
        assert claimed >= floor, f"{name} test accuracy {claimed:.4f} under its floor {floor}"
        # A fixed sample of 256: a few points of sampling error, never flaky (the models are deterministic).
        assert measured >= answered_right - 0.05, f"{name}: served {measured:.4f}, the card claims {answered_right:.4f}"


def test_in_scope_queries_are_mostly_answered_and_out_of_scope_ones_handed_over_more(
    runtime: ModelRuntime, data_dir: Path
) -> None:
    test = load_banking77(data_dir / "banking77").test
    in_scope = [test.texts[i] for i in _sample(len(test), 256, seed=6)]
    out_of_scope = list(load_clinc_out_of_scope(data_dir / "clinc150")[1][:256])

    for name in ("full", "light"):
        handed = sum(a.handover for a in _answers(runtime, in_scope, name)) / len(in_scope)
        oos = sum(a.handover for a in _answers(runtime, out_of_scope, name)) / len(out_of_scope)
        print(f"{name}: handed over {handed:.1%} of in-scope and {oos:.1%} of out-of-scope queries")
        assert handed <= 0.10, f"{name} hands over {handed:.1%} of ordinary banking queries"
        assert oos > 2 * handed, f"{name}: out-of-scope {oos:.1%} is handed over no more than in-scope {handed:.1%}"


def test_the_answer_table_remembers_repeated_ordinary_queries_while_shedding(
    prepared: Prepared, data_dir: Path
) -> None:
    test = load_banking77(data_dir / "banking77").test
    texts = [test.texts[i] for i in _sample(len(test), 48, seed=7)]
    settings = ServiceSettings(
        artifacts=prepared.root, device="cpu", initial_mode=OperatingMode(shedding=True, batch_min=1)
    )

    with serving(settings) as service, service.client() as client:
        first = [ask(client, text).json() for text in texts]
        second = [ask(client, text).json() for text in texts]

    assert all(answer["served_by"] == "model" for answer in first)
    cached = [(a, b) for a, b in zip(first, second, strict=True) if b["served_by"] == "cache"]
    share = len(cached) / len(texts)
    print(f"answer table: {len(cached)} of {len(texts)} repeats ({share:.0%}) served from it")
    # Measured 58%: the table keeps answers of >= 0.9 confidence to queries of <= 12 words (75%
    # of banking77's test queries), and the quick models are that sure of about 3 in 4 answers.
    assert share >= 0.35
    assert all(a["intent"] == b["intent"] for a, b in cached)


def test_a_second_prepare_reuses_the_folder_in_seconds(prepared: Prepared, data_dir: Path) -> None:
    lines: list[str] = []
    started = time.perf_counter()
    root = prepare(data_dir, prepared.cache, log=lines.append)
    seconds = time.perf_counter() - started

    print(f"cache hit in {seconds:.2f} s")
    assert root == prepared.root
    assert seconds < 5.0
    assert any(line.startswith("reusing") for line in lines), lines
    assert [p.name for p in prepared.cache.iterdir()] == [prepared.root.name]


def test_the_cli_prints_the_summary_and_the_time(
    prepared: Prepared, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--quick", "--data", str(data_dir), "--out", str(prepared.cache)])

    out = capsys.readouterr().out
    assert code == 0, out
    assert summary(prepared.root) in out
    assert f"peakguard serve --artifacts {prepared.root}" in out and "took " in out


def test_the_cli_refuses_options_the_quick_recipe_does_not_take(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--quick", "--epochs-full", "1", "--data", str(data_dir), "--out", str(tmp_path)])

    assert code == 2
    assert "--epochs-full does not apply to --quick" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --- the cache's safety, with the expensive build faked at its seam --------------------------


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the minute-long build with tiny models; yields the roots it was asked to build into."""
    calls: list[Path] = []

    def build(_data_dir: Path, root: Path, **_: object) -> dict[str, Any]:
        calls.append(root)
        write_tiny_artifacts(root, "v-rebuilt")
        return {"version": "v-rebuilt"}

    monkeypatch.setattr(quick_models, "_build", build)
    return calls


def _damaged_copy(prepared: Prepared, cache: Path, damage: str) -> Path:
    """A copy of the prepared folder (hard links: no 350 MB copied) with one kind of damage."""
    copy = cache / prepared.root.name
    shutil.copytree(prepared.root, copy, copy_function=os.link)
    folder = copy / newest_version(copy)
    if damage == "weights":
        data = (folder / "light.safetensors").read_bytes()
        (folder / "light.safetensors").unlink()  # a new file: the linked original stays intact
        (folder / "light.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "no record":
        (copy / RECORD).unlink()
    elif damage == "no manifest":
        (folder / "manifest.json").unlink()
    elif damage == "other key":
        record = json.loads((copy / RECORD).read_text())
        (copy / RECORD).unlink()
        (copy / RECORD).write_text(json.dumps(record | {"key": "0" * 64}))
    return copy


@pytest.mark.parametrize("damage", ["weights", "no record", "no manifest", "other key"])
def test_a_damaged_or_partial_cache_folder_is_rebuilt_not_used(
    prepared: Prepared, data_dir: Path, tmp_path: Path, fake_build: list[Path], damage: str
) -> None:
    damaged = _damaged_copy(prepared, tmp_path, damage)
    lines: list[str] = []

    root = prepare(data_dir, tmp_path, log=lines.append)

    assert root == damaged and len(fake_build) == 1, lines
    assert any(line.startswith(f"not reusing {damaged}") for line in lines), lines
    assert json.loads((root / RECORD).read_text())["version"] == "v-rebuilt"
    assert [p.name for p in tmp_path.iterdir()] == [root.name]
    assert prepare(data_dir, tmp_path, log=lines.append) == root and len(fake_build) == 1


def test_an_interrupted_build_leaves_no_folder_behind(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_mid_build: list[str] = []

    def interrupted(_data_dir: Path, root: Path, **_: object) -> dict[str, Any]:
        write_tiny_artifacts(root, "v-half")
        seen_mid_build.extend(path.name for path in tmp_path.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(quick_models, "_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(data_dir, tmp_path, log=lambda _: None)

    # Mid-build only a hidden staging folder exists, so even a kill -9 there leaves nothing that
    # prepare() would take for a cache folder; an interruption it sees removes even that.
    assert seen_mid_build and all(name.startswith(".quick-") for name in seen_mid_build), seen_mid_build
    assert list(tmp_path.iterdir()) == []
