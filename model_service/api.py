"""The service's HTTP contract as its `/openapi.json` states it, so a client or a fuzzer can use it.

The routes read their bodies themselves (query.py, `server._admin_document`): pydantic is not on the
hot path, where it would parse every one of the 8x surge's bodies. These models only describe
what the routes accept and answer; tests/model_service/test_openapi_fuzz.py runs schemathesis
against a live `peakguard serve` to hold the routes to this description.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from model_service.modes import BATCH_CEILING, BATCH_FLOOR

__all__ = [
    "ADMIN_RESPONSES", "CHAOS_DOCUMENT", "MODE_DOCUMENT", "SECURITY", "ChaosReply", "ErrorBody", "ModeReply",
    "intent_docs", "json_body", "readyz_docs", "text_responses",
]  # fmt: skip

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}  # fmt: skip


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, naming the input and, where there is one, the fix")
    request_id: str | None = Field(default=None, description="on a 500: the id its log line carries")


class IntentAnswer(BaseModel):
    intent: str = Field(description="the intent, or hand_over_to_human when the query looks out of scope")
    confidence: float = Field(ge=0, le=1)
    handover: bool
    served_by: Literal["model", "cache"] = Field(description="the model, or the answer table while shedding")
    model: Literal["full", "light"]
    precision: Literal["fp32", "int8"]
    version: str = Field(description="the model version folder that answered")


class Readiness(BaseModel):
    ready: bool
    version: str | None
    error: str | None = Field(default=None, description="why the models did not load, when they did not")


class ModeReply(BaseModel):
    mode: dict[str, Any]
    revision: int


class ChaosReply(BaseModel):
    slow_layers: dict[str, float]
    slow_down: float = Field(description="every layer takes this many times its time (1: not slowed)")


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description, **extra}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` documenting a required JSON request body that the route reads itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


MODE_DOCUMENT: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "description": "a (partial) operating mode: fields left out keep their current values",
    "properties": {
        "model": {"enum": ["full", "light"]},
        "precision": {"enum": ["fp32", "int8"]},
        "shedding": {"type": "boolean"},
        "batch_min": {"type": "integer", "minimum": BATCH_FLOOR, "maximum": BATCH_CEILING,
                      "description": "<= batch_max"},
        "batch_max": {"type": "integer", "minimum": BATCH_FLOOR, "maximum": BATCH_CEILING},
        "model_version": {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$",
                          "description": "a version folder under the artifact root (refused if there is none by "
                          "that name); empty: the version the service started with"},
    },
}  # fmt: skip
"""PUT /admin/mode's body (model_service.modes.OperatingMode.from_mapping is what checks it)."""

CHAOS_DOCUMENT: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "slow_layer": {"oneOf": [
            {"type": "null"},
            {"type": "object", "required": ["layer", "seconds"], "additionalProperties": False,
             "properties": {"layer": {"type": "string"}, "seconds": {"type": "number", "minimum": 0}}},
        ]},
        "slow_down": {"oneOf": [
            {"type": "null"},
            {"type": "object", "required": ["factor"], "additionalProperties": False,
             "properties": {"factor": {"type": "number", "minimum": 1}}},
        ]},
    },
}  # fmt: skip
"""PUT /admin/chaos's body: a slow layer and/or a slow-down of every layer; null ends either."""


def intent_docs(max_chars: int) -> dict[str, Any]:
    """Decorator arguments for POST /v1/intent: its body (up to `max_chars` characters of text with at
    least one that is neither whitespace nor a control character) and every status it answers."""
    query = {
        "type": "object", "required": ["text"],
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": max_chars,
                                "pattern": "[^\\s\\x00-\\x1f\\x7f-\\x9f]",
                                "description": "the customer's query (NFC-normalised; control characters read "
                                               "as spaces)"}},
    }  # fmt: skip
    return {
        "summary": "The intent of one customer query",
        "openapi_extra": json_body(query),
        "response_model": None,
        "responses": {
            200: {"model": IntentAnswer, "description": "the answer"},
            400: _error("the body is not UTF-8 JSON, nests deeper than the parser goes, or the text has a lone "
                        "surrogate"),
            413: _error(f"the body is longer than a {max_chars}-character query could need"),
            415: _error("the Content-Type is not application/json (UTF-8)"),
            422: _error(f'not an object with a non-empty string "text" of at most {max_chars} characters'),
            429: _error("refused by admission control: it would not be answered within the latency budget",
                        headers=_RETRY_AFTER),
            500: _error("an unexpected error (logged and counted)"),
            503: _error("the queue is full, or the models are not loaded yet", headers=_RETRY_AFTER),
        },
    }  # fmt: skip


def readyz_docs() -> dict[str, Any]:
    return {
        "summary": "Ready: the models are loaded and warmed up",
        "response_model": None,
        "responses": {200: {"model": Readiness, "description": "ready"},
                      503: {"model": Readiness, "description": "not ready, and why"}},
    }  # fmt: skip


def text_responses(description: str) -> dict[int | str, dict[str, Any]]:
    """`responses` for a route answering text/plain only (the Prometheus exposition)."""
    return {200: {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}}


SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
"""An admin route's `security`: the bearer scheme `server.create_app` adds to the document."""

BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: _error("the body is not UTF-8 JSON"),
    413: _error("the body is longer than an admin document could need"),
    415: _error("the Content-Type is not application/json (UTF-8)"),
    422: _error("the document is not a valid one (the message names the field and what it allows)"),
}

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("no bearer token, or the wrong one", headers={"WWW-Authenticate": {"schema": {"type": "string"}}}),
    403: _error("the admin API is disabled (no admin token configured), or chaos is off for this process"),
}
