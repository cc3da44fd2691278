"""The query a `POST /v1/intent` carries, checked before anything is spent on it.

The request path's order (the server keeps it): the headers (content type, declared length),
before admission and before any byte of the body is read; admission; the body, read with its cap
enforced as it streams in; parse and validation here; the answer table; the batcher. Each check
refuses with a 4xx whose message names the problem, and none can raise anything else: a body
that breaks the parser (nesting deeper than it recurses, a lone surrogate the tokenizer cannot
take) is the caller's error, not a 500.
"""

from __future__ import annotations

import json
import unicodedata

__all__ = ["BadRequestError", "body_cap", "check_headers", "parse"]

_ESCAPED_CHAR_BYTES = 6
"""Most bytes one character of the text can take in the body: a JSON escape, `\\uXXXX`."""
_ENVELOPE_BYTES = 1024
"""Room for the rest of the document: `{"text": ...}`, whitespace, fields the service ignores."""

# Control characters (Unicode category Cc) become spaces; tab and newline are already whitespace
# to the tokenizer. str.translate keeps this in C: it runs on every admitted request.
_CONTROLS = {code: " " for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))}


class BadRequestError(Exception):
    """A request the service refuses as the caller's error: `status` is the 4xx to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def body_cap(max_chars: int) -> int:
    """Bytes the body of a query of `max_chars` characters can take at most, every one escaped."""
    return _ESCAPED_CHAR_BYTES * max_chars + _ENVELOPE_BYTES


def check_headers(content_type: str | None, content_length: str | None, *, cap: int) -> None:
    """Refuse on the headers alone: a body that is not JSON (415), or one declared longer than
    `cap` bytes (413). A body with no Content-Length (chunked) is held to the cap as it is read."""
    media_type, _, parameters = (content_type or "").partition(";")
    if media_type.strip().lower() != "application/json":
        raise BadRequestError(
            415, f"Content-Type {content_type or '(none)'!r} is not accepted: send application/json"
        )  # fmt: skip
    charset = next((v for k, _, v in (p.strip().partition("=") for p in parameters.split(";")) if k == "charset"), None)
    if charset is not None and charset.strip('"').lower() not in ("utf-8", "utf8"):
        raise BadRequestError(415, f"charset {charset!r} is not accepted: JSON bodies are UTF-8")
    if content_length is None:
        return
    if not content_length.isdigit():
        raise BadRequestError(400, f"Content-Length {content_length!r} is not a byte count")
    if int(content_length) > cap:
        raise BadRequestError(413, f"body of {content_length} bytes; the limit is {cap} bytes")


def parse(body: bytes, max_chars: int) -> str:
    """The query text of a request body, validated and normalised (NFC, control characters as
    spaces), or a BadRequestError naming what is wrong."""
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequestError(400, f"body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BadRequestError(400, f"body is not JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise BadRequestError(400, 'body is JSON nested deeper than the parser goes: send {"text": "..."}') from None
    if not isinstance(document, dict) or "text" not in document:
        raise BadRequestError(422, 'body must be a JSON object with a "text" field: {"text": "..."}')
    query = document["text"]
    if not isinstance(query, str):
        raise BadRequestError(422, f'"text" must be a string, got {type(query).__name__}')
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON lets "\ud800" through; no text has half a surrogate pair.
        raise BadRequestError(
            400, f'"text" has a lone surrogate (U+{ord(query[exc.start]):04X}) at {exc.start}'
        ) from None
    if len(query) > max_chars:
        # 422, not 413: the body is within its size; one field fails validation.
        raise BadRequestError(422, f'"text" has {len(query)} characters; the limit is {max_chars}')
    query = query.translate(_CONTROLS)
    if not unicodedata.is_normalized("NFC", query):
        query = unicodedata.normalize("NFC", query)
    if not query.strip():
        raise BadRequestError(422, '"text" is empty')
    return query
