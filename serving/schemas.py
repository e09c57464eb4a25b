"""The HTTP contract of ``POST {route_prefix}/rank``: the request a client sends and the ranked answer.

``{"user_id": 17, "items": [3, 5, 8], "context": {"device": 1, "hour": 9}}`` -> the items ranked by click
probability, with the arm, model name and version that served them. Ids are JSON integers or strings (64-bit
ids that JavaScript cannot hold exactly travel as strings); each is passed on with the type it was sent as.
The items of one request are all integers or all strings, and distinct (a repeated id is rejected, 422).
The caps here are schema-level (what any deployment accepts at most); the configured ``serve.max_candidates``
/ ``serve.max_id`` are checked per request by the ingress.
"""

# No `from __future__ import annotations`: FastAPI must see the real request/response types.
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

HARD_MAX_CANDIDATES = 10_000  # schema-level cap; the configured limit (<= this) is checked per request
ID_MAX = 2**62  # schema-level id cap (int64-safe); the configured serve.max_id (<= this) is checked per request
ID_MAX_CHARS = 128  # longest string id
CONTEXT_MAX = 2**31 - 1


def Text(min_length: int = 0, max_length: int = 1024):  # noqa: N802 - a type factory
    """A bounded string; pydantic rejects one holding a lone surrogate (``"\\ud800"``: valid JSON, no text)."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length)]


IntId = Annotated[int, Field(strict=True, ge=0, le=ID_MAX)]
StrId = Text(1, ID_MAX_CHARS)
Id = IntId | StrId  # smart-mode union: a JSON integer stays an int, a JSON string a str
ContextKey = Text(1, 64)
# A context feature: an id, or text (a string category, or a multi-hot field's values joined by its separator).
ContextValue = Annotated[int, Field(strict=True, ge=0, le=CONTEXT_MAX)] | Text(0, 1024)
_Bounded = Field(min_length=1, max_length=HARD_MAX_CANDIDATES)
Items = Annotated[list[IntId], _Bounded] | Annotated[list[StrId], _Bounded]


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    items: Items = Field(..., description="distinct candidate item ids, all integers or all strings "
                                          "(at most serve.max_candidates)")
    context: dict[ContextKey, ContextValue] = Field(
        default_factory=dict, max_length=64,
        description="request-time features of the dataset schema (its request and row fields), e.g. device, hour; "
                    "a missing one is imputed (OOV / train mean)")


class RankedItem(BaseModel):
    item_id: int | str
    score: float


class RankResponse(BaseModel):
    user_id: int | str
    arm: str
    model_name: str
    model_version: str
    ranked: list[RankedItem]
