"""The synthetic generator's hidden click model: labels are drawn from it, each event under its day's snapshot."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mixrec.features.synthetic import START, GroundTruth, generate
from mixrec.pipelines.metrics import binary_metrics


def test_event_probability_is_the_model_the_labels_were_drawn_from():
    events = generate(50_000, 300, 100, 7, seed=3).events
    truth = GroundTruth(300, 100, 7, seed=3)
    probs = truth.event_probability(events)
    labels = events["label"].to_numpy()
    # calibrated: the mean probability is the click rate within sampling error (4 standard errors)
    assert abs(probs.mean() - labels.mean()) < 4 * np.sqrt(probs.mean() * (1 - probs.mean()) / len(labels))
    # the Bayes prediction beats a truth of another seed and the constant rate
    other = GroundTruth(300, 100, 7, seed=4).event_probability(events)
    best = binary_metrics(labels, probs)["logloss"]
    assert best < binary_metrics(labels, other)["logloss"]
    assert best < binary_metrics(labels, np.full(len(labels), labels.mean()))["logloss"]


def test_each_event_is_scored_under_the_snapshot_of_its_own_day():
    truth = GroundTruth(5, 5, 3, seed=0)
    times = pd.Series([START + pd.Timedelta(hours=h) for h in (12, 23, 24, 25, 49)])  # days 0, 0, 1, 1, 2
    events = pd.DataFrame({"user_id": 1, "item_id": 2, "device": 0, "hour": 1, "event_timestamp": times})
    days = np.array([0, 0, 1, 1, 2])
    expected = truth.click_probability(np.full(5, 1), np.full(5, 2), np.zeros(5, int), np.ones(5, int), days)
    np.testing.assert_array_equal(truth.event_probability(events), expected)
    assert len(np.unique(expected)) == 3  # activity drifts by day, so the days differ
