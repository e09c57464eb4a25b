"""The Ray Serve application: one ranker deployment per served model version behind an A/B splitter ingress.

``POST {route_prefix}/rank`` with ``{"user_id": 17, "items": [3, 5, 8], "context": {"device": 1, "hour": 9}}``
returns the items ranked by click probability, with the arm, model name and version that served them.
Bad requests (malformed JSON, missing fields, wrong types, too many candidates, ids out of range, unknown
context keys) are answered 4xx naming the problem; unknown user or item ids are scored with OOV embeddings and
mean-imputed dense features, never an error. Overload is answered 503 with ``Retry-After``; with a configured
token, /rank and /arms answer 401 without ``Authorization: Bearer <token>`` (/health stays open).

Ranker replicas cache the item features (see :mod:`mixrec.serving.features` for the staleness bound), fetch
the user features per request from Feast, and score several requests in one forward pass (``@serve.batch``).
"""

# No `from __future__ import annotations`: FastAPI must see the real request/response types.
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import ray
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError

from mixrec.features import feast_repo
from mixrec.features.schema import SYNTHETIC_SCHEMA, DatasetSchema

from .features import CachedItemFeatures, UncachedItemFeatures, context_fields, online_matrix, request_frame
from .splitter import assign_arm, normalize_weights

log = logging.getLogger(__name__)

HARD_MAX_CANDIDATES = 10_000  # schema-level cap; the configured limit (<= this) is checked per request
ID_MAX = 2**62  # schema-level id cap (int64-safe); the configured serve.max_id (<= this) is checked per request
CONTEXT_MAX = 2**31 - 1

Id = Annotated[int, Field(strict=True, ge=0, le=ID_MAX)]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# A context feature: an id, or text (a string category, or a multi-hot field's values joined by its separator).
ContextValue = Annotated[int, Field(strict=True, ge=0, le=CONTEXT_MAX)] | Annotated[str, StringConstraints(max_length=1024)]


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    items: list[Id] = Field(..., min_length=1, max_length=HARD_MAX_CANDIDATES,
                            description="candidate item ids (at most serve.max_candidates)")
    context: dict[ContextKey, ContextValue] = Field(
        default_factory=dict, max_length=64,
        description="request-time features of the dataset schema (its request and row fields), e.g. device, hour; "
                    "a missing one is imputed (OOV / train mean)")


class RankedItem(BaseModel):
    item_id: int
    score: float


class RankResponse(BaseModel):
    user_id: int
    arm: str
    model_name: str
    model_version: str
    ranked: list[RankedItem]


