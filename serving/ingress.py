"""The Splitter ingress deployment: the HTTP routes, request limits, bearer check and the sticky A/B split.

Bad requests (malformed JSON, missing fields, wrong types, too many candidates, ids out of range, unknown
context keys) are answered 4xx naming the problem; unknown user or item ids are scored by the rankers with
OOV embeddings and mean-imputed dense features, never an error. Overload is answered 503 with
``Retry-After``; with a configured token, /rank and /arms answer 401 without ``Authorization: Bearer <token>``
(/health stays open).
"""

# No `from __future__ import annotations`: FastAPI must see the real request/response types.
import logging

import numpy as np
import ray
from fastapi import FastAPI, HTTPException
from ray import serve
from ray.serve.exceptions import BackPressureError

from .auth import Credentials, check_bearer
from .features import context_fields
from .resolved import ResolvedServe
from .schemas import RankRequest, RankResponse
from .splitter import assign_arm, normalize_weights

log = logging.getLogger(__name__)

api = FastAPI(title="mixrec ranker", description="Rank candidate items for a user behind an A/B splitter.")
# Ranker replicas that die mid-request (a crash, a node lost): the request is idempotent, so it is retried once.
_RETRYABLE = (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError)


@serve.deployment(max_ongoing_requests=512, max_queued_requests=1024, ray_actor_options={"num_cpus": 0.1},
                  health_check_period_s=5)
@serve.ingress(api)
class Splitter:
    """Assigns each user to an arm by a sticky salted hash and forwards to that arm's ranker.

    Its request limits are far above the rankers' so overload is usually detected at a ranker's queue and
    answered here with 503 + Retry-After; should the splitter's own queue fill, Serve's proxy answers 503 with
    the same Retry-After (``BackpressureConfig``)."""

    def __init__(self, plan: ResolvedServe, **rankers):
        """``plan``: :meth:`ResolvedServe.splitter_view`; ``rankers``: arm -> its Ranker deployment handle."""
        self.plan, self.settings, self.rankers = plan, plan.serve, rankers
        self.context_fields = set(context_fields(plan.schema))
        self.weights = normalize_weights({arm: 1.0 for arm in rankers})
        self.token_sha256: str | None = None

    def reconfigure(self, user_config: dict) -> None:
        """Live settings (Serve ``user_config``): {"weights": {"champion": 0.9, "challenger": 0.1},
        "token_sha256": hex digest or null}."""
        weights = user_config.get("weights", self.weights)
        unknown = set(weights) - set(self.rankers)
        if unknown:
            raise ValueError(f"weights: unknown arm(s) {sorted(unknown)}; served arms: {sorted(self.rankers)}")
        self.weights = normalize_weights(weights)
        self.token_sha256 = user_config.get("token_sha256")

    def _overloaded(self, why: str) -> HTTPException:
        retry_after = self.settings.retry_after_s
        return HTTPException(503, f"overloaded ({why}); retry after {retry_after}s",
                             headers={"Retry-After": str(retry_after)})

    @api.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/arms")
    def arms(self, credentials: Credentials) -> dict:
        check_bearer(credentials, self.token_sha256)
        return {"model_name": self.plan.model_name, "weights": self.weights,
                "versions": {arm: self.plan.arms[arm] for arm in self.rankers}}

    @api.post("/rank", response_model=RankResponse,
              responses={401: {"description": "missing or wrong bearer token"},
                         503: {"description": "overloaded; retry after the Retry-After header's seconds"}})
    async def rank(self, body: RankRequest, credentials: Credentials) -> dict:
        check_bearer(credentials, self.token_sha256)
        self._check_limits(body)
        arm = assign_arm(body.user_id, self.weights, self.settings.salt)
        for attempt in range(2):
            try:
                return await self.rankers[arm].rank.remote(body.user_id, body.items, body.context)
            except BackPressureError:
                raise self._overloaded(f"arm {arm}: ranker queue full") from None
            except _RETRYABLE as err:
                log.warning("ranker of arm %s died mid-request (attempt %d): %s", arm, attempt + 1, err)
        raise self._overloaded(f"arm {arm}: ranker replicas unavailable")

    def _check_limits(self, body: RankRequest) -> None:
        max_candidates, max_id = self.settings.max_candidates, self.settings.max_id
        if len(body.items) > max_candidates:
            raise HTTPException(422, f"items: at most {max_candidates} candidates per request, got {len(body.items)}")
        if isinstance(body.user_id, int) and body.user_id > max_id:
            raise HTTPException(422, f"user_id: must be <= {max_id}, got {body.user_id}")
        ids = np.asarray([i for i in body.items if isinstance(i, int)], dtype=np.int64)  # string ids: no range
        if (ids > max_id).any():
            raise HTTPException(422, f"items: ids must be <= {max_id}, got {ids[ids > max_id][:5].tolist()}")
        unknown = set(body.context) - self.context_fields
        if unknown:
            shown = sorted(k[:32] for k in unknown)[:5]
            raise HTTPException(422, f"context: unknown key(s) {shown}; allowed: {sorted(self.context_fields)}")
