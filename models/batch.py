"""The typed batch between data and models: what preprocessing produces and training, evaluation, batch scoring
and serving hand to a model.

Preprocessing writes the three columns named here (:data:`CATEGORICAL`, :data:`DENSE`, :data:`LABEL`); a Ray Data
or numpy batch of them becomes a :class:`Batch` with :meth:`Batch.from_arrays`, and a model scores it with
``model(batch.categorical, batch.dense)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CATEGORICAL = "categorical"
DENSE = "dense"
LABEL = "label"
COLUMN_DTYPES: dict[str, torch.dtype] = {CATEGORICAL: torch.int64, DENSE: torch.float32, LABEL: torch.float32}


@dataclass(frozen=True)
class Batch:
    """``B`` examples.

    Attributes:
        categorical: int64 ``[B, n_id_columns]``, ids in ``[0, cardinality)`` per column (0 = OOV / padding).
        dense: float32 ``[B, n_dense]`` (``n_dense`` may be 0).
        labels: float32 ``[B]`` clicks in {0, 1}, or ``None`` for unlabelled rows (serving, batch scoring).
    """

    categorical: Tensor
    dense: Tensor
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        if self.categorical.dim() != 2 or self.dense.dim() != 2:
            raise ValueError(f"categorical and dense must be 2-D, got {tuple(self.categorical.shape)} "
                             f"and {tuple(self.dense.shape)}")
        rows = {self.categorical.shape[0], self.dense.shape[0]}
        if self.labels is not None:
            rows.add(self.labels.shape[0])
        if len(rows) != 1:
            raise ValueError(f"batch parts disagree on the number of rows: {sorted(rows)}")

    def __len__(self) -> int:
        return self.categorical.shape[0]

    @classmethod
    def from_arrays(cls, columns: Mapping[str, np.ndarray | Tensor]) -> Batch:
        """A batch from preprocessing's columns (numpy arrays or tensors, e.g. a Ray Data batch); ``label``
        is optional. Arrays are shared with the tensors where their dtype already matches."""
        def tensor(name: str) -> Tensor:
            value = columns[name]
            value = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
            return value.to(COLUMN_DTYPES[name])

        return cls(tensor(CATEGORICAL), tensor(DENSE), tensor(LABEL) if LABEL in columns else None)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.categorical), move(self.dense),
                     None if self.labels is None else move(self.labels))
