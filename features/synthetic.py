"""Synthetic CTR data with a known ground-truth click model.

Users, items and request context; daily user-feature snapshots (``activity`` drifts, so point-in-time joins
matter); clicks drawn from a hidden logistic model with planted interactions:

* 1st order: user and item biases, item quality;
* 2nd order: ``region x category`` table, user-item latent dot product, ``activity x log(price)``;
* 3rd order: ``device x daypart x category`` table.

Models that capture higher-order interactions score measurably better than a first-order model, and the A/B
simulator (serving) draws clicks from the same :class:`GroundTruth`, so the truly better arm is known.
Everything is deterministic given the seed and vectorized (no per-row Python loops).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .io import write_frame_atomic

NUM_DEVICES = 4
NUM_HOURS = 24
NUM_AGE_BUCKETS = 8
NUM_REGIONS = 20
NUM_CATEGORIES = 30
NUM_DAYPARTS = 6  # hour // 4
LATENT_DIM = 4
START = pd.Timestamp("2026-01-01", tz="UTC")


@dataclass
class SyntheticTables:
    events: pd.DataFrame  # event_id, user_id, item_id, event_timestamp, device, hour, label
    users: pd.DataFrame  # user_id, event_timestamp (daily snapshot), age_bucket, region, activity, created
    items: pd.DataFrame  # item_id, event_timestamp, category, brand, price, quality, created


class GroundTruth:
    """The hidden click model. Built from (num_users, num_items, days, seed) alone."""

    def __init__(self, num_users: int, num_items: int, days: int, seed: int):
        rng = np.random.default_rng(seed)
        self.num_users, self.num_items, self.days = num_users, num_items, days
        # Static attributes.
        self.age_bucket = rng.integers(0, NUM_AGE_BUCKETS, num_users)
        self.region = rng.integers(0, NUM_REGIONS, num_users)
        self.activity_base = rng.normal(0.0, 1.0, num_users)
        # Daily drift of activity: [days, users]; a random walk so the value at event time matters.
        self.activity = self.activity_base[None, :] + np.cumsum(rng.normal(0.0, 0.35, (days, num_users)), axis=0)
        self.category = rng.integers(0, NUM_CATEGORIES, num_items)
        self.brand = rng.integers(0, max(2, num_items // 5), num_items)
        self.price = np.exp(rng.normal(3.0, 1.0, num_items))
        self.quality = rng.normal(0.0, 1.0, num_items)
        # Hidden parameters.
        self.user_bias = rng.normal(0.0, 0.3, num_users)
        self.item_bias = rng.normal(0.0, 0.3, num_items)
        # Low-rank (factorized) interaction tables: learnable from tens of thousands of rows, as real
        # interactions tend to be, yet invisible to a first-order model.
        self.region_x_category = np.einsum("rk,ck->rc", rng.normal(0.0, 0.7, (NUM_REGIONS, 3)),
                                           rng.normal(0.0, 0.7, (NUM_CATEGORIES, 3)))
        self.user_latent = rng.normal(0.0, 0.5, (num_users, LATENT_DIM))
        self.item_latent = rng.normal(0.0, 0.5, (num_items, LATENT_DIM))
        self.device_daypart_category = np.einsum(
            "dk,pk,ck->dpc", rng.normal(0.0, 1.0, (NUM_DEVICES, 2)), rng.normal(0.0, 1.0, (NUM_DAYPARTS, 2)),
            rng.normal(0.0, 1.0, (NUM_CATEGORIES, 2)))
        self.intercept = -2.2

    def logit(self, user_id: np.ndarray, item_id: np.ndarray, device: np.ndarray, hour: np.ndarray,
              day: np.ndarray) -> np.ndarray:
        """Click logit per row. All arguments are integer arrays of one shape; ``day`` indexes the snapshot."""
        day = np.clip(day, 0, self.days - 1)
        cat = self.category[item_id]
        activity = self.activity[day, user_id]
        return (
            self.intercept
            + self.user_bias[user_id] + self.item_bias[item_id] + 0.4 * self.quality[item_id]
            + self.region_x_category[self.region[user_id], cat]
            + np.einsum("nd,nd->n", self.user_latent[user_id], self.item_latent[item_id])
            + 0.5 * activity * (np.log(self.price[item_id]) - 3.0)
            + self.device_daypart_category[device, hour // 4, cat]
        )

    def event_probability(self, events: pd.DataFrame) -> np.ndarray:
        """Click probability of generated event rows (``user_id``, ``item_id``, ``device``, ``hour``,
        ``event_timestamp``), each under the daily snapshot in force at its time: the Bayes-optimal prediction."""
        day = ((pd.DatetimeIndex(events["event_timestamp"]) - START) // pd.Timedelta(days=1)).to_numpy()
        return self.click_probability(events["user_id"].to_numpy(), events["item_id"].to_numpy(),
                                      events["device"].to_numpy(), events["hour"].to_numpy(), day)

    def click_probability(self, user_id, item_id, device, hour, day=None) -> np.ndarray:
        user_id, item_id = np.asarray(user_id), np.asarray(item_id)
        if day is None:  # serving time: the latest snapshot
            day = np.full(user_id.shape, self.days - 1)
        z = self.logit(user_id, item_id, np.asarray(device), np.asarray(hour), np.asarray(day))
        return 1.0 / (1.0 + np.exp(-z))


def generate(num_events: int, num_users: int, num_items: int, days: int, seed: int) -> SyntheticTables:
    truth = GroundTruth(num_users, num_items, days, seed)
    rng = np.random.default_rng(seed + 1)
    # Popularity skew (Zipf-like) for users and items.
    user_p = 1.0 / np.arange(1, num_users + 1) ** 0.6
    item_p = 1.0 / np.arange(1, num_items + 1) ** 0.8
    user_id = rng.choice(num_users, num_events, p=user_p / user_p.sum())
    item_id = rng.choice(num_items, num_events, p=item_p / item_p.sum())
    # Events start at noon of day 0 so every event is after the first daily snapshot (00:00).
    # Integer microseconds: Feast truncates nanoseconds, and its joins deduplicate rows with equal keys+time.
    micros = np.floor(rng.uniform(12 * 3600, days * 86400, num_events) * 1e6).astype(np.int64)
    order = np.argsort(micros, kind="stable")
    user_id, item_id, micros = user_id[order], item_id[order], micros[order]
    seconds = micros // 1_000_000
    day = (seconds // 86400).astype(np.int64)
    hour = ((seconds % 86400) // 3600).astype(np.int64)
    device = rng.integers(0, NUM_DEVICES, num_events)
    prob = truth.click_probability(user_id, item_id, device, hour, day)
    label = (rng.uniform(size=num_events) < prob).astype(np.int8)
    events = pd.DataFrame({
        "event_id": np.arange(num_events, dtype=np.int64),
        "user_id": user_id.astype(np.int64),
        "item_id": item_id.astype(np.int64),
        "event_timestamp": START + pd.to_timedelta(micros, unit="us"),
        "device": device.astype(np.int64),
        "hour": hour,
        "label": label,
    })
    snap_day = np.repeat(np.arange(days), num_users)
    snap_user = np.tile(np.arange(num_users), days)
    snap_ts = START + pd.to_timedelta(snap_day, unit="D")
    users = pd.DataFrame({
        "user_id": snap_user.astype(np.int64),
        "event_timestamp": snap_ts,
        "age_bucket": truth.age_bucket[snap_user].astype(np.int64),
        "region": truth.region[snap_user].astype(np.int64),
        "activity": truth.activity[snap_day, snap_user].astype(np.float32),
        "created": snap_ts,
    })
    items = pd.DataFrame({
        "item_id": np.arange(num_items, dtype=np.int64),
        "event_timestamp": START,
        "category": truth.category.astype(np.int64),
        "brand": truth.brand.astype(np.int64),
        "price": truth.price.astype(np.float32),
        "quality": truth.quality.astype(np.float32),
        "created": START,
    })
    return SyntheticTables(events=events, users=users, items=items)


def write_sources(tables: SyntheticTables, directory: Path) -> dict[str, Path]:
    """Write the three Parquet sources (events, users, items) with event timestamps."""
    return {name: write_frame_atomic(getattr(tables, name), directory / f"{name}.parquet")
            for name in ("events", "users", "items")}
