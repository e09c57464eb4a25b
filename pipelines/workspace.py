"""The embedded-mode workspace: the one object that knows every path of a mixrec run.

Default location ``./mixrec-workspace``, or ``$MIXREC_HOME``, or the config's ``workspace``. Nothing else
builds paths by hand.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mixrec.features.io import write_text_atomic

from .errors import BadInput

DEFAULT_DIRNAME = "mixrec-workspace"
MARKER_NAME = ".mixrec-workspace"
MARKER_TEXT = "This folder is a mixrec workspace: `mixrec run --fresh` / `mixrec demo --fresh` may delete it.\n"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike | None = None) -> Workspace:
        chosen = explicit or os.environ.get("MIXREC_HOME") or DEFAULT_DIRNAME
        return cls(Path(chosen).expanduser().resolve())

    # --- data and Feast -------------------------------------------------------------------------------
    @property
    def sources_dir(self) -> Path:
        """Parquet sources written by the generator (the Feast offline store reads them)."""
        return self.root / "sources"

    @property
    def feast_repo(self) -> Path:
        return self.root / "feast"

    @property
    def feast_registry(self) -> Path:
        return self.feast_repo / "registry.db"

    @property
    def online_store_db(self) -> Path:
        return self.feast_repo / "online_store.db"

    @property
    def materialized_marker(self) -> Path:
        """Written after every materialization into the online store; serving replicas reload their item
        features when it changes."""
        return self.feast_repo / "materialized.json"

    @property
    def retrieved_dir(self) -> Path:
        """Parquet shards of the point-in-time retrieval (the input of Ray Data)."""
        return self.root / "retrieved"

    @property
    def validated_dir(self) -> Path:
        """Rows after row-level validation, each with its failed expectations ("" = accepted), as Parquet."""
        return self.root / "validated"

    @property
    def prepared_dir(self) -> Path:
        """Preprocessed splits (``train``/``valid``/``test``: categorical ids, dense values, label) as Parquet."""
        return self.root / "prepared"

    def prepared_split(self, split: str) -> Path:
        """One preprocessed split's Parquet folder."""
        return self.prepared_dir / split

    # --- pipeline state -------------------------------------------------------------------------------
    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def feast_dropped_path(self) -> Path:
        """Event rows the point-in-time join dropped (no feature row within the TTL), with the reason."""
        return self.quarantine_dir / "feast_dropped.parquet"

    @property
    def validation_quarantine_path(self) -> Path:
        """Rows that failed row-level validation, with the expectations they failed."""
        return self.quarantine_dir / "validation.parquet"

    @property
    def artifacts_dir(self) -> Path:
        """Preprocessing artifacts and validation reports of the latest run."""
        return self.root / "artifacts"

    @property
    def holdout_path(self) -> Path:
        """Raw test-split rows (model columns + label) of the latest run: the promotion gate's held-out data."""
        return self.artifacts_dir / "holdout_test.parquet"

    @property
    def validation_report_path(self) -> Path:
        """Row- and dataset-level validation report of the latest run (JSON; also logged to MLflow)."""
        return self.artifacts_dir / "validation_report.json"

    @property
    def last_run_path(self) -> Path:
        """The latest run's MLflow run id, registered version, row counts and step times (JSON)."""
        return self.artifacts_dir / "last_run.json"

    @property
    def abtest_dir(self) -> Path:
        """A/B simulations: one append-only impression log, report and plots per run."""
        return self.root / "abtest"

    def study_dir(self, name: str) -> Path:
        """Results, fits and plots of the scaling study ``name``."""
        return self.root / "studies" / name

    @property
    def ray_storage(self) -> Path:
        """Ray Train run storage (checkpoints)."""
        return self.root / "ray_results"

    # --- MLflow ---------------------------------------------------------------------------------------
    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def serve_state(self) -> Path:
        """What `mixrec serve` started: its URL, so `mixrec query` can find it."""
        return self.root / "serve.json"

    @property
    def serve_config(self) -> Path:
        """The Ray Serve config file of the served application (`serve run` / `serve deploy`), pinned versions."""
        return self.root / "serve_config.yaml"

    @property
    def marker(self) -> Path:
        """Written when mixrec creates the workspace; ``--fresh`` deletes only a folder that has it."""
        return self.root / MARKER_NAME

    def create(self, fresh: bool = False) -> Workspace:
        """Make the workspace's folders; ``fresh``: delete it first, refused (:class:`BadInput`) unless the
        folder is empty or carries the marker. The marker is written into a new or empty folder only, so a
        folder that held other files never becomes deletable by mixrec."""
        if fresh and self.root.exists():
            self.check_deletable()
            shutil.rmtree(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"workspace {self.root} is a file, not a folder")
        new = not self.root.exists() or not any(self.root.iterdir())
        for d in (self.sources_dir, self.feast_repo, self.quarantine_dir, self.artifacts_dir,
                  self.ray_storage, self.mlflow_artifacts):
            d.mkdir(parents=True, exist_ok=True)
        if new:
            write_text_atomic(MARKER_TEXT, self.marker)
        return self

    def check_deletable(self) -> None:
        """Raise :class:`BadInput` unless the folder is empty or carries mixrec's marker."""
        if not self.root.is_dir():
            raise BadInput(f"--fresh: workspace {self.root} is not a folder; refusing to delete it")
        if any(self.root.iterdir()) and not self.marker.is_file():
            raise BadInput(f"--fresh: {self.root} is not a mixrec workspace (no {MARKER_NAME} file); refusing to "
                           f"delete it: remove it yourself or choose another --workspace")
