"""Serving-side features: a vectorised item-feature table cached in each ranker replica, per-request user
features from Feast, and the model frame for a batch of requests. Pure numpy/pandas + Feast (no Ray).

Ids are looked up as the dataset's key type (int64, or str for ``string`` keys): a client's int for a
string-keyed dataset is its decimal text (17 -> "17"), a decimal string for an int-keyed one its integer; any
other id is unknown and scored with OOV embeddings (:func:`mixrec.features.schema.coerce_keys`).

Staleness bound of the cached item features: the pipeline rewrites the workspace's materialization marker
(``feast/materialized.json``) after every ``materialize``; a replica stats it every ``check_s`` seconds and
reloads the table when it changed, so after a materialization by mixrec a replica serves the new item
features within ``check_s`` + one table load (about 0.1 s per 1,000 items from the sqlite store). Writes that
bypass the marker (a ``feast materialize`` run by hand, another writer of the online store) are picked up by
the TTL reload: at most ``ttl_s`` + one load stale. Until a reload succeeds a replica keeps serving the table it
has; its health check fails once that table is older than twice the TTL, so Serve replaces it.

Staleness bound of the cached user features (:class:`CachedUserFeatures`): a user's row is read from Feast on
a miss and kept for at most ``serve.user_cache_ttl_s`` seconds (30), for at most ``serve.user_cache_size`` users
(100,000; least recently used dropped first). The replica stats the materialization marker once per batch and
drops every cached user when it changed, so after a materialization by mixrec no request is scored with the
previous user features; a write that bypasses the marker is served at most ``user_cache_ttl_s`` late.
``user_cache_ttl_s: 0`` reads every user from Feast per request, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mixrec.features import feast_repo
from mixrec.features.schema import DatasetSchema

log = logging.getLogger(__name__)
ONLINE_CHUNK = 5_000  # entities per Feast online read while loading the table


def to_float(values: list) -> np.ndarray:
    """Feast's online values (None where unknown) -> float64 with NaN, which the preprocessor maps to
    OOV (categorical) or the training mean (dense)."""
    return pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").to_numpy(dtype=np.float64)


class FeatureStoreUnavailable(RuntimeError):
    """The online store could not be read (down, unreachable, a corrupt row): the request is answered 503 with
    Retry-After, not scored with made-up features."""


def online_matrix(store, schema: DatasetSchema, source: str, keys: np.ndarray) -> np.ndarray:
    """Online features of ``source`` ("user"/"item") for ``keys`` (n,) of the key's type -> object (n, F): dense values as
    floats (NaN where unknown), categorical ones as Feast returns them (ints, strings, lists; None where
    unknown). The preprocessor maps unknowns to OOV or the training mean."""
    fields = schema.from_source(source)
    matrix = np.empty((len(keys), len(fields)), dtype=object)
    if len(keys) == 0 or not fields:
        return matrix
    try:
        values = feast_repo.online_features(store, schema, source, keys.tolist())
    except Exception as err:  # any failure of the store's client: sqlite, redis, a network, a corrupt value
        raise FeatureStoreUnavailable(f"online feature store read failed ({source} features): "
                                      f"{type(err).__name__}: {str(err)[:200]}") from err
    for j, f in enumerate(fields):
        # via an object Series: a multi-hot field's lists stay one cell each
        matrix[:, j] = to_float(values[f.name]) if f.kind == "dense" else pd.Series(values[f.name], dtype=object).to_numpy()
    return matrix


def context_fields(schema: DatasetSchema) -> tuple[str, ...]:
    """Features a rank request carries itself (``context``): the schema's request fields and its event-row
    fields (what the event row held in training comes with the request when serving), but not the keys."""
    keys = {schema.user_key, schema.item_key, schema.event_key}
    return tuple(f.name for f in schema.fields if f.source in ("request", "row") and f.name not in keys)


@dataclass(frozen=True)
class ItemTable:
    """Item features as sorted ids (n,) + an object matrix (n + 1, F) whose last row is unknown (NaN/None)."""

    ids: np.ndarray  # int64 or str, the item key's type
    values: np.ndarray
    loaded_at: float  # time.time() of the load
    marker_stamp: int | None  # mtime_ns of the materialization marker the load saw

    def lookup(self, item_ids: np.ndarray) -> np.ndarray:
        """(N,) ids of the key's type (int64 or str) -> (N, F) features; one searchsorted, no per-item Python
        work."""
        if len(self.ids) == 0:
            return np.broadcast_to(self.values[-1], (len(item_ids), self.values.shape[1]))
        pos = np.minimum(np.searchsorted(self.ids, item_ids), len(self.ids) - 1)
        rows = np.where(self.ids[pos] == item_ids, pos, len(self.ids))
        return self.values[rows]


def marker_stamp(marker: Path) -> int | None:
    try:
        return marker.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def catalog_item_ids(store, schema: DatasetSchema) -> np.ndarray:
    """Every item id the item feature view knows: the key column of its batch source (the online store
    cannot list its keys), sorted and unique. Empty when the schema has no item features."""
    if not schema.from_source("item"):
        return schema.key_array(schema.item_key, np.empty(0, dtype=np.int64))
    source = store.get_feature_view("item_features").batch_source
    ids = pd.read_parquet(source.path, columns=[schema.item_key])[schema.item_key].to_numpy()
    return np.unique(schema.key_array(schema.item_key, ids))


def load_item_table(store, schema: DatasetSchema, marker: Path) -> ItemTable:
    """Read the whole item catalog from the Feast online store, in chunks."""
    stamp = marker_stamp(marker)  # before the read: a materialization during the load triggers another
    ids = catalog_item_ids(store, schema)
    unknown = np.array([[np.nan if f.kind == "dense" else None for f in schema.from_source("item")]], dtype=object)
    chunks = [online_matrix(store, schema, "item", ids[i:i + ONLINE_CHUNK]) for i in range(0, len(ids), ONLINE_CHUNK)]
    values = np.vstack([*chunks, unknown.reshape(1, -1)])
    return ItemTable(ids=ids, values=values, loaded_at=time.time(), marker_stamp=stamp)


class CachedItemFeatures:
    """An :class:`ItemTable` kept fresh by a daemon thread (see the module docstring for the staleness bound)."""

    def __init__(self, repo_dir: Path, schema: DatasetSchema, marker: Path, ttl_s: float, check_s: float):
        # A FeatureStore of its own: the refresh thread must not share the request thread's store connections.
        self.store = feast_repo.open_store(repo_dir)
        self.schema, self.marker, self.ttl_s, self.check_s = schema, marker, ttl_s, check_s
        self.table = load_item_table(self.store, schema, marker)
        self.reloads = 0
        self._stop = threading.Event()
        threading.Thread(target=self._refresh_loop, name="item-feature-refresh", daemon=True).start()

    def due(self) -> bool:
        return (marker_stamp(self.marker) != self.table.marker_stamp
                or time.time() - self.table.loaded_at >= self.ttl_s)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.check_s):
            if not self.due():
                continue
            try:
                self.table = load_item_table(self.store, self.schema, self.marker)  # one reference swap
                self.reloads += 1
            except Exception:  # keep serving the old table; check_health reports it once too old
                log.exception("reloading item features failed; serving the table loaded at %s", self.table.loaded_at)

    def age_s(self) -> float:
        return time.time() - self.table.loaded_at

    def lookup(self, item_ids: np.ndarray) -> np.ndarray:
        return self.table.lookup(item_ids)

    def stop(self) -> None:
        self._stop.set()


class UncachedItemFeatures:
    """Every item feature read from Feast per request (the benchmark's baseline; ``serve.item_cache: false``)."""

    def __init__(self, store, schema: DatasetSchema):
        self.store, self.schema = store, schema

    def lookup(self, item_ids: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(item_ids, return_inverse=True)
        return online_matrix(self.store, self.schema, "item", unique)[inverse]

    def age_s(self) -> float:
        return 0.0


class CachedUserFeatures:
    """User features by user id, read on a miss and kept for at most ``ttl_s`` seconds, for at most ``size``
    users, all dropped when the materialization marker changes (see the module docstring). ``ttl_s == 0``:
    every lookup reads. Used from one thread (the replica's batch handler).

    ``read``: distinct ids (k,) -> (k, F) object features, e.g. :func:`online_matrix` on the user source;
    ``clock``: seconds, monotonic."""

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], marker: Path, ttl_s: float, size: int,
                 clock: Callable[[], float] = time.monotonic):
        self.read, self.marker, self.ttl_s, self.size, self.clock = read, marker, ttl_s, size, clock
        self.rows: OrderedDict[int | str, tuple[float, np.ndarray]] = OrderedDict()  # id -> (read at, (F,) row)
        self.stamp = marker_stamp(marker)
        self.hits = self.misses = 0

    def lookup(self, users: np.ndarray) -> np.ndarray:
        """(U,) distinct ids of the key's type -> (U, F) features, with one read of the misses (none when all
        hit). A failed read raises what ``read`` raises (:class:`FeatureStoreUnavailable`); nothing is cached
        from it."""
        if self.ttl_s <= 0 or len(users) == 0:
            self.misses += len(users)
            return self.read(users)
        stamp = marker_stamp(self.marker)  # before the read: a materialization meanwhile clears the next lookup
        if stamp != self.stamp:
            self.rows.clear()
            self.stamp = stamp
        now, keys = self.clock(), users.tolist()
        found = [self.rows.get(key) for key in keys]
        missing = [i for i, hit in enumerate(found) if hit is None or now - hit[0] >= self.ttl_s]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = self.read(users[missing]) if missing else None
        out = np.empty((len(keys), fresh.shape[1] if fresh is not None else len(found[0][1])), dtype=object)
        for i, hit in enumerate(found):
            if hit is not None and now - hit[0] < self.ttl_s:
                out[i] = hit[1]
                self.rows.move_to_end(keys[i])
        if missing:
            out[missing] = fresh
            for i, row in zip(missing, fresh, strict=True):
                self.rows[keys[i]] = (now, row)
                self.rows.move_to_end(keys[i])
            while len(self.rows) > self.size:
                self.rows.popitem(last=False)
        return out

    def info(self) -> dict:
        return {"users": len(self.rows), "hits": self.hits, "misses": self.misses}


def request_frame(schema: DatasetSchema, users: np.ndarray, lengths: np.ndarray, items: np.ndarray,
                  contexts: list[dict], user_features: np.ndarray, item_features: np.ndarray) -> pd.DataFrame:
    """The model's raw input rows for a batch of B requests with N candidates in all.

    users (B,), lengths (B,) candidates per request, items (N,) (ids of the keys' types), contexts B dicts (:func:`context_fields`;
    a missing one is None: OOV / train mean), user_features (B, Fu), item_features (N, Fi) -> DataFrame
    (N rows) with the schema's model columns."""
    columns: dict[str, np.ndarray] = {schema.user_key: np.repeat(users, lengths), schema.item_key: items}
    dense = {f.name for f in schema.dense}
    for name in context_fields(schema):
        per_request = pd.Series([c.get(name) for c in contexts], dtype=object).to_numpy()
        columns[name] = np.repeat(to_float(per_request) if name in dense else per_request, lengths)
    for j, f in enumerate(schema.from_source("user")):
        columns[f.name] = np.repeat(user_features[:, j], lengths)
    for j, f in enumerate(schema.from_source("item")):
        columns[f.name] = item_features[:, j]
    return pd.DataFrame(columns)
