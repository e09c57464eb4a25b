"""Declarative dataset schema files: a YAML description of a dataset that compiles to a :class:`DatasetSchema`.

A new dataset needs only such a file (see docs/datasets.md)::

    name: frappe
    format: parquet                 # csv | parquet | criteo_tsv | libfm
    files: {train: frappe/train.parquet, valid: frappe/valid.parquet, test: frappe/test.parquet}
    label: label
    entities: {user: {key: user}, item: {key: item}}
    categorical: [user, item, daytime, weekday]
    multi_hot: [{name: tags, max_len: 5}]   # list column, or one string with values split at `separator`
    dense: [{name: cnt, log1p: true}]
    split: {policy: given}          # given | time | random

Relative file paths are resolved against the data root (``data.root`` in the pipeline config, else
``$MIXREC_DATA``, else ``../shared/data``). Validation names every bad field, like the pipeline config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .schema import DatasetSchema, FeatureField

# Columns the adapters add when a dataset has no event key or no timestamp.
ROW_ID = "_row_id"
EVENT_TIME = "_event_timestamp"
SPLIT_COLUMN = "split"
SPLITS = ("train", "valid", "test")

# Criteo Display Advertising Challenge TSV: label, 13 integer counts, 26 hashed categoricals, no header.
CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label", *CRITEO_DENSE, *CRITEO_CATEGORICAL)


class DatasetError(ValueError):
    """A dataset schema or data file that cannot be used; the message names the file and the field or column."""


def with_key_hint(message: str, spec: DatasetSpec) -> str:
    """``message`` plus how to declare string keys, when it is about an int key column."""
    if not any(f"column {k!r}" in message for k, t in spec.key_types().items() if t == "int"):
        return message
    return (f"{message} (for string or wider-than-int64 ids declare the key's type `string`: "
            "`event_key_type: string` or `entities.<name>.key_type: string`)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldSpec(_Strict):
    name: str = Field(min_length=1)
    source: str = Field("row", description="row (default), request, or an entity name (user/item) with a file")
    log1p: bool = Field(False, description="dense only: log1p before standardizing (counts)")
    nullable: bool = Field(True, description="missing values are imputed; false: a null quarantines the row")


class MultiHotSpec(FieldSpec):
    max_len: int = Field(10, ge=1, le=4096, description="ids kept per row (padded with 0, truncated per `keep`)")
    separator: str = Field("|", min_length=1, description="delimiter when the values come as one string")
    keep: Literal["last", "first"] = Field("last", description="values kept on truncation; last = most recent")


KeyType = Literal["int", "string"]


class EntitySpec(_Strict):
    key: str = Field(min_length=1, description="join key column, on the event rows and in the entity file")
    file: str | None = Field(None, description="entity feature table (Parquet) with one row per key and time")
    timestamp: str = Field("event_timestamp", description="time column of the entity file")
    key_type: KeyType = Field("int", description="int (int64) or string (hashes, UUIDs, ids wider than int64)")


class SplitSpec(_Strict):
    policy: Literal["given", "time", "random"] = "given"
    valid_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    seed: int = 0


class DatasetSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")
    format: Literal["csv", "parquet", "criteo_tsv", "libfm"]
    files: dict[str, str] = Field(description="split -> path for policy `given`, else {all: path} or any names")
    columns: list[str] | None = Field(None, description="column names of header-less csv / libfm files")
    delimiter: str = Field(",", min_length=1, max_length=1, description="csv only")
    header: bool = Field(True, description="csv only: first line holds the column names")
    label: str = "label"
    event_key: str | None = Field(None, description=f"unique event id column; default: a row id `{ROW_ID}`")
    event_key_type: KeyType = Field("int", description="int (int64) or string (e.g. 20-digit or hashed ids)")
    timestamp: str | None = Field(None, description=f"event time column; default: `{EVENT_TIME}` from row order")
    entities: dict[Literal["user", "item"], EntitySpec] = Field(default_factory=dict)
    categorical: list[str | FieldSpec] = Field(default_factory=list)
    multi_hot: list[MultiHotSpec] = Field(default_factory=list, description="names or {name, max_len, separator, keep, ...}")
    dense: list[str | FieldSpec] = Field(default_factory=list)
    split: SplitSpec = Field(default_factory=SplitSpec)

    @field_validator("multi_hot", mode="before")
    @classmethod
    def _names_to_specs(cls, value):
        # a bare name is {name: ...}: one type per item, so errors name the field's key, not a union branch
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        problems = []
        names = [f.name for f in self.fields()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"categorical/multi_hot/dense: field(s) declared twice: {dupes}")
        if not names:
            problems.append("categorical/multi_hot/dense: declare at least one feature field")
        keys = {e.key for e in self.entities.values()} | {self.event_key, self.label}
        for kind, f in self.fields_with_kind():
            allowed = {"row", "request", *(e for e, spec in self.entities.items() if spec.file)}
            if f.source not in allowed:
                problems.append(f"{kind}.{f.name}.source: {f.source!r} is not one of {sorted(allowed)} "
                                "(an entity source needs entities.<name>.file)")
            if f.log1p and kind != "dense":
                problems.append(f"{kind}.{f.name}.log1p: only dense fields take log1p")
            if kind == "multi_hot" and f.name in keys:
                problems.append(f"multi_hot.{f.name}: a key or label column holds one value, not a list")
        if self.multi_hot and self.format == "libfm":
            problems.append(f"multi_hot.{self.multi_hot[0].name}: libfm files hold one value per field position")
        if self.split.policy == "given" and set(self.files) != set(SPLITS):
            problems.append(f"files: split policy `given` needs exactly {list(SPLITS)}, got {sorted(self.files)}")
        if self.event_key_type == "string" and not self.event_key:
            problems.append(f"event_key_type: `string` needs an `event_key` column (the default `{ROW_ID}` is int)")
        if self.split.policy == "time" and not self.timestamp:
            problems.append("split.policy: `time` needs a `timestamp` column")
        if self.format == "libfm" and not self.columns:
            problems.append("columns: libfm files need the field names (label first), one per position")
        if self.format == "criteo_tsv" and self.columns and tuple(self.columns) != CRITEO_COLUMNS:
            problems.append("columns: criteo_tsv has the fixed layout label, I1..I13, C1..C26; leave it out")
        if not self.files:
            problems.append("files: name at least one file")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- the fields -----------------------------------------------------------------------------------
    def fields_with_kind(self) -> list[tuple[str, FieldSpec]]:
        """(kind, spec) of every field: categorical, then multi_hot, then dense (the schema's order)."""
        as_spec = lambda f: FieldSpec(name=f) if isinstance(f, str) else f  # noqa: E731
        return ([("categorical", as_spec(f)) for f in self.categorical]
                + [("multi_hot", f) for f in self.multi_hot]
                + [("dense", as_spec(f)) for f in self.dense])

    def fields(self) -> list[FieldSpec]:
        return [f for _, f in self.fields_with_kind()]

    @property
    def event_key_column(self) -> str:
        return self.event_key or ROW_ID

    @property
    def timestamp_column(self) -> str:
        return self.timestamp or EVENT_TIME

    def key_types(self) -> dict[str, KeyType]:
        """Key column -> its declared type (the event key and each entity's join key)."""
        types: dict[str, KeyType] = {e.key: e.key_type for e in self.entities.values()}
        if self.event_key:
            types[self.event_key] = self.event_key_type
        return types

    def raw_columns(self) -> list[str]:
        """Columns read from the event files (entity-sourced fields come from the entity files)."""
        keys = [e.key for e in self.entities.values()]
        own = [f.name for f in self.fields() if f.source in ("row", "request") and f.name not in keys]
        extra = [c for c in (self.event_key, self.timestamp) if c]
        return list(dict.fromkeys([self.label, *extra, *keys, *own]))

    def to_schema(self) -> DatasetSchema:
        """The pipeline's schema. Entity keys ride on the event row (source ``request``), everything else
        declared ``row`` is stored in Feast under the row entity."""
        keys = {e.key for e in self.entities.values()}
        bag = lambda f: ({"max_len": f.max_len, "separator": f.separator, "keep": f.keep}  # noqa: E731
                         if isinstance(f, MultiHotSpec) else {})
        fields = tuple(FeatureField(f.name, kind, "request" if f.name in keys else f.source,  # type: ignore[arg-type]
                                    log1p=f.log1p, nullable=f.nullable, **bag(f))
                       for kind, f in self.fields_with_kind())
        user, item = self.entities.get("user"), self.entities.get("item")
        return DatasetSchema(label=self.label, timestamp=self.timestamp_column, event_key=self.event_key_column,
                             user_key=user.key if user else None, item_key=item.key if item else None,
                             fields=fields, name=self.name,
                             string_keys=tuple(k for k, t in self.key_types().items() if t == "string"))


def format_validation_errors(err: ValidationError, heading: str, data: object = None) -> str:
    """One line per bad field (its dotted path and pydantic's message), under ``heading``. With the validated
    ``data``, a list position whose item has a ``name`` is shown as that name (``multi_hot.genres.max_len``)."""
    lines = [f"{heading}:"]
    for e in err.errors():
        where = ".".join(_named_path(e["loc"], data)) or "(top level)"
        lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)


def _named_path(loc: tuple, data: object) -> list[str]:
    parts, node = [], data
    for p in loc:
        item = node[p] if isinstance(node, list) and isinstance(p, int) and -len(node) <= p < len(node) else \
            node.get(p) if isinstance(node, dict) else None
        named = isinstance(p, int) and isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]
        parts.append(item["name"] if named else str(p))
        node = item
    return parts


def parse_dataset_spec(data: dict, source: str = "(dict)") -> DatasetSpec:
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as err:
        raise DatasetError(format_validation_errors(err, f"invalid dataset schema {source}", data)) from None


def load_dataset_spec(path: str | Path) -> DatasetSpec:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset schema file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DatasetError(f"dataset schema {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"dataset schema {path} must hold a mapping, got {type(data).__name__}")
    return parse_dataset_spec(data, str(path))
