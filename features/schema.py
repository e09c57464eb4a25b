"""The dataset schema: which columns are labels, keys, categorical and dense features, and where they live.

A feature belongs to one of four sources: the ``user`` or ``item`` entity (looked up in Feast, offline by
point-in-time join for training and online for serving), the ``request`` itself (ids and context, carried on the
event row in training and in the request body when serving), or the event ``row`` (datasets whose features
come as one flat row, e.g. Criteo: Feast registers them under a row entity keyed by the event key, at the
event's timestamp; training retrieval carries them on the event rows and joins only the entity views).

A ``multi_hot`` field is categorical with several values per row (genres, a recent-items sequence): a list of
values, stored as a list of strings in the canonical sources and in Feast, mapped by the preprocessing to
``max_len`` id columns and pooled by the model into one embedding.

Datasets other than the built-in synthetic one are described by a YAML file (features/dataset.py) that
compiles to a :class:`DatasetSchema`.

Keys (event, user, item) are int64 or strings (``string_keys``: hex hashes, UUIDs, ids wider than int64);
:func:`coerce_keys` turns the ids a client sends into the dataset's key type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

Source = Literal["user", "item", "request", "row"]
Kind = Literal["categorical", "multi_hot", "dense"]
ENTITY_SOURCES: tuple[Source, ...] = ("user", "item", "row")
CATEGORICAL_KINDS: tuple[Kind, ...] = ("categorical", "multi_hot")


@dataclass(frozen=True)
class FeatureField:
    name: str
    kind: Kind
    source: Source
    # Dense only: apply log1p before standardizing (heavy-tailed counts and prices).
    log1p: bool = False
    # Missing values allowed (imputed: OOV for categorical, train mean for dense); else a null row is quarantined.
    nullable: bool = False
    # Multi-hot only: ids kept per row, the delimiter of values given as one string, and which values survive
    # truncation to max_len (``last``: the most recent of a sequence written oldest first).
    max_len: int = 1
    separator: str = "|"
    keep: Literal["last", "first"] = "last"


@dataclass(frozen=True)
class DatasetSchema:
    label: str
    timestamp: str
    user_key: str | None
    item_key: str | None
    event_key: str
    fields: tuple[FeatureField, ...] = field(default_factory=tuple)
    name: str = "synthetic"
    # Key columns holding strings (Feast STRING join keys); every other key is int64.
    string_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Plain JSON-able form; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DatasetSchema:
        fields = tuple(FeatureField(**f) for f in data.get("fields", ()))
        return cls(**{**data, "fields": fields, "string_keys": tuple(data.get("string_keys", ()))})

    @property
    def categorical(self) -> tuple[FeatureField, ...]:
        """Every categorical field, single-valued and multi-hot, in declaration order: each is one embedding
        row of the model, and this order is the order of the fields in the preprocessing artifact, the
        model's ``FeatureLayout`` and the id columns of ``categorical`` (a multi-hot field's ``max_len``
        columns sit together at its place)."""
        return tuple(f for f in self.fields if f.kind in CATEGORICAL_KINDS)

    @property
    def multi_hot(self) -> tuple[FeatureField, ...]:
        return tuple(f for f in self.fields if f.kind == "multi_hot")

    @property
    def dense(self) -> tuple[FeatureField, ...]:
        return tuple(f for f in self.fields if f.kind == "dense")

    def from_source(self, source: Source) -> tuple[FeatureField, ...]:
        return tuple(f for f in self.fields if f.source == source)

    def entity_key(self, source: Source) -> str | None:
        """Join key of an entity source (``row`` is keyed by the event key)."""
        return {"user": self.user_key, "item": self.item_key, "row": self.event_key}.get(source)

    @property
    def entity_sources(self) -> tuple[Source, ...]:
        """Entity sources that hold features, i.e. get a Feast entity and feature view."""
        return tuple(s for s in ENTITY_SOURCES if self.from_source(s))

    @property
    def keys(self) -> tuple[str, ...]:
        """Identifier columns of an event row: must never be null."""
        return tuple(k for k in (self.event_key, self.user_key, self.item_key) if k)

    def key_is_string(self, key: str | None) -> bool:
        return key is not None and key in self.string_keys

    def key_array(self, key: str | None, values) -> np.ndarray:
        """Ids as sent by a client -> the key column's type (see :func:`coerce_keys`)."""
        return coerce_keys(values, self.key_is_string(key))

    @property
    def model_columns(self) -> tuple[str, ...]:
        """Raw columns a model row needs (the ranker's input), categorical first."""
        return tuple(f.name for f in self.categorical) + tuple(f.name for f in self.dense)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Every column a labelled training row must have."""
        return (*self.keys, self.timestamp, self.label, *(f.name for f in self.fields if f.name not in self.keys))


# An int-keyed dataset's id that is not an integer (a string sent for it): never a stored key, so it is
# looked up as unknown and scored with OOV embeddings, like any unseen id.
UNKNOWN_INT_KEY = np.iinfo(np.int64).min


def coerce_keys(values, string: bool) -> np.ndarray:
    """Ids (n,) of any mix of ints and strings -> the key type: a numpy str array for a string-keyed column
    (an int ``17`` becomes ``"17"``), else int64 (a decimal string ``"17"`` becomes 17; anything that is not an
    int64 integer, e.g. ``"8dcb419a"`` or a 20-digit id, becomes :data:`UNKNOWN_INT_KEY`: an unknown id)."""
    values = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if string:
        return values.astype(str) if values.dtype.kind in "iuU" else \
            pd.Series(values, dtype=object).astype(str).to_numpy().astype(str)
    if values.dtype.kind == "i":
        return values.astype(np.int64)
    # Exact for any width (numpy's object -> int64 cast wraps 20-digit numbers around): decimal text through
    # decimal128, kept where it fits int64.
    text = pa.array(pd.Series(values, dtype=object).astype(str).to_numpy(), pa.string())
    ok = pc.match_substring_regex(text, r"^[+-]?\d{1,38}$")
    dec = pc.cast(pc.if_else(ok, text, "0"), _DECIMAL)
    fits = pc.and_(ok, pc.and_(pc.greater_equal(dec, _INT64_LO), pc.less_equal(dec, _INT64_HI)))
    ids = pc.cast(pc.if_else(fits, dec, _DECIMAL_ZERO), pa.int64()).to_numpy(zero_copy_only=False)
    return np.where(fits.to_numpy(zero_copy_only=False), ids, UNKNOWN_INT_KEY)


_DECIMAL = pa.decimal128(38, 0)
_INT64_LO, _INT64_HI, _DECIMAL_ZERO = (pa.scalar(v).cast(_DECIMAL) for v in (-(2**63), 2**63 - 1, 0))


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
