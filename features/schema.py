"""The dataset schema: which columns are labels, keys, categorical and dense features, and where they live.

A feature belongs to one of three sources: the ``user`` or ``item`` entity (looked up in Feast, offline by
point-in-time join for training and online for serving) or the ``request`` itself (ids and context, carried on the
event row in training and in the request body when serving).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Source = Literal["user", "item", "request"]


@dataclass(frozen=True)
class FeatureField:
    name: str
    kind: Literal["categorical", "dense"]
    source: Source
    # Dense only: apply log1p before standardizing (heavy-tailed counts and prices).
    log1p: bool = False


@dataclass(frozen=True)
class DatasetSchema:
    label: str
    timestamp: str
    user_key: str
    item_key: str
    event_key: str
    fields: tuple[FeatureField, ...] = field(default_factory=tuple)

    @property
    def categorical(self) -> tuple[FeatureField, ...]:
        return tuple(f for f in self.fields if f.kind == "categorical")

    @property
    def dense(self) -> tuple[FeatureField, ...]:
        return tuple(f for f in self.fields if f.kind == "dense")

    def from_source(self, source: Source) -> tuple[FeatureField, ...]:
        return tuple(f for f in self.fields if f.source == source)

    @property
    def model_columns(self) -> tuple[str, ...]:
        """Raw columns a model row needs (the ranker's input), categorical first."""
        return tuple(f.name for f in self.categorical) + tuple(f.name for f in self.dense)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Every column a labelled training row must have."""
        return (self.event_key, self.user_key, self.item_key, self.timestamp, self.label,
                *(f.name for f in self.fields if f.name not in (self.user_key, self.item_key)))


# The synthetic CTR data set (features/synthetic.py). Ids are features too (categorical, with OOV).
SYNTHETIC_SCHEMA = DatasetSchema(
    label="label",
    timestamp="event_timestamp",
    user_key="user_id",
    item_key="item_id",
    event_key="event_id",
    fields=(
        FeatureField("user_id", "categorical", "request"),
        FeatureField("item_id", "categorical", "request"),
        FeatureField("device", "categorical", "request"),
        FeatureField("hour", "categorical", "request"),
        FeatureField("age_bucket", "categorical", "user"),
        FeatureField("region", "categorical", "user"),
        FeatureField("category", "categorical", "item"),
        FeatureField("brand", "categorical", "item"),
        FeatureField("activity", "dense", "user"),
        FeatureField("price", "dense", "item", log1p=True),
        FeatureField("quality", "dense", "item"),
    ),
)
