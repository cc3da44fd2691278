"""The public intent data sets the model trains and is judged on, read from wherever the user keeps them.

banking77 (PolyAI, CC BY 4.0): `train.csv` and `test.csv` with columns `text,category`.
CLINC150 (Larson et al. 2019, CC BY 3.0): `data_full.json`, whose `oos_val` / `oos_test` hold
out-of-scope queries that must be handed to a human, never answered with a confident intent.
The project does not ship them: see the README for where to download them.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DatasetError", "IntentData", "Split", "load_banking77", "load_clinc_out_of_scope"]

BANKING77_URL = "https://github.com/PolyAI-LDN/task-specific-datasets/tree/master/banking_data"
CLINC150_URL = "https://github.com/clinc/oos-eval/blob/master/data/data_full.json"


class DatasetError(ValueError):
    """A data file is missing or not in the expected shape; the message names the file and the fix."""


@dataclass(frozen=True)
class Split:
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    """Indices into `IntentData.intents`."""

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class IntentData:
    intents: tuple[str, ...]
    """Label names, sorted; a label is its index here."""
    train: Split
    validation: Split
    """Held out of the training file with a fixed seed: thresholds and early stopping use it."""
    test: Split
    """Never used to choose anything; only reported."""


def _read_csv(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: not found; download banking77 from {BANKING77_URL} and pass its folder")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"text", "category"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected columns text,category, found {reader.fieldnames}")
        rows = [(row["text"].strip(), row["category"].strip()) for row in reader]
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def load_banking77(folder: Path, *, validation_fraction: float = 0.1, seed: int = 13) -> IntentData:
    """banking77 from `folder` (holding train.csv and test.csv), with a stratified validation split."""
    train_rows = _read_csv(folder / "train.csv")
    test_rows = _read_csv(folder / "test.csv")
    intents = tuple(sorted({label for _, label in train_rows}))
    index = {name: i for i, name in enumerate(intents)}
    unknown = sorted({label for _, label in test_rows} - set(index))
    if unknown:
        raise DatasetError(f"{folder / 'test.csv'}: intents not in train.csv: {', '.join(unknown[:5])}")

    by_label: dict[str, list[str]] = {}
    for text, label in train_rows:
        by_label.setdefault(label, []).append(text)
    rng = random.Random(seed)  # noqa: S311 (a reproducible shuffle, not a secret)
    train: list[tuple[str, int]] = []
    validation: list[tuple[str, int]] = []
    for label in intents:
        texts = sorted(by_label[label])
        rng.shuffle(texts)
        cut = max(1, round(len(texts) * validation_fraction))
        validation += [(t, index[label]) for t in texts[:cut]]
        train += [(t, index[label]) for t in texts[cut:]]
    rng.shuffle(train)

    def split(pairs: list[tuple[str, int]]) -> Split:
        return Split(texts=tuple(t for t, _ in pairs), labels=tuple(label for _, label in pairs))

    return IntentData(
        intents=intents,
        train=split(train),
        validation=split(validation),
        test=split([(t, index[label]) for t, label in test_rows]),
    )


def load_clinc_out_of_scope(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """CLINC150's out-of-scope queries: (validation, test). `path` is data_full.json or its folder."""
    file = path / "data_full.json" if path.is_dir() else path
    if not file.is_file():
        raise DatasetError(f"{file}: not found; download CLINC150's data_full.json from {CLINC150_URL}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{file}: not JSON ({exc})") from None
    splits = []
    for key in ("oos_val", "oos_test"):
        rows = data.get(key) if isinstance(data, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2 for r in rows):
            raise DatasetError(f"{file}: {key} must be a list of [text, label] pairs")
        splits.append(tuple(str(text) for text, _ in rows))
    return splits[0], splits[1]
