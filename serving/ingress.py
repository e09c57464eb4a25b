"""The Splitter ingress deployment: the HTTP routes, request limits, bearer check and the sticky A/B split.

Bad requests (too large, not JSON, malformed JSON, missing fields, wrong types, too many or repeated
candidates, ids out of range, unknown context keys) are answered 4xx naming the problem (:mod:`.body`);
unknown user or item ids are scored by the rankers with OOV embeddings and mean-imputed dense features, never
an error. Overload, an unavailable online feature store and a request not scored within
``serve.request_timeout_s`` are answered 503 with ``Retry-After``. With a configured token, /rank, /arms and
/openapi.json answer 401 without ``Authorization: Bearer <token>``, checked before the body is read, and
/docs and /redoc are off; /health stays open.
"""

# No `from __future__ import annotations`: FastAPI must see the real request/response types.
import asyncio
import json
import logging
import time

import numpy as np
import pandas as pd
import ray
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError

from .auth import Credentials, check_bearer
from .body import RANK_BODY, parse_rank_request, printable, read_body, validation_errors
from .features import FeatureStoreUnavailable, context_fields
from .resolved import ResolvedServe
from .schemas import RankRequest, RankResponse
from .splitter import assign_arm, normalize_weights

log = logging.getLogger(__name__)

# Schema and docs routes are the splitter's own (below), so that they can sit behind the token.
api = FastAPI(title="mixrec ranker", description="Rank candidate items for a user behind an A/B splitter.",
              openapi_url=None, docs_url=None, redoc_url=None)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    """Any route's parameter errors, without the echoed input (FastAPI's default echoes it)."""
    return JSONResponse({"detail": validation_errors(err)}, status_code=422)


