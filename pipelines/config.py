"""One typed pipeline config, loaded from YAML with a clear error per bad field.

Each section is owned by the package that uses it (see docs/architecture in the README). The same file
drives ``mixrec run``, ``mixrec demo`` (built in code) and the tests. Embedded and team mode differ only in
URIs here (sqlite vs PostgreSQL tracking, sqlite vs Redis online store), never in code paths.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixrec.features.dataset import DatasetError, DatasetSpec, format_validation_errors, load_dataset_spec
from mixrec.features.schema import SYNTHETIC_SCHEMA, DatasetSchema

from .errors import BadInput
from .secrets import env_refs, fill_env, redact

# $MLFLOW_TRACKING_URI as this process started, read once before anything sets it (MLflow 3's
# ``set_tracking_uri`` writes the variable): the tracking URI when the config names none (registry.tracking_uri_for).
ENV_TRACKING_URI: str | None = os.environ.get("MLFLOW_TRACKING_URI") or None



class ConfigError(BadInput):
    """A pipeline config that cannot be used; the message names every bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """The dataset: synthetic CTR data (the embedded default), or files described by a dataset schema YAML."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: Literal["synthetic"] = "synthetic"
    schema_file: str | None = Field(None, alias="schema", description="dataset schema YAML (features/dataset.py); "
                                    "set: read its files instead of generating synthetic data")
    root: str | None = Field(None, description="folder the schema's relative file paths start from; "
                             "default $MIXREC_DATA, else ../shared/data")
    max_rows: int | None = Field(None, ge=1, description="read at most this many rows of each file (smoke runs)")
    num_events: int = Field(200_000, ge=100, description="labelled impressions to generate")
    num_users: int = Field(2_000, ge=10)
    num_items: int = Field(1_000, ge=10)
    days: int = Field(14, ge=2, description="time span of the events; snapshots of user features are daily")
    seed: int = 7


class FeaturesConfig(_Section):
    """Feast feature store. ``None`` values mean: the embedded default inside the workspace."""

    project: str = Field("mixrec", pattern=r"^[a-z][a-z0-9_]*$")
    online_store: dict[str, Any] | None = Field(
        None, description="Feast online_store block; default sqlite file in the workspace"
    )
    registry: str | dict[str, Any] | None = Field(None, description="Feast registry; default file in the workspace")
    offline_store: dict[str, Any] = Field(
        default_factory=lambda: {"type": "file"},
        description="Feast offline_store block of the point-in-time join: `file` (default), `duckdb` (Feast's "
                    "ibis/DuckDB store) or the contrib `ray` store for data beyond one machine (docs/benchmarks.md, Ingest)")
    ttl_days: int = Field(30, ge=1, description="feature view TTL: events older than this past a feature row are quarantined")
    retrieval_chunk_rows: int = Field(500_000, ge=100, description="event rows per Feast historical retrieval "
                                      "(bounds each retrieval task's memory)")
    retrieval_parallelism: int = Field(2, ge=1, description="historical retrievals run at once, each a Ray task "
                                       "in a worker of its own")


class ValidateConfig(_Section):
    max_failure_fraction: float = Field(0.05, ge=0.0, le=1.0, description="stop the run above this share of bad rows")
    range_margin: float = Field(0.25, ge=0.0, description="fitted dense ranges are widened by this share of their span")
    batch_size: int = Field(50_000, ge=100, description="rows per Great Expectations validation call (its cost is mostly per call)")
    min_rows: int = Field(1, ge=1, description="dataset-level: every split must keep at least this many rows")
    max_label_rate_drift: float = Field(0.1, ge=0.0, le=1.0, description="dataset-level: |label rate of valid/test "
                                        "- label rate of train| above this stops the run")
    max_unseen_rate_increase: float = Field(0.5, ge=0.0, le=1.0, description="dataset-level: share of a categorical "
                                            "field's values outside the train vocabulary (OOV) in valid/test, minus "
                                            "the share in train, above this stops the run")


class PreprocessConfig(_Section):
    min_count: int = Field(2, ge=1, description="categorical values seen fewer times in train map to the OOV id 0")
    valid_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    clip_sigma: float = Field(5.0, gt=0.0)
    hash_above: int = Field(100_000, ge=1, description="categorical fields with more distinct train values than "
                            "this are hashed into hash_buckets buckets instead of getting a vocabulary")
    hash_buckets: int = Field(2**18, ge=2)


class ModelConfig(_Section):
    name: str = "rankmixer"
    kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor keyword arguments of the model")


class TrainConfig(_Section):
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0.0, description="<1 leaves CPUs for Ray Data on small machines")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per worker; default: "
                                      "max(1, int(cpus_per_worker)). More than the worker's CPUs lends it the CPU "
                                      "Ray Data reads with, which waits idle for most of a step on small data")
    use_gpu: bool = False
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="SPREAD/STRICT_SPREAD put the workers on different nodes of a cluster")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(1024, ge=1, description="global batch: rows per optimizer step over all workers, as the "
                            "papers quote it; each worker takes batch_size / num_workers")
    learning_rate: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    embedding_l2: float = Field(0.0, ge=0.0, description="L2 penalty on the embedding table added to every step's "
                                "loss: embedding_l2 / 2 * sum of squared table entries (FuxiCTR's "
                                "`embedding_regularizer`; the BARS presets use 0.01-0.05)")
    shuffle_buffer_batches: int = Field(8, ge=0, description="shuffle each worker's training rows in a buffer "
                                        "of this many batches (Ray Data's local shuffle, a new order every epoch); "
                                        "0: file order")
    max_grad_norm: float | None = Field(10.0, gt=0.0, description="clip the global gradient norm of each step to "
                                        "this, as FuxiCTR does by default (10); null: no clipping")
    precise_bn_batches: int = Field(16, ge=0, description="at each epoch's end, recompute every BatchNorm's "
                                    "running statistics on the current weights, dropout off, over the epoch's last "
                                    "N training batches per worker (eval mode is calibrated again); 0: keep the "
                                    "moving averages of training")
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description="validate, checkpoint and register an "
                                    "exponential moving average of the weights, updated after every step with "
                                    "this decay (e.g. 0.995: a horizon of ~200 steps); null: the weights as "
                                    "trained")
    optimizer: Literal["adam", "adagrad", "rmsprop", "sgd"] = "adam"
    embedding_optimizer: Literal["adam", "adagrad", "rmsprop", "sgd"] | None = Field(
        None, description="optimizer of the embedding table (default: `optimizer`), e.g. adagrad as the papers do")
    embedding_learning_rate: float | None = Field(None, gt=0.0, description="default: learning_rate")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast matmuls (GPU, or CPU with AMX)")
    compile: bool = Field(False, description="torch.compile the model for training (worth it on GPU)")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up; the scheduler is checkpointed")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after this many epochs without a "
                                                "better validation AUC; the best checkpoint is kept")
    log_checkpoints: Literal["best", "every_epoch"] = Field(
        "best", description="MLflow artifacts: the best checkpoint only, or also every epoch's (from rank 0)")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every N optimizer steps inside an epoch (model, optimizers, "
        "schedulers, data position), so a failed worker group resumes mid-epoch; default: at epoch ends only")
    seed: int = 0

    @model_validator(mode="after")
    def _batch_splits_over_workers(self):
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} is global and must split evenly over num_workers "
                             f"{self.num_workers}")
        return self

    @property
    def worker_threads(self) -> int:
        """torch intra-op threads of each worker: ``torch_threads``, else the worker's whole CPUs (at least 1)."""
        return self.torch_threads or max(1, int(self.cpus_per_worker))

    @property
    def worker_batch_size(self) -> int:
        """Rows per step on each worker: the global ``batch_size`` split over ``num_workers``."""
        return self.batch_size // self.num_workers


