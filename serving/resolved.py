"""What a Serve application is built from: the pipeline's ``ServeConfig`` plus the values resolved once, when it
is deployed (aliases -> versions, tracking URI, workspace, token digest, dataset schema, worker env).

Plain data shipped to the replicas as constructor arguments. Each deployment gets the view of it that holds
only what it reads, so its code version (a hash of those arguments, see :func:`mixrec.serving.app.code_version`)
changes exactly when it must be rebuilt: re-weighting or a new token reconfigures the splitter live and leaves
every ranker running.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mixrec.features.schema import DatasetSchema
from mixrec.pipelines.config import ServeConfig
from mixrec.pipelines.workspace import Workspace

# The ServeConfig fields each deployment reads; its view keeps these and leaves the others at their defaults.
RANKER_SETTINGS = ("batch_max_size", "batch_wait_timeout_s", "item_cache", "item_cache_ttl_s", "item_cache_check_s",
                   "user_cache_ttl_s", "user_cache_size")
SPLITTER_SETTINGS = ("salt", "max_candidates", "max_id", "retry_after_s", "max_body_bytes", "request_timeout_s",
                     "ranker_ready_timeout_s")


@dataclass(frozen=True)
class ResolvedServe:
    serve: ServeConfig
    model_name: str
    arms: dict[str, str]  # arm (alias) -> model version; aliases folded into another arm are absent
    weights: dict[str, float]  # arm -> traffic weight, live (splitter user_config)
    tracking_uri: str
    workspace: Workspace  # its Feast repo and materialization marker
    schema: DatasetSchema  # the dataset schema the served models were trained on
    env: dict[str, str]  # environment of the replicas (quiet logging)
    token_sha256: str | None  # live (splitter user_config); None: no auth
    warnings: tuple[str, ...] = ()  # arms dropped at resolve time (an unloadable challenger), shown by /arms

    def _view(self, settings: tuple[str, ...], arms: dict[str, str]) -> ResolvedServe:
        serve = ServeConfig(**self.serve.model_dump(include=set(settings)))
        return replace(self, serve=serve, arms=arms, weights={}, token_sha256=None, warnings=())

    def ranker_view(self, arm: str) -> ResolvedServe:
        """A ranker's constructor argument: its arm's version, where models and features come from, and the
        ranker settings; nothing that changes with the weights, the token or the request limits."""
        return self._view(RANKER_SETTINGS, {arm: self.arms[arm]})

    def splitter_view(self) -> ResolvedServe:
        """The splitter's constructor argument: the served arms and request limits; weights and token reach it
        through its ``user_config`` only, so changing them reconfigures the running replicas."""
        return replace(self._view(SPLITTER_SETTINGS, self.arms), warnings=self.warnings)

    # --- as data: the workspace's serve.json (a later process redeploys exactly this application, e.g. with
    # other weights only) and a Serve config file's application args (serving.serve_config, app.app_builder) --
    def to_args(self) -> dict:
        """Plain JSON/YAML data that :meth:`from_args` turns back into an equal plan."""
        return {"model_name": self.model_name, "arms": dict(self.arms), "weights": dict(self.weights),
                "tracking_uri": self.tracking_uri, "workspace": str(self.workspace.root),
                "serve": self.serve.model_dump(mode="json"), "schema": self.schema.to_dict(), "env": dict(self.env),
                "token_sha256": self.token_sha256, "warnings": list(self.warnings)}

    @classmethod
    def from_args(cls, args: dict) -> ResolvedServe:
        """The plan :meth:`to_args` wrote; a missing or bad entry raises ``ValueError`` naming it."""
        missing = sorted({"model_name", "arms", "weights", "tracking_uri", "workspace", "serve", "schema"} - set(args))
        if missing:
            raise ValueError(f"serve application args lack {missing}: write the file with `mixrec serve --write-config`")
        return cls(serve=ServeConfig(**args["serve"]), model_name=args["model_name"],
                   arms={str(k): str(v) for k, v in args["arms"].items()},
                   weights={str(k): float(v) for k, v in args["weights"].items()},
                   tracking_uri=args["tracking_uri"], workspace=Workspace(Path(args["workspace"])),
                   schema=DatasetSchema.from_dict(args["schema"]), env=dict(args.get("env") or {}),
                   token_sha256=args.get("token_sha256"), warnings=tuple(args.get("warnings") or ()))
