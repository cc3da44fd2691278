"""Files the commands write for people and tools (a schema, a plan), written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_bytes", "write_text"]


def write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write `text` to `path` atomically: a reader sees the old file or the new one, never half of
    one, and a failed write leaves no staging file behind. OSError names what went wrong."""
    write_bytes(path, text.encode(), mode=mode)


def write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """`write_text` for bytes (a plot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(staging, mode)  # mkstemp makes it 0600; these files are for people and editors
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