def token_digest(token: str) -> str:
    """Only the SHA-256 of the bearer token travels to Serve (deployment config), never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class ServeSpec:
    """Everything the application needs (plain data: shipped to replicas). ``weights`` and ``token_sha256``
    reach the splitter through its ``user_config`` only, so changing them reconfigures it live."""

    model_name: str
    tracking_uri: str
    feast_repo: str
    arms: dict[str, str]  # arm (alias) -> model version, resolved once at start
    weights: dict[str, float]
    salt: str = "mixrec-ab-v1"
    max_candidates: int = 500
    env: dict[str, str] = field(default_factory=dict)
    max_id: int = ID_MAX
    token_sha256: str | None = None
    ranker_replicas: int = 1
    ranker_cpus: float = 0.25
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64
    retry_after_s: int = 1
    batch_max_size: int = 16
    batch_wait_timeout_s: float = 0.002
    item_cache: bool = True
    item_cache_ttl_s: float = 300.0
    schema: DatasetSchema = SYNTHETIC_SCHEMA  # the dataset schema the served models were trained on
    item_cache_check_s: float = 1.0


@dataclass(frozen=True)
class RankerSpec:
    """A ranker replica's constructor argument: nothing that changes with the A/B weights, so re-weighting
    leaves the rankers running."""

    model_name: str
    version: str
    arm: str
    tracking_uri: str
    feast_repo: str
    env: tuple[tuple[str, str], ...]
    batch_max_size: int
    batch_wait_timeout_s: float
    item_cache: bool
    item_cache_ttl_s: float
    item_cache_check_s: float
    schema: DatasetSchema

    @classmethod
    def of(cls, spec: ServeSpec, arm: str) -> "RankerSpec":
        return cls(model_name=spec.model_name, version=spec.arms[arm], arm=arm, tracking_uri=spec.tracking_uri,
                   feast_repo=spec.feast_repo, env=tuple(sorted(spec.env.items())),
                   batch_max_size=spec.batch_max_size, batch_wait_timeout_s=spec.batch_wait_timeout_s,
                   item_cache=spec.item_cache, item_cache_ttl_s=spec.item_cache_ttl_s,
                   item_cache_check_s=spec.item_cache_check_s, schema=spec.schema)


@serve.deployment(health_check_period_s=5, health_check_timeout_s=30, graceful_shutdown_timeout_s=5)
class Ranker:
    """Scores candidates with one registered model version; several requests per forward pass."""

    def __init__(self, spec: RankerSpec):
        os.environ.update(dict(spec.env))
        import mlflow

        from mixrec.pipelines.pyfunc import load_ranker

        mlflow.set_tracking_uri(spec.tracking_uri)
        schema = spec.schema
        self.spec, self.schema = spec, schema
        self.arm, self.model_name, self.version = spec.arm, spec.model_name, spec.version
        self.ranker = load_ranker(spec.model_name, spec.version)
        repo = Path(spec.feast_repo)
        self.store = feast_repo.open_store(repo)
        self.items = (CachedItemFeatures(repo, schema, repo / "materialized.json", spec.item_cache_ttl_s,
                                         spec.item_cache_check_s)
                      if spec.item_cache else UncachedItemFeatures(self.store, schema))
        self.rank_batch.set_max_batch_size(spec.batch_max_size)
        self.rank_batch.set_batch_wait_timeout_s(spec.batch_wait_timeout_s)

    async def rank(self, user_id: int, items: list[int], context: dict[str, int]) -> dict:
        return await self.rank_batch((user_id, items, context))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def rank_batch(self, requests: list[tuple[int, list[int], dict[str, int]]]) -> list[dict]:
        return self.score_requests(requests)

    def score_requests(self, requests: list[tuple[int, list[int], dict[str, int]]]) -> list[dict]:
        """B requests -> B responses with one Feast user read, one item-table lookup and one forward pass."""
        users = np.array([r[0] for r in requests], dtype=np.int64)
        lengths = np.array([len(r[1]) for r in requests])
        items = np.concatenate([np.asarray(r[1], dtype=np.int64) for r in requests])
        unique_users, inverse = np.unique(users, return_inverse=True)
        user_features = online_matrix(self.store, self.schema, "user", unique_users)[inverse]
        frame = request_frame(self.schema, users, lengths, items, [r[2] for r in requests], user_features,
                              self.items.lookup(items))
        scores = self.ranker.score(frame)
        return [self._response(int(u), i, s) for u, i, s in
                zip(users, np.split(items, np.cumsum(lengths)[:-1]), np.split(scores, np.cumsum(lengths)[:-1]),
                    strict=True)]

    def _response(self, user_id: int, items: np.ndarray, scores: np.ndarray) -> dict:
        order = np.argsort(-scores, kind="stable")
        ranked = [{"item_id": i, "score": s} for i, s in zip(items[order].tolist(), scores[order].tolist(), strict=True)]
        return {"user_id": user_id, "arm": self.arm, "model_name": self.model_name, "model_version": self.version,
                "ranked": ranked}

    def check_health(self) -> None:
        """Fails (Serve replaces the replica) when the model is gone or item features stopped refreshing."""
        if self.ranker is None:
            raise RuntimeError("ranker not loaded")
        if self.items.age_s() > 2 * self.spec.item_cache_ttl_s:
            raise RuntimeError(f"item features not refreshed for {self.items.age_s():.0f}s "
                               f"(ttl {self.spec.item_cache_ttl_s}s)")

    def cache_info(self) -> dict:
        """For tests and operators: how old the item table is and how often it was reloaded."""
        return {"age_s": self.items.age_s(), "reloads": getattr(self.items, "reloads", 0),
                "items": int(len(getattr(getattr(self.items, "table", None), "ids", [])))}


api = FastAPI(title="mixrec ranker", description="Rank candidate items for a user behind an A/B splitter.")
bearer = HTTPBearer(auto_error=False, description="required when the server was started with serve.auth_token_env")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
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

    def __init__(self, spec: ServeSpec, **rankers):
        self.spec, self.rankers = spec, rankers
        self.context_fields = set(context_fields(spec.schema))
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

    def _authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self.token_sha256 is None:
            return
        presented = token_digest(credentials.credentials) if credentials else ""
        if not hmac.compare_digest(presented, self.token_sha256):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    def _overloaded(self, why: str) -> HTTPException:
        return HTTPException(503, f"overloaded ({why}); retry after {self.spec.retry_after_s}s",
                             headers={"Retry-After": str(self.spec.retry_after_s)})

    @api.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/arms")
    def arms(self, credentials: Credentials) -> dict:
        self._authorize(credentials)
        return {"model_name": self.spec.model_name, "weights": self.weights,
                "versions": {arm: self.spec.arms[arm] for arm in self.rankers}}

    @api.post("/rank", response_model=RankResponse,
              responses={401: {"description": "missing or wrong bearer token"},
                         503: {"description": "overloaded; retry after the Retry-After header's seconds"}})
    async def rank(self, body: RankRequest, credentials: Credentials) -> dict:
        self._authorize(credentials)
        self._check_limits(body)
        arm = assign_arm(body.user_id, self.weights, self.spec.salt)
        for attempt in range(2):
            try:
                return await self.rankers[arm].rank.remote(body.user_id, body.items, body.context)
            except BackPressureError:
                raise self._overloaded(f"arm {arm}: ranker queue full") from None
            except _RETRYABLE as err:
                log.warning("ranker of arm %s died mid-request (attempt %d): %s", arm, attempt + 1, err)
        raise self._overloaded(f"arm {arm}: ranker replicas unavailable")

    def _check_limits(self, body: RankRequest) -> None:
        if len(body.items) > self.spec.max_candidates:
            raise HTTPException(422, f"items: at most {self.spec.max_candidates} candidates per request, "
                                     f"got {len(body.items)}")
        if body.user_id > self.spec.max_id:
            raise HTTPException(422, f"user_id: must be <= {self.spec.max_id}, got {body.user_id}")
        ids = np.asarray(body.items, dtype=np.int64)
        if (ids > self.spec.max_id).any():
            raise HTTPException(422, f"items: ids must be <= {self.spec.max_id}, got {ids[ids > self.spec.max_id][:5].tolist()}")
        unknown = set(body.context) - self.context_fields
        if unknown:
            shown = sorted(k[:32] for k in unknown)[:5]
            raise HTTPException(422, f"context: unknown key(s) {shown}; allowed: {sorted(self.context_fields)}")


def splitter_user_config(spec: ServeSpec) -> dict:
    return {"weights": spec.weights, "token_sha256": spec.token_sha256}


def code_version(*init_args) -> str:
    """A deployment version fixed by the constructor arguments. Serve's ``serve.run`` otherwise gives every
    deployment a random version, restarting all replicas on any redeploy; with this, a redeploy that changes
    only ``user_config`` or request limits reconfigures the running replicas (what a config-file deploy
    does). ``Deployment.options(version=...)`` is internal API in Ray 2.60, hence ``_internal=True``."""
    return hashlib.sha256(repr(init_args).encode()).hexdigest()[:16]


def _versioned(deployment, *init_args):
    return deployment.options(version=code_version(*init_args), _internal=True)


def build_app(spec: ServeSpec):
    """The Serve application graph: one Ranker deployment per arm (named by arm and version), the Splitter in
    front. Deploying it again with other weights or token only reconfigures the splitter (user_config);
    replicas that must change (a new version, other arms) are replaced with surge: new ones start first."""
    if set(spec.weights) != set(spec.arms):
        raise ValueError(f"weights {sorted(spec.weights)} and arms {sorted(spec.arms)} must name the same arms")
    rankers = {}
    for arm, version in spec.arms.items():
        ranker_spec = RankerSpec.of(spec, arm)
        deployment = Ranker.options(name=f"ranker_{arm}_v{version}", num_replicas=spec.ranker_replicas,
                                    max_ongoing_requests=spec.max_ongoing_requests,
                                    max_queued_requests=spec.max_queued_requests, max_surge_percent=100,
                                    ray_actor_options={"num_cpus": spec.ranker_cpus})
        rankers[arm] = _versioned(deployment, ranker_spec).bind(ranker_spec)
    splitter_spec = replace(spec, weights={}, token_sha256=None)
    deployment = Splitter.options(user_config=splitter_user_config(spec), max_surge_percent=100,
                                  backpressure_config=BackpressureConfig(retry_after_s=spec.retry_after_s))
    return _versioned(deployment, splitter_spec, sorted(rankers)).bind(splitter_spec, **rankers)