class RegistryConfig(_Section):
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI when set as the process "
                                     "starts, else a sqlite file in the workspace")
    lock_uri: str | None = Field(
        None, description="PostgreSQL URI of the database behind a shared `mlflow server`: alias moves take an "
        "advisory lock there, so promotions from several hosts serialise (default: the tracking URI when it is "
        "PostgreSQL, else a lock file)")
    experiment: str = "mixrec"
    model_name: str = Field("mixrec-ranker", min_length=1)
    promote_min_auc_delta: float = Field(
        0.0, ge=-1.0, le=1.0, description="`mixrec promote` gate: the lower end of the CI of the AUC delta "
        "(challenger - champion) must be above this")
    promote_max_logloss_increase: float = Field(
        0.0, ge=0.0, description="`mixrec promote` gate: the logloss delta (challenger - champion) may be at most this")
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000, description="paired bootstrap resamples of the gate")
    bootstrap_seed: int = 0


class ServeConfig(_Section):
    app_name: str = Field("mixrec", min_length=1, description="the Serve application's name: applications of other "
                          "names (and route prefixes) share the Ray instance's HTTP proxy without touching this one")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/mixrec", pattern=r"^/[A-Za-z0-9_\-/]*$")
    arms: dict[str, float] = Field(
        default_factory=lambda: {"champion": 0.5, "challenger": 0.5},
        description="registry alias -> traffic weight (normalized); an alias that is missing or names the same "
        "version as the champion folds into it, so the champion takes 100 % until a distinct challenger exists",
    )
    salt: str = "mixrec-ab-v1"
    max_candidates: int = Field(500, ge=1, le=10_000, description="candidate items per request (422 above)")
    max_id: int = Field(2**62, ge=1, le=2**62, description="largest accepted user or item id (422 above)")
    auth_token_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of an environment variable holding a bearer token; when set, /rank and /arms answer 401 "
        "without `Authorization: Bearer <token>` (/health stays open). The variable must be set when serving starts")
    ranker_replicas: int = Field(1, ge=1, description="replicas of each ranker deployment")
    splitter_replicas: int = Field(2, ge=1, description="replicas of the splitter (the ingress): with two, losing "
                                   "one fails only the requests it held while Serve replaces it")
    ranker_cpus: float = Field(0.25, gt=0.0, description="logical CPUs per ranker replica (fractional on small hosts)")
    max_ongoing_requests: int = Field(32, ge=1, description="per ranker replica: requests in flight at once")
    max_queued_requests: int = Field(64, ge=0, description="per ranker deployment: requests waiting beyond that; "
                                     "more are answered 503 with Retry-After, never queued without bound")
    retry_after_s: int = Field(1, ge=1, description="Retry-After of an overload 503")
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576, description="largest /rank request body; "
                                "a larger one is answered 413 before it is parsed")
    request_timeout_s: float = Field(30.0, gt=0.0, description="a /rank request not scored within this many "
                                     "seconds is answered 503 with Retry-After")
    ranker_ready_timeout_s: float = Field(600.0, gt=0.0, description="a new splitter replica (a redeploy, a "
                                          "replacement) takes traffic once every arm's ranker answers, or after "
                                          "this many seconds; until then the previous replicas serve")
    batch_max_size: int = Field(16, ge=1, description="@serve.batch: requests scored in one forward pass")
    batch_wait_timeout_s: float = Field(0.002, ge=0.0, description="@serve.batch: wait this long to fill a batch "
                                        "(0: smaller batches, fewer QPS in bench/serving_latency.py)")
    item_cache: bool = Field(True, description="cache item features in each ranker replica; false reads every "
                             "feature from Feast per request (the benchmark's uncached baseline)")
    item_cache_ttl_s: float = Field(300.0, gt=0.0, description="reload the replica's item-feature table at least "
                                    "this often, even without a new materialization marker")
    item_cache_check_s: float = Field(1.0, gt=0.0, description="how often a replica looks at the materialization "
                                      "marker (a file stat)")
    user_cache_ttl_s: float = Field(30.0, ge=0.0, description="keep a user's online features in the ranker replica "
                                    "for at most this many seconds after reading them (0: read Feast per request); "
                                    "all are dropped as soon as the materialization marker changes")
    user_cache_size: int = Field(100_000, ge=1, description="users whose features a ranker replica keeps at most "
                                 "(the least recently used are dropped first)")

    @field_validator("arms")
    @classmethod
    def _arms_valid(cls, arms: dict[str, float]) -> dict[str, float]:
        if not arms:
            raise ValueError("at least one arm is needed, e.g. {champion: 1.0}")
        bad = {k: v for k, v in arms.items() if not math.isfinite(v) or v < 0}
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        if sum(arms.values()) <= 0:
            raise ValueError("weights must not all be 0")
        if not math.isfinite(sum(arms.values())):
            raise ValueError(f"weights: their sum overflows ({arms}); use smaller numbers")
        return arms


