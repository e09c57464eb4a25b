"""Client side of the served endpoint: where it runs, rank requests read from files, and sending them."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .state import recorded_state

TOKEN_ENV = "MIXREC_SERVE_TOKEN"


class RequestFileError(ValueError):
    """A request file (or argument) that cannot be read; the message names the file and line."""


def served_url(workspace: Path | str | None) -> str:
    """Base URL of the server `mixrec serve` started for this workspace (recorded in its serve.json)."""
    state = recorded_state(workspace)
    if state is None:
        raise RequestFileError("no --url given and no running server recorded in the workspace "
                               f"({workspace or 'default'}): start `mixrec serve` first")
    return state["url"]


def parse_id(text: str) -> int | str:
    """An id as typed: decimal digits that fit int64 are sent as a JSON integer, anything else (a hash, a UUID,
    a 20-digit id) as a string; the server reads either as the dataset's key type."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and int(text) < 2**63 else text


def parse_items(text: str, where: str) -> list[int] | list[str]:
    """Candidate item ids from ``"1,5,9"``, ``"1 5 9"`` or ``"1;5;9"`` (or string ids such as ``"8dcb419a"``): all
    integers, or all strings when any id is not an integer (the server takes one kind per request)."""
    ids = [x for x in text.replace(";", ",").replace(" ", ",").split(",") if x.strip()]
    if not ids:
        raise RequestFileError(f"{where} must name at least one item id, got {text!r}")
    parsed = [parse_id(x) for x in ids]
    return parsed if all(isinstance(i, int) for i in parsed) else [x.strip() for x in ids]


def _csv_requests(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"user_id", "items"} - set(reader.fieldnames or [])
        if missing:
            raise RequestFileError(f"{path}: missing column(s) {sorted(missing)}; header has {reader.fieldnames}")
        requests = []
        for line, row in enumerate(reader, start=2):
            try:
                context = {k: int(v) for k, v in row.items() if k not in ("user_id", "items") and v not in ("", None)}
            except (TypeError, ValueError):
                raise RequestFileError(f"{path}:{line}: context columns must be integers, got {row}") from None
            if not (row.get("user_id") or "").strip():
                raise RequestFileError(f"{path}:{line}: user_id is empty")
            user = parse_id(row["user_id"])
            requests.append({"user_id": user, "items": parse_items(row["items"] or "", f"{path}:{line}: items"),
                             "context": context})
    return requests


def _jsonl_requests(path: Path) -> list[dict]:
    requests = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            request = json.loads(text)
        except json.JSONDecodeError as err:
            raise RequestFileError(f"{path}:{line}: not valid JSON ({err.msg}); expected one request object a line") from None
        if not isinstance(request, dict):
            raise RequestFileError(f"{path}:{line}: expected a JSON object like {{\"user_id\": 1, \"items\": [1, 2]}}")
        requests.append(request)
    return requests


def read_requests(path: Path) -> list[dict]:
    """A batch of rank requests from JSONL (one request object a line) or CSV (columns user_id, items as
    "1,5,9" or "1 5 9", ids integers or strings, and optional integer context columns such as device, hour).
    Errors name the file and line."""
    if not path.is_file():
        raise RequestFileError(f"--file {path}: no such file")
    return _csv_requests(path) if path.suffix.lower() == ".csv" else _jsonl_requests(path)


def auth_headers(token_env: str = TOKEN_ENV) -> dict[str, str]:
    """The bearer token from ``token_env``, when that variable is set."""
    token = os.environ.get(token_env)
    return {"Authorization": f"Bearer {token}"} if token else {}


def rank(base_url: str, requests: list[dict], token_env: str = TOKEN_ENV,
         timeout: float = 120.0) -> Iterator[tuple[int, dict | str]]:
    """POST each request to ``{base_url}/rank``: yields (HTTP status, JSON body or text). Connection errors
    raise ``httpx.HTTPError``."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=timeout, headers=auth_headers(token_env)) as client:
        for request in requests:
            r = client.post("/rank", json=request)
            json_body = r.headers.get("content-type", "").startswith("application/json")
            yield r.status_code, (r.json() if json_body else r.text)
