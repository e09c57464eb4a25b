"""The HTTP contract of ``POST {route_prefix}/rank``: the request a client sends and the ranked answer.

``{"user_id": 17, "items": [3, 5, 8], "context": {"device": 1, "hour": 9}}`` -> the items ranked by click
probability, with the arm, model name and version that served them. The caps here are schema-level (what
any deployment accepts at most); the configured ``serve.max_candidates`` / ``serve.max_id`` are checked per
request by the ingress.
"""

# No `from __future__ import annotations`: FastAPI must see the real request/response types.
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

HARD_MAX_CANDIDATES = 10_000  # schema-level cap; the configured limit (<= this) is checked per request
ID_MAX = 2**62  # schema-level id cap (int64-safe); the configured serve.max_id (<= this) is checked per request
CONTEXT_MAX = 2**31 - 1

# An id: a JSON integer or a string (hashes, UUIDs, 20-digit ids), looked up as the dataset's key type.
IntId = Annotated[int, Field(strict=True, ge=0, le=ID_MAX)]
StrId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Id = IntId | StrId  # smart-mode union: a JSON integer stays an int, a JSON string a str
_Bounded = Field(min_length=1, max_length=HARD_MAX_CANDIDATES)
Items = Annotated[list[IntId], _Bounded] | Annotated[list[StrId], _Bounded]  # all integers or all strings
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# A context feature: an id, or text (a string category, or a multi-hot field's values joined by its separator).
ContextValue = Annotated[int, Field(strict=True, ge=0, le=CONTEXT_MAX)] | Annotated[str, StringConstraints(max_length=1024)]


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    items: Items = Field(..., description="candidate item ids, all integers or all strings (at most "
                                          "serve.max_candidates)")
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