def ranked_json(result: dict) -> Response | dict:
    """A ranker's answer as the JSON body (one ``json.dumps``: the ranker built it as plain ints, strings and
    floats), instead of FastAPI validating 200 items against ``RankResponse`` again; a non-finite score (not
    JSON) goes FastAPI's way (``null``)."""
    try:
        return Response(json.dumps(result, separators=(",", ":"), allow_nan=False), media_type="application/json")
    except ValueError:
        return result


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

    async def __init__(self, plan: ResolvedServe, retiring: dict, **rankers):
        """``plan``: :meth:`ResolvedServe.splitter_view`; ``rankers``: arm -> its Ranker deployment handle;
        ``retiring``: handles of rankers kept alive for the previous splitter replicas, never used here."""
        self.plan, self.settings, self.rankers = plan, plan.serve, rankers
        self.context_fields = set(context_fields(plan.schema))
        self.weights = normalize_weights({arm: 1.0 for arm in rankers})
        self.token_sha256: str | None = None
        await self._wait_for_rankers()

    async def _wait_for_rankers(self) -> None:
        """Returns once every arm's ranker has answered (or after ``serve.ranker_ready_timeout_s``). Serve rolls
        out an application's deployments side by side and routes to a splitter replica as soon as its
        constructor returns: without this wait, a redeploy that adds a ranker (a new version, an arm back)
        sends that arm's requests to a deployment whose replicas are still loading their model, and on a slow
        host they time out; with it, the previous splitter replicas keep serving until the new graph is ready."""
        deadline = time.monotonic() + self.settings.ranker_ready_timeout_s

        async def answered(arm: str) -> None:
            while True:
                try:
                    await asyncio.wait_for(self.rankers[arm].ready.remote(), max(deadline - time.monotonic(), 0.0))
                    return
                except BackPressureError:
                    return  # its replicas are up: their queue is full
                except _RETRYABLE as err:  # a replica lost while starting: Serve replaces it
                    log.warning("ranker of arm %s not ready yet: %s", arm, err)
                    await asyncio.sleep(1.0)

        try:
            await asyncio.gather(*(answered(arm) for arm in self.rankers))
        except TimeoutError:
            log.warning("a ranker did not answer within serve.ranker_ready_timeout_s=%ss; serving anyway: its arm "
                        "answers 503 until it does", self.settings.ranker_ready_timeout_s)

    def reconfigure(self, user_config: dict) -> None:
        """Live settings (Serve ``user_config``): {"weights": {"champion": 0.9, "challenger": 0.1},
        "token_sha256": hex digest or null}."""
        weights = user_config.get("weights", self.weights)
        unknown = set(weights) - set(self.rankers)
        if unknown:
            raise ValueError(f"weights: unknown arm(s) {sorted(unknown)}; served arms: {sorted(self.rankers)}")
        self.weights = normalize_weights(weights)
        self.token_sha256 = user_config.get("token_sha256")

    def _unavailable(self, why: str) -> HTTPException:
        retry_after = self.settings.retry_after_s
        return HTTPException(503, f"{why}; retry after {retry_after}s", headers={"Retry-After": str(retry_after)})

    @api.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/arms")
    def arms(self, credentials: Credentials) -> dict:
        check_bearer(credentials, self.token_sha256)
        return {"model_name": self.plan.model_name, "weights": self.weights,
                "versions": {arm: self.plan.arms[arm] for arm in self.rankers}, "warnings": list(self.plan.warnings)}

    @api.get("/openapi.json", include_in_schema=False)
    def openapi(self, credentials: Credentials) -> dict:
        check_bearer(credentials, self.token_sha256)
        return api.openapi()

    @api.get("/docs", include_in_schema=False)
    def docs(self, request: Request):
        self._docs_allowed()
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title=api.title)

    @api.get("/redoc", include_in_schema=False)
    def redoc(self, request: Request):
        self._docs_allowed()
        return get_redoc_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title=api.title)

    def _docs_allowed(self) -> None:
        """The browsable docs cannot send a bearer token, so they are off while one is configured."""
        if self.token_sha256 is not None:
            raise HTTPException(404, "docs are off while a bearer token is configured; "
                                     "GET /openapi.json with the token for the schema")

    @api.post("/rank", response_model=RankResponse, openapi_extra=RANK_BODY,
              responses={401: {"description": "missing or wrong bearer token"},
                         413: {"description": "request body larger than serve.max_body_bytes"},
                         415: {"description": "content type other than application/json"},
                         503: {"description": "overloaded, feature store unavailable or timed out; "
                                              "retry after the Retry-After header's seconds"}})
    async def rank(self, request: Request, credentials: Credentials) -> Response | dict:
        check_bearer(credentials, self.token_sha256)  # before a byte of the body is read
        raw = await read_body(request, self.settings.max_body_bytes)
        body = parse_rank_request(raw, request.headers.get("content-type"))
        self._check_limits(body)
        arm = assign_arm(body.user_id, self.weights, self.settings.salt)
        deadline = time.monotonic() + self.settings.request_timeout_s
        for attempt in range(2):
            response = self.rankers[arm].rank.remote(body.user_id, body.items, body.context)
            try:
                return ranked_json(await asyncio.wait_for(response, max(deadline - time.monotonic(), 0.0)))
            except TimeoutError:
                response.cancel()
                raise self._unavailable(f"arm {arm}: not scored within {self.settings.request_timeout_s}s "
                                        f"(serve.request_timeout_s)") from None
            except BackPressureError:
                raise self._unavailable(f"overloaded (arm {arm}: ranker queue full)") from None
            except FeatureStoreUnavailable as err:
                raise self._unavailable(f"arm {arm}: {err.args[0] if err.args else err}") from None
            except _RETRYABLE as err:
                log.warning("ranker of arm %s died mid-request (attempt %d): %s", arm, attempt + 1, err)
        raise self._unavailable(f"overloaded (arm {arm}: ranker replicas unavailable)")

    def _check_limits(self, body: RankRequest) -> None:
        """The configured limits, and distinct candidates (a repeated id is rejected, never ranked twice)."""
        max_candidates, max_id = self.settings.max_candidates, self.settings.max_id
        if len(body.items) > max_candidates:
            raise HTTPException(422, f"items: at most {max_candidates} candidates per request, got {len(body.items)}")
        if isinstance(body.user_id, int) and body.user_id > max_id:
            raise HTTPException(422, f"user_id: must be <= {max_id}, got {body.user_id}")
        if isinstance(body.items[0], int):  # the schema makes the items all ints or all strings
            ids = np.asarray(body.items, dtype=np.int64)
            if (ids > max_id).any():
                raise HTTPException(422, f"items: ids must be <= {max_id}, got {ids[ids > max_id][:5].tolist()}")
        repeated = pd.Series(body.items, dtype=object)
        repeated = repeated[repeated.duplicated()].unique()[:5]
        if len(repeated):
            raise HTTPException(422, f"items: ids must be distinct, repeated: {[printable(i, 32) for i in repeated]}")
        unknown = set(body.context) - self.context_fields
        if unknown:
            shown = sorted(printable(k, 32) for k in unknown)[:5]
            raise HTTPException(422, f"context: unknown key(s) {shown}; allowed: {sorted(self.context_fields)}")
