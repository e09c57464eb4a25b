"""Reading and parsing a /rank request body by hand, so that no body can produce a 5xx.

FastAPI's own body handling parses before any dependency runs (an unauthenticated request got a 422 with
schema detail), accepts ``NaN``/``Infinity``/``1e400`` and lone surrogates, and then fails to serialise its
own 422 (which echoes the input) as a 500. Here the order is: bearer check (the caller) -> size limit (413,
from Content-Length and again while streaming) -> content type (415) -> UTF-8 + strict JSON (422) ->
schema (422). Every error names what is wrong and never echoes the input: messages and locations are
truncated and made printable.
"""

from __future__ import annotations

import json
import math

from fastapi import HTTPException, Request
from pydantic import ValidationError

from .schemas import RankRequest

MAX_ERRORS = 10  # validation errors reported per response
MAX_TEXT = 120  # characters of one message or location part


def printable(value: object, limit: int = MAX_TEXT) -> str | int:
    """A location part or message safe to put in a JSON response: ints as they are, text truncated to
    ``limit`` characters with anything that is not valid Unicode (a lone surrogate) escaped."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unprocessable(loc: tuple, msg: str, kind: str) -> HTTPException:
    return HTTPException(422, [{"type": kind, "loc": [printable(p) for p in loc], "msg": printable(msg, 300)}])


def validation_errors(err: ValidationError) -> list[dict]:
    """Pydantic's errors without their ``input`` (which may be megabytes, or not serialisable), at most
    :data:`MAX_ERRORS` of them."""
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    shown = [{"type": e["type"], "loc": [printable(p) for p in e["loc"]], "msg": printable(e["msg"], 300)}
             for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        shown.append({"type": "too_many_errors", "loc": [], "msg": f"{len(errors) - MAX_ERRORS} more errors not shown"})
    return shown


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 once it is known to exceed ``limit`` bytes: from Content-Length before
    anything is read, else while streaming (a chunked or lying client)."""
    declared = request.headers.get("content-length", "")
    too_large = HTTPException(413, f"request body larger than {limit} bytes (serve.max_body_bytes)")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def check_content_type(content_type: str | None) -> None:
    """JSON only: ``application/json`` or a ``+json`` type; no header at all is read as JSON."""
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(415, f"content-type {printable(media, 60)!s} is not supported: send application/json")


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number (numbers must be finite)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {printable(text, 40)} is out of range (numbers must be finite)")
    return value


def parse_json(raw: bytes) -> object:
    """Strict JSON: UTF-8, no NaN/Infinity, finite numbers, bounded nesting; else 422 naming the problem."""
    if not raw.strip():
        raise unprocessable(("body",), "empty body: expected a JSON object like {\"user_id\": 1, \"items\": [1, 2]}",
                            "missing")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise unprocessable(("body",), f"not UTF-8 (invalid byte at position {err.start})", "json_invalid") from None
    try:
        return json.loads(text, parse_constant=_no_constants, parse_float=_finite)
    except json.JSONDecodeError as err:
        raise unprocessable(("body", err.pos), f"not valid JSON: {err.msg}", "json_invalid") from None
    except ValueError as err:  # a non-finite number, or an integer of more than 4300 digits
        raise unprocessable(("body",), f"not valid JSON: {err}", "json_invalid") from None
    except RecursionError:
        raise unprocessable(("body",), "not valid JSON: nested too deeply", "json_invalid") from None


def parse_rank_request(raw: bytes, content_type: str | None) -> RankRequest:
    """A /rank body -> :class:`RankRequest`, or an HTTPException (415/422) that never echoes the input."""
    check_content_type(content_type)
    data = parse_json(raw)
    try:
        return RankRequest.model_validate(data)
    except ValidationError as err:
        raise HTTPException(422, validation_errors(err)) from None
    except RecursionError:
        raise unprocessable(("body",), "nested too deeply", "json_invalid") from None


# The request body as OpenAPI publishes it: the route reads the body itself (auth first), so FastAPI cannot
# infer it. Schemathesis and clients generate requests from this.
RANK_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": RankRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}}