class PipelineConfig(_Section):
    workspace: str | None = Field(None, description="default: $MIXREC_HOME or ./mixrec-workspace")
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _splits_leave_train(self) -> PipelineConfig:
        if self.preprocess.valid_fraction + self.preprocess.test_fraction >= 0.8:
            raise ValueError("preprocess.valid_fraction + preprocess.test_fraction must leave >= 20% for train")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with every value read from a ``${NAME}`` reference shown as that reference: what
        MLflow logs and tags hold."""
        return redact(self.to_dict())


def parse_config(data: dict[str, Any] | None, source: str = "(dict)") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, f"invalid pipeline config {source}")) from None


def expand_env(text: str, source: str) -> str:
    """Replace ``${NAME}`` with the environment variable (secrets stay out of config files; what is logged
    or written keeps the reference, see :mod:`.secrets`)."""
    missing = [name for name in env_refs(text) if name not in os.environ]
    if missing:
        raise ConfigError(f"config {source} refers to unset environment variable(s): {', '.join(missing)}")
    return fill_env(text)


def load_config(path: str | Path) -> PipelineConfig:
    """Load a YAML config; ``${NAME}`` references are filled from the environment."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(expand_env(path.read_text(), str(path)))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return parse_config(data, str(path))


DEFAULT_DATA_ROOT = "../shared/data"


def data_root(cfg: PipelineConfig) -> Path:
    """Where a dataset schema's relative paths start: ``data.root``, else $MIXREC_DATA, else ../shared/data."""
    return Path(cfg.data.root or os.environ.get("MIXREC_DATA") or DEFAULT_DATA_ROOT).expanduser()


def dataset_spec(cfg: PipelineConfig) -> DatasetSpec | None:
    """The dataset schema file of the config (None: the synthetic data); a bad file raises ConfigError."""
    if not cfg.data.schema_file:
        return None
    try:
        return load_dataset_spec(cfg.data.schema_file)
    except DatasetError as err:
        raise ConfigError(f"data.schema: {err}") from None


def dataset_schema(cfg: PipelineConfig) -> DatasetSchema:
    spec = dataset_spec(cfg)
    return spec.to_schema() if spec else SYNTHETIC_SCHEMA
