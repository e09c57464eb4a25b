"""The Ranker deployment: one registered model version scoring candidates for users.

A replica caches the item features and the user features it has read (see :mod:`mixrec.serving.features` for
both staleness bounds), reads the users it has not cached from Feast, and scores several requests in one forward pass (``@serve.batch``):
raw feature rows -> the version's own preprocessing -> :class:`~mixrec.models.batch.Batch` -> the model.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from ray import serve

from mixrec.features import feast_repo
from mixrec.models.batch import Batch

from .features import (
    CachedItemFeatures,
    CachedUserFeatures,
    FeatureStoreUnavailable,
    UncachedItemFeatures,
    online_matrix,
    request_frame,
)
from .resolved import ResolvedServe

# (user id, candidate item ids, request context); ids as the client sent them, ints or strings
RankQuery = tuple[int | str, list[int] | list[str], dict[str, int | str]]


@serve.deployment(health_check_period_s=5, health_check_timeout_s=30, graceful_shutdown_timeout_s=5)
class Ranker:
    """Scores candidates with one registered model version; several requests per forward pass."""

    def __init__(self, plan: ResolvedServe):
        """``plan``: :meth:`ResolvedServe.ranker_view` of one arm."""
        os.environ.update(plan.env)
        import mlflow

        from mixrec.pipelines.pyfunc import load_ranker

        mlflow.set_tracking_uri(plan.tracking_uri)
        self.arm, self.version = next(iter(plan.arms.items()))
        self.settings, self.schema, self.model_name = plan.serve, plan.schema, plan.model_name
        loaded = load_ranker(plan.model_name, self.version)
        self.model, self.preprocessor = loaded.model, loaded.preprocessor
        ws, s = plan.workspace, self.settings
        self.store = feast_repo.open_store(ws.feast_repo)
        self.items = (CachedItemFeatures(ws.feast_repo, self.schema, ws.materialized_marker, s.item_cache_ttl_s,
                                         s.item_cache_check_s)
                      if s.item_cache else UncachedItemFeatures(self.store, self.schema))
        self.users = CachedUserFeatures(lambda keys: online_matrix(self.store, self.schema, "user", keys),
                                        ws.materialized_marker, s.user_cache_ttl_s, s.user_cache_size)
        self.rank_batch.set_max_batch_size(s.batch_max_size)
        self.rank_batch.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

    async def rank(self, user_id: int | str, items: list[int] | list[str], context: dict[str, int | str]) -> dict:
        result = await self.rank_batch((user_id, items, context))
        if isinstance(result, FeatureStoreUnavailable):
            raise result  # the splitter answers 503 + Retry-After
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def rank_batch(self, requests: list[RankQuery]) -> list[dict | FeatureStoreUnavailable]:
        return self.score_requests(requests)

    def score_requests(self, requests: list[RankQuery]) -> list[dict | FeatureStoreUnavailable]:
        """B requests -> B responses; when the online store fails the batch, each request is retried alone so
        that only those whose features cannot be read get the error (returned in their place)."""
        try:
            return self.score_batch(requests)
        except FeatureStoreUnavailable as err:
            if len(requests) == 1:
                return [err]
        return [self.score_requests([r])[0] for r in requests]  # the failure path only: one read per request

    def score_batch(self, requests: list[RankQuery]) -> list[dict]:
        """B requests -> B responses with one user-feature lookup (a Feast read for the users not cached), one
        item-table lookup and one forward pass."""
        schema = self.schema
        users = schema.key_array(schema.user_key, [r[0] for r in requests])
        lengths = np.array([len(r[1]) for r in requests])
        sent = np.concatenate([np.asarray(r[1], dtype=object) for r in requests])  # echoed back as sent
        items = schema.key_array(schema.item_key, sent)
        unique_users, inverse = np.unique(users, return_inverse=True)
        user_features = self.users.lookup(unique_users)[inverse]
        frame = request_frame(schema, users, lengths, items, [r[2] for r in requests], user_features,
                              self.items.lookup(items))
        scores = self.score(Batch.from_arrays(self.preprocessor.transform(frame)))
        splits = np.cumsum(lengths)[:-1]
        return [self._response(r[0], i, s)
                for r, i, s in zip(requests, np.split(sent, splits), np.split(scores, splits), strict=True)]

    def score(self, batch: Batch) -> np.ndarray:
        """Click probabilities [B] of a preprocessed batch."""
        with torch.no_grad():
            return torch.sigmoid(self.model(batch.categorical, batch.dense)).numpy()

    def _response(self, user_id: int | str, items: np.ndarray, scores: np.ndarray) -> dict:
        order = np.argsort(-scores, kind="stable")
        ranked = [{"item_id": i, "score": s}
                  for i, s in zip(np.asarray(items, dtype=object)[order].tolist(), scores[order].tolist(), strict=True)]
        return {"user_id": user_id, "arm": self.arm, "model_name": self.model_name, "model_version": self.version,
                "ranked": ranked}

    def ready(self) -> str:
        """The version this replica serves; a new splitter replica waits for this answer from every arm."""
        return self.version

    def check_health(self) -> None:
        """Fails (Serve replaces the replica) when the model is gone or item features stopped refreshing."""
        if self.model is None:
            raise RuntimeError("ranker not loaded")
        ttl = self.settings.item_cache_ttl_s
        if self.items.age_s() > 2 * ttl:
            raise RuntimeError(f"item features not refreshed for {self.items.age_s():.0f}s (ttl {ttl}s)")

    def cache_info(self) -> dict:
        """For tests and operators: how old the item table is and how often it was reloaded; the user cache's
        size, hits and misses."""
        return {"age_s": self.items.age_s(), "reloads": getattr(self.items, "reloads", 0),
                "items": int(len(getattr(getattr(self.items, "table", None), "ids", []))), "user_cache": self.users.info()}
