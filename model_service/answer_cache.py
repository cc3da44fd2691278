"""Answers to simple, frequent queries, served without the model while shedding is on.

The seed shifted 30% of simple queries to the edge. Here the table is learnt from the model's
own confident answers: a query the model answered with high confidence is remembered by its
normalised text, and while shedding is on a repeat of it is answered from the table instead of
queueing for the GPU. Bounded (least recently used entries go first) and thread-safe.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["AnswerCache", "CachedAnswer", "normalise"]

_NOT_WORD = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Case, punctuation and spacing do not make a different question."""
    return _NOT_WORD.sub(" ", text.lower()).strip()


@dataclass(frozen=True)
class CachedAnswer:
    intent: str
    confidence: float


class AnswerCache:
    def __init__(self, *, capacity: int = 10_000, min_confidence: float = 0.9, max_words: int = 12) -> None:
        """Only short queries (`max_words`) answered with at least `min_confidence` are kept."""
        self.capacity = capacity
        self.min_confidence = min_confidence
        self.max_words = max_words
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, text: str, answer: CachedAnswer) -> None:
        key = normalise(text)
        if not key or answer.confidence < self.min_confidence or len(key.split()) > self.max_words:
            return
        with self._lock:
            self._entries[key] = answer
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def lookup(self, text: str) -> CachedAnswer | None:
        key = normalise(text)
        with self._lock:
            answer = self._entries.get(key)
            if answer is not None:
                self._entries.move_to_end(key)
            return answer
