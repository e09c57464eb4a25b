"""The Ray Serve application graph: one :class:`~mixrec.serving.ranker.Ranker` deployment per served model
version behind the A/B :class:`~mixrec.serving.ingress.Splitter` ingress.

``POST {route_prefix}/rank`` (contract: :mod:`mixrec.serving.schemas`) returns the items ranked by click
probability, with the arm, model name and version that served them.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from ray.serve.config import BackpressureConfig

from .ingress import Splitter
from .ranker import Ranker
from .resolved import ResolvedServe


def code_version(*init_args) -> str:
    """A deployment version fixed by the constructor arguments. Serve's ``serve.run`` otherwise gives every
    deployment a random version, restarting all replicas on any redeploy; with this, a redeploy that changes
    only ``user_config`` or request limits reconfigures the running replicas (what a config-file deploy
    does). ``Deployment.options(version=...)`` is internal API in Ray 2.60, hence ``_internal=True``."""
    return hashlib.sha256(repr(init_args).encode()).hexdigest()[:16]


def versioned(deployment, *init_args):
    """``deployment`` bound to ``init_args`` under the version they fix (:func:`code_version`)."""
    return deployment.options(version=code_version(*init_args), _internal=True)


def splitter_user_config(plan: ResolvedServe) -> dict:
    """The splitter's live settings (``Splitter.reconfigure``)."""
    return {"weights": plan.weights, "token_sha256": plan.token_sha256}


def ranker_name(arm: str, version: str) -> str:
    return f"ranker_{arm}_v{version}"


def _ranker(plan: ResolvedServe, arm: str, version: str):
    """The Ranker deployment of ``arm`` serving ``version``, bound (same name and code version for the same
    settings, so binding it again leaves its replicas running)."""
    s, ranker_plan = plan.serve, replace(plan, arms={**plan.arms, arm: version}).ranker_view(arm)
    deployment = Ranker.options(name=ranker_name(arm, version), num_replicas=s.ranker_replicas,
                                max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests,
                                max_surge_percent=100, ray_actor_options={"num_cpus": s.ranker_cpus})
    return versioned(deployment, ranker_plan).bind(ranker_plan)


def build_app(plan: ResolvedServe, retiring: dict[str, tuple[str, str]] | None = None):
    """The Serve application graph: one Ranker deployment per arm (named by arm and version), the Splitter in
    front. Deploying it again with other weights or token only reconfigures the splitter (user_config);
    replicas that must change (a new version, other arms) are replaced with surge: new ones start first.

    ``retiring``: deployment name -> (arm, version) of rankers the previous graph served and this one drops.
    They stay in the graph (bound to the splitter, never routed to) so that the previous splitter replicas
    can finish their requests while they drain; a second deploy without them then deletes them."""
    if set(plan.weights) != set(plan.arms):
        raise ValueError(f"weights {sorted(plan.weights)} and arms {sorted(plan.arms)} must name the same arms")
    s = plan.serve
    rankers = {arm: _ranker(plan, arm, version) for arm, version in plan.arms.items()}
    kept = {name: _ranker(plan, arm, version) for name, (arm, version) in sorted((retiring or {}).items())}
    splitter_plan = plan.splitter_view()
    deployment = Splitter.options(user_config=splitter_user_config(plan), num_replicas=s.splitter_replicas,
                                  max_surge_percent=100,
                                  backpressure_config=BackpressureConfig(retry_after_s=s.retry_after_s))
    return versioned(deployment, splitter_plan, sorted(rankers), sorted(kept)).bind(splitter_plan, kept, **rankers)


def app_builder(args: dict):
    """Serve application builder of the generated Serve config file (``serve run`` / ``serve deploy``,
    ``import_path: mixrec.serving.app:app_builder``): ``args`` are the resolved settings
    (:meth:`ResolvedServe.to_args`: versions pinned, nothing resolved again), so building needs no registry."""
    return build_app(ResolvedServe.from_args(args))
