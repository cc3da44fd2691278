"""The query's checks, each with the input that used to get through (or crash) and the 4xx it gets."""

from __future__ import annotations

import json

import pytest

from model_service.query import BadRequestError, body_cap, check_headers, parse


def _status(call: object, *args: object, **kwargs: object) -> tuple[int, str]:
    with pytest.raises(BadRequestError) as error:
        call(*args, **kwargs)  # type: ignore[operator]
    return error.value.status, str(error.value)


def test_the_body_cap_fits_the_longest_query_fully_escaped() -> None:
    longest = json.dumps({"text": "\u00e9" * 200}, ensure_ascii=True).encode()  # every character \\u00e9
    assert len(longest) <= body_cap(200) < len(longest) + 2048


@pytest.mark.parametrize(
    ("content_type", "length", "status", "message"),
    [
        ("text/plain", "10", 415, "'text/plain' is not accepted: send application/json"),
        (None, "10", 415, "'(none)' is not accepted"),
        ("application/x-www-form-urlencoded", "10", 415, "send application/json"),
        ("application/json; charset=latin-1", "10", 415, "charset 'latin-1'"),
        ("application/json", "12x", 400, "'12x' is not a byte count"),
        ("application/json", "400000", 413, "body of 400000 bytes; the limit is 2224 bytes"),
    ],
)
def test_headers_refuse_before_any_byte_is_read(
    content_type: str | None, length: str, status: int, message: str
) -> None:
    got, text = _status(check_headers, content_type, length, cap=body_cap(200))
    assert got == status and message in text


def test_headers_of_a_good_request_pass() -> None:
    for content_type in ("application/json", "Application/JSON; charset=UTF-8", 'application/json; charset="utf-8"'):
        check_headers(content_type, "30", cap=body_cap(200))
    check_headers("application/json", None, cap=body_cap(200))  # chunked: capped while it is read


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"[" * 1100 + b"]" * 1100, 400, "nested deeper than the parser goes"),
        (b'{"text": "\\ud800 card"}', 400, "lone surrogate (U+D800) at 0"),
        (b'{"text": "card \\udfff"}', 400, "lone surrogate (U+DFFF) at 5"),
        (b'{"text": "\\u0000\\u001b\\u0085"}', 422, '"text" is empty'),
        (b"\xff{}", 400, "not UTF-8 (byte 0)"),
    ],
)
def test_bodies_that_broke_the_parser_or_the_tokenizer_are_the_callers_error(
    body: bytes, status: int, message: str
) -> None:
    got, text = _status(parse, body, 200)
    assert got == status and message in text


def test_text_is_normalised_control_characters_to_spaces_and_nfc() -> None:
    assert parse(b'{"text": "my card\\u0000 has\\u001b not\\tarrived"}', 200) == "my card  has  not arrived"
    assert parse('{"text": "cafe\u0301"}'.encode(), 200) == "caf\u00e9"  # decomposed e + accent -> one character
    assert parse(b'{"text": "\\ud83d\\ude00 card"}', 200) == "\U0001f600 card"  # a surrogate *pair* is a character
