"""The Ray Serve application: one ranker deployment per served model version behind an A/B splitter ingress.

``POST {route_prefix}/rank`` with ``{"user_id": 17, "items": [3, 5, 8], "context": {"device": 1, "hour": 9}}``
returns the items ranked by click probability, with the arm, model name and version that served them.
Bad requests (malformed JSON, missing fields, wrong types, too many candidates, unknown context keys) are
answered 4xx naming the problem; unknown user or item ids are scored with OOV embeddings and mean-imputed
dense features, never an error.
"""

# No `from __future__ import annotations`: FastAPI must see the real request/response types.
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from mixrec.features import feast_repo
from mixrec.features.schema import SYNTHETIC_SCHEMA, DatasetSchema

from .splitter import assign_arm, normalize_weights

HARD_MAX_CANDIDATES = 10_000  # schema-level cap; the configured limit (<= this) is checked per request
ID_MAX = 2**62


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int = Field(..., ge=0, le=ID_MAX, strict=True)
    items: list[int] = Field(..., min_length=1, max_length=HARD_MAX_CANDIDATES)
    context: dict[str, int] = Field(default_factory=dict, description="request-time features, e.g. device, hour")


class RankedItem(BaseModel):
    item_id: int
    score: float


class RankResponse(BaseModel):
    user_id: int
    arm: str
    model_name: str
    model_version: str
    ranked: list[RankedItem]


@dataclass
class ServeSpec:
    """Everything a ranker replica needs to find its model and features (plain data: shipped to replicas)."""

    model_name: str
    tracking_uri: str
    feast_repo: str
    arms: dict[str, str]  # arm (alias) -> model version, resolved once at start
    weights: dict[str, float]
    salt: str = "mixrec-ab-v1"
    max_candidates: int = 500
    env: dict[str, str] = field(default_factory=dict)


@serve.deployment(max_ongoing_requests=16, max_queued_requests=64, health_check_period_s=10,
                  ray_actor_options={"num_cpus": 0.25})
class Ranker:
    """Scores candidates with one registered model version, features from the Feast online store."""

    def __init__(self, spec: ServeSpec, arm: str, schema: DatasetSchema = SYNTHETIC_SCHEMA):
        os.environ.update(spec.env)
        import mlflow

        from mixrec.pipelines.registry import load_ranker

        mlflow.set_tracking_uri(spec.tracking_uri)
        self.arm, self.model_name, self.version = arm, spec.model_name, spec.arms[arm]
        self.ranker = load_ranker(spec.model_name, self.version)
        self.store = feast_repo.open_store(Path(spec.feast_repo))
        self.schema = schema

    def _frame(self, user_id: int, items: list[int], context: dict[str, int]) -> pd.DataFrame:
        s = self.schema
        user = feast_repo.online_features(self.store, s, "user", [user_id])
        item = feast_repo.online_features(self.store, s, "item", items)
        n = len(items)
        columns = {s.user_key: np.full(n, user_id), s.item_key: np.asarray(items)}
        for f in s.from_source("request"):
            if f.name not in columns:
                columns[f.name] = np.full(n, context.get(f.name, np.nan), dtype=np.float64)
        for f in s.from_source("user"):
            columns[f.name] = np.full(n, np.nan if user[f.name][0] is None else user[f.name][0], dtype=np.float64)
        for f in s.from_source("item"):
            columns[f.name] = pd.to_numeric(pd.Series(item[f.name], dtype="object"), errors="coerce").to_numpy()
        return pd.DataFrame(columns)

    def rank(self, user_id: int, items: list[int], context: dict[str, int]) -> dict:
        scores = self.ranker.score(self._frame(user_id, items, context))
        order = np.argsort(-scores, kind="stable")
        return {"user_id": user_id, "arm": self.arm, "model_name": self.model_name, "model_version": self.version,
                "ranked": [{"item_id": int(items[i]), "score": float(scores[i])} for i in order]}

    def check_health(self) -> None:
        if self.ranker is None:
            raise RuntimeError("ranker not loaded")


api = FastAPI(title="mixrec ranker", description="Rank candidate items for a user behind an A/B splitter.")


@serve.deployment(max_ongoing_requests=64, max_queued_requests=256, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Splitter:
    """Assigns each user to an arm by a sticky salted hash and forwards to that arm's ranker."""

    def __init__(self, spec: ServeSpec, schema: DatasetSchema = SYNTHETIC_SCHEMA, **rankers):
        self.spec, self.rankers = spec, rankers
        self.context_fields = {f.name for f in schema.from_source("request")} - {schema.user_key, schema.item_key}
        self.weights = normalize_weights(spec.weights)

    def reconfigure(self, user_config: dict) -> None:
        """Live re-weighting (Serve ``user_config``): {"weights": {"champion": 0.9, "challenger": 0.1}}."""
        weights = user_config.get("weights", self.weights)
        unknown = set(weights) - set(self.rankers)
        if unknown:
            raise ValueError(f"weights: unknown arm(s) {sorted(unknown)}; served arms: {sorted(self.rankers)}")
        self.weights = normalize_weights(weights)

    @api.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/arms")
    def arms(self) -> dict:
        return {"model_name": self.spec.model_name, "weights": self.weights,
                "versions": {arm: self.spec.arms[arm] for arm in self.rankers}}

    @api.post("/rank", response_model=RankResponse)
    async def rank(self, body: RankRequest) -> dict:
        if len(body.items) > self.spec.max_candidates:
            raise HTTPException(422, f"items: at most {self.spec.max_candidates} candidates per request, "
                                     f"got {len(body.items)}")
        unknown = set(body.context) - self.context_fields
        if unknown:
            raise HTTPException(422, f"context: unknown key(s) {sorted(unknown)}; allowed: {sorted(self.context_fields)}")
        bad_ids = [i for i in body.items if not 0 <= i <= ID_MAX]
        if bad_ids:
            raise HTTPException(422, f"items: ids must be in [0, {ID_MAX}], got {bad_ids[:5]}")
        arm = assign_arm(body.user_id, self.weights, self.spec.salt)
        return await self.rankers[arm].rank.remote(body.user_id, body.items, body.context)


def build_app(spec: ServeSpec):
    """The Serve application graph: one Ranker deployment per arm, the Splitter in front."""
    if set(spec.weights) != set(spec.arms):
        raise ValueError(f"weights {sorted(spec.weights)} and arms {sorted(spec.arms)} must name the same arms")
    rankers = {arm: Ranker.options(name=f"ranker_{arm}_v{version}").bind(spec, arm)
               for arm, version in spec.arms.items()}
    return Splitter.options(user_config={"weights": spec.weights}).bind(spec, **rankers)
