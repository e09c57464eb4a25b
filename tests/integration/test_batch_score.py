"""`mixrec score` against the server: the same candidate rows scored in batch (Ray Data, the registered
version's own preprocessing, user and item features from the online store) and over HTTP by the served arm of
that version give the same probabilities; unknown keys are scored (OOV), never dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mixrec.cli import app
from mixrec.pipelines.registry import CHALLENGER, CHAMPION
from mixrec.serving.splitter import assign_arm

pytestmark = pytest.mark.integration
ITEMS = [0, 3, 7, 11, 42, 99, 5_000]  # the last is unknown to Feast
UNKNOWN_USER = 987_654


def _served_scores(served, arm: str, users: list[int]) -> pd.DataFrame:
    """(user_id, item_id, device, hour, score) of the users' requests, all answered by ``arm``."""
    client, rows = served["client"], []
    for n, user in enumerate(users):
        context = {"device": n % 4, "hour": (5 * n) % 24}
        r = client.post("/rank", json={"user_id": user, "items": ITEMS, "context": context})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["arm"] == arm
        rows += [{"user_id": user, "item_id": x["item_id"], **context, "score": x["score"]} for x in body["ranked"]]
    return pd.DataFrame(rows)


def _users_of(arm: str, served, count: int) -> list[int]:
    cfg = served["cfg"]
    weights = served["client"].get("/arms").json()["weights"]
    arms = {u: assign_arm(u, weights, cfg.serve.salt) for u in [*range(200), UNKNOWN_USER]}
    users = [u for u, a in arms.items() if a == arm and u != UNKNOWN_USER][:count]
    return users + ([UNKNOWN_USER] if arms[UNKNOWN_USER] == arm else [])


@pytest.mark.parametrize("arm", [CHAMPION, CHALLENGER])
def test_batch_scores_equal_served_scores(served, arm, tmp_path):
    expected = _served_scores(served, arm, _users_of(arm, served, 4))
    candidates = expected.drop(columns="score").sample(frac=1.0, random_state=0)  # any order
    folder = tmp_path / "candidates"
    folder.mkdir()
    half = len(candidates) // 2  # a folder of two files
    candidates.iloc[:half].to_parquet(folder / "part-0.parquet")
    candidates.iloc[half:].to_parquet(folder / "part-1.parquet")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(served["cfg"].to_dict()))
    version = served["first"].version if arm == CHAMPION else served["second"].version
    select = ["--alias", CHAMPION] if arm == CHAMPION else ["--version", version]
    result = CliRunner().invoke(app, ["score", str(folder), "-c", str(config), "-o", str(tmp_path / "out"),
                                      "--batch-size", "16", *select])
    assert result.exit_code == 0, result.output
    assert f"v{version}" in result.output and f"scored {len(candidates)} rows" in result.output
    scores = pd.read_parquet(tmp_path / "out")
    assert list(scores.columns) == ["user_id", "item_id", "score"]
    # one row per input row, in input order
    assert scores[["user_id", "item_id"]].values.tolist() == candidates[["user_id", "item_id"]].values.tolist()
    joined = expected.merge(scores, on=["user_id", "item_id"], suffixes=("_served", "_batch"))
    assert len(joined) == len(expected)
    np.testing.assert_allclose(joined["score_batch"], joined["score_served"], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / ".out.tmp").exists()
